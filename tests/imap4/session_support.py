"""In-memory IMAP servers for tests: a fake MailLogin, real Maildirs, a StringTransport client."""

from __future__ import annotations

import os
import re
import tempfile
from types import SimpleNamespace

from twisted.internet import address, defer, task

from indimail_tw.auth import sasl
from indimail_tw.auth.credentials import LoginCredentials
from indimail_tw.auth.maillogin import LoginFailed, LoginSession
from indimail_tw.imap4.service import IMAPFactory
from indimail_tw.maildir import deliver
from tests.smtp.support import FakeCertificate, Site, TLSStringTransport

PASSWORD = "s3cret"


def sync_run(fn, *args):
    """The factory's thread runner, run inline (tests stay on one thread)."""
    return defer.maybeDeferred(fn, *args)


class FakeLogin:
    """MailLogin's shape: ``users`` {login: password}; each Maildir under ``root``."""

    def __init__(self, root: str, users: dict[str, str] | None = None, limit: int = 3) -> None:
        self.root = root
        self.users = users if users is not None else {"alice@example.com": PASSWORD,
                                                      "bob@example.com": "hunter2"}
        self.limit = limit
        self.temporary = False
        self.gate: defer.Deferred | None = None
        self.seen: list = []
        self.logouts: list[str] = []
        self.message: str | None = None
        self.end_session = False
        self.quota = "NOQUOTA"

    def maildir(self, login: str) -> str:
        return os.path.join(self.root, login, "Maildir")

    def connection(self, remote_ip: str, local_ip: str = "") -> FakeLoginConnection:
        return FakeLoginConnection(self, remote_ip, local_ip)


class FakeLoginConnection:
    def __init__(self, owner: FakeLogin, remote_ip: str, local_ip: str) -> None:
        self.owner = owner
        self.remote_ip = remote_ip
        self.local_ip = local_ip
        self.failures = 0

    def credentials(self, username, password) -> LoginCredentials:
        return LoginCredentials(username, password, service="imap", remote_ip=self.remote_ip,
                                local_ip=self.local_ip)

    def sasl_context(self, hostname: str = "localhost") -> sasl.SASLContext:
        return sasl.SASLContext(service="imap", remote_ip=self.remote_ip, hostname=hostname,
                                now=lambda: 1700000000.0, nonce=lambda: "12345")

    def login(self, credentials) -> defer.Deferred:
        owner = self.owner
        owner.seen.append(credentials)
        d = owner.gate if owner.gate is not None else defer.succeed(None)
        return d.addCallback(lambda _: self._check(credentials))

    def _check(self, credentials):
        owner = self.owner
        if owner.temporary:
            raise LoginFailed(temporary=True, close=False, reason="unavailable")
        login = credentials.username.decode()
        password = owner.users.get(login)
        if password is None or not credentials.checkPassword(password.encode()):
            self.failures += 1
            raise LoginFailed(temporary=False, close=self.failures >= owner.limit)
        maildir = owner.maildir(login)
        deliver.prepare(maildir)
        avatar = SimpleNamespace(address=login, user=SimpleNamespace(shell=owner.quota))
        return LoginSession(avatar, maildir, owner.message, owner.end_session,
                            lambda: owner.logouts.append(login), "imap")


def put(maildir: str, data: bytes = b"Subject: hello\n\nbody\n", folder: str | None = None
        ) -> str:
    """Deliver ``data`` with the server's delivery code; its path."""
    target = deliver.prepare(maildir, folder)
    fd, path = tempfile.mkstemp(dir=os.path.dirname(maildir))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        return deliver.deliver(target, path).path
    finally:
        os.unlink(path)


class Server:
    """A Site, a FakeLogin and a factory on a Clock."""

    def __init__(self, tls: bool = True, environ: dict[str, str] | None = None,
                 rules=None, login=None) -> None:
        self.site = Site(environ=environ)
        self.clock = task.Clock()
        self.login = login or FakeLogin(self.site.root)
        self.factory = IMAPFactory(self.site.context(), certificate=FakeCertificate(tls),
                                   clock=self.clock, login=self.login, run=sync_run,
                                   rules=rules, resolve=lambda ip: defer.succeed(None))

    def maildir(self, login: str = "alice@example.com") -> str:
        return self.login.maildir(login)

    def connect(self, **kw) -> Conn:
        return Conn(self.factory, **kw)

    def cleanup(self) -> None:
        self.site.cleanup()


class Conn:
    """One client connection, in memory."""

    def __init__(self, factory: IMAPFactory, ip: str = "192.0.2.10", port: int = 40000) -> None:
        self.transport = TLSStringTransport(peerAddress=address.IPv4Address("TCP", ip, port),
                                            hostAddress=address.IPv4Address("TCP", "192.0.2.25",
                                                                            143))
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self._read = 0

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.proto.dataReceived(data)

    def output(self) -> bytes:
        value = self.transport.value()
        new, self._read = value[self._read:], len(value)
        return new

    def lines(self) -> list[str]:
        return self.output().decode("utf-8", "replace").split("\r\n")[:-1]

    def ask(self, line: str) -> list[str]:
        """Send one command line; the lines written in answer."""
        self.output()
        self.send(line + "\r\n")
        return self.lines()

    def tagged(self, line: str) -> str:
        """Send a command; its tagged completion line."""
        tag = line.split(" ", 1)[0]
        answer = self.ask(line)
        done = [x for x in answer if x.startswith(tag + " ")]
        assert done, answer
        return done[-1]

    def login(self, user: str = "alice@example.com", password: str = PASSWORD) -> list[str]:
        self.transport.tls_started_at = 0       # pretend TLS so LOGIN is allowed
        self.proto.session.tls = True
        answer = self.ask(f"L1 LOGIN {user} {password}")
        assert answer[-1].startswith("L1 OK"), answer
        return answer

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        self.proto.connectionLost(Failure(ConnectionDone()))


def untagged(lines: list[str], name: str) -> list[str]:
    """The untagged lines ``* NAME ...`` (or ``* n NAME``)."""
    pattern = re.compile(r"\* (?:\d+ )?" + re.escape(name) + r"\b")
    return [line for line in lines if pattern.match(line)]
