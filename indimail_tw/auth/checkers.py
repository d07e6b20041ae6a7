"""twisted.cred checkers: the user store (vchkpass semantics), an external
checkpassword program (IndiMail's fd-3 protocol) and a chain of checkers.

Every failure a peer can see is :class:`UnauthorizedLogin`, so no reply tells
whether a user exists; an unreachable database is a
:class:`TemporaryLoginFailure` (SMTP 454, IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, error as ierror, protocol, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from indimail_tw.auth.credentials import (
    AvatarId, LoginDenied, TemporaryLoginFailure, context_of, proof_for,
)
from indimail_tw.auth import passwords
from indimail_tw.auth.flags import SERVICE_FLAGS, Flags
from indimail_tw.auth.loginname import canonical_ip, default_domain, split_login
from indimail_tw.errors import StoreUnavailable
from indimail_tw.storage.engine import Engine, Txn
from indimail_tw.storage.store import REPOS
from indimail_tw.storage.users import User
import contextlib

log = Logger()


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return bool(environ.get(name))


@dataclass(frozen=True)
class AuthPolicy:
    """The environment and control knobs vchkpass and authindi read."""

    environ: Mapping[str, str] = field(default_factory=dict)
    configured_domain: str | None = None      # control/defaultdomain
    locals: tuple[str, ...] = ()

    @property
    def allow_inactive(self) -> bool:
        return _flag(self.environ, "ALLOW_INACTIVE")

    @property
    def allow_clear(self) -> bool:
        return _flag(self.environ, "TRIVIAL_PASSWORDS")

    @property
    def enable_cram(self) -> bool:
        return _flag(self.environ, "ENABLE_CRAM")

    @property
    def domain_limits(self) -> bool:
        return _flag(self.environ, "DOMAIN_LIMITS")


@dataclass(frozen=True)
class AuthOutcome:
    """What the store said about a login. ``status``: ok, unknown, mismatch, denied."""

    status: str
    address: str = ""
    user: User | None = None
    reason: str = ""            # for the log only, never for the peer

    @property
    def no_relay(self) -> bool:
        return bool(self.user and self.user.gid & Flags.NO_RELAY)


def authenticate(txn: Txn, login: str, proof, service: str, local_ip: str,
                 policy: AuthPolicy, now: float | None = None) -> AuthOutcome:
    """vchkpass's decision, as one transaction function (run sync or in the pool)."""
    name, domain = split_login(login)
    if domain is None:
        ip_domain = None
        if local_ip and not policy.environ.get("INDIMAIL_DOMAIN"):
            try:
                ip_domain = REPOS.ipmap.domain_for(txn, canonical_ip(local_ip))
            except ValueError:
                ip_domain = None
        domain = default_domain(policy.environ, ip_domain, policy.locals,
                                policy.configured_domain)
    if not name or not domain:
        proof.check(_decoy_hash())
        return AuthOutcome("unknown", reason="no domain")
    real = REPOS.aliasdomains.real_domain(txn, domain) or domain
    address = f"{name}@{real}"
    user = REPOS.users.get(txn, name, real)
    if user is None:
        # Check the proof against a throw-away hash so that an unknown user
        # costs as much time as a wrong password: timing must not tell them apart.
        proof.check(_decoy_hash())
        return AuthOutcome("unknown", address, reason="no such user")
    # The password is checked before any flag, so a wrong password never
    # learns anything about the account.
    if not proof.check(user.secret):
        return AuthOutcome("mismatch", address, user, reason="password mismatch")
    gate = SERVICE_FLAGS.get(service)
    if gate is not None and user.gid & gate:
        return AuthOutcome("denied", address, user, reason=f"{gate.name} set")
    if not user.active and service == "smtp" and not policy.allow_inactive:
        return AuthOutcome("denied", address, user, reason="inactive user")
    if policy.domain_limits:
        limits = REPOS.vlimits.get(txn, real)
        moment = time.time() if now is None else now
        if limits and 0 <= limits.domain_expiry < moment:
            return AuthOutcome("denied", address, user, reason="domain expired")
        if limits and 0 <= limits.passwd_expiry < moment:
            return AuthOutcome("denied", address, user, reason="password expired")
    return AuthOutcome("ok", address, user)


