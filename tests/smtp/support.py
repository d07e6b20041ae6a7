"""In-memory SMTP servers for tests: fake queue, store and portal; a client over StringTransport."""

from __future__ import annotations

import os
import tempfile
from types import SimpleNamespace

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import address, defer, interfaces, task
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides, implementer

from indimail_tw.auth.credentials import TemporaryLoginFailure
from indimail_tw.config import Config, ControlDir
from indimail_tw.interfaces import IMailbox, IMessageWriter, IQueue
from indimail_tw.policy import default_checks
from indimail_tw.policy.base import SMTPPolicy
from indimail_tw.smtp.service import SMTPFactory

ME = "mx.example.com"


# -- queue ------------------------------------------------------------------------------------

@implementer(IMessageWriter)
class FakeWriter:
    def __init__(self, queue: FakeQueue, envelope) -> None:
        self.queue = queue
        self.envelope = envelope
        self.chunks: list[bytes] = []
        self.aborted = False
        self.committed = False

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, data: bytes) -> None:
        assert not self.aborted and not self.committed
        if self.queue.write_error is not None:
            raise self.queue.write_error
        self.chunks.append(bytes(data))

    def drained(self) -> defer.Deferred:
        gate = self.queue.drain_gate
        return gate if gate is not None and len(self.chunks) > 1 else defer.succeed(None)

    def commit(self) -> defer.Deferred:
        assert not self.aborted
        self.committed = True
        d = defer.Deferred()
        self.queue.pending.append((d, self))
        if self.queue.auto_commit:
            self.queue.fire()
        return d

    def abort(self) -> None:
        self.aborted = True


@implementer(IQueue)
class FakeQueue:
    """Collects committed messages; ``auto_commit=False`` lets a test fire commits itself."""

    def __init__(self, auto_commit: bool = True) -> None:
        self.auto_commit = auto_commit
        self.writers: list[FakeWriter] = []
        self.messages: list[tuple[object, bytes]] = []
        self.pending: list[tuple[defer.Deferred, FakeWriter]] = []
        self.write_error: Exception | None = None
        self.commit_error: Exception | None = None
        self.drain_gate: defer.Deferred | None = None     # writers' drained() waits on it
        self.counter = 0

    def writer(self, envelope) -> FakeWriter:
        w = FakeWriter(self, envelope)
        self.writers.append(w)
        return w

    def enqueue(self, envelope, message):
        raise NotImplementedError

    def flush(self, domain=None):
        return defer.succeed(None)

    def fire(self) -> None:
        while self.pending:
            d, w = self.pending.pop(0)
            if self.commit_error is not None:
                d.errback(self.commit_error)
            else:
                self.counter += 1
                self.messages.append((w.envelope, w.data))
                d.callback(f"q{self.counter}")


# -- store ------------------------------------------------------------------------------------

class FakeUser(SimpleNamespace):
    pass


class FakeStore:
    """users {(name, domain): FakeUser}, aliases {(alias, domain): [lines]}, alias domains."""

    def __init__(self) -> None:
        self.users: dict[tuple[str, str], FakeUser] = {}
        self.aliases: dict[tuple[str, str], list[str]] = {}
        self.alias_domains: dict[str, str] = {}
        self.relays: list[tuple[str, str, int]] = []      # (email, ip, when)
        self.delay: list[defer.Deferred] | None = None     # when a list, lookups wait here
        self.fail: Exception | None = None
        self.calls: list[tuple] = []

    def add_user(self, address: str, active: bool = True, gid: int = 0) -> None:
        name, domain = address.split("@")
        self.users[(name, domain)] = FakeUser(name=name, domain=domain, active=active, gid=gid)

    def _answer(self, value):
        if self.fail is not None:
            return defer.fail(self.fail)
        if self.delay is not None:
            d = defer.Deferred()
            self.delay.append(d)
            return d.addCallback(lambda _: value)
        return defer.succeed(value)

    def get_user(self, name: str, domain: str):
        self.calls.append(("get_user", name, domain))
        real = self.alias_domains.get(domain, domain)
        return self._answer((self.users.get((name, real)), real))

    def alias_lines(self, alias: str, domain: str):
        self.calls.append(("alias_lines", alias, domain))
        return self._answer(list(self.aliases.get((alias, domain), [])))

    def relay_allowed(self, ipaddr: str, since: int, email: str | None = None):
        self.calls.append(("relay_allowed", ipaddr, since, email))
        ok = any(ip == ipaddr and when >= since and (email is None or e == email.lower())
                 for e, ip, when in self.relays)
        return self._answer(ok)


