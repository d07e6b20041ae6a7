"""Two of our servers exchange mail on loopback: by MX from a real DNS server, and by smtproutes.

Three processes, all started by the test:

* twisted.names' authoritative server (``twistd dns --pyzone``) on 127.0.0.60
  port 53, authoritative for ``a.test`` (MX ``mx.a.test`` = 127.0.0.61) and
  ``b.test`` (MX ``mx.b.test`` = 127.0.0.62);
* server A (``twistd indimail``) on 127.0.0.61:25, ``me`` ``mx.a.test``, local
  domain ``a.test``;
* server B on 127.0.0.62:25, ``me`` ``mx.b.test``, local domains ``b.test`` and
  ``c.test`` (which has no DNS records at all).

Both servers find the DNS server through djbdns's ``DNSCACHEIP`` and deliver to
port 25, as a production server does; both have a certificate, offer STARTTLS
and use it opportunistically as clients; each sends from its own address
(``outgoingip``).  A delivers ``b.test`` by MX and ``c.test`` through its
``smtproutes`` (``c.test:127.0.0.62:25``, no DNS involved); B delivers ``a.test``
by MX.  Mail is submitted by ``smtplib`` with STARTTLS and AUTH, as a user's
client would.

Fixed addresses and ports (25, 53), so it needs root; elsewhere a skip, under
CI (``CI`` set) a failure.  One test function: the fixed ports cannot be shared
between pytest-xdist workers.  The waits are bounds on waiting for a delivery,
never measurements.
"""

from __future__ import annotations

import email
import email.policy
import errno
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import pytest
from twisted.names import dns

from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.ops_user import add_user
from indimail_tw.admin.site import Site
from indimail_tw.tlsutil import make_self_signed
from tests.interop.mailservers import stop_process

TWISTD = os.path.join(sys.prefix, "bin", "twistd")
DNS_IP, A_IP, B_IP = "127.0.0.60", "127.0.0.61", "127.0.0.62"
WAIT = 120.0           # seconds: an upper bound on waiting for a start or a delivery

ZONE = """\
zone = [
    SOA({domain!r}, mname="ns.test", rname="hostmaster.{domain}", serial=1,
        refresh=60, retry=60, expire=600, minimum=60, ttl=60),
    NS({domain!r}, "ns.test", ttl=60),
    MX({domain!r}, 10, "mx.{domain}", ttl=60),
    A("mx.{domain}", {ip!r}, ttl=60),
]
"""


def _unavailable() -> str | None:
    """Why the fixed loopback ports cannot be had here, or None."""
    for kind, ip, port in ((socket.SOCK_DGRAM, DNS_IP, 53), (socket.SOCK_STREAM, DNS_IP, 53),
                           (socket.SOCK_STREAM, A_IP, 25), (socket.SOCK_STREAM, B_IP, 25)):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
            except PermissionError:
                return f"binding {ip}:{port} needs root (the test uses the real ports 25 and 53)"
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return f"{ip}:{port} is in use (another run of this test?)"
                return f"cannot bind {ip}:{port}: {e}"
    return None


