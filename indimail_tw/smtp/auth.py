"""SMTP AUTH (RFC 4954) for the session: SASL exchanges through the portal.

A mixin of :class:`~indimail_tw.smtp.session.SMTPSession`: it uses the
session's context, config, parser, portal and clock.  The mechanisms are the
shared state machines of :mod:`indimail_tw.auth.sasl`; the login goes through
the portal (UnauthorizedLogin -> ``535 5.7.8``, TemporaryLoginFailure ->
``454 4.3.0``).  Without TLS nothing is offered or accepted unless
``SECURE_AUTH=0``; ``FORCE_TLS`` refuses AUTH before STARTTLS in any case.
Passwords never reach a log line; failed logins are logged with the login
name only.  After ``max_auth_failures`` failures the client is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from indimail_tw.auth import sasl
from indimail_tw.auth.credentials import TemporaryLoginFailure
from indimail_tw.interfaces import IMailbox
from indimail_tw.smtp import parser as p
from indimail_tw.smtp.received import safe
from indimail_tw.smtp.replies import (
    AUTH_ALREADY, AUTH_BAD_BASE64, AUTH_CANCELLED, AUTH_FAILED, AUTH_IN_TRANSACTION,
    AUTH_MALFORMED, AUTH_NEEDS_TLS, AUTH_OK, AUTH_TEMPFAIL, AUTH_TOO_MANY, AUTH_UNKNOWN,
    EHLO_FIRST, Response, refuse, reply,
)

log = Logger()


class AuthCommands:
    """The AUTH command and the SASL exchange that follows it."""

    ctx: Any
    config: Any
    parser: p.SMTPParser
    portal: Any
    clock: Any
    _sasl: sasl.SASLExchange | None
    _auth_failures: int
    _logout: Callable[[], None] | None
    _error: Callable[..., Response]

    def _auth_offered(self) -> bool:
        return bool(self.portal is not None and self.config.mechanisms
                    and self.ctx.auth_user is None
                    and (self.ctx.tls or not self.config.secure_auth))

    def _auth(self, arg: bytes) -> Response | defer.Deferred:
        ctx, cfg = self.ctx, self.config
        if not ctx.esmtp:
            return refuse(EHLO_FIRST)
        if ctx.auth_user is not None:
            return refuse(AUTH_ALREADY)
        if ctx.transaction is not None:
            return refuse(AUTH_IN_TRANSACTION)
        words = arg.split()
        if not words or len(words) > 2:
            return self._error(reply(501, "5.5.4", "syntax: AUTH mechanism [initial-response]"))
        name = words[0].decode("ascii", "replace").upper()
        if self.portal is None or name not in cfg.mechanisms:
            return refuse(AUTH_UNKNOWN)
        if not ctx.tls and (cfg.secure_auth or ctx.flag("FORCE_TLS")):
            return refuse(AUTH_NEEDS_TLS)
        context = sasl.SASLContext(service="smtp", remote_ip=ctx.client.remote_ip,
                                   local_ip=ctx.client.local_ip, hostname=cfg.hostname,
                                   now=self.clock.seconds)
        self._sasl = sasl.exchange(name, context)
        try:
            step = self._sasl.start(words[1] if len(words) == 2 else None)
        except sasl.SASLError as e:
            return self._sasl_error(e)
        return self._sasl_step(step)

    def _sasl_line(self, line: bytes) -> Response | defer.Deferred:
        assert self._sasl is not None
        try:
            step = self._sasl.respond(line)
        except sasl.SASLError as e:
            return self._sasl_error(e)
        return self._sasl_step(step)

    def _sasl_step(self, step: sasl.Step) -> Response | defer.Deferred:
        if isinstance(step, sasl.Challenge):
            self.parser.line_limit = p.AUTH_LINE_LIMIT
            return Response(b"334 " + sasl.SASLExchange.encoded(step) + b"\r\n")
        mechanism = self._sasl.name if self._sasl is not None else "?"
        self._end_sasl()
        credentials = step.credentials
        d = defer.maybeDeferred(self.portal.login, credentials, None, IMailbox)
        return d.addCallbacks(self._auth_succeeded, self._auth_failed,
                              callbackArgs=(mechanism,), errbackArgs=(credentials, mechanism))

    def _sasl_error(self, error: sasl.SASLError) -> Response:
        self._end_sasl()
        if isinstance(error, sasl.SASLCancelled):
            return refuse(AUTH_CANCELLED)
        if isinstance(error, sasl.SASLBadEncoding):
            return refuse(AUTH_BAD_BASE64)
        if isinstance(error, sasl.SASLAuthzRefused):
            return self._count_auth_failure()
        return refuse(AUTH_MALFORMED)

    def _end_sasl(self) -> None:
        self._sasl = None
        self.parser.line_limit = self.config.line_limit

    def _auth_succeeded(self, result: tuple, mechanism: str) -> Response:
        _iface, avatar, logout = result
        self._logout = logout
        self.ctx.auth_user = avatar.address
        self.ctx.auth_relay = bool(avatar.relay_allowed)
        log.info("AUTH {mech} ok for {user} from {ip}", mech=mechanism, user=avatar.address,
                 ip=self.ctx.client.remote_ip)
        return Response(AUTH_OK.encode())

    def _auth_failed(self, failure: Failure, credentials: Any, mechanism: str) -> Response:
        user = safe(credentials.username.decode("utf-8", "replace"))
        if failure.check(UnauthorizedLogin):
            log.info("AUTH {mech} failed for {user} from {ip}", mech=mechanism, user=user,
                     ip=self.ctx.client.remote_ip)
            return self._count_auth_failure()
        if not failure.check(TemporaryLoginFailure):
            log.failure("AUTH {mech} for {user}: unexpected error", failure, mech=mechanism,
                        user=user)
        else:
            log.warn("AUTH {mech} for {user}: temporary failure", mech=mechanism, user=user)
        return refuse(AUTH_TEMPFAIL)

    def _count_auth_failure(self) -> Response:
        self._auth_failures += 1
        if self._auth_failures >= self.config.max_auth_failures:
            self.parser.close()
            return refuse(AUTH_TOO_MANY)
        return refuse(AUTH_FAILED)
