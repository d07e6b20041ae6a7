"""The thin Twisted adapter: transport <-> parser <-> session, strictly in order.

It decides no policy.  Bytes go to the parser; its events wait in a queue and
go to the session one at a time; a reply (an iterable of lines, or a Deferred
of one) is written completely before the next event is handled, so pipelined
commands are answered in order even when one of them waits for a thread.

Besides that it does what a session cannot:

* flow control: it is a streaming producer for the transport, so a large
  reply (FETCH of many bodies) is written in chunks only as fast as the
  client reads; and it stops reading while too many commands wait;
* STARTTLS: after the tagged OK, whatever the client sent after the command
  is discarded (no plaintext injection into the TLS session), then TLS starts;
* COMPRESS=DEFLATE (RFC 4978): raw deflate both ways after the tagged OK;
  input is inflated in bounded chunks (no decompression bomb);
* IDLE: while the session idles, a LoopingCall asks it for updates every
  ``config.idle_poll`` seconds (only idling connections have one);
* the autologout timer (one ``callLater`` per connection);
* an unexpected exception becomes ``tag NO [SERVERBUG]`` and a logged
  traceback; the connection lives on.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any

from twisted.internet import defer, interfaces, protocol, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from indimail_tw.imap4.parser import IMAPParser
from indimail_tw.imap4.tokens import Command
from indimail_tw.smtp.protocol import client_of, no_delay

log = Logger()

CHUNK = 64 * 1024              # bytes written per transport.write of a long reply
MAX_QUEUED = 32                # events waiting before we stop reading
INFLATE_CHUNK = 64 * 1024


@implementer(interfaces.IPushProducer)
class IMAPServerProtocol(protocol.Protocol):
    """One IMAP connection; the factory builds its session (see ``service.IMAPFactory``)."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.parser = IMAPParser(max_literal=factory.max_literal)
        self.session: Any = None
        self.client: Any = None
        self.admitted = False            # counted by the factory's limiter
        self._events: deque = deque()
        self._reply: Any = None          # the iterator being written
        self._reply_wait: defer.Deferred | None = None   # what it waits for (see _write_reply)
        self._idle_waiting = False       # an IDLE poll waits for its scan (a thread)
        self._tag: bytes | None = None   # the tag of the command being answered
        self._busy = True                # until the greeting is out
        self._pumping = False
        self._raw = False                # the parser's raw line mode, as last set
        self._registered = False         # we are the transport's producer
        self._closing = False
        self._out_paused = False
        self._in_paused = False
        self._timer: Any = None
        self._idle: Any = None
        self._deflate: Any = None
        self._inflate: Any = None

    # -- connection --------------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        self.client = client_of(self.transport, "imap")
        no_delay(self.transport)
        self.factory.connections.add(self)
        self.transport.registerProducer(self, True)
        self._registered = True
        if self.factory.tls_on_connect:
            try:
                self.transport.startTLS(self.factory.tls_options())
            except Exception as e:  # noqa: BLE001
                log.error("no TLS for a connection from {ip}: {error}",
                          ip=self.client.remote_ip, error=e)
                self._close()
                return
        result = self.factory.open_session(self, self.client)
        if isinstance(result, defer.Deferred):
            result.addCallback(self._opened).addErrback(self._fatal)
        else:
            self._opened(result)

    def _opened(self, result: Any) -> None:
        if self._closing:
            return
        if not hasattr(result, "handle"):        # refused: the lines to send, then close
            self._write(b"".join(result))
            self._close()
            return
        self.session = result
        self._start_reply(None, result.greeting())

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._closing = True
        self._registered = False
        self._stop_timer()
        self._stop_idle()
        self._events.clear()
        self._reply = None
        self.factory.connections.discard(self)
        if self.session is not None:
            try:
                self.session.connection_lost()
            except Exception:  # noqa: BLE001
                log.failure("IMAP session cleanup failed")
        self.factory.connection_closed(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self._closing:
            return
        if self._inflate is not None:
            self._feed_compressed(data)
        else:
            self._events.extend(self.parser.feed(data))
        if self.session is not None and not self._busy:
            self._arm_timer()
        self._pump()

    def _feed_compressed(self, data: bytes) -> None:
        try:
            while data:
                out = self._inflate.decompress(data, INFLATE_CHUNK)
                data = self._inflate.unconsumed_tail
                if out:
                    self._events.extend(self.parser.feed(out))
        except zlib.error:
            log.info("bad compressed data from {ip}", ip=self.client.remote_ip)
            self._close()

    # -- the pump ------------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._pumping:                  # a synchronous reply finished inside the loop
            return
        self._pumping = True
        try:
            self._pump_events()
        finally:
            self._pumping = False
        self._flow()

    def _pump_events(self) -> None:
        while not self._busy and not self._closing and self._events:
            event = self._events.popleft()
            self._tag = event.tag if isinstance(event, Command) else getattr(event, "tag", None)
            try:
                result = self.session.handle(event)
            except Exception:  # noqa: BLE001
                result = self.session.internal_error(self._tag, Failure())
            if isinstance(result, defer.Deferred):
                self._busy = True
                result.addErrback(self._failed_reply, self._tag)
                result.addCallback(self._deferred_reply).addErrback(self._fatal)
                continue                   # the loop goes on if it fired already
            self._start_reply(self._tag, result)

    def _failed_reply(self, failure: Failure, tag: bytes | None) -> Any:
        if self._closing:
            return None
        return self.session.internal_error(tag, failure)

    def _deferred_reply(self, lines: Any) -> None:
        if self._closing:
            return
        self._start_reply(self._tag, lines)

    def _start_reply(self, tag: bytes | None, lines: Any) -> None:
        self._busy = True
        self._reply = iter(lines if lines is not None else ())
        self._write_reply()

    def _write_reply(self) -> None:
        """Write the reply's lines while the transport takes them.  A reply may also
        yield a Deferred (a big FETCH reading its next files): what came before
        it is written and the rest waits until it has fired."""
        while (self._reply is not None and not self._out_paused and not self._closing
               and self._reply_wait is None):
            batch, size, done = [], 0, False
            try:
                while size < CHUNK:
                    line = next(self._reply)
                    if isinstance(line, defer.Deferred):
                        self._reply_wait = line
                        break
                    batch.append(line)
                    size += len(line)
            except StopIteration:
                done = True
            except Exception:  # noqa: BLE001 -- a reply that failed half-way
                batch += self.session.internal_error(self._tag, Failure())
                done = True
            if batch:
                self._write(b"".join(batch))
            if done:
                self._reply = None
                self._after_reply()
                return
            if self._reply_wait is not None:
                # the reply handles the result (or failure) itself; only go on after it
                self._reply_wait.addBoth(self._reply_ready)
                return

    def _reply_ready(self, _result: Any) -> None:
        self._reply_wait = None
        if self._reply is not None and not self._closing:
            self._write_reply()

    def _after_reply(self) -> None:
        session = self.session
        if self._closing:
            return
        action = session.take_action()
        events: list = []
        if action == "close":
            self._close()
            return
        if action == "starttls":
            self._events.clear()
            dropped = len(self.parser.take_buffer())
            if dropped:
                log.warn("discarded {n} bytes pipelined after STARTTLS from {ip}", n=dropped,
                         ip=self.client.remote_ip)
            try:
                self.transport.startTLS(self.factory.tls_options())
            except Exception:  # noqa: BLE001
                log.failure("STARTTLS failed")
                self._close()
                return
            session.tls_started()
        elif action == "compress":
            leftover = self.parser.take_buffer()
            self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._inflate = zlib.decompressobj(-15)
            session.compression_started()
            if leftover:
                self._feed_compressed(leftover)
        if session.idling is not None and self._idle is None:
            self._start_idle()
        elif session.idling is None and self._idle is not None:
            self._stop_idle()
        if self.parser.paused or self._raw != session.raw_mode:
            self._raw = session.raw_mode
            events = self.parser.raw_line_mode(self._raw)
        self._events.extend(events)
        self._busy = False
        self._arm_timer()
        self._pump()

    def _fatal(self, failure: Failure) -> None:
        log.failure("IMAP connection error", failure)
        if not self._closing:
            self._write(b"* BYE Internal error, closing connection\r\n")
            self._close()

    def _write(self, data: bytes) -> None:
        if not data or self._closing:
            return
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.transport.write(data)

    def _close(self) -> None:
        self._closing = True
        self._stop_timer()
        self._stop_idle()
        self._unregister()
        self.transport.loseConnection()

    def _unregister(self) -> None:
        # TLS waits for a registered producer to go before it shuts down
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()

    def _flow(self) -> None:
        waiting = len(self._events)
        if not self._in_paused and waiting > MAX_QUEUED and not self._closing:
            self._in_paused = True
            self.transport.pauseProducing()
        elif self._in_paused and (waiting <= MAX_QUEUED // 2 or self._closing):
            self._in_paused = False
            self.transport.resumeProducing()

    # -- IPushProducer (the transport's write buffer) ---------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        self._out_paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self._out_paused = False
        if self._reply is not None:
            self._write_reply()

    def stopProducing(self) -> None:  # noqa: N802
        self._closing = True
        self._reply = None

    # -- IDLE ----------------------------------------------------------------------------------

    def _start_idle(self) -> None:
        if self.session.selected is None:
            return
        self._idle = task.LoopingCall(self._idle_tick)
        self._idle.clock = self.factory.clock
        self._idle.start(self.session.config.idle_poll, now=False)

    def _stop_idle(self) -> None:
        loop, self._idle = self._idle, None
        if loop is not None and loop.running:
            loop.stop()

    def _idle_tick(self) -> None:
        if self._busy or self._closing or self.session.idling is None or self._idle_waiting:
            return
        try:
            lines = self.session.idle_poll()
        except Exception:  # noqa: BLE001
            log.failure("IDLE poll failed")
            return
        if isinstance(lines, defer.Deferred):        # a scan runs in a thread first
            self._idle_waiting = True
            lines.addCallback(self._idle_lines).addErrback(self._idle_failed)
            return
        self._idle_lines(lines)

    def _idle_lines(self, lines: list[bytes]) -> None:
        self._idle_waiting = False
        if self._closing or self._busy or self.session.idling is None:
            return                           # IDLE ended meanwhile: its DONE reply polls
        if lines:
            self._write(b"".join(lines))
        if self.session.take_action() == "close":     # e.g. the folder's UIDVALIDITY changed
            self._close()

    def _idle_failed(self, failure: Failure) -> None:
        self._idle_waiting = False
        log.failure("IDLE poll failed", failure)

    # -- autologout and shutdown -----------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self.session is None or self._closing:
            return
        timeout = self.session.timeout
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self.factory.clock.callLater(timeout, self._timed_out)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        if self._closing or self.session is None:
            return
        if self._busy and self._reply is None:     # our own answer is late: wait for it
            self._arm_timer()
            return
        log.info("autologout of {ip}", ip=self.client.remote_ip if self.client else "")
        self._write(b"".join(self.session.timed_out()))
        self._close()

    def shutdown(self) -> None:
        """The server stops: say BYE and close."""
        if self._closing:
            return
        if self.session is not None:
            self._write(b"".join(self.session.shutting_down()))
        self._close()

    def tls_details(self) -> tuple[str, str] | None:
        if not interfaces.ISSLTransport.providedBy(self.transport):
            return None
        try:
            handle = self.transport.getHandle()
            return handle.get_protocol_version_name(), handle.get_cipher_name()
        except Exception:  # noqa: BLE001
            return None
