"""Real POP3 clients against ``twistd indimail --pop3 --pop3s`` over loopback.

One server per test class, started as a subprocess on a fresh root (SQLite
store, domain ``pop3.test``, users alice and bob, a self-signed certificate for
``localhost``), with IndiMail's default ``SECURE_AUTH``: no plaintext login
before TLS.  Clients: Python's poplib (STLS and pop3s), fetchmail (delivering
to an MDA) and getmail6 (into a Maildir).  Mail is put in place with the
server's own delivery code (maildir/deliver.py).  fetchmail and getmail must
run in CI (CI=true); elsewhere they are skipped when absent.  The waits below
are bounds on start-up, not measurements.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import poplib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.ops_user import add_user
from indimail_tw.admin.site import Site
from indimail_tw.maildir import deliver
from indimail_tw.maildir.index import FolderIndex
from indimail_tw.tlsutil import make_self_signed
from tests.support import IN_CI

HOST = "127.0.0.1"
DOMAIN = "pop3.test"
PASSWORDS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2"}
TWISTD = os.path.join(sys.prefix, "bin", "twistd")
WAIT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def message(n: int, body: str = "") -> bytes:
    """A message as a delivery agent stores it: LF line endings."""
    return (f"From: Carol <carol@example.org>\nTo: alice@{DOMAIN}\n"
            f"Subject: pop3 interop {n}\nMessage-ID: <{n}@pop3.test>\n\n"
            f"{body or f'body of message {n}'}\n").encode()


def big(n: int, lines: int) -> str:
    """A body of ``lines`` lines (some starting with a dot), ~70 octets each."""
    return "\n".join(f"{'.' if i % 7 == 0 else ''}line {i} of big message {n} " + "y" * 40
                      for i in range(lines))


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def message_id(data: bytes) -> str:
    return (email.message_from_bytes(data, policy=email.policy.compat32)
            .get("Message-ID") or "").strip()


class Server:
    """A twistd subprocess serving POP3 on two loopback ports."""

    def __init__(self, base: str, environ: dict[str, str] | None = None) -> None:
        self.root = os.path.join(base, "root")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MYSQL_", "INDIMAIL", "QUEUE", "CONTROLDIR",
                                         "BASE_PATH", "CERTDIR", "SECURE_AUTH", "MAXPERIP",
                                         "MAXDAEMONS", "POP3_"))}
        self.env.update(environ or {})
        site = Site.resolve(self.root, self.env)
        site.paths.ensure()
        site.control.write_value("me", "localhost")
        self.keycert = os.path.join(site.paths.certs, "servercert.pem")
        make_self_signed(self.keycert, "localhost")
        add_domain(site, DOMAIN, "postmaster-Secret-0")
        self.maildirs = {name: add_user(site, f"{name}@{DOMAIN}", password).maildir
                         for name, password in PASSWORDS.items()}
        site.close()
        with open(self.keycert) as f:
            pem = f.read()
        self.cert = os.path.join(base, "cacert.pem")
        with open(self.cert, "w") as f:
            f.write(pem[pem.index("-----BEGIN CERTIFICATE-----"):])
        self.pop3, self.pop3s = free_port(), free_port()
        self.log = os.path.join(self.root, "twistd.log")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", self.log, "indimail", "--root", self.root,
             "--pop3", f"tcp:{self.pop3}:interface={HOST}",
             "--pop3s", f"ssl:{self.pop3s}:interface={HOST}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for port in (self.pop3, self.pop3s):
                self._wait(port)
        except BaseException:
            self.stop()
            raise

    def _wait(self, port: int) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, port), timeout=1):
                    return
            except OSError:
                assert self.process.poll() is None, "the server exited:\n" + self.read_log()
                time.sleep(0.05)
        raise AssertionError(f"nothing listens on {HOST}:{port}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def read_log(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    @staticmethod
    def login(user: str = "alice") -> tuple[str, str]:
        return f"{user}@{DOMAIN}", PASSWORDS[user]

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.check_hostname = False          # the certificate names localhost; we dial 127.0.0.1
        return ctx

    def put(self, data: bytes, user: str = "alice") -> str:
        fd, path = tempfile.mkstemp(dir=os.path.dirname(self.root))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return deliver.deliver(self.maildirs[user], path).path
        finally:
            os.unlink(path)

    def stored(self, user: str = "alice") -> dict[str, bytes]:
        """{Message-ID: content} of the user's INBOX on disk."""
        found = {}
        for sub in ("new", "cur"):
            directory = os.path.join(self.maildirs[user], sub)
            for name in os.listdir(directory):
                with open(os.path.join(directory, name), "rb") as f:
                    data = f.read()
                found[message_id(data)] = data
        return found

    def clear(self, user: str = "alice") -> None:
        for sub in ("new", "cur"):
            directory = os.path.join(self.maildirs[user], sub)
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))

    @contextlib.contextmanager
    def pop3s_session(self, user: str = "alice"):
        pop = poplib.POP3_SSL(HOST, self.pop3s, context=self.ssl_context(), timeout=30)
        try:
            pop.user(self.login(user)[0])
            pop.pass_(self.login(user)[1])
            yield pop
        finally:
            with contextlib.suppress(Exception):
                pop.quit()


