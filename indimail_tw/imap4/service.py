"""The IMAP listeners (``--imap``, ``--imaps``): factory, TLS, rules, limits, shutdown.

``build(context, spec, description)`` returns the listening service.  Per
connection the factory does what tcpserver does for IndiMail's imapd: it looks
the client up in ``tcp/tcp.imap(.cdb)`` (deny closes the connection without a
word; ``VAR="value"`` settings become the session's environment together with
TCPREMOTEIP and friends), applies the connection limits (``MAXDAEMONS`` or
``control/concurrencyincoming``, and ``MAXPERIP``), and builds the session
with the settings of the moment seen through that environment (see
:mod:`indimail_tw.imap4.config` for the knobs).

TLS, as for SMTP: the certificate is ``SERVERCERT`` or ``certs/servercert.pem``;
STARTTLS is offered only when it exists; ``--imaps ssl:993`` without TLS
material listens as ``tcp:`` and starts TLS itself on every connection, so a
renewed certificate is picked up without a restart.

When the listener stops (the server stops, also under ``--workers``), every open
connection gets ``* BYE`` and is closed.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.internet import defer, protocol
from twisted.logger import Logger

from indimail_tw.errors import ConfigError
from indimail_tw.imap4.config import IMAPConfig
from indimail_tw.imap4.protocol import IMAPServerProtocol
from indimail_tw.imap4.session import IMAPSession
from indimail_tw.maildir import index as mindex
from indimail_tw.policy.admission import admit
from indimail_tw.policy.base import Client
from indimail_tw.policy.limits import ConnectionLimiter
from indimail_tw.policy.tcprules import RulesFile
from indimail_tw.smtp.service import reverse_dns
from indimail_tw.tlsutil import listener_tls

log = Logger()

TEMPORARY = [b"* BYE Temporary failure, try again later\r\n"]
DENIED: list[bytes] = []


class IMAPFactory(protocol.Factory):
    """Builds IMAP sessions for one listener (see the module docstring)."""

    protocol = IMAPServerProtocol

    def __init__(self, context: Any, *, implicit_tls: bool = False,
                 tls_on_connect: bool = False, certificate: Any = None,
                 rules: RulesFile | None = None, clock: Any = None, login: Any = None,
                 run: Any = None, resolve: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.context = context
        self.implicit_tls = implicit_tls or tls_on_connect
        self.tls_on_connect = tls_on_connect
        self.certificate = certificate
        self.rules = rules
        self.clock = clock
        if login is None:
            from indimail_tw.auth.maillogin import MailLogin
            login = MailLogin(context, "imap", clock)
        self.login = login
        threads = getattr(context, "reactor", None) or clock    # whose thread pool
        self.run = run or (lambda fn, *args: mindex.run(threads, fn, *args))
        self.resolve = resolve or reverse_dns
        self.limiter = ConnectionLimiter()
        self.connections: set[IMAPServerProtocol] = set()
        self.max_literal = 64 * 1024 * 1024
        self._concurrency: tuple[Any, str | None] | None = None

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:  # noqa: N802
        return IMAPServerProtocol(self)

    def tls_options(self) -> Any:
        if self.certificate is None:
            raise ConfigError("no TLS certificate configured")
        return self.certificate.options()

    def _concurrency_control(self, settings: Any) -> str | None:
        if self._concurrency is None or self._concurrency[0] is not settings:
            try:
                value = settings.control.value("concurrencyincoming")
            except (ConfigError, OSError, AttributeError):
                value = None
            self._concurrency = (settings, value)
        return self._concurrency[1]

    def open_session(self, proto: IMAPServerProtocol, client: Client) -> Any:
        settings = self.context.config.current
        rules = self.rules.current() if self.rules is not None else None
        if rules is None or not rules.uses_hosts:
            return self._admit(proto, client, settings, rules)
        d = defer.maybeDeferred(self.resolve, client.remote_ip)
        d.addErrback(lambda _f: None)

        def resolved(host: str | None) -> Any:
            named = Client(client.remote_ip, client.remote_port, client.local_ip,
                           client.local_port, host, client.service)
            proto.client = named
            return self._admit(proto, named, settings, rules)

        return d.addCallback(resolved)

    def _admit(self, proto: IMAPServerProtocol, client: Client, settings: Any,
               rules: Any) -> Any:
        decision = admit("IMAP", rules, self.context.environ, client, self.limiter,
                         self._concurrency_control(settings))
        if decision.denied:
            return DENIED
        if decision.refused is not None:
            return [b"* BYE Too many connections, try again later\r\n"]
        env = decision.env
        proto.admitted = True
        try:
            settings = settings.with_environ(env)
        except (ConfigError, AttributeError) as e:
            log.error("cannot apply the connection's environment: {error}", error=str(e))
            return TEMPORARY
        available = self.certificate is not None and self.certificate.available()
        config = IMAPConfig.from_settings(settings, env, available)
        proto.parser.max_literal = config.append_limit
        return IMAPSession(config, client, self.login, self.clock, self.run,
                           tls=self.implicit_tls, tls_details=proto.tls_details)

    def connection_closed(self, proto: IMAPServerProtocol) -> None:
        if proto.admitted and proto.client is not None:
            proto.admitted = False
            self.limiter.release(proto.client.remote_ip)

    def stopFactory(self) -> None:  # noqa: N802 -- the listener stopped: the server stops
        self.shutdown()

    def shutdown(self) -> None:
        """``* BYE`` to every connection, then close it."""
        for proto in list(self.connections):
            try:
                proto.shutdown()
            except Exception:  # noqa: BLE001
                log.failure("closing an IMAP connection")


def build(context: Any, spec: Any, description: str) -> Any:
    """The listening service for ``spec`` (imap or imaps) on ``description``."""
    factory, description = listener(context, spec, description)
    return strports.service(description, factory, reactor=factory.clock)


def listener(context: Any, spec: Any, description: str) -> tuple[IMAPFactory, str]:
    """The factory and the endpoint to listen on (``ssl:`` without TLS material becomes
    ``tcp:`` and the protocol starts TLS itself)."""
    tls = listener_tls(context, spec, description, "imaps")
    factory = IMAPFactory(
        context, implicit_tls=tls.implicit, tls_on_connect=tls.tls_on_connect,
        certificate=tls.certificate,
        rules=RulesFile(context.paths.tcp, "tcp.imap", now=tls.reactor.seconds),
        clock=tls.reactor)
    return factory, tls.description