REASON = _unavailable()
if REASON and not os.environ.get("CI"):
    pytest.skip(REASON, allow_module_level=True)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("MYSQL_", "INDIMAIL", "QUEUE", "CONTROLDIR", "BASE_PATH",
                                 "EXTRAQUEUE", "SMTPROUTE", "CERTDIR", "DNSCACHEIP",
                                 "TCPDIR", "DOMAINDIR", "SYSCONFDIR"))}


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def dns_answers(name: str, kind: int) -> list[dns.RRHeader]:
    """One UDP query to the test's DNS server (raises OSError when nobody answers)."""
    query = dns.Message(id=4242, recDes=0)
    query.queries = [dns.Query(name, kind, dns.IN)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(query.toStr(), (DNS_IP, 53))
        reply = dns.Message()
        reply.fromStr(s.recv(4096))
    return reply.answers


class DNSServer:
    """twisted.names' authoritative server for a.test and b.test, a twistd subprocess."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.log = os.path.join(base, "twistd-dns.log")
        os.makedirs(base)
        self.zones = []
        for domain, ip in (("a.test", A_IP), ("b.test", B_IP)):
            path = os.path.join(base, f"{domain}.zone.py")
            with open(path, "w") as f:
                f.write(ZONE.format(domain=domain, ip=ip))
            self.zones += ["--pyzone", path]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", self.log, "dns",
             "--interface", DNS_IP, "--port", "53", *self.zones],
            cwd=self.base, env=clean_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                answers = dns_answers("b.test", dns.MX)
            except OSError:
                assert self.process.poll() is None, \
                    f"the DNS server exited at start:\n{read(self.log)[-3000:]}"
                time.sleep(0.1)
                continue
            assert [str(a.payload.name) for a in answers] == ["mx.b.test"], answers
            return
        raise AssertionError(f"the DNS server never answered:\n{read(self.log)[-3000:]}")

    def stop(self) -> None:
        stop_process(self.process)


class OurServer:
    """``twistd indimail`` on ``ip``:25 with its own root, certificate and domains."""

    def __init__(self, root: str, ip: str, me: str, domains: dict[str, str],
                 routes: str = "") -> None:
        self.root, self.ip, self.me = root, ip, me
        self.log = os.path.join(root, "twistd.log")
        self.env = dict(clean_env(), QUEUE_COUNT="1", DNSCACHEIP=DNS_IP)
        site = Site.resolve(root, self.env)
        site.paths.ensure()
        site.control.write_value("me", me)
        site.control.write_value("outgoingip", ip)
        if routes:
            site.control.write_value("smtproutes", routes)
        self.users = {}
        for domain, user in domains.items():
            add_domain(site, domain, "postmaster-secret")
            self.users[f"{user}@{domain}"] = add_user(site, f"{user}@{domain}", "pw")
        make_self_signed(os.path.join(site.paths.certs, "servercert.pem"), me)
        site.close()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", self.log, "indimail",
             "--root", self.root, "--smtp", f"tcp:25:interface={self.ip}"],
            cwd=self.root, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.ip, 25), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode(errors="replace")
                    raise AssertionError(f"{self.me} exited at start: {err}\n"
                                         f"{read(self.log)[-3000:]}") from None
                time.sleep(0.05)
        raise AssertionError(f"{self.me} never listened on {self.ip}:25")

    def stop(self) -> None:
        stop_process(self.process)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def submit(self, user: str, recipients: list[str], text: str) -> None:
        """As a user's client does: STARTTLS, AUTH, then the message."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE          # a self-signed test certificate
        with smtplib.SMTP(self.ip, 25, timeout=60) as smtp:
            smtp.ehlo("client.test")
            smtp.starttls(context=context)
            smtp.ehlo("client.test")
            smtp.login(user, "pw")
            refused = smtp.sendmail(user, recipients, text)
            assert refused == {}, refused

    def maildir(self, address: str) -> str:
        return self.users[address].maildir


def wait_for(maildir: str, message_id: str) -> email.message.EmailMessage:
    """The message with ``message_id`` in ``maildir/new``, waiting for it."""
    new = os.path.join(maildir, "new")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for message in messages(maildir):
            if message["Message-ID"] == message_id:
                return message
        time.sleep(0.1)
    raise AssertionError(f"{message_id} never arrived in {new}")


def messages(maildir: str) -> list[email.message.EmailMessage]:
    new = os.path.join(maildir, "new")
    out = []
    for name in sorted(os.listdir(new)) if os.path.isdir(new) else []:
        with open(os.path.join(new, name), "rb") as f:
            out.append(email.message_from_binary_file(f, policy=email.policy.default))
    return out


def body_of(sender: str, recipient: str, subject: str, message_id: str) -> str:
    return (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n"
            f"Message-ID: {message_id}\r\n\r\n"
            "first line\r\n.a line that starts with a dot\r\n..two dots\r\n"
            + "x" * 990 + "\r\n\r\nlast line\r\n")


EXPECTED_BODY = ("first line\n.a line that starts with a dot\n..two dots\n"
                 + "x" * 990 + "\n\nlast line\n")


@pytest.fixture
def servers():
    if REASON:
        pytest.fail(f"CI must run the two-server test: {REASON}")
    base = tempfile.mkdtemp(prefix="itw-two-")
    dns_server = DNSServer(os.path.join(base, "dns"))
    a = OurServer(os.path.join(base, "a"), A_IP, "mx.a.test", {"a.test": "alice"},
                  routes=f"c.test:{B_IP}:25")
    b = OurServer(os.path.join(base, "b"), B_IP, "mx.b.test",
                  {"b.test": "bob", "c.test": "carol"})
    try:
        dns_server.start()
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()
        dns_server.stop()
        if os.environ.get("KEEP_INTEROP"):
            print(f"\nkept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def check_hop(message: email.message.EmailMessage, *, sender: str, recipient: str,
              client: OurServer, server: OurServer, logs: str) -> None:
    """Arrived intact, from ``client`` over STARTTLS, below the receiving server's line."""
    assert message["Return-Path"] == f"<{sender}>", logs
    # qmail-local's Delivered-To: the virtual domain's prefix, then the address
    domain = recipient.rpartition("@")[2]
    assert message["Delivered-To"] == f"{domain}-{recipient}", logs
    received = [" ".join(str(h).split()) for h in message.get_all("Received")]
    # the receiving server's line: from the sender's HELO name and address, over TLS
    top = received[0]
    assert top.startswith(f"from {client.me} ") and f"[{client.ip}]" in top, received
    assert f"by {server.me} with ESMTPS (TLS" in top, received
    # below it the sending server's line: the user's submission, STARTTLS + AUTH
    assert f"by {client.me} with ESMTPSA (TLS" in received[1], received
    assert f"(authenticated user {sender})" in received[1], received
    assert message.get_content().replace("\r\n", "\n") == EXPECTED_BODY, logs


def no_bounces(*maildirs: str) -> None:
    for maildir in maildirs:
        bounces = [m for m in messages(maildir) if m.get_content_type() == "multipart/report"]
        assert bounces == [], [b.as_string()[:2000] for b in bounces]


def test_two_servers_exchange_mail_by_mx_and_smtproutes(servers):
    a, b = servers
    cases = [   # (client, sender, recipient, server, message-id)
        (a, "alice@a.test", "bob@b.test", b, "<mx-a-to-b@a.test>"),
        (b, "bob@b.test", "alice@a.test", a, "<mx-b-to-a@b.test>"),
        (a, "alice@a.test", "carol@c.test", b, "<route-a-to-c@a.test>"),
    ]
    for client, sender, recipient, _server, message_id in cases:
        client.submit(sender, [recipient],
                      body_of(sender, recipient, f"to {recipient}", message_id))

    def logs() -> str:
        return (f"\n--- A's twistd.log (tail) ---\n{read(a.log)[-4000:]}"
                f"\n--- B's twistd.log (tail) ---\n{read(b.log)[-4000:]}")

    for client, sender, recipient, server, message_id in cases:
        try:
            message = wait_for(server.maildir(recipient), message_id)
        except AssertionError as e:
            raise AssertionError(str(e) + logs()) from None
        check_hop(message, sender=sender, recipient=recipient, client=client,
                  server=server, logs=logs())
    # both found the DNS server through DNSCACHEIP, and nothing bounced
    for server in (a, b):
        assert f"DNS: asking {DNS_IP} (DNSCACHEIP)" in read(server.log), logs()
    no_bounces(a.maildir("alice@a.test"), b.maildir("bob@b.test"))
