#!/usr/bin/env bash
# Configure and start Debian's Postfix as the benchmark peer: virtual Maildir
# delivery for bench.test on 127.0.0.1:${PF_PORT:-2526}, fsync as shipped.
# Usage: sudo bench/postfix_setup.sh [maildir_base]    (needs: apt-get install postfix)
set -euo pipefail
BASE=${1:-/var/tmp/pfbench}
PORT=${PF_PORT:-2526}
USERS=${PF_USERS:-10}
id vmail >/dev/null 2>&1 || useradd --system --home-dir "$BASE" --shell /usr/sbin/nologin vmail
mkdir -p "$BASE/mail"
chown -R vmail:vmail "$BASE"
VUID=$(id -u vmail); VGID=$(id -g vmail)

postfix stop >/dev/null 2>&1 || true
[ -f /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
: > /etc/postfix/vmailbox
for i in $(seq 1 "$USERS"); do echo "user$i@bench.test bench.test/user$i/" >> /etc/postfix/vmailbox; done
postconf -e \
  "compatibility_level = 3.6" \
  "myhostname = bench.local" \
  "mydestination =" \
  "inet_interfaces = loopback-only" \
  "inet_protocols = ipv4" \
  "mynetworks = 127.0.0.0/8" \
  "relayhost =" \
  "virtual_mailbox_domains = bench.test" \
  "virtual_mailbox_base = $BASE/mail" \
  "virtual_mailbox_maps = texthash:/etc/postfix/vmailbox" \
  "virtual_uid_maps = static:$VUID" \
  "virtual_gid_maps = static:$VGID" \
  "virtual_transport = virtual" \
  "virtual_destination_concurrency_limit = 20" \
  "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination" \
  "smtpd_client_connection_count_limit = 0" \
  "default_process_limit = 100" \
  "maillog_file = /var/log/postfix-bench.log"
# smtpd on the benchmark port, not chrooted; postlog for maillog_file.
sed -i -E '/^(smtp|[0-9.]+:[0-9]+)[[:space:]]+inet/d' /etc/postfix/master.cf
echo "127.0.0.1:$PORT inet n - n - - smtpd" >> /etc/postfix/master.cf
grep -q '^postlog' /etc/postfix/master.cf || \
  echo "postlog unix-dgram n - n - 1 postlogd" >> /etc/postfix/master.cf
newaliases >/dev/null 2>&1 || true
postfix check
postfix start
echo "postfix: 127.0.0.1:$PORT, Maildirs under $BASE/mail/bench.test/userN/"
