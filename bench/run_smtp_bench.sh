#!/usr/bin/env bash
# Receive benchmark, side by side in one run: indimail_tw vs Postfix (virtual Maildir).
# Same load for both: bench/smtp_load.py, SESSIONS sessions, MESSAGES messages of SIZE bytes
# to 10 users of bench.test, fsync on in both. Prints one JSON line per run and the ratios.
# Needs root for Postfix (apt-get install postfix); run from the repository root:
#   bench/run_smtp_bench.sh            (defaults: 20 sessions, 5000 messages, 2048 bytes)
#   OUR_ARGS="--workers 2" bench/run_smtp_bench.sh     (options for 'twistd indimail')
#   SETTLE=0 skips the wait after removing the previous run's data, ROUND_SETTLE=0 the
#   wait before each load (see below)
set -euo pipefail
SESSIONS=${SESSIONS:-20}; MESSAGES=${MESSAGES:-5000}; SIZE=${SIZE:-2048}; ROUNDS=${ROUNDS:-1}
OUR_PORT=${OUR_PORT:-2525}; PF_PORT=${PF_PORT:-2526}
ROOT=${ROOT:-/var/tmp/itwbench}; PFBASE=${PFBASE:-/var/tmp/pfbench}
PY=${PY:-.venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)

echo "machine: $(nproc) CPUs, $(uname -r), $(df -hT /var/tmp | awk 'NR==2{print $2" on "$1}')"

# Both servers start from empty mail stores: old data goes first, then the script
# waits SETTLE seconds (default: the kernel's dirty_expire_centisecs/100 + 5).  ext4
# without a journal (as on the reference machine) does not reuse an inode freed that
# recently and scans past every such inode for each file it creates, so whichever
# server ran right after a mass deletion would pay for it.
postfix stop >/dev/null 2>&1 || true
rm -rf "$ROOT" "$PFBASE/mail"
SETTLE=${SETTLE:-$(( $(cat /proc/sys/vm/dirty_expire_centisecs 2>/dev/null || echo 3000) / 100 + 5 ))}
sleep "$SETTLE"

# indimail_tw: a root with bench.test and user1..user10
"$PY" "$HERE/bench_root.py" "$ROOT"
env -u QUEUE_COUNT ${OUR_ENV:-} .venv/bin/twistd -n --pidfile= --logfile "$ROOT/twistd.log" \
    indimail --root "$ROOT" --smtp "tcp:$OUR_PORT:interface=127.0.0.1" ${OUR_ARGS:-} &
OUR_PID=$!
trap 'kill $OUR_PID 2>/dev/null || true' EXIT

# Postfix
PF_PORT=$PF_PORT "$HERE/postfix_setup.sh" "$PFBASE" >/dev/null
for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$OUR_PORT) 2>/dev/null && break; sleep 0.1
done

# Server CPU (user + system seconds, workers and reaped children included), read before
# and after each load: the per-message figure stays meaningful on a shared machine.
PF_PROCS=master,smtpd,cleanup,qmgr,virtual,trivial-rewrite,anvil,pickup,proxymap,tlsmgr,scache,bounce
cpu() {  # indimail_tw|postfix
    if [ "$1" = indimail_tw ]; then "$PY" "$HERE/proc_cpu.py" --tree "$OUR_PID"
    else "$PY" "$HERE/proc_cpu.py" --comm "$PF_PROCS"; fi
}
run() {  # name port maildir-glob
    local before after result
    before=$(cpu "$1")
    result=$("$PY" "$HERE/smtp_load.py" --port "$2" --sessions "$SESSIONS" --messages "$MESSAGES" \
        --size "$SIZE" --domain bench.test --users 10 --maildirs "$3")
    after=$(cpu "$1")
    "$PY" -c 'import json, sys; r = json.loads(sys.argv[1]); r["server_cpu_ms_per_msg"] = round((float(sys.argv[3]) - float(sys.argv[2])) * 1000 / r["messages"], 3); print(json.dumps(r))' \
        "$result" "$before" "$after"
}
# Each load starts SETTLE seconds after the previous one (ROUND_SETTLE=0 to skip): a
# server that unlinks a file per message (Postfix's queue files) leaves thousands of
# recently freed inodes that the next run's file creations scan past (see above), so
# without the pause whichever server ran second paid for the other's deletions.
ROUND_SETTLE=${ROUND_SETTLE:-$SETTLE}
for round in $(seq 1 "$ROUNDS"); do
    [ "$round" = 1 ] || sleep "$ROUND_SETTLE"
    ours=$(run indimail_tw "$OUR_PORT" "$ROOT/mail/*/bench.test/user*/Maildir")
    sleep "$ROUND_SETTLE"
    pf=$(run postfix "$PF_PORT" "$PFBASE/mail/bench.test/user*")
    echo "round $round indimail_tw: $ours"
    echo "round $round postfix:     $pf"
    "$PY" - "$ours" "$pf" <<'PYEOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for key in ("accepted_per_s", "delivered_per_s", "server_cpu_ms_per_msg"):
    print(f"  {key}: indimail_tw {a[key]} / postfix {b[key]} = {a[key] / b[key]:.2f}x")
PYEOF
done
postfix stop >/dev/null 2>&1 || true