_DECOY: list[str] = []


def _decoy_hash() -> str:
    """A hash of the default scheme for a random password, made once per process."""
    if not _DECOY:
        _DECOY.append(passwords.make_hash(os.urandom(12).hex()))
    return _DECOY[0]


class IBindable(Interface):
    """A checker that needs the running server's store and settings."""

    def bind(engine, policy):
        """Attach to the server's engine and AuthPolicy before the first login."""


@implementer(ICredentialsChecker, IBindable)
class StoreChecker:
    """IndiMail's user database: ``vchkpass`` semantics for every service."""

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, engine: Engine | None = None, policy: AuthPolicy | None = None,
                 reactor=None) -> None:
        self.engine = engine
        self.policy = policy or AuthPolicy()
        self._reactor = reactor

    def bind(self, engine: Engine, policy: AuthPolicy) -> None:
        self.engine = engine
        self.policy = policy

    def requestAvatarId(self, credentials) -> defer.Deferred:  # noqa: N802
        if self.engine is None:
            return defer.fail(TemporaryLoginFailure("store checker is not bound"))
        login = credentials.username
        if isinstance(login, bytes):
            login = login.decode("utf-8", "replace")
        context = context_of(credentials)
        proof = proof_for(credentials, self.policy.allow_clear, self.policy.enable_cram)
        # A read-only lookup plus the password hash: run in the reactor's thread
        # pool on each thread's own read connection (Engine.run_read), so that
        # concurrent logins hash in parallel instead of queueing behind the one
        # writer connection (and never hold SQLite's write lock).
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), self.engine.run_read,
                                      authenticate, login, proof, context.service,
                                      context.local_ip, self.policy)
        d.addCallbacks(self._outcome, self._failed, callbackArgs=(context.service,))
        return d

    @staticmethod
    def _outcome(outcome: AuthOutcome, service: str) -> AvatarId:
        if outcome.status == "ok":
            return AvatarId.make(outcome.address, outcome.user, no_relay=outcome.no_relay,
                                 inactive=not outcome.user.active)
        log.info("{service} login refused for {address}: {reason}", service=service,
                 address=outcome.address or "(unresolved)", reason=outcome.reason)
        if outcome.status == "denied":
            raise LoginDenied()
        raise UnauthorizedLogin()

    @staticmethod
    def _failed(failure: Failure) -> Failure:
        if failure.check(StoreUnavailable):
            log.error("user store unavailable: {error}", error=failure.value)
            return Failure(TemporaryLoginFailure("user store unavailable"))
        return failure


# -- external checkpassword programs ------------------------------------------

def checkpassword_input(credentials) -> bytes:
    """The fd-3 bytes: ``login\\0secret\\0response\\0method\\0`` (IndiMail's form).

    Classic three-field checkpassword programs read the first two fields.
    """
    login = credentials.username
    login = login if isinstance(login, bytes) else login.encode()
    method = getattr(credentials, "method", 2)
    if IUsernamePassword.providedBy(credentials):
        secret, response = credentials.password, b""
    else:
        secret, response = credentials.challenge, credentials.response.encode()
    return b"\0".join([login, secret, response, bytes([method])]) + b"\0"


class _CheckpasswordProtocol(protocol.ProcessProtocol):
    def __init__(self, data: bytes, done: defer.Deferred, limit: int = 4096) -> None:
        self.data = data
        self.done = done
        self.output = b""
        self.limit = limit

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.closeStdin()
        self.transport.writeToChild(3, self.data)
        self.transport.closeChildFD(3)

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        if fd == 1 and len(self.output) < self.limit:
            self.output += data[: self.limit - len(self.output)]

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        if reason.check(ierror.ProcessDone):
            code = 0
        else:
            code = getattr(reason.value, "exitCode", None)
            if code is None:        # killed by a signal (our timeout or a crash)
                code = 111
        if not self.done.called:
            self.done.callback(code)


