"""Interop with a real MTA: our server and a private Postfix exchange mail on loopback.

Our server (``twistd indimail``, a subprocess) listens on 127.0.0.1 and routes
``pf.test`` to Postfix with ``smtproutes``; a private Postfix instance (own
configuration, queue and data directories under a temporary directory, nothing
of the system's Postfix touched) listens on 127.0.0.2, delivers ``pf.test``
into virtual Maildirs and sends ``ours.test`` to us through ``transport_maps``.
Both offer STARTTLS and both clients use it opportunistically.

Needs Debian's ``postfix`` package and root (Postfix's master runs as root).
Under CI (``CI`` set) a missing Postfix is a failure, elsewhere a skip.  The
waits below are bounds on how long to wait for a delivery, not measurements.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.ops_user import add_user
from indimail_tw.admin.site import Site
from indimail_tw.tlsutil import make_self_signed
from tests.interop.mailservers import POSTFIX_MASTER_CF

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
TWISTD = os.path.join(sys.prefix, "bin", "twistd")
OUR_IP, PF_IP = "127.0.0.1", "127.0.0.2"
WAIT = 90.0            # seconds: an upper bound on waiting for one delivery



def _unavailable() -> str | None:
    if not os.access(POSTFIX, os.X_OK):
        return "Postfix is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    return None


REASON = _unavailable()
if REASON and not os.environ.get("CI"):
    pytest.skip(REASON, allow_module_level=True)


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_listening(ip: str, port: int, alive=lambda: True) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=1):
                return
        except OSError:
            assert alive(), f"the server for {ip}:{port} exited while starting"
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {ip}:{port}")


def wait_for_messages(maildir: str, count: int) -> list[email.message.EmailMessage]:
    """The first ``count`` messages of ``maildir/new`` (oldest first), waiting for them."""
    new = os.path.join(maildir, "new")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        names = sorted(os.listdir(new)) if os.path.isdir(new) else []
        if len(names) >= count:
            out = []
            for name in names[:count]:
                with open(os.path.join(new, name), "rb") as f:
                    out.append(email.message_from_binary_file(f, policy=email.policy.default))
            return out
        time.sleep(0.1)
    raise AssertionError(f"{count} message(s) never arrived in {maildir}")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("MYSQL_", "INDIMAIL", "QUEUE", "CONTROLDIR", "BASE_PATH",
                                 "EXTRAQUEUE", "SMTPROUTE", "CERTDIR"))}


class PrivatePostfix:
    """A Postfix instance of its own under ``base``: conf/, queue/, data/, mail/."""

    def __init__(self, base: str, port: int, relay_port: int) -> None:
        self.base, self.port = base, port
        self.conf = os.path.join(base, "conf")
        self.mail = os.path.join(base, "mail")
        self.log = os.path.join(base, "maillog")
        for sub in ("conf", "queue", "data", "mail"):
            os.makedirs(os.path.join(base, sub))
        shutil.chown(os.path.join(base, "data"), "postfix")
        shutil.chown(self.mail, "nobody", "nogroup")
        pem = os.path.join(self.conf, "tls.pem")
        make_self_signed(pem, "pf.example")
        self.write("vmailbox", "bob@pf.test pf.test/bob/\n")
        self.write("transport", f"ours.test smtp:[{OUR_IP}]:{relay_port}\n")
        self.write("master.cf", POSTFIX_MASTER_CF.format(ip=PF_IP, port=port))
        self.write("main.cf", "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {base}/queue",
            f"data_directory = {base}/data",
            "myhostname = pf.example",
            "mydestination =",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtp_dns_support_level = disabled",
            f"maillog_file = {self.log}",
            f"maillog_file_prefixes = {base}",
            "alias_maps =",
            "alias_database =",
            "virtual_mailbox_domains = pf.test",
            f"virtual_mailbox_base = {self.mail}",
            f"virtual_mailbox_maps = texthash:{self.conf}/vmailbox",
            "virtual_uid_maps = static:65534",
            "virtual_gid_maps = static:65534",
            f"transport_maps = texthash:{self.conf}/transport",
            "smtpd_tls_security_level = may",
            f"smtpd_tls_chain_files = {pem}",
            "smtpd_tls_received_header = yes",
            "smtp_tls_security_level = may",
            "smtp_tls_loglevel = 1",
            # retry soon: the test waits for deliveries, it never measures them
            "minimal_backoff_time = 5s",
            "maximal_backoff_time = 10s",
            "queue_run_delay = 5s",
            "",
        ]))

    def write(self, name: str, text: str) -> None:
        with open(os.path.join(self.conf, name), "w") as f:
            f.write(text)

    def postfix(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([POSTFIX, "-c", self.conf, *args], capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        result = self.postfix("start")
        if result.returncode != 0:
            raise AssertionError(f"postfix start failed: {result.stderr}\n{self.read_log()}")
        wait_listening(PF_IP, self.port)

    def stop(self) -> None:
        self.postfix("stop")

    def read_log(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def maildir(self, user: str) -> str:
        return os.path.join(self.mail, "pf.test", user)


class OurServer:
    def __init__(self, root: str, port: int, pf_port: int) -> None:
        self.root, self.port = root, port
        self.env = dict(clean_env(), QUEUE_COUNT="1")
        site = Site.resolve(root, self.env)
        site.paths.ensure()
        site.control.write_value("me", "mx.ours.test")
        site.control.write_value("smtproutes", f"pf.test:[{PF_IP}]:{pf_port}")
        add_domain(site, "ours.test", "postmaster-secret")
        self.alice = add_user(site, "alice@ours.test", "pw")
        make_self_signed(os.path.join(site.paths.certs, "servercert.pem"), "mx.ours.test")
        with open(os.path.join(site.paths.tcp, "tcp.smtp"), "w") as f:
            f.write('127.0.0.1:allow,RELAYCLIENT=""\n:allow\n')
        site.close()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(self.root, "twistd.log"),
             "indimail", "--root", self.root, "--smtp", f"tcp:{self.port}:interface={OUR_IP}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(OUR_IP, self.port, lambda: self.process.poll() is None)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def read_log(self) -> str:
        try:
            with open(os.path.join(self.root, "twistd.log")) as f:
                return f.read()
        except OSError:
            return ""


@pytest.fixture(scope="module")
def mtas():
    if REASON:
        pytest.fail(f"CI must run the Postfix interop tests: {REASON}")
    base = tempfile.mkdtemp(prefix="itw-postfix-")
    os.chmod(base, 0o755)               # Postfix's daemons and nobody walk into it
    our_port, pf_port = free_port(OUR_IP), free_port(PF_IP)
    ours = OurServer(os.path.join(base, "ours"), our_port, pf_port)
    postfix = PrivatePostfix(os.path.join(base, "postfix"), pf_port, our_port)
    try:
        postfix.start()
        ours.start()
        yield ours, postfix
    finally:
        ours.stop()
        postfix.stop()
        if os.environ.get("KEEP_INTEROP"):
            print(f"\nkept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def logs_on_failure(ours: OurServer, postfix: PrivatePostfix) -> str:
    return (f"\n--- our twistd.log (tail) ---\n{ours.read_log()[-4000:]}"
            f"\n--- postfix maillog (tail) ---\n{postfix.read_log()[-4000:]}")


BODY = ("From: Alice <alice@ours.test>\r\nTo: Bob <bob@pf.test>\r\n"
        "Subject: to postfix\r\nMessage-ID: <interop-1@ours.test>\r\n\r\n"
        "first line\r\n.a line that starts with a dot\r\n"
        + "x" * 900 + "\r\nlast line\r\n")


def test_we_deliver_to_postfix(mtas):
    ours, postfix = mtas
    with smtplib.SMTP(OUR_IP, ours.port, timeout=30) as smtp:
        smtp.sendmail("alice@ours.test", ["bob@pf.test"], BODY)
    try:
        (msg,) = wait_for_messages(postfix.maildir("bob"), 1)
    except AssertionError as e:
        raise AssertionError(str(e) + logs_on_failure(ours, postfix)) from None
    assert msg["Message-ID"] == "<interop-1@ours.test>"
    assert msg["Subject"] == "to postfix"
    assert msg["Return-Path"] == "<alice@ours.test>"
    assert msg["Delivered-To"] == "bob@pf.test"
    received = [str(h) for h in msg.get_all("Received")]
    # Postfix's own line: from our HELO name and address, over STARTTLS
    assert "from mx.ours.test" in received[0] and f"[{OUR_IP}]" in received[0], received
    assert "using TLS" in received[0], received
    assert "by pf.example (Postfix)" in received[0], received
    # our server's line below it (we received the message from smtplib)
    assert "mx.ours.test" in received[1], received
    body = msg.get_content()
    assert body.replace("\r\n", "\n") == ("first line\n.a line that starts with a dot\n"
                                          + "x" * 900 + "\nlast line\n")


def test_postfix_delivers_to_us(mtas):
    ours, postfix = mtas
    text = ("From: Bob <bob@pf.test>\r\nTo: Alice <alice@ours.test>\r\n"
            "Subject: from postfix\r\nMessage-ID: <interop-2@pf.test>\r\n\r\n"
            "hello from postfix\r\n..two dots\r\n")
    with smtplib.SMTP(PF_IP, postfix.port, timeout=30) as smtp:
        smtp.sendmail("bob@pf.test", ["alice@ours.test"], text)
    try:
        msgs = wait_for_messages(ours.alice.maildir, 1)
    except AssertionError as e:
        raise AssertionError(str(e) + logs_on_failure(ours, postfix)) from None
    (msg,) = [m for m in msgs if m["Message-ID"] == "<interop-2@pf.test>"]
    assert msg["Return-Path"] == "<bob@pf.test>"
    received = [str(h) for h in msg.get_all("Received")]
    # our line on top: from Postfix's HELO over STARTTLS; then Postfix's own
    assert "pf.example" in received[0] and OUR_IP in received[0], received
    assert "ESMTPS" in received[0], received
    assert "by pf.example (Postfix)" in received[1], received
    assert msg.get_content().replace("\r\n", "\n") == "hello from postfix\n..two dots\n"


def test_postfix_refusal_comes_back_as_a_bounce(mtas):
    ours, postfix = mtas
    already = len(os.listdir(os.path.join(ours.alice.maildir, "new")))
    bob_new = os.path.join(postfix.maildir("bob"), "new")
    bob_had = len(os.listdir(bob_new)) if os.path.isdir(bob_new) else 0
    with smtplib.SMTP(OUR_IP, ours.port, timeout=30) as smtp:
        smtp.sendmail("alice@ours.test", ["bob@pf.test", "nosuch@pf.test"],
                      "Subject: half of it\r\nMessage-ID: <interop-3@ours.test>\r\n\r\nbody\r\n")
    try:
        msgs = wait_for_messages(ours.alice.maildir, already + 1)
    except AssertionError as e:
        raise AssertionError(str(e) + logs_on_failure(ours, postfix)) from None
    (bounce,) = [m for m in msgs if m.get_content_type() == "multipart/report"]
    assert bounce["Return-Path"] == "<>"
    assert bounce.get_param("report-type") == "delivery-status"
    assert bounce["To"] and "alice@ours.test" in str(bounce["To"])
    human, status, original = bounce.iter_parts()
    assert "nosuch@pf.test" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = status.get_payload()
    assert str(per_message["Reporting-MTA"]).strip() == "dns; mx.ours.test"
    (failed,) = per_recipient
    assert str(failed["Final-Recipient"]).strip().lower() == "rfc822; nosuch@pf.test"
    assert str(failed["Action"]).strip() == "failed"
    assert str(failed["Status"]).strip() == "5.1.1"
    assert str(failed["Remote-MTA"]).strip() == f"dns; [{PF_IP}]"
    diagnostic = " ".join(str(failed["Diagnostic-Code"]).split())
    assert diagnostic.startswith("smtp; 550 5.1.1"), diagnostic
    assert "User unknown" in diagnostic, diagnostic
    assert original.get_content_type() in ("message/rfc822", "text/rfc822-headers")
    # bob got his copy (the same transaction)
    bob = wait_for_messages(postfix.maildir("bob"), bob_had + 1)
    assert any(m["Message-ID"] == "<interop-3@ours.test>" for m in bob)
