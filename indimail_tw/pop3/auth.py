"""POP3 login: USER/PASS (RFC 1939) and AUTH (RFC 5034) through MailLogin, then the maildrop.

A mixin of :class:`~indimail_tw.pop3.session.POP3Session`.  The SASL
mechanisms are the shared state machines of :mod:`indimail_tw.auth.sasl`
(PLAIN, LOGIN, CRAM-MD5; an initial response on the AUTH line, ``=`` for an
empty one).  Every login goes through the server's MailLogin (service
``pop3``: the checker refuses NO_POP accounts, failures are throttled and
counted there; post-login tasks run there).  Then the maildrop is locked and
its snapshot taken; a maildrop locked by another session gives
``-ERR [IN-USE]`` and the login is undone.

Plaintext logins (USER/PASS, AUTH PLAIN, AUTH LOGIN) are refused before TLS
unless ``SECURE_AUTH=0``; ``POP3_TLS_REQUIRED`` refuses every login before TLS.
APOP is not offered: IndiMail's authpop supports it only for clear-text stored
passwords, and our stores keep hashes.

Passwords never reach a log line, and every failed login gets the same reply
whether the user exists or not.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from indimail_tw.auth import sasl
from indimail_tw.auth.credentials import LoginCredentials, TemporaryLoginFailure
from indimail_tw.pop3 import parser as p
from indimail_tw.pop3 import replies as r
from indimail_tw.pop3.maildrop import Maildrop, MaildropLocked
from indimail_tw.pop3.replies import Response, err, ok

log = Logger()


def _printable(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)[:200]


class LoginCommands:
    """USER, PASS, AUTH and what a successful login sets up."""

    config: Any
    client: Any
    parser: p.POP3Parser
    mail_login: Any
    clock: Any
    tls: bool
    maildrop: Maildrop | None
    _user: bytes | None
    _sasl: sasl.SASLExchange | None
    _login_session: Any
    _logins: Any
    _pending_login: defer.Deferred | None
    closed: bool
    address: str | None
    _error: Any
    _job: Any
    enter_transaction: Any

    # -- what may be used now ---------------------------------------------------------------

    def _plaintext_allowed(self) -> bool:
        cfg = self.config
        return self.tls or not (cfg.secure_auth or cfg.tls_required)

    def _mechanisms_now(self) -> list[str]:
        """The SASL mechanisms that would be accepted on this connection now."""
        if not self.tls and self.config.tls_required:
            return []
        names = []
        for name in self.config.mechanisms:
            mech = sasl.MECHANISMS.get(name)
            if mech is None:
                continue
            if mech.plaintext and not self._plaintext_allowed():
                continue
            names.append(name)
        return names

    # -- USER / PASS ------------------------------------------------------------------------

    def _cmd_user(self, args: list[bytes]) -> Response:
        if len(args) != 1:
            return self._error(r.SYNTAX)
        if not self._plaintext_allowed():
            self._user = None
            return err(r.AUTH_TLS_REQUIRED if self.config.tls_required else r.AUTH_PLAINTEXT)
        if len(args[0]) > sasl.MAX_FIELD:
            return self._error(r.SYNTAX)
        self._user = args[0]
        return ok()

    def _cmd_pass(self, args: list[bytes], line: bytes) -> Response | defer.Deferred:
        if self._user is None:
            return self._error(r.USER_FIRST)
        if not self._plaintext_allowed():
            return err(r.AUTH_PLAINTEXT)
        # the password is the rest of the line: it may contain spaces (RFC 1939 allows
        # servers to accept that; Dovecot and Courier do)
        password = line[4:].lstrip(b" ") if len(line) > 4 else b""
        user, self._user = self._user, None
        if not password or len(password) > sasl.MAX_FIELD:
            return self._login_refused(user, "PASS")
        credentials = LoginCredentials(user, password, service="pop3",
                                       remote_ip=self.client.remote_ip,
                                       local_ip=self.client.local_ip)
        return self._login(credentials, "USER")

    # -- AUTH -------------------------------------------------------------------------------

    def _cmd_auth(self, args: list[bytes]) -> Response | defer.Deferred:
        if not args:
            # the mechanism list some clients ask for (pre-RFC 5034 Outlook habit)
            lines = "".join(f"{name}\r\n" for name in self._mechanisms_now())
            return Response(f"+OK\r\n{lines}.\r\n".encode())
        if len(args) > 2:
            return self._error(r.SYNTAX)
        name = args[0].decode("ascii", "replace").upper()
        mech = sasl.MECHANISMS.get(name)
        if mech is None or name not in self.config.mechanisms:
            return self._error(r.AUTH_UNKNOWN_MECH)
        if name not in self._mechanisms_now():
            return err(r.AUTH_TLS_REQUIRED if self.config.tls_required else r.AUTH_PLAINTEXT)
        context = sasl.SASLContext(service="pop3", remote_ip=self.client.remote_ip,
                                   local_ip=self.client.local_ip,
                                   hostname=self.config.hostname, now=self.clock.seconds)
        self._sasl = sasl.exchange(name, context)
        try:
            step = self._sasl.start(args[1] if len(args) == 2 else None)
        except sasl.SASLError as e:
            return self._sasl_error(e)
        return self._sasl_step(step)

    def _sasl_line(self, line: bytes) -> Response | defer.Deferred:
        assert self._sasl is not None
        try:
            step = self._sasl.respond(line.strip())
        except sasl.SASLError as e:
            return self._sasl_error(e)
        return self._sasl_step(step)

    def _sasl_step(self, step: sasl.Step) -> Response | defer.Deferred:
        if isinstance(step, sasl.Challenge):
            self.parser.line_limit = p.AUTH_LINE_LIMIT
            return Response(b"+ " + sasl.SASLExchange.encoded(step) + b"\r\n")
        mechanism = self._sasl.name if self._sasl is not None else "?"
        self._end_sasl()
        return self._login(step.credentials, mechanism)

    def _sasl_error(self, error: sasl.SASLError) -> Response | defer.Deferred:
        self._end_sasl()
        if isinstance(error, sasl.SASLCancelled):
            return err(r.AUTH_CANCELLED)
        if isinstance(error, sasl.SASLBadEncoding):
            return self._error(r.AUTH_BAD_BASE64)
        if isinstance(error, sasl.SASLAuthzRefused):
            return err(r.AUTH_FAILED)
        return self._error(r.AUTH_MALFORMED)

    def _end_sasl(self) -> None:
        self._sasl = None
        self.parser.line_limit = self.config.line_limit

    def _sasl_too_long(self) -> Response:
        self._end_sasl()
        return self._error(r.AUTH_LINE_TOO_LONG)

    # -- the login --------------------------------------------------------------------------

    def _login_refused(self, user: bytes, how: str) -> Response | defer.Deferred:
        """A login that cannot succeed (empty password): the checker's usual path still runs,
        so the delay and the counting are the same as for a wrong password."""
        credentials = LoginCredentials(user, b"\0", service="pop3",
                                       remote_ip=self.client.remote_ip,
                                       local_ip=self.client.local_ip)
        return self._login(credentials, how)

    def _login(self, credentials: Any, how: str) -> defer.Deferred:
        user = _printable(credentials.username)
        if self._logins is None:
            self._logins = self.mail_login.connection(self.client.remote_ip,
                                                      self.client.local_ip)
        d = defer.maybeDeferred(self._logins.login, credentials)
        self._pending_login = d
        d.addBoth(self._login_done)
        d.addCallbacks(self._logged_in, self._login_failed, callbackArgs=(user, how),
                       errbackArgs=(user, how))
        return d

    def _login_done(self, result: Any) -> Any:
        self._pending_login = None
        return result

    def _login_failed(self, failure: Failure, user: str, how: str) -> Response:
        if failure.check(defer.CancelledError) or self.closed:
            return err(r.INTERNAL_ERROR, close=True)
        exc = failure.value
        close = bool(getattr(exc, "close", False))
        if failure.check(TemporaryLoginFailure) or getattr(exc, "temporary", False):
            log.warn("POP3 {how} login for {user} from {ip}: temporary failure", how=how,
                     user=user, ip=self.client.remote_ip)
            return err(r.AUTH_TEMPFAIL, close=close)
        if failure.check(UnauthorizedLogin) or hasattr(exc, "temporary"):
            log.info("POP3 {how} login failed for {user} from {ip}", how=how, user=user,
                     ip=self.client.remote_ip)
            return err(r.AUTH_TOO_MANY if close else r.AUTH_FAILED, close=close)
        log.failure("POP3 {how} login for {user}: unexpected error", failure, how=how, user=user)
        return err(r.AUTH_TEMPFAIL)

    def _logged_in(self, login_session: Any, user: str, how: str
                   ) -> defer.Deferred | Response:
        self._login_session = login_session
        if self.closed:                   # the client left during the login
            self._end_login()
            return err(r.INTERNAL_ERROR, close=True)
        if getattr(login_session, "end_session", False):
            # POSTAUTH asked to end the session (EXIT_ONERROR): say why and close
            message = getattr(login_session, "message", None)
            self._end_login()
            return err(f"[SYS/PERM] {message or 'Mailbox not available.'}", close=True)
        maildir = login_session.maildir
        d = self._job(Maildrop.open, maildir)
        d.addCallbacks(self._maildrop_opened, self._maildrop_failed,
                       callbackArgs=(login_session, user, how), errbackArgs=(user,))
        return d

    def _maildrop_opened(self, maildrop: Maildrop, login_session: Any, user: str,
                         how: str) -> Response:
        if self.closed:                   # the client left while we were opening it
            self._job(maildrop.close)
            self._end_login()
            return err(r.INTERNAL_ERROR, close=True)
        message = getattr(login_session, "message", None)
        self.maildrop = maildrop
        self.enter_transaction()
        self.address = getattr(login_session.avatar, "address", user)
        count = len(maildrop.messages)
        size = sum(m.size for m in maildrop.messages)
        log.info("POP3 {how} login for {user} from {ip}: {count} messages", how=how,
                 user=self.address, ip=self.client.remote_ip, count=count)
        text = f"{message} " if message else ""
        text += f"Logged in, {count} message{'s' if count != 1 else ''} ({size} octets)."
        return ok(text)

    def _maildrop_failed(self, failure: Failure, user: str) -> Response:
        self._end_login()
        if failure.check(MaildropLocked):
            log.info("POP3 login for {user} from {ip}: mailbox in use", user=user,
                     ip=self.client.remote_ip)
            return err(r.IN_USE)
        log.failure("POP3: cannot open the mailbox of {user}", failure, user=user)
        return err(r.MAILDROP_TEMPFAIL)

    def _end_login(self) -> None:
        """Undo a login: the LoginSession's logout (relay rows etc. stay as IndiMail's do)."""
        login_session, self._login_session = self._login_session, None
        logout = getattr(login_session, "logout", None) if login_session is not None else None
        if logout is not None:
            try:
                logout()
            except Exception:  # noqa: BLE001
                log.failure("POP3 logout failed")
