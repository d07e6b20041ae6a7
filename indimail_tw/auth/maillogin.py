"""The one login call POP3 and IMAP make: portal, throttle, post-login tasks.

A protocol keeps one :class:`MailLogin` per listener (or server) and asks it
for a :class:`LoginConnection` per client connection::

    login = MailLogin(context, "imap", reactor)              # once
    conn = login.connection(remote_ip, local_ip)              # per connection
    d = conn.login(conn.credentials(user, password))          # LOGIN / USER+PASS
    d = conn.login(sasl_done_step.credentials)                # AUTHENTICATE / AUTH
    # -> LoginSession, or fails with LoginFailed (see below)

What it does: the attempt waits the client address's penalty
(:mod:`~indimail_tw.auth.throttle`), goes through ``context.portal`` for
:class:`~indimail_tw.interfaces.IMailbox` (the checkers apply NO_POP/NO_IMAP,
the login-name forms and vipmap/DEFAULT_DOMAIN from the credentials' local
address), then runs :class:`~indimail_tw.auth.postlogin.LoginTasks`.

Every failure is :class:`LoginFailed` with two facts for the protocol:
``temporary`` (the server's fault or MIN_LOGIN_INTERVAL: IMAP ``NO
[UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``; else ``NO
[AUTHENTICATIONFAILED]`` / ``-ERR [AUTH]``) and ``close`` (the connection's
failure limit is reached: answer, then close).  An unknown user, a wrong
password and a service the account may not use get the same failure, after
the same wait; the reason goes to the log only, with the login name, never the
password.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from indimail_tw.auth.credentials import LoginCredentials, TemporaryLoginFailure
from indimail_tw.auth.postlogin import LASTAUTH_SERVICES, LoginResult, LoginTasks, LoginTooSoon
from indimail_tw.auth.sasl import SASLContext
from indimail_tw.auth.throttle import ConnectionAttempts, LoginThrottle
from indimail_tw.interfaces import IMailbox

log = Logger()

AUTH_FAILED_TEXT = "Authentication failed."
TEMP_FAILED_TEXT = "Temporary authentication failure."


class LoginFailed(Exception):
    """A login that did not succeed; the public reply depends on ``temporary`` only."""

    def __init__(self, temporary: bool, close: bool, reason: str = "refused") -> None:
        super().__init__(TEMP_FAILED_TEXT if temporary else AUTH_FAILED_TEXT)
        self.temporary = temporary
        self.close = close
        self.reason = reason        # for logs and tests: refused, unavailable, interval, error

    @property
    def text(self) -> str:
        return TEMP_FAILED_TEXT if self.temporary else AUTH_FAILED_TEXT

    def pop3(self) -> bytes:
        """The POP3 reply (RFC 2449/3206 response codes)."""
        code = "SYS/TEMP" if self.temporary else "AUTH"
        return f"-ERR [{code}] {self.text}\r\n".encode()

    def imap(self, tag: bytes) -> bytes:
        """The tagged IMAP reply (RFC 5530 response codes)."""
        code = "UNAVAILABLE" if self.temporary else "AUTHENTICATIONFAILED"
        return tag + f" NO [{code}] {self.text}\r\n".encode()

    def __repr__(self) -> str:
        return (f"<LoginFailed temporary={self.temporary} close={self.close} "
                f"reason={self.reason}>")


@dataclass
class LoginSession:
    """A logged-in user: open ``maildir``; show ``message``; maybe end at once."""

    avatar: Any                        # auth.realm.MailUser (IMailbox)
    maildir: str                       # the user's Maildir, or TMP_MAILDIR / home (POSTAUTH)
    message: str | None                # MSG_ONERROR text, one line, or None
    end_session: bool                  # EXIT_ONERROR: send ``message`` and close
    logout: Callable[[], None]         # call once when the session ends
    service: str = ""
    result: LoginResult | None = None  # everything the tasks said

    @property
    def address(self) -> str:
        return self.avatar.address


def _printable(value: bytes | str, limit: int = 100) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


class MailLogin:
    """Logins for one service (``pop3`` or ``imap``) of one server."""

    def __init__(self, context: Any, service: str, clock: Any,
                 throttle: LoginThrottle | None = None, tasks: LoginTasks | None = None) -> None:
        if service not in LASTAUTH_SERVICES:
            raise ValueError(f"unknown login service {service!r}")
        self.context = context
        self.service = service
        self.clock = clock
        self.throttle = throttle or LoginThrottle.from_environ(clock, context.environ)
        self.tasks = tasks or LoginTasks(context)

    # -- building credentials ------------------------------------------------------

    def credentials(self, username: bytes | str, password: bytes | str, remote_ip: str = "",
                    local_ip: str = "") -> LoginCredentials:
        """For POP3 USER/PASS and IMAP LOGIN: the service and addresses the checkers use."""
        return LoginCredentials(username, password, service=self.service,
                                remote_ip=remote_ip or "", local_ip=local_ip or "")

    def sasl_context(self, remote_ip: str = "", local_ip: str = "",
                     hostname: str = "localhost") -> SASLContext:
        """For POP3 AUTH and IMAP AUTHENTICATE: ``sasl.exchange(name, this)``."""
        return SASLContext(service=self.service, remote_ip=remote_ip or "",
                           local_ip=local_ip or "", hostname=hostname, now=self.clock.seconds)

    def connection(self, remote_ip: str, local_ip: str = "") -> LoginConnection:
        """The login state of one client connection."""
        return LoginConnection(self, remote_ip, local_ip)

    # -- logging in --------------------------------------------------------------------

    def login(self, credentials: Any, remote_ip: str,
              attempts: ConnectionAttempts | None = None) -> defer.Deferred:
        """Deferred[LoginSession]; fails with LoginFailed.  Cancel it if the client leaves."""
        attempts = attempts if attempts is not None else self.throttle.connection()
        wait = self.throttle.delay(remote_ip)
        d = task.deferLater(self.clock, wait, lambda: None) if wait > 0 else defer.succeed(None)
        d.addCallback(lambda _: defer.maybeDeferred(self.context.portal.login, credentials,
                                                    None, IMailbox))
        d.addCallbacks(self._authenticated, self._refused,
                       callbackArgs=(remote_ip,), errbackArgs=(credentials, remote_ip, attempts))
        return d

    def _refused(self, failure: Failure, credentials: Any, remote_ip: str,
                 attempts: ConnectionAttempts) -> Failure:
        if failure.check(defer.CancelledError):
            return failure
        user = _printable(getattr(credentials, "username", b""))
        if failure.check(UnauthorizedLogin):
            self.throttle.failed(remote_ip)
            close = attempts.failed()
            log.info("{service} login failed for {user} from {ip} ({n} on this connection)",
                     service=self.service, user=user, ip=remote_ip, n=attempts.failures)
            return Failure(LoginFailed(temporary=False, close=close))
        if failure.check(TemporaryLoginFailure):
            log.warn("{service} login for {user} from {ip}: temporary failure",
                     service=self.service, user=user, ip=remote_ip)
            return Failure(LoginFailed(temporary=True, close=False, reason="unavailable"))
        log.failure("{service} login for {user}: unexpected error", failure,
                    service=self.service, user=user)
        return Failure(LoginFailed(temporary=True, close=False, reason="error"))

    def _authenticated(self, result: tuple, remote_ip: str) -> defer.Deferred:
        _iface, avatar, logout = result
        d = defer.maybeDeferred(self.tasks.run, avatar, self.service, remote_ip)
        d.addCallbacks(self._session, self._tasks_failed,
                       callbackArgs=(avatar, logout, remote_ip), errbackArgs=(avatar, logout))
        return d

    def _session(self, result: LoginResult, avatar: Any, logout: Callable[[], None],
                 remote_ip: str) -> LoginSession:
        log.info("{service} login of {user} from {ip}", service=self.service,
                 user=avatar.address, ip=remote_ip or "-")
        return LoginSession(avatar, result.maildir, result.message, result.end_session,
                            logout, self.service, result)

    def _tasks_failed(self, failure: Failure, avatar: Any, logout: Callable[[], None]
                      ) -> Failure:
        logout()
        if failure.check(defer.CancelledError):
            return failure
        if failure.check(LoginTooSoon):
            return Failure(LoginFailed(temporary=True, close=False, reason="interval"))
        if not failure.check(TemporaryLoginFailure):
            log.failure("{service} login tasks for {user} failed", failure,
                        service=self.service, user=avatar.address)
            return Failure(LoginFailed(temporary=True, close=False, reason="error"))
        return Failure(LoginFailed(temporary=True, close=False, reason="unavailable"))


class LoginConnection:
    """One client connection's logins: its addresses and its failure count."""

    def __init__(self, maillogin: MailLogin, remote_ip: str, local_ip: str = "") -> None:
        self.maillogin = maillogin
        self.remote_ip = remote_ip or ""
        self.local_ip = local_ip or ""
        self.attempts = maillogin.throttle.connection()

    @property
    def failures(self) -> int:
        return self.attempts.failures

    @property
    def exhausted(self) -> bool:
        """True once the failure limit is reached: the protocol closes the connection."""
        return self.attempts.exhausted

    def credentials(self, username: bytes | str, password: bytes | str) -> LoginCredentials:
        return self.maillogin.credentials(username, password, self.remote_ip, self.local_ip)

    def sasl_context(self, hostname: str = "localhost") -> SASLContext:
        return self.maillogin.sasl_context(self.remote_ip, self.local_ip, hostname)

    def login(self, credentials: Any) -> defer.Deferred:
        """Deferred[LoginSession]; fails with LoginFailed (``close`` at the limit)."""
        return self.maillogin.login(credentials, self.remote_ip, self.attempts)