class ServerCase(unittest.TestCase):
    environ: dict[str, str] = {}

    @classmethod
    def setUpClass(cls) -> None:
        cls.base = tempfile.mkdtemp(prefix="itw-pop3-interop-")
        os.chmod(cls.base, 0o755)
        cls.server = Server(cls.base, cls.environ)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        shutil.rmtree(cls.base, ignore_errors=True)

    def setUp(self) -> None:
        self.server.clear()
        self.server.clear("bob")


class PoplibTests(ServerCase):
    def test_pop3s_list_uidl_retr_top_dele(self):
        data = [message(1), message(2, body=".starts with a dot\n..two dots\n.\nend"),
                message(3, body=big(3, 4000))]
        for item in data:
            self.server.put(item)
        with self.server.pop3s_session() as pop:
            self.assertIn("PIPELINING", pop.capa())
            count, size = pop.stat()
            self.assertEqual(count, 3)
            self.assertEqual(size, sum(len(crlf(d)) for d in data))
            _, listing, _ = pop.list()
            self.assertEqual([int(line.split()[1]) for line in listing],
                             [len(crlf(d)) for d in data])
            _, uidls, _ = pop.uidl()
            for n, item in enumerate(data, 1):
                _, lines, octets = pop.retr(n)
                self.assertEqual(b"\r\n".join(lines) + b"\r\n", crlf(item))
            _, lines, _ = pop.top(2, 1)
            self.assertEqual(lines[-1], b".starts with a dot")
            pop.dele(1)
            pop.dele(3)
        self.assertEqual(list(self.server.stored()), ["<2@pop3.test>"])
        index = FolderIndex.open(self.server.maildirs["alice"])
        try:
            uid = index.records()[0].uid
            expected = f"{uid:08X}{index.uidvalidity:08X}"
        finally:
            index.close()
        self.assertEqual(uidls[1].split()[1].decode(), expected)
        with self.server.pop3s_session() as pop:
            self.assertEqual(pop.uidl(1).split()[2].decode(), expected)

    def test_stls_and_plaintext_refused_before_it(self):
        self.server.put(message(7))
        pop = poplib.POP3(HOST, self.server.pop3, timeout=30)
        try:
            caps = pop.capa()
            self.assertIn("STLS", caps)
            self.assertNotIn("USER", caps)
            with self.assertRaises(poplib.error_proto) as cm:
                pop.user(self.server.login()[0])
            self.assertIn(b"[AUTH]", cm.exception.args[0])
            pop.stls(self.server.ssl_context())
            self.assertIn("USER", pop.capa())
            pop.user(self.server.login()[0])
            pop.pass_(self.server.login()[1])
            self.assertEqual(pop.stat()[0], 1)
        finally:
            pop.quit()

    def test_wrong_password_and_unknown_user_read_the_same(self):
        replies = []
        for user, password in ((f"alice@{DOMAIN}", "wrong"), (f"nobody@{DOMAIN}", "wrong")):
            pop = poplib.POP3_SSL(HOST, self.server.pop3s, context=self.server.ssl_context(),
                                  timeout=60)
            try:
                pop.user(user)
                with self.assertRaises(poplib.error_proto) as cm:
                    pop.pass_(password)
                replies.append(cm.exception.args[0])
            finally:
                pop.close()
        self.assertEqual(replies[0], replies[1])
        self.assertTrue(replies[0].startswith(b"-ERR [AUTH]"))

    def test_second_session_in_use(self):
        self.server.put(message(8))
        with self.server.pop3s_session() as first:
            self.assertEqual(first.stat()[0], 1)
            second = poplib.POP3_SSL(HOST, self.server.pop3s,
                                     context=self.server.ssl_context(), timeout=30)
            try:
                second.user(self.server.login()[0])
                with self.assertRaises(poplib.error_proto) as cm:
                    second.pass_(self.server.login()[1])
                self.assertTrue(cm.exception.args[0].startswith(b"-ERR [IN-USE]"))
            finally:
                second.close()
            first.dele(1)
        self.assertEqual(self.server.stored(), {})

    def test_dropped_connection_deletes_nothing(self):
        self.server.put(message(9))
        pop = poplib.POP3_SSL(HOST, self.server.pop3s, context=self.server.ssl_context(),
                              timeout=30)
        pop.user(self.server.login()[0])
        pop.pass_(self.server.login()[1])
        pop.dele(1)
        pop.close()                                  # no QUIT
        deadline = time.monotonic() + WAIT           # until the server let the lock go
        while True:
            try:
                with self.server.pop3s_session() as again:
                    self.assertEqual(again.stat()[0], 1)
                break
            except poplib.error_proto as e:
                if b"[IN-USE]" not in e.args[0] or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.assertEqual(list(self.server.stored()), ["<9@pop3.test>"])


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        if IN_CI:
            raise AssertionError(f"{program} is required in CI (apt-get install -y fetchmail "
                                 "getmail6)")
        raise unittest.SkipTest(f"{program} is not installed")
    return path


