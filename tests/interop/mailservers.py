"""IMAP/POP3 servers for the real-client interop tests: ours, or a private Dovecot.

``start_server(name, base)`` makes an indimail_tw root under ``base`` (domain
``interop.test``, users ``alice`` (crypt hash and a ``{CRAM}`` record) and ``bob``
(crypt hash only), a self-signed certificate for
``localhost``) and serves it on free loopback ports with plaintext and
implicit-TLS listeners for IMAP and POP3:

- ``indimail_tw``: ``twistd -n indimail --imap ... --imaps ... --pop3 ... --pop3s ...``
- ``dovecot``: a private Dovecot 2.3 on the same root's users and Maildirs
  (bench/dovecot_setup.py), the reference the tests were first written against.

Which servers the tests run against: ``INTEROP_SERVERS`` (comma-separated,
default ``indimail_tw``).  The waits here are bounds on start-up, not measurements.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import imaplib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.ops_user import add_user
from indimail_tw.admin.secret import Password
from indimail_tw.admin.site import Site
from indimail_tw.tlsutil import make_self_signed

HOST = "127.0.0.1"
DOMAIN = "interop.test"
PASSWORDS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2"}

#: master.cf of a private Postfix listening for SMTP on {ip}:{port} (the interop
#: tests and bench/relay_bench.py run one each)
POSTFIX_MASTER_CF = """\
{ip}:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
proxywrite unix - - n -  1 proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
local     unix  - n n -  - local
virtual   unix  - n n -  - virtual
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""
TWISTD = os.path.join(sys.prefix, "bin", "twistd")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "bench")
WAIT = 60.0

#: Maildir info letter -> IMAP flag
LETTERS = {"D": "\\Draft", "F": "\\Flagged", "P": "$Forwarded", "R": "\\Answered",
           "S": "\\Seen", "T": "\\Deleted"}


def servers_wanted() -> list[str]:
    return [s for s in os.environ.get("INTEROP_SERVERS", "indimail_tw").split(",") if s]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_listening(port: int, alive=lambda: True) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            assert alive(), f"the server for {HOST}:{port} exited while starting"
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {HOST}:{port}")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("MYSQL_", "INDIMAIL", "QUEUE", "CONTROLDIR", "BASE_PATH",
                                 "CERTDIR", "SECURE_AUTH", "MAXPERIP", "MAXDAEMONS"))}