@implementer(ICredentialsChecker)
class CheckpasswordChecker:
    """Runs a checkpassword program (``vchkpass``, ``sys-checkpwd``, site scripts).

    Exit 0: authenticated; 3: authenticated without relaying; 111 (or a
    timeout): temporary failure; anything else: refused.  The program gets the
    server's environment plus ``TCPREMOTEIP``, ``TCPLOCALIP``, ``AUTHSERVICE``.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, argv: Sequence[str], reactor=None, timeout: float = 30.0,
                 environ: Mapping[str, str] | None = None) -> None:
        if not argv:
            raise ValueError("checkpassword: no program given")
        self.argv = list(argv)
        self.timeout = timeout
        self.environ = dict(os.environ if environ is None else environ)
        self._reactor = reactor

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def requestAvatarId(self, credentials) -> defer.Deferred:  # noqa: N802
        context = context_of(credentials)
        env = dict(self.environ, TCPREMOTEIP=context.remote_ip, TCPLOCALIP=context.local_ip,
                   AUTHSERVICE=context.service, PROTOCOL=context.service.upper())
        done: defer.Deferred = defer.Deferred()
        proto = _CheckpasswordProtocol(checkpassword_input(credentials), done)
        try:
            transport = self.reactor.spawnProcess(
                proto, self.argv[0], self.argv, env=env,
                childFDs={0: "w", 1: "r", 2: 2, 3: "w"})
        except OSError as e:
            log.error("cannot run checkpassword program {argv}: {e}", argv=self.argv, e=e)
            return defer.fail(TemporaryLoginFailure("checkpassword program failed"))
        timer = self.reactor.callLater(self.timeout, self._kill, transport)
        done.addBoth(self._cancel, timer)
        login = credentials.username
        login = login.decode("utf-8", "replace") if isinstance(login, bytes) else login
        done.addCallback(self._result, login, proto)
        return done

    @staticmethod
    def _kill(transport) -> None:
        with contextlib.suppress(ierror.ProcessExitedAlready):
            transport.signalProcess("KILL")

    @staticmethod
    def _cancel(result, timer):
        if timer.active():
            timer.cancel()
        return result

    def _result(self, code: int, login: str, proto: _CheckpasswordProtocol) -> AvatarId:
        if code in (0, 3):
            return AvatarId.make(login, no_relay=(code == 3))
        if code == 111:
            log.error("checkpassword program {prog} reported a temporary failure",
                      prog=self.argv[0])
            raise TemporaryLoginFailure("checkpassword temporary failure")
        raise UnauthorizedLogin()


@implementer(ICredentialsChecker, IBindable)
class ChainChecker:
    """Tries checkers in order: a refused login goes on to the next checker,
    a denial (:class:`LoginDenied`) or a temporary failure stops the chain."""

    def __init__(self, checkers: Sequence) -> None:
        self.checkers = list(checkers)
        interfaces: list = []
        for checker in self.checkers:
            for iface in checker.credentialInterfaces:
                if iface not in interfaces:
                    interfaces.append(iface)
        self.credentialInterfaces = tuple(interfaces)

    def bind(self, engine: Engine, policy: AuthPolicy) -> None:
        for checker in self.checkers:
            if IBindable.providedBy(checker):
                checker.bind(engine, policy)

    @defer.inlineCallbacks
    def requestAvatarId(self, credentials):  # noqa: N802
        for checker in self.checkers:
            if not any(iface.providedBy(credentials) for iface in checker.credentialInterfaces):
                continue
            try:
                avatar = yield checker.requestAvatarId(credentials)
            except LoginDenied:
                raise
            except UnauthorizedLogin:
                continue
            return avatar
        raise UnauthorizedLogin()