class BlockingFakeStore(FakeStore):
    """A FakeStore that can also read blocking (``*_now``), as the server's UserStore can."""

    def get_user_now(self, name: str, domain: str):
        self.calls.append(("get_user_now", name, domain))
        if self.fail is not None:
            raise self.fail
        real = self.alias_domains.get(domain, domain)
        return self.users.get((name, real)), real

    def alias_lines_now(self, alias: str, domain: str):
        self.calls.append(("alias_lines_now", alias, domain))
        if self.fail is not None:
            raise self.fail
        return list(self.aliases.get((alias, domain), []))


# -- portal -----------------------------------------------------------------------------------

@implementer(IMailbox)
class FakeMailbox:
    def __init__(self, address: str, relay_allowed: bool = True) -> None:
        self.address = address
        self.relay_allowed = relay_allowed
        self.user = None
        self.home = self.maildir = ""
        self.flags = 0


@implementer(ICredentialsChecker)
class FakeChecker:
    """passwords {login: (password, relay_allowed)}; ``temporary`` fails every login with 454."""

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, passwords: dict[str, tuple[str, bool]]) -> None:
        self.passwords = passwords
        self.temporary = False
        self.seen: list = []
        self.delay: defer.Deferred | None = None

    def requestAvatarId(self, credentials):  # noqa: N802
        self.seen.append(credentials)
        if self.temporary:
            return defer.fail(TemporaryLoginFailure("db down"))
        login = credentials.username.decode()
        entry = self.passwords.get(login)
        if entry is None or not credentials.checkPassword(entry[0].encode()):
            result = defer.fail(UnauthorizedLogin())
        else:
            result = defer.succeed(login.encode())
        if self.delay is not None:
            d, self.delay = self.delay, None
            return d.addCallback(lambda _: result)
        return result


@implementer(IRealm)
class FakeRealm:
    def __init__(self, checker: FakeChecker) -> None:
        self.checker = checker

    def requestAvatar(self, avatar_id, mind, *interfaces):  # noqa: N802
        login = avatar_id.decode()
        relay = self.checker.passwords[login][1]
        return IMailbox, FakeMailbox(login, relay), lambda: None


def fake_portal(passwords: dict[str, tuple[str, bool]] | None = None) -> tuple[Portal, FakeChecker]:
    checker = FakeChecker(passwords or {"alice@example.com": ("secret", True),
                                        "bob@example.com": ("hunter2", False)})
    return Portal(FakeRealm(checker), [checker]), checker


# -- settings and context ---------------------------------------------------------------------

DEFAULT_CONTROL = {
    "me": ME + "\n",
    "rcpthosts": "example.com\nexample.net\n.sub.example.org\n",
    "virtualdomains": "example.com:example.com\nexample.net:example.net\n",
}


