"""The thin Twisted adapter: transport <-> parser <-> session, strictly in order.

It decides no policy.  It feeds bytes to the parser, pulls one event at a
time, hands it to the session and, while the session's answer is a pending
Deferred or a message still streaming out, pulls nothing more (so pipelined
commands, RFC 2449, are answered in order).  It also does what a session
cannot: start TLS (dropping anything pipelined after STLS), the idle timeout,
flow control of the input, and the streaming of RETR/TOP:

* a message up to :data:`SMALL_MESSAGE` octets is read and encoded at once and
  leaves in one write together with its ``+OK`` line;
* a bigger one is read :data:`CHUNK` octets at a time by a pull producer
  registered with the transport, so memory stays bounded however big the
  message is and however slowly the client reads.

File reads happen on the reactor thread, as Twisted's FileSender does: the
files are local and usually in the page cache.

A reply goes straight to the socket (:meth:`POP3ServerProtocol._write`) when
the transport is plain TCP with nothing queued: ``transport.write`` would
only queue it, ask the reactor for a writable event and send it on the next
loop turn (two ``epoll_ctl`` calls and a dispatch per reply, ~10% of the CPU
of a RETR).  Whatever the socket does not take at once, and every write under
TLS, goes through the transport as usual, after anything already queued.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet import interfaces, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from indimail_tw.lineserver import LineServerMixin, direct_socket, no_delay, send_now
from indimail_tw.pop3.parser import MessageEncoder, POP3Parser
from indimail_tw.pop3.replies import INTERNAL_ERROR, MessageBody, Response, err
from indimail_tw.pop3.session import POP3Session

log = Logger()

HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
HARD_LIMIT = 1024 * 1024
SMALL_MESSAGE = 256 * 1024
CHUNK = 64 * 1024


def client_of(transport: Any, service: str) -> Any:
    from indimail_tw.smtp.protocol import client_of as smtp_client_of

    return smtp_client_of(transport, service)


@implementer(interfaces.IPullProducer)
class _MessageStream:
    """Sends one big message: a chunk each time the transport asks for more."""

    def __init__(self, proto: POP3ServerProtocol, body: MessageBody,
                 encoder: MessageEncoder | None = None) -> None:
        self.proto = proto
        self.file = body.file
        self.encoder = encoder or MessageEncoder(body.lines)
        self.progressed = True
        self.finished = False

    def resumeProducing(self) -> None:  # noqa: N802
        if self.finished:
            return
        self.progressed = True
        try:
            chunk = b"" if self.encoder.done else self.file.read(CHUNK)
        except OSError:
            log.failure("POP3: reading a message failed")
            self.stopProducing()
            self.proto.stream_failed()
            return
        if chunk:
            out = self.encoder.feed(chunk)
            if out:
                self.proto.transport.write(out)
            if not self.encoder.done:
                return
        self.proto.transport.write(self.encoder.finish())
        self._close()
        self.proto.stream_done()

    def stopProducing(self) -> None:  # noqa: N802
        self._close()

    def _close(self) -> None:
        if not self.finished:
            self.finished = True
            with contextlib.suppress(OSError):
                self.file.close()


class POP3ServerProtocol(LineServerMixin, protocol.Protocol):
    """One POP3 connection; the factory builds its session (see ``service.POP3Factory``)."""

    high_water, low_water = HIGH_WATER, LOW_WATER
    starttls_command = "STLS"

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.parser = POP3Parser()
        self.session: POP3Session | None = None
        self.client: Any = None
        self.admitted = False            # counted by the factory's limiter
        self._waiting = True             # until the greeting is out; while a hook runs
        self._pumping = False
        self._paused = False
        self._closing = False
        self._timer: Any = None
        self._stream: _MessageStream | None = None

    # -- connection ----------------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        self.client = client_of(self.transport, self.factory.service)
        no_delay(self.transport)
        if not self.factory.tls_on_connect:
            self._socket = direct_socket(self.transport)
        if self.factory.tls_on_connect:             # implicit TLS on a plain listener (995)
            try:
                self.transport.startTLS(self.factory.tls_options())
            except Exception as e:  # noqa: BLE001
                log.error("no TLS for a connection from {ip}: {error}",
                          ip=self.client.remote_ip, error=e)
                self._closing = True
                self.transport.loseConnection()
                return
        result = self.factory.open_session(self, self.client)
        if isinstance(result, Response):
            self._emit(result)
            return
        self.session = result
        self._emit(result.greeting())
        if self._closing:
            return
        self._waiting = False
        self._arm_timer()
        self._pump()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._closing = True
        self.parser.close()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._stream is not None:
            self._stream.stopProducing()
            self._stream = None
        if self.session is not None:
            try:
                self.session.connection_lost()
            except Exception:  # noqa: BLE001
                log.failure("POP3 session cleanup failed")
        self.factory.connection_closed(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._closing:
            return
        self.parser.feed(data)
        if self.parser.buffered > HARD_LIMIT:
            log.warn("input buffer overflow from {ip}", ip=self.client and self.client.remote_ip)
            self._emit(err("Input buffer overflow.", close=True))
            return
        if self.session is not None and not self._waiting:
            self._arm_timer()
        self._pump()

    # -- the pump --------------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            self._handle_events()
        finally:
            self._pumping = False
        self._flow()

    def _resume(self, result: Response | None) -> None:
        self._waiting = False
        self._emit(result)
        if not self._closing and not self._waiting:
            self._arm_timer()
            self._pump()

    def _fatal(self, failure: Failure) -> None:
        log.failure("POP3 connection error", failure)
        self._emit(err(INTERNAL_ERROR, close=True))

    def _emit(self, response: Response | None) -> None:
        if response is None or self._closing:
            if response is not None and response.body is not None:
                response.body.file.close()
            return
        if response.body is not None:
            self._send_body(response)
            return
        if response.data:
            self._write(response.data)
        if response.starttls:
            self._start_tls()
        elif response.close:
            self._close()

    def _send_body(self, response: Response) -> None:
        body = response.body
        encoder = None
        if body.size <= SMALL_MESSAGE:
            # the file is at most its RFC 822 size: one read of that size gets all of it
            try:
                data = b""
                while len(data) <= body.size:
                    chunk = body.file.read(body.size + 1 - len(data))
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                body.file.close()
                log.failure("POP3: reading a message failed")
                self._emit(err(INTERNAL_ERROR))
                return
            encoder = MessageEncoder(body.lines)
            out = encoder.feed(data)
            if len(data) <= body.size or encoder.done:
                body.file.close()
                self._write(response.data + out + encoder.finish())
                return
            self._write(response.data + out)      # it grew: stream the rest
        else:
            self._write(response.data)
        self._waiting = True
        self._stream = _MessageStream(self, body, encoder)
        self.transport.registerProducer(self._stream, False)

    def _write(self, data: bytes) -> None:
        send_now(self.transport, self._socket, data)

    def stream_done(self) -> None:
        self._stream = None
        self.transport.unregisterProducer()
        if self._closing:
            return
        self._waiting = False
        self._arm_timer()
        self._pump()

    def stream_failed(self) -> None:
        """A read error half way: the client cannot tell a short message: drop it."""
        self._stream = None
        self.transport.unregisterProducer()
        self._close()

    # -- idle timeout ----------------------------------------------------------------------------

    def _timed_out(self) -> None:
        if self._closing or self.session is None:
            return
        stream = self._stream
        if stream is not None and not stream.progressed:
            log.info("POP3 client {ip} stopped reading; closing",
                     ip=self.client.remote_ip if self.client else "")
            self._close()
            return
        if self._waiting:                # we are the slow one (or still sending): wait
            if stream is not None:
                stream.progressed = False
            self._arm_timer()
            return
        log.info("POP3 timeout from {ip}", ip=self.client.remote_ip if self.client else "")
        self._emit(self.session.timed_out())
