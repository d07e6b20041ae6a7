"""In-memory POP3 servers for tests: a fake MailLogin, real Maildirs, a StringTransport client."""

from __future__ import annotations

import os
import tempfile
from types import SimpleNamespace

from twisted.internet import address, defer, task

from indimail_tw.auth.maillogin import LoginFailed, LoginSession
from indimail_tw.maildir import deliver
from indimail_tw.pop3.service import POP3Factory
from tests.smtp.support import FakeCertificate, Site, TLSStringTransport

PASSWORD = "s3cret"


class FakeLogin:
    """MailLogin's shape: ``users`` {login: password}; each user's Maildir under ``root``."""

    def __init__(self, root: str, users: dict[str, str] | None = None, limit: int = 3) -> None:
        self.root = root
        self.users = users if users is not None else {"alice@example.com": PASSWORD,
                                                      "bob@example.com": "hunter2"}
        self.limit = limit
        self.temporary = False
        self.gate: defer.Deferred | None = None      # logins wait for it when set
        self.seen: list = []
        self.logouts: list[str] = []
        self.message: str | None = None
        self.end_session = False

    def maildir(self, login: str) -> str:
        return os.path.join(self.root, login, "Maildir")

    def connection(self, remote_ip: str, local_ip: str = "") -> FakeLoginConnection:
        return FakeLoginConnection(self, remote_ip)


class FakeLoginConnection:
    def __init__(self, owner: FakeLogin, remote_ip: str) -> None:
        self.owner = owner
        self.remote_ip = remote_ip
        self.failures = 0

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
        return LoginSession(SimpleNamespace(address=login), owner.maildir(login),
                            owner.message, owner.end_session,
                            lambda: owner.logouts.append(login), "pop3")


def put(maildir: str, data: bytes) -> str:
    """Deliver ``data`` into ``maildir`` with the server's delivery code; its path."""
    deliver.prepare(maildir)
    fd, path = tempfile.mkstemp(dir=os.path.dirname(maildir))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        return deliver.deliver(maildir, path).path
    finally:
        os.unlink(path)


class Conn:
    """One client connection to a factory, in memory."""

    def __init__(self, factory: POP3Factory, ip: str = "192.0.2.10", port: int = 40000) -> None:
        self.transport = TLSStringTransport(peerAddress=address.IPv4Address("TCP", ip, port),
                                            hostAddress=address.IPv4Address("TCP", "192.0.2.25",
                                                                            110))
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self._read = 0

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.proto.dataReceived(data)
        self.drain()

    def drain(self) -> None:
        """Let a registered (pull) producer run to its end, as a reading client would."""
        for _ in range(100000):
            producer = self.transport.producer
            if producer is None:
                return
            producer.resumeProducing()
        raise AssertionError("producer never finished")

    def output(self) -> bytes:
        value = self.transport.value()
        new, self._read = value[self._read:], len(value)
        return new

    def lines(self) -> list[str]:
        return self.output().decode("utf-8", "replace").split("\r\n")[:-1]

    def ask(self, line: str) -> list[str]:
        self.output()
        self.send(line + "\r\n")
        return self.lines()

    def first(self, line: str) -> str:
        return self.ask(line)[0]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        self.proto.connectionLost(Failure(ConnectionDone()))


class POP3Site:
    """A Site (control/, tcp/, certs/) plus a FakeLogin whose Maildirs live in it."""

    def __init__(self, environ: dict[str, str] | None = None, **login) -> None:
        env = {"SECURE_AUTH": "0"}
        env.update(environ or {})
        self.site = Site(environ=env)
        self.login = FakeLogin(os.path.join(self.site.root, "users"), **login)
        self.clock = task.Clock()

    @property
    def environ(self) -> dict[str, str]:
        return self.site.environ

    def maildir(self, login: str = "alice@example.com") -> str:
        return self.login.maildir(login)

    def put(self, data: bytes, login: str = "alice@example.com") -> str:
        return put(self.maildir(login), data)

    def factory(self, service: str = "pop3", tls: bool = True, implicit_tls: bool = False,
                rules=None) -> POP3Factory:
        return POP3Factory(self.site.context(), service, implicit_tls=implicit_tls,
                           certificate=FakeCertificate(tls), rules=rules, clock=self.clock,
                           mail_login=self.login, run=defer.maybeDeferred)

    def connect(self, **kw) -> Conn:
        return Conn(self.factory(**kw))

    def logged_in(self, login: str = "alice@example.com", password: str = PASSWORD) -> Conn:
        conn = self.connect()
        assert conn.first(f"USER {login}").startswith("+OK")
        reply = conn.first(f"PASS {password}")
        assert reply.startswith("+OK"), reply
        return conn

    def cleanup(self) -> None:
        self.site.cleanup()