class Site:
    """A temporary root: control/, domains/, tcp/, certs/ plus the fakes."""

    def __init__(self, control: dict[str, str] | None = None,
                 environ: dict[str, str] | None = None) -> None:
        self.root = tempfile.mkdtemp(prefix="itw-smtp-")
        self.paths = SimpleNamespace(**{name: os.path.join(self.root, name) for name in (
            "control", "domains", "tcp", "certs", "queue", "mail", "db")})
        for path in vars(self.paths).values():
            os.makedirs(path, exist_ok=True)
        # CRAM-MD5 is offered only with ENABLE_CRAM (auth/sasl.py); the protocol
        # tests exercise it, so their sites turn it on.
        self.environ = {"ENABLE_CRAM": "", **(environ or {})}
        files = dict(DEFAULT_CONTROL)
        files.update(control or {})
        for name, text in files.items():
            self.write_control(name, text)
        self.store = FakeStore()
        self.portal, self.checker = fake_portal()
        self.queue = FakeQueue()
        self.config = Config(ControlDir(self.paths.control, self.environ), fqdn=lambda: ME)

    def write_control(self, name: str, text: str) -> None:
        with open(os.path.join(self.paths.control, name), "w") as f:
            f.write(text)

    def reload(self) -> None:
        self.config.reload()

    def catchall(self, domain: str, handler: str = "bounce-no-mailbox") -> None:
        directory = os.path.join(self.paths.domains, domain)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, ".qmail-default"), "w") as f:
            f.write(f"| /usr/sbin/vdelivermail '' {handler}\n")

    def context(self):
        return SimpleNamespace(paths=self.paths, config=self.config, store=self.store,
                               portal=self.portal, queue=self.queue, environ=self.environ,
                               reactor=None)

    def cleanup(self) -> None:
        import shutil
        shutil.rmtree(self.root, ignore_errors=True)


class FakeCertificate:
    """Stands in for CertificateSource: STARTTLS offered when ``present``."""

    def __init__(self, present: bool = True) -> None:
        self.present = present

    def available(self) -> bool:
        return self.present

    def options(self):
        return "tls-options"


class FakeTLSHandle:
    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"

    def get_cipher_name(self) -> str:
        return "TLS_AES_256_GCM_SHA384"


class TLSStringTransport(StringTransport):
    """A StringTransport that can 'start TLS': it records the call and the bytes before it."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.tls_started_at: int | None = None
        self.tls_options = None

    def startTLS(self, options, normal=True):  # noqa: N802
        self.tls_started_at = len(self.value())
        self.tls_options = options
        directlyProvides(self, interfaces.ISSLTransport)

    def getHandle(self):  # noqa: N802
        return FakeTLSHandle()


def make_factory(site: Site, service: str = "smtp", *, implicit_tls: bool = False,
                 tls: bool = True, rules=None, checks=None, clock=None) -> SMTPFactory:
    clock = clock or task.Clock()
    if checks is None:
        checks = default_checks(site.store, site.paths.domains, blocking=defer.maybeDeferred)
    return SMTPFactory(site.context(), service, implicit_tls=implicit_tls,
                       certificate=FakeCertificate(tls), rules=rules,
                       policy=SMTPPolicy(checks), clock=clock,
                       resolve=lambda ip: defer.succeed(None))


class Conn:
    """One client connection to a factory, in memory."""

    def __init__(self, factory: SMTPFactory, ip: str = "192.0.2.10", port: int = 40000,
                 ipv6: bool = False) -> None:
        cls = address.IPv6Address if ipv6 else address.IPv4Address
        local = "2001:db8::25" if ipv6 else "192.0.2.25"
        self.transport = TLSStringTransport(peerAddress=cls("TCP", ip, port),
                                            hostAddress=cls("TCP", local, 25))
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self._read = 0

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.proto.dataReceived(data)

    def send_bytewise(self, data: bytes) -> None:
        for i in range(len(data)):
            self.proto.dataReceived(data[i:i + 1])

    def output(self) -> bytes:
        """Everything written since the last call."""
        value = self.transport.value()
        new, self._read = value[self._read:], len(value)
        return new

    def lines(self) -> list[str]:
        return self.output().decode("utf-8", "replace").splitlines()

    def codes(self) -> list[int]:
        """Final reply codes of the new output (continuation lines skipped)."""
        return [int(line[:3]) for line in self.lines() if len(line) > 3 and line[3] == " "]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        from twisted.python.failure import Failure
        from twisted.internet.error import ConnectionDone
        self.proto.connectionLost(Failure(ConnectionDone()))


def ehlo(conn: Conn, name: str = "client.example.org") -> list[str]:
    conn.output()
    conn.send(f"EHLO {name}\r\n")
    return conn.lines()
