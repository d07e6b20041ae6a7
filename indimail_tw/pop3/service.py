"""The POP3 listeners (``--pop3``, ``--pop3s``): factory, TLS, rules, limits.

``build(context, spec, description)`` returns the listening service.  Per
connection the factory does what tcpserver does for IndiMail's pop3d: it
looks the client up in ``tcp/tcp.pop3(.cdb)`` (deny closes the connection
without a word; ``VAR="value"`` settings become the session's environment,
with TCPREMOTEIP and friends), applies the connection limits (``MAXDAEMONS``,
else 100 in total, and ``MAXPERIP``; a refused client gets ``-ERR
[SYS/TEMP]``) and builds the session from the settings of the moment seen
through that environment.

TLS is the SMTP listeners' (:mod:`indimail_tw.smtp.service`): the certificate
is ``SERVERCERT`` or ``certs/servercert.pem``, re-read when it changes; STLS is
offered only when it exists; ``--pop3s ssl:995`` without TLS material listens
as ``tcp:`` and starts TLS itself on each connection with that certificate.

Logins go through :class:`indimail_tw.auth.maillogin.MailLogin` (service
``pop3``), which owns the checker call, the failed-login delay and limit, and
IndiMail's post-login tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.internet import defer, protocol, threads
from twisted.logger import Logger

from indimail_tw.errors import ConfigError
from indimail_tw.policy.admission import admit
from indimail_tw.policy.base import Client
from indimail_tw.policy.limits import ConnectionLimiter
from indimail_tw.policy.tcprules import RulesFile
from indimail_tw.pop3.config import POP3Config
from indimail_tw.pop3.protocol import POP3ServerProtocol
from indimail_tw.pop3.replies import Response, err
from indimail_tw.pop3.replies import TOO_MANY_CONNECTIONS, INTERNAL_ERROR
from indimail_tw.pop3.session import POP3Session

from indimail_tw.tlsutil import listener_tls

log = Logger()

SERVICES = {"pop3", "pop3s"}
DENIED = Response(b"", close=True)


def thread_runner(context: Any, reactor: Any) -> Callable[..., defer.Deferred]:
    """Blocking calls in the server's I/O pool (``context.io_pool``), else Twisted's pool."""
    pool = getattr(context, "io_pool", None)
    if pool is None:
        return lambda fn, *args: threads.deferToThread(fn, *args)
    return lambda fn, *args: threads.deferToThreadPool(reactor, pool, fn, *args)


def make_mail_login(context: Any, clock: Any) -> Any:
    from indimail_tw.auth.maillogin import MailLogin

    return MailLogin(context, service="pop3", clock=clock)


class POP3Factory(protocol.Factory):
    """Builds POP3 sessions for one listener (see the module docstring)."""

    protocol = POP3ServerProtocol

    def __init__(self, context: Any, service: str = "pop3", *, implicit_tls: bool = False,
                 tls_on_connect: bool = False, certificate: Any = None,
                 rules: RulesFile | None = None, clock: Any = None, mail_login: Any = None,
                 run: Callable[..., defer.Deferred] | None = None) -> None:
        if service not in SERVICES:
            raise ValueError(f"not a POP3 service: {service!r}")
        if clock is None:
            from twisted.internet import reactor as clock
        self.context = context
        self.service = service
        self.implicit_tls = implicit_tls or tls_on_connect
        self.tls_on_connect = tls_on_connect
        self.certificate = certificate
        self.rules = rules
        self.clock = clock
        self.mail_login = mail_login if mail_login is not None else make_mail_login(context,
                                                                                    clock)
        self.run = run if run is not None else thread_runner(context, clock)
        self.limiter = ConnectionLimiter()

    def buildProtocol(self, addr: Any) -> POP3ServerProtocol:  # noqa: N802
        return POP3ServerProtocol(self)

    def tls_options(self) -> Any:
        if self.certificate is None:
            raise ConfigError("no TLS certificate configured")
        return self.certificate.options()

    def open_session(self, proto: POP3ServerProtocol, client: Client
                     ) -> POP3Session | Response:
        settings = self.context.config.current
        rules = self.rules.current() if self.rules is not None else None
        # host names in tcp.pop3 rules are not looked up: POP3 rules are by address
        decision = admit("POP3", rules, self.context.environ, client, self.limiter)
        if decision.denied:
            return DENIED
        if decision.refused is not None:
            return err(TOO_MANY_CONNECTIONS, close=True)
        env = decision.env
        proto.admitted = True
        try:
            settings = settings.with_environ(env)
        except ConfigError as e:
            log.error("cannot apply the connection's environment: {error}", error=str(e))
            return err(INTERNAL_ERROR, close=True)
        available = self.certificate is not None and self.certificate.available()
        config = POP3Config.from_settings(settings, env, tls_available=available)
        return POP3Session(config, client, proto.parser, mail_login=self.mail_login,
                           clock=self.clock, tls=self.implicit_tls, run=self.run)

    def connection_closed(self, proto: POP3ServerProtocol) -> None:
        if proto.admitted and proto.client is not None:
            proto.admitted = False
            self.limiter.release(proto.client.remote_ip)


def build(context: Any, spec: Any, description: str) -> Any:
    """The listening service for ``spec`` (pop3 or pop3s) on ``description``."""
    factory, description = listener(context, spec, description)
    return strports.service(description, factory, reactor=factory.clock)


def listener(context: Any, spec: Any, description: str) -> tuple[POP3Factory, str]:
    """The factory for ``spec`` and the endpoint description to listen on: ``ssl:``
    without TLS material becomes ``tcp:`` (the protocol starts TLS itself)."""
    tls = listener_tls(context, spec, description, "pop3s")
    factory = POP3Factory(
        context, spec.name, implicit_tls=tls.implicit, tls_on_connect=tls.tls_on_connect,
        certificate=tls.certificate,
        rules=RulesFile(context.paths.tcp, "tcp.pop3", now=tls.reactor.seconds),
        clock=tls.reactor)
    return factory, tls.description