class FetchmailTests(ServerCase):
    def fetchmail(self, *, keep: bool, port: int, ssl_mode: str) -> tuple[str, list[bytes]]:
        fetchmail = _require("fetchmail")
        work = tempfile.mkdtemp(prefix="fetchmail-", dir=self.base)
        out = os.path.join(work, "out")
        os.mkdir(out)
        mda = os.path.join(work, "mda.sh")
        with open(mda, "w") as f:
            f.write(f'#!/bin/sh\nexec cat > "$(mktemp {out}/msg.XXXXXXXX)"\n')
        os.chmod(mda, 0o755)
        rc = os.path.join(work, "fetchmailrc")
        user, password = self.server.login()
        with open(rc, "w") as f:
            f.write(f'set no bouncemail\nset no syslog\nset idfile "{work}/fetchids"\n'
                    f'poll {HOST} port {port} proto POP3 uidl\n'
                    f'  user "{user}" there with password "{password}" is "nobody" here\n'
                    f'  {ssl_mode} sslcertck sslcertfile "{self.server.cert}" '
                    f'sslcommonname localhost\n'
                    f'  mda "{mda}"\n  {"keep" if keep else "nokeep"}\n')
        os.chmod(rc, 0o600)
        env = dict(os.environ, HOME=work, FETCHMAILHOME=work)
        # its own pid file: as root, fetchmail would use one in /var/run for every run
        result = subprocess.run([fetchmail, "-v", "--nodetach", "-f", rc,
                                 "--pidfile", os.path.join(work, "fetchmail.pid")], env=env,
                                capture_output=True, text=True, timeout=120)
        self.assertIn(result.returncode, (0, 1), result.stdout + result.stderr)  # 1: no mail
        got = []
        for name in sorted(os.listdir(out)):
            with open(os.path.join(out, name), "rb") as f:
                got.append(f.read())
        return result.stdout + result.stderr, got

    def check_same(self, delivered: list[bytes], got: list[bytes]) -> None:
        by_id = {message_id(d): d for d in got}
        self.assertEqual(set(by_id), {message_id(d) for d in delivered})
        for data in delivered:
            # fetchmail adds a Received line at the top and hands the MDA LF endings
            self.assertTrue(by_id[message_id(data)].endswith(data), message_id(data))

    def test_fetch_and_delete_over_pop3s(self):
        delivered = [message(11), message(12, body=".dot line\n.\n..\nlast"),
                     message(13, body=big(13, 8000))]
        for data in delivered:
            self.server.put(data)
        log, got = self.fetchmail(keep=False, port=self.server.pop3s, ssl_mode="ssl")
        self.check_same(delivered, got)
        self.assertEqual(self.server.stored(), {}, log)

    def test_keep_over_stls_then_nothing_new(self):
        delivered = [message(21), message(22)]
        for data in delivered:
            self.server.put(data)
        log, got = self.fetchmail(keep=True, port=self.server.pop3, ssl_mode="sslproto tls1.2+")
        self.assertIn("STLS", log)
        self.check_same(delivered, got)
        self.assertEqual(set(self.server.stored()), {"<21@pop3.test>", "<22@pop3.test>"})


