"""The thin Twisted adapter: transport <-> parser <-> session, strictly in order.

It decides no policy.  It feeds bytes to the parser, pulls one event at a
time, hands it to the session and, when the session answers with a Deferred,
pulls nothing more until that answer has been written.  It also does the
three things a session cannot: start TLS (dropping anything the client
pipelined after STARTTLS), the idle timeout (``timeoutsmtpd``, on the given
clock) and flow control (the transport is paused while more than
:data:`HIGH_WATER` bytes wait to be read by a busy session).

Replies to pipelined commands leave together: while a hook's answer is awaited
and more of the client's input is already buffered, the replies so far are
held, and they are written in one piece once the session has answered
everything the client had sent (RFC 2920 section 3.2 allows holding them;
a client that waits for a reply has nothing more buffered, so it is never kept
waiting, and replies are never held longer than :data:`HOLD_LIMIT`, so a slow
hook or a tarpit delay does not keep earlier replies back).  Under load that is
one segment for MAIL, RCPT and DATA instead of two or three.

Nagle's algorithm is switched off (``TCP_NODELAY``): under PIPELINING a reply
that waited for a lookup or a commit follows an earlier reply that is not yet
acknowledged, and a client that reads before it writes again delays its ACK
(40 ms on Linux), so with Nagle on every pipelined group that needed a lookup
would stall that long.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, interfaces, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from indimail_tw.lineserver import LineServerMixin, direct_socket, no_delay, send_now
from indimail_tw.policy.base import Client
from indimail_tw.smtp.parser import SMTPParser
from indimail_tw.smtp.replies import Response
from indimail_tw.smtp.session import SMTPSession

log = Logger()

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
HARD_LIMIT = 4 * 1024 * 1024
HOLD_LIMIT = 0.1                 # seconds a reply may wait for the next ones
OVERFLOW = b"421 4.7.0 input buffer overflow, closing connection\r\n"


def client_of(transport: Any, service: str) -> Client:
    """The Client for a transport (TCP over IPv4 or IPv6; anything else has no address)."""
    peer, host = transport.getPeer(), transport.getHost()
    return Client(remote_ip=getattr(peer, "host", "") or "",
                  remote_port=getattr(peer, "port", 0) or 0,
                  local_ip=getattr(host, "host", "") or "",
                  local_port=getattr(host, "port", 0) or 0, service=service)



class SMTPServerProtocol(LineServerMixin, protocol.Protocol):
    """One SMTP connection; the factory builds its session (see ``service.SMTPFactory``)."""

    high_water, low_water = HIGH_WATER, LOW_WATER

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.parser = SMTPParser()
        self.session: SMTPSession | None = None
        self.client: Client | None = None
        self.admitted = False            # counted by the factory's limiter
        self._waiting = True             # until the greeting is out; while a hook runs
        self._pumping = False
        self._holding = False            # replies wait in _out (see the module docstring)
        self._out: list[bytes] = []
        self._hold_timer: Any = None
        self._paused = False
        self._closing = False
        self._timer: Any = None

    # -- connection ----------------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        self.client = client_of(self.transport, self.factory.service)
        no_delay(self.transport)
        if not self.factory.tls_on_connect:
            self._socket = direct_socket(self.transport)
        if self.factory.tls_on_connect:             # implicit TLS on a plain listener (465)
            try:
                self.transport.startTLS(self.factory.tls_options())
            except Exception as e:  # noqa: BLE001
                log.error("no TLS for a connection from {ip}: {error}",
                          ip=self.client.remote_ip, error=e)
                self._closing = True
                self.transport.loseConnection()
                return
        self._await(self.factory.open_session(self, self.client), self._opened)

    def _opened(self, result: SMTPSession | Response) -> None:
        if isinstance(result, Response):
            self._emit(result)
            return
        self.session = result
        self._await(result.greeting(), self._greeted)

    def _greeted(self, response: Response) -> None:
        self._emit(response)
        if self._closing or self.session is None:
            return
        self._emit(self.session.early_talker(self.parser.buffered))
        if self._closing:
            return
        self._waiting = False
        self._arm_timer()
        self._pump()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._closing = True
        if self._hold_timer is not None and self._hold_timer.active():
            self._hold_timer.cancel()
        self._hold_timer, self._out = None, []
        self.parser.close()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.session is not None:
            try:
                self.session.connection_lost()
            except Exception:  # noqa: BLE001
                log.failure("session cleanup failed")
        self.factory.connection_closed(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._closing:
            return
        self.parser.feed(data)
        if self.parser.buffered > HARD_LIMIT:
            log.warn("input buffer overflow from {ip}", ip=self.client and self.client.remote_ip)
            self._emit(Response(OVERFLOW, close=True))
            return
        if self.session is not None and not self._waiting:
            self._arm_timer()
        self._pump()

    # -- the pump --------------------------------------------------------------------------------

    def _await(self, result: Any, then: Any) -> None:
        """Run ``then(result)`` now or when the Deferred fires; nothing is pulled meanwhile."""
        if not isinstance(result, defer.Deferred):
            then(result)
            return
        self._waiting = True
        result.addCallback(then).addErrback(self._fatal)

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        self._holding = True
        try:
            self._handle_events()
        finally:
            self._pumping = False
            self._holding = False
            if not (self._waiting and self.parser.buffered):
                self._flush()
            elif self._out and self._hold_timer is None:
                self._hold_timer = self.factory.clock.callLater(HOLD_LIMIT, self._flush)
        self._flow()

    def _resume(self, result: Response | None) -> None:
        self._waiting = False
        self._holding = True
        self._emit(result)
        self._holding = False
        if not self._closing:
            self._arm_timer()
            self._pump()
        else:
            self._flush()

    def _fatal(self, failure: Failure) -> None:
        log.failure("SMTP connection error", failure)
        self._emit(Response(b"421 4.3.0 temporary failure, closing connection\r\n", close=True))

    def _emit(self, response: Response | None) -> None:
        if response is None or self._closing:
            return
        if response.data:
            self._out.append(response.data)
        if response.starttls:
            self._flush()
            self._start_tls()
        elif response.close:
            self._flush()
            self._close()
        elif not self._holding:
            self._flush()

    def _flush(self) -> None:
        """Write the replies held so far, in one piece."""
        timer, self._hold_timer = self._hold_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self._out:
            out, self._out = self._out, []
            send_now(self.transport, self._socket, out[0] if len(out) == 1 else b"".join(out))

    # -- TLS -------------------------------------------------------------------------------------

    def tls_details(self) -> tuple[str, str] | None:
        """(protocol version, cipher) of the TLS connection, when there is one."""
        if not interfaces.ISSLTransport.providedBy(self.transport):
            return None
        try:
            handle = self.transport.getHandle()
            version = handle.get_protocol_version_name()
            cipher = handle.get_cipher_name()
        except Exception:  # noqa: BLE001 -- no handshake yet, or not OpenSSL
            return None
        if not version or not cipher:
            return None
        return version, cipher

    # -- idle timeout ----------------------------------------------------------------------------

    def _timed_out(self) -> None:
        if self._closing or self.session is None:
            return
        if self._waiting:                # we are the slow one: wait for our own answer
            self._arm_timer()
            return
        log.info("timeout from {ip}", ip=self.client.remote_ip if self.client else "")
        self._emit(self.session.timed_out())
