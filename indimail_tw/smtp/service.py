"""The SMTP listeners (``--smtp``, ``--submission``, ``--smtps``): factory, TLS, rules, limits.

``build(context, spec, description)`` returns the listening service.  Per
connection the factory does what tcpserver does for qmail-smtpd: it looks the
client up in ``tcp/tcp.smtp(.cdb)`` (deny closes the connection without a
word; ``VAR="value"`` settings become the session's environment, together
with TCPREMOTEIP and friends), applies the connection limits (``MAXDAEMONS``
or ``control/concurrencyincoming``, and ``MAXPERIP``), and builds the
session with the settings snapshot of the moment seen through that
environment.  The reverse DNS name (verified forwards, like tcpserver -p) is
only looked up when a rule or ``relaydomains`` needs it.

TLS: the certificate is ``SERVERCERT`` or ``certs/servercert.pem`` (private key
and certificate chain in one PEM, IndiMail's layout).  STARTTLS is offered
only when that file exists, and a replaced file is used from the next
connection on.  ``--smtps`` takes an ``ssl:`` endpoint: one that names no TLS
material (``ssl:465``, ``ssl:465:interface=...``) listens as ``tcp:`` and
starts TLS itself on every connection with that same certificate, so 465
also picks up a renewed certificate without a restart (and a missing one
refuses connections with a logged error instead of stopping the server);
one with ``privateKey=`` etc. is used as Twisted parses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.internet import defer, protocol, ssl
from twisted.logger import Logger

from indimail_tw.errors import ConfigError
from indimail_tw.policy import default_policy
from indimail_tw.policy.admission import admit, tcp_environ  # noqa: F401 -- re-exported
from indimail_tw.policy.base import Client, SessionContext, SMTPPolicy
from indimail_tw.policy.limits import ConnectionLimiter
from indimail_tw.policy.tcprules import RulesFile
from indimail_tw.smtp.config import SessionConfig
from indimail_tw.smtp.protocol import SMTPServerProtocol
from indimail_tw.smtp.replies import Response
from indimail_tw.smtp.session import SMTPSession
from indimail_tw.tlsutil import (  # noqa: F401 -- CertificateSource and load_certificate
    CertificateSource, certificate_path, implicit_tls_description, listener_tls,
    load_certificate,
)  # are also imported from here

log = Logger()

SERVICES = {"smtp", "submission", "smtps"}
TEMPORARY = Response(b"421 4.3.0 temporary failure, try again later\r\n", close=True)
DENIED = Response(b"", close=True)


def reverse_dns(ip: str, timeout: float = 5.0) -> defer.Deferred:
    """Deferred[verified host name or None]: PTR, then the name must resolve back to ``ip``."""
    import ipaddress

    from twisted.names import client as dns

    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return defer.succeed(None)
    ptr = address.reverse_pointer

    @defer.inlineCallbacks
    def lookup():
        answers, _, _ = yield dns.lookupPointer(ptr, timeout=(timeout,))
        names = [str(a.payload.name) for a in answers if a.type == 12]
        if not names:
            return None
        name = names[0].rstrip(".")
        lookup_forward = dns.lookupIPV6Address if address.version == 6 else dns.lookupAddress
        forward, _, _ = yield lookup_forward(name, timeout=(timeout,))
        found = {a.payload.dottedQuad() if address.version == 4 else
                 ipaddress.ip_address(a.payload.address).compressed
                 for a in forward if a.type in (1, 28)}
        return name if address.compressed in found else None

    return lookup().addErrback(lambda _failure: None)


def _io_runner(context: Any) -> Callable[..., defer.Deferred] | None:
    """Blocking calls in the server's I/O pool (``context.io_pool``), if it has one.

    The calls (the recipient check's lookups) are batched: those made while a job
    runs go together into the next one, so under load many RCPTs cost one trip to
    a thread.  One runner per server process, shared by its listeners.
    """
    pool = getattr(context, "io_pool", None)
    if pool is None:
        return None
    runner = context.extras.get("smtp.io_runner") if hasattr(context, "extras") else None
    if runner is not None:
        return runner
    from twisted.internet import threads

    from indimail_tw.queue.batch import CallBatcher

    reactor = context.reactor
    if reactor is None:
        from twisted.internet import reactor
    runner = CallBatcher(lambda fn, *args: threads.deferToThreadPool(reactor, pool, fn, *args))
    if hasattr(context, "extras"):
        context.extras["smtp.io_runner"] = runner
    return runner


class SMTPFactory(protocol.Factory):
    """Builds SMTP sessions for one listener (see the module docstring)."""

    def __init__(self, context: Any, service: str = "smtp", *, implicit_tls: bool = False,
                 tls_on_connect: bool = False,
                 certificate: CertificateSource | None = None, rules: RulesFile | None = None,
                 policy: SMTPPolicy | None = None, clock: Any = None,
                 resolve: Callable[[str], defer.Deferred] | None = None) -> None:
        if service not in SERVICES:
            raise ValueError(f"not an SMTP service: {service!r}")
        if clock is None:
            from twisted.internet import reactor as clock
        self.context = context
        self.service = service
        self.implicit_tls = implicit_tls or tls_on_connect
        self.tls_on_connect = tls_on_connect      # the listener is plain TCP: start TLS first
        self.certificate = certificate
        self.rules = rules
        self.policy = policy or default_policy(context.store, context.paths.domains,
                                               blocking=_io_runner(context))
        self.clock = clock
        self.resolve = resolve or reverse_dns
        self.limiter = ConnectionLimiter()
        self._concurrency: tuple[Any, str | None] | None = None

    def buildProtocol(self, addr: Any) -> SMTPServerProtocol:  # noqa: N802
        return SMTPServerProtocol(self)

    def tls_options(self) -> ssl.CertificateOptions:
        if self.certificate is None:
            raise ConfigError("no TLS certificate configured")
        return self.certificate.options()

    def _concurrency_control(self, settings: Any) -> str | None:
        if self._concurrency is None or self._concurrency[0] is not settings:
            try:
                value = settings.control.value("concurrencyincoming")
            except (ConfigError, OSError):
                value = None
            self._concurrency = (settings, value)
        return self._concurrency[1]

    def open_session(self, proto: SMTPServerProtocol, client: Client
                     ) -> SMTPSession | Response | defer.Deferred:
        settings = self.context.config.current
        rules = self.rules.current() if self.rules is not None else None
        needs_host = (rules is not None and rules.uses_hosts) or bool(settings.relaydomains)
        if not needs_host:
            return self._admit(proto, client, settings, rules)
        d = defer.maybeDeferred(self.resolve, client.remote_ip)
        d.addErrback(lambda _f: None)

        def resolved(host: str | None) -> SMTPSession | Response:
            named = Client(client.remote_ip, client.remote_port, client.local_ip,
                           client.local_port, host, client.service)
            proto.client = named
            return self._admit(proto, named, settings, rules)

        return d.addCallback(resolved)

    def _admit(self, proto: SMTPServerProtocol, client: Client, settings: Any,
               rules: Any) -> SMTPSession | Response:
        decision = admit("SMTP", rules, self.context.environ, client, self.limiter,
                         self._concurrency_control(settings))
        if decision.denied:
            return DENIED
        if decision.refused is not None:
            return Response(decision.refused.smtp(), close=True)
        env = decision.env
        proto.admitted = True
        try:
            settings = settings.with_environ(env)
        except ConfigError as e:
            log.error("cannot apply the connection's environment: {error}", error=str(e))
            return TEMPORARY
        tls = self.implicit_tls
        ctx = SessionContext(client=client, settings=settings, env=env, tls=tls)
        available = self.certificate is not None and self.certificate.available()
        config = SessionConfig.from_settings(settings, env, self.service, available)
        return SMTPSession(config, ctx, self.policy, proto.parser, portal=self.context.portal,
                           queue=self.context.queue, clock=self.clock,
                           tls_details=proto.tls_details)

    def connection_closed(self, proto: SMTPServerProtocol) -> None:
        if proto.admitted and proto.client is not None:
            proto.admitted = False
            self.limiter.release(proto.client.remote_ip)


def build(context: Any, spec: Any, description: str) -> Any:
    """The listening service for ``spec`` (smtp, submission or smtps) on ``description``."""
    factory, description = listener(context, spec, description)
    return strports.service(description, factory, reactor=factory.clock)


def listener(context: Any, spec: Any, description: str) -> tuple[SMTPFactory, str]:
    """The factory for ``spec`` and the endpoint description to listen on: ``ssl:``
    without TLS material becomes ``tcp:`` (the protocol starts TLS itself)."""
    tls = listener_tls(context, spec, description, "smtps")
    factory = SMTPFactory(
        context, spec.name, implicit_tls=tls.implicit, tls_on_connect=tls.tls_on_connect,
        certificate=tls.certificate,
        rules=RulesFile(context.paths.tcp, "tcp.smtp", now=tls.reactor.seconds),
        clock=tls.reactor)
    return factory, tls.description