class GetmailTests(ServerCase):
    def setUp(self) -> None:
        super().setUp()
        self.work = tempfile.mkdtemp(prefix="getmail-", dir=self.base)

    def getmail(self, *, delete: bool) -> tuple[str, list[bytes]]:
        """One getmail run (its state, the UIDLs it saw, stays in ``self.work``); the
        messages it delivered this time."""
        getmail = _require("getmail")
        work = self.work
        dest = os.path.join(work, "Maildir")
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(dest, sub))
        run_as = ""
        if os.geteuid() == 0:        # getmail refuses to deliver as root: it becomes nobody
            run_as = "user = nobody\n"
            for path in (work, dest, *(os.path.join(dest, s) for s in ("cur", "new", "tmp"))):
                shutil.chown(path, "nobody")
        user, password = self.server.login()
        rc = os.path.join(work, "getmailrc")
        with open(rc, "w") as f:
            f.write(f"[retriever]\ntype = SimplePOP3SSLRetriever\nserver = {HOST}\n"
                    f"port = {self.server.pop3s}\nusername = {user}\npassword = {password}\n"
                    f"ca_certs = {self.server.cert}\nssl_cert_hostname = localhost\n\n"
                    f"[destination]\ntype = Maildir\npath = {dest}/\n{run_as}\n"
                    f"[options]\nverbose = 2\nread_all = false\n"
                    f"delete = {'true' if delete else 'false'}\n")
        result = subprocess.run([getmail, "--getmaildir", work, "--rcfile", rc],
                                capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, HOME=work))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        got = []
        for sub in ("new", "cur"):
            for name in sorted(os.listdir(os.path.join(dest, sub))):
                with open(os.path.join(dest, sub, name), "rb") as f:
                    got.append(f.read())
        return result.stdout + result.stderr, got

    def test_fetch_into_maildir_keep_then_delete(self):
        delivered = [message(31), message(32, body=".\n.hidden\nend"),
                     message(33, body=big(33, 3000))]
        for data in delivered:
            self.server.put(data)
        log, got = self.getmail(delete=False)
        self.assertEqual(len(got), 3, log)
        by_id = {message_id(d): d for d in got}
        for data in delivered:
            # getmail adds Delivered-To / Return-Path / Received at the top
            self.assertTrue(by_id[message_id(data)].endswith(data), message_id(data))
        self.assertEqual(len(self.server.stored()), 3)
        # read_all = false: what was seen (by UIDL) is not fetched again
        log, again = self.getmail(delete=True)
        self.assertEqual(again, [], log)
        self.server.put(message(34))
        log, last = self.getmail(delete=True)
        self.assertEqual([message_id(d) for d in last], ["<34@pop3.test>"], log)
        # with delete = true getmail also deletes what it had already seen
        self.assertEqual(self.server.stored(), {})