class MailServer:
    """One running server: ports, users, the certificate clients trust, direct Maildir access."""

    name = ""

    def __init__(self, base: str) -> None:
        self.base = base
        self.root = os.path.join(base, "root")
        self.env = clean_env()
        site = Site.resolve(self.root, self.env)
        site.paths.ensure()
        site.control.write_value("me", "localhost")
        site.control.write_value("defaultdomain", DOMAIN)
        self.keycert = os.path.join(site.paths.certs, "servercert.pem")
        make_self_signed(self.keycert, "localhost")
        add_domain(site, DOMAIN, "postmaster-Secret-0")
        self.maildirs = {}
        for name, password in PASSWORDS.items():
            # alice also has IndiMail's {CRAM} record: mbsync and mutt pick CRAM-MD5
            # when offered; bob has the crypt hash alone
            secret = Password(clear=password, mechanism="CRAM") if name == "alice" else password
            self.maildirs[name] = add_user(site, f"{name}@{DOMAIN}", secret).maildir
        site.close()
        # clients get the certificate alone (some choke on the key in the same file)
        with open(self.keycert) as f:
            pem = f.read()
        self.cert = os.path.join(base, "cacert.pem")
        with open(self.cert, "w") as f:
            f.write(pem[pem.index("-----BEGIN CERTIFICATE-----"):])
        self.imap, self.imaps = free_port(), free_port()
        self.pop3, self.pop3s = free_port(), free_port()

    @staticmethod
    def login(user: str) -> tuple[str, str]:
        return f"{user}@{DOMAIN}", PASSWORDS[user]

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def read_log(self) -> str:
        return ""

    def after_direct_write(self) -> None:
        """Called after the test wrote into a Maildir behind the server's back."""

    # -- helpers for the tests -------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.check_hostname = False      # the certificate names localhost, we dial 127.0.0.1
        return ctx

    @contextlib.contextmanager
    def imap_session(self, user: str = "alice"):
        imap = imaplib.IMAP4_SSL(HOST, self.imaps, ssl_context=self.ssl_context(), timeout=30)
        try:
            imap.login(*self.login(user))
            yield imap
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def deliver(self, user: str, message: bytes, folder: str = "") -> str:
        """Drop ``message`` into ``user``'s Maildir (``folder``: Maildir++ name without
        the leading dot) as a delivery agent would: tmp/ then new/."""
        maildir = self.maildirs[user]
        if folder:
            maildir = os.path.join(maildir, "." + folder)
        name = f"{time.time_ns()}.P{os.getpid()}.interop"
        tmp = os.path.join(maildir, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(message)
        os.rename(tmp, os.path.join(maildir, "new", name))
        self.after_direct_write()
        return name


def stop_process(process: subprocess.Popen | None) -> None:
    """SIGTERM a server we started and wait for it (SIGKILL after a minute)."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class OurServer(MailServer):
    name = "indimail_tw"

    def start(self) -> None:
        from indimail_tw import listeners

        twistd = os.environ.get("INTEROP_TWISTD", TWISTD)     # another entry point (development)
        missing = [n for n in ("imap", "imaps", "pop3", "pop3s")
                   if listeners.PROTOCOLS[n].build is None and twistd == TWISTD]
        assert not missing, f"twistd indimail cannot serve {', '.join(missing)} yet"
        key = self.keycert.replace("\\", "\\\\").replace(":", "\\:")
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile", os.path.join(self.root, "twistd.log"),
             "indimail", "--root", self.root,
             "--imap", f"tcp:{self.imap}:interface={HOST}",
             "--imaps", f"ssl:{self.imaps}:interface={HOST}:privateKey={key}",
             "--pop3", f"tcp:{self.pop3}:interface={HOST}",
             "--pop3s", f"ssl:{self.pop3s}:interface={HOST}:privateKey={key}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in (self.imap, self.imaps, self.pop3, self.pop3s):
            wait_listening(port, lambda: self.process.poll() is None)

    def stop(self) -> None:
        stop_process(getattr(self, "process", None))

    def read_log(self) -> str:
        try:
            with open(os.path.join(self.root, "twistd.log")) as f:
                return f.read()
        except OSError:
            return ""


class DovecotServer(MailServer):
    name = "dovecot"

    def start(self) -> None:
        sys.path.insert(0, BENCH)
        import dovecot_setup
        self.setup = dovecot_setup
        self.dovecot_base = os.path.join(self.base, "dovecot")
        dovecot_setup.write_config(
            self.dovecot_base, self.root,
            {"imap": self.imap, "imaps": self.imaps, "pop3": self.pop3, "pop3s": self.pop3s},
            cert=self.keycert, default_realm=DOMAIN)
        dovecot_setup.start(self.dovecot_base)

    def stop(self) -> None:
        if hasattr(self, "setup"):
            self.setup.stop(self.dovecot_base)

    def after_direct_write(self) -> None:
        self.setup.grant(list(os.path.dirname(m) for m in self.maildirs.values()))

    def read_log(self) -> str:
        try:
            with open(os.path.join(self.dovecot_base, "dovecot.log")) as f:
                return f.read()
        except OSError:
            return ""


def start_server(name: str, base: str) -> MailServer:
    server = {"indimail_tw": OurServer, "dovecot": DovecotServer}[name](base)
    os.chmod(base, 0o755)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


# -- reading mail state on both sides -------------------------------------------------------

def message(n: int | str, subject: str = "", body: str = "") -> bytes:
    """A small RFC 5322 message identified by Message-ID ``<n@interop.test>``."""
    return (f"From: Carol <carol@example.org>\r\nTo: alice@{DOMAIN}\r\n"
            f"Subject: {subject or f'interop message {n}'}\r\n"
            f"Date: Wed, 25 Nov 2026 04:00:00 +0000\r\n"
            f"Message-ID: <{n}@interop.test>\r\n\r\n"
            f"{body or f'body of message {n}'}\r\n").encode()


def message_id(data: bytes) -> str:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    return (msg.get("Message-ID") or "").strip()


def maildir_state(maildir: str) -> dict[str, frozenset]:
    """{Message-ID: IMAP flags} of the messages in one Maildir directory (cur and new)."""
    state = {}
    for sub in ("cur", "new"):
        directory = os.path.join(maildir, sub)
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as f:
                mid = message_id(f.read())
            info = name.split(":2,", 1)[1] if ":2," in name else ""
            state[mid] = frozenset(LETTERS[c] for c in info if c in LETTERS)
    return state


def imap_state(imap: imaplib.IMAP4, mailbox: str) -> dict[str, frozenset]:
    """{Message-ID: flags without \\Recent} of ``mailbox`` over IMAP (read-only)."""
    typ, data = imap.select(imaplib.IMAP4._quote(imap, mailbox) if " " in mailbox else mailbox,
                            readonly=True)
    assert typ == "OK", (mailbox, data)
    if int(data[0]) == 0:
        return {}
    typ, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    state = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        flags = imaplib.ParseFlags(item[0])
        state[message_id(item[1])] = frozenset(
            f.decode() for f in flags if f.decode() != "\\Recent")
    return state


def imap_folders(imap: imaplib.IMAP4) -> set[str]:
    typ, data = imap.list()
    assert typ == "OK", data
    names = set()
    for line in data:
        if line is None:
            continue
        if isinstance(line, tuple):     # a literal name
            names.add(line[1].decode())
            continue
        text = line.decode()
        name = text.rsplit(" ", 1)[1] if not text.endswith('"') else \
            text[text.rindex('"', 0, len(text) - 1) + 1:-1]
        names.add(name.strip('"'))
    return names
