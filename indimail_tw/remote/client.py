"""The thin Twisted side of the SMTP client: transport <-> :class:`ClientCore`.

:func:`connect` opens one TCP connection (optionally bound to a source
address) and returns its :class:`SMTPClientProtocol`, whose ``ready``
Deferred fires with ``None`` once the core says Ready, or with a
:class:`SessionFailed` (never an errback).  :meth:`SMTPClientProtocol.transact`
runs one transaction and fires with its :class:`TransactionDone`.

The protocol decides nothing: it writes what the core wants written, starts
TLS when told (STARTTLS, or at once for implicit TLS on port 465), streams
the message body from its file through a thread (:class:`BodySender`, which
is a push producer, so a slow peer pauses the reads), and runs the read
timeout (``timeoutremote``) whenever the peer owes us something.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from indimail_tw.datafile import open_data
from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.remote.body import CHUNK, BodyEncoder
from indimail_tw.remote.client_parser import (
    ClientCore,
    Closed,
    Phase,
    Ready,
    SendBody,
    SessionFailed,
    StartTLS,
    Transaction,
    TransactionDone,
)

log = Logger()

RunInThread = Callable[..., defer.Deferred]


def _open_message(path: str, size: int | None) -> Any:
    return io.BufferedReader(open_data(path, size), CHUNK)


@implementer(IPushProducer)
class BodySender:
    """Streams a message file to a transport: read and encode in a thread, write here."""

    def __init__(self, path: str, transport: Any, run: RunInThread,
                 progress: Callable[[], None],
                 done: Callable[[Failure | None], None], size: int | None = None) -> None:
        self.path = path
        self.size = size                  # the message is the file's first size bytes
        self.transport = transport
        self.run = run
        self.progress = progress
        self.done = done
        self.encoder = BodyEncoder()
        self._file: Any = None
        self._paused = False
        self._busy = False
        self._finished = False

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._busy = True
        self.run(_open_message, self.path, self.size).addCallbacks(self._opened, self._failed)

    def _opened(self, f: Any) -> None:
        self._file = f
        self._busy = False
        if self._finished:
            self._close()
            return
        self._pump()

    def _read(self) -> tuple[bytes, bool]:
        """In the thread: the next encoded chunk and whether it was the last."""
        data = self._file.read(CHUNK)
        if data:
            return self.encoder.feed(data), False
        return self.encoder.finish(), True

    def _pump(self) -> None:
        if self._paused or self._busy or self._finished:
            return
        self._busy = True
        self.run(self._read).addCallbacks(self._chunk, self._failed)

    def _chunk(self, result: tuple[bytes, bool]) -> None:
        self._busy = False
        if self._finished:
            self._close()
            return
        data, last = result
        self.transport.write(data)
        self.progress()
        if last:
            self._end(None)
        else:
            self._pump()

    def _failed(self, failure: Failure) -> None:
        self._busy = False
        if not self._finished:
            self._end(failure)
        else:
            self._close()

    def _end(self, failure: Failure | None) -> None:
        self._finished = True
        self.transport.unregisterProducer()
        self._close()
        self.done(failure)

    def _close(self) -> None:
        f, self._file = self._file, None
        if f is not None and not self._busy:
            self.run(f.close).addErrback(lambda _f: None)
        elif f is not None:
            self._file = f                  # closed when the read in flight returns

    def pauseProducing(self) -> None:  # noqa: N802
        self._paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:  # noqa: N802
        """The connection is gone."""
        if not self._finished:
            self._finished = True
            self._close()


@implementer(IHandshakeListener)
class SMTPClientProtocol(protocol.Protocol):
    """One SMTP client connection (see the module docstring)."""

    def __init__(self, core: ClientCore, *, clock: Any, timeout: float,
                 tls_options: Callable[[], Any] | None, run: RunInThread,
                 implicit_tls: bool = False) -> None:
        self.core = core
        self.clock = clock
        self.timeout = timeout
        self.tls_options = tls_options
        self.run = run
        self.implicit_tls = implicit_tls
        self.ready: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.created = clock.seconds()
        self.peer = ""
        self._tx: defer.Deferred | None = None
        self._path = ""
        self._size: int | None = None
        self._wire: bytes | None = None
        self._body: BodySender | None = None
        self._timer: Any = None
        self._gone = False

    # -- what the agent calls -------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Connected and Ready for another transaction."""
        return not self._gone and self.core.phase is Phase.READY

    def transact(self, tx: Transaction, path: str, wire: bytes | None = None,
                 size: int | None = None) -> defer.Deferred:
        """Deferred[TransactionDone] for one message read from ``path`` (its first
        ``size`` bytes; None: the whole file), or sent as ``wire``, the message
        already encoded for DATA with its terminator."""
        d = self._tx = defer.Deferred()
        self._path = path
        self._size = size
        self._wire = wire
        self._handle(self.core.start(tx))
        return d

    def quit(self) -> None:
        if not self._gone:
            self._handle(self.core.quit())

    def abort(self) -> None:
        if not self._gone and self.transport is not None:
            self.transport.abortConnection()

    # -- Twisted's side -------------------------------------------------------------------------

    def connectionMade(self) -> None:  # noqa: N802
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        if self.implicit_tls and self.tls_options is not None:
            self.transport.startTLS(self.tls_options())
        self._update_timer()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._cancel_timer()
        self._handle(self.core.receive(data))

    def handshakeCompleted(self) -> None:  # noqa: N802
        self._cancel_timer()
        self._handle(self.core.tls_started())

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._gone = True
        self._cancel_timer()
        if self._body is not None:
            self._body.stopProducing()
            self._body = None
        detail = "" if reason.check(error.ConnectionDone) else _describe(reason)
        self._handle(self.core.connection_lost(detail))
        if not self.ready.called:
            self.ready.callback(SessionFailed(DeliveryResult.temporary(
                f"Connected to {self.core.host} but connection died. (#4.4.2)", "4.4.2"),
                next_mx=True))
        if not self.closed.called:
            self.closed.callback(None)

    # -- events -----------------------------------------------------------------------------------

    def _handle(self, events: list) -> None:
        data = self.core.outgoing()
        if data and not self._gone:
            self.transport.write(data)
        for event in events:
            if isinstance(event, Ready):
                if not self.ready.called:
                    self.ready.callback(None)
            elif isinstance(event, StartTLS):
                self._start_tls()
            elif isinstance(event, SendBody):
                self._send_body()
            elif isinstance(event, TransactionDone):
                d, self._tx = self._tx, None
                if d is not None:
                    d.callback(event)
            elif isinstance(event, SessionFailed):
                if not self.ready.called:
                    self.ready.callback(event)
                self._close()
            elif isinstance(event, Closed):
                self._close()
        self._update_timer()

    def _start_tls(self) -> None:
        if self.tls_options is None:          # the core only asks when TLS is wanted
            self._handle(self.core.abort(f"Connected to {self.core.host} but I have no TLS "
                                         "settings for it. (#4.3.0)"))
            return
        try:
            options = self.tls_options()
        except Exception as e:  # noqa: BLE001 -- bad CA file etc.: this host fails
            log.error("TLS settings for {host}: {error}", host=self.core.host, error=e)
            self._handle(self.core.abort(f"Connected to {self.core.host} but my TLS settings "
                                         f"for it are unusable ({e}). (#4.3.0)"))
            return
        self.transport.startTLS(options)

    def _send_body(self) -> None:
        if self._wire is not None:
            wire, self._wire = self._wire, None
            self.transport.write(wire)
            self._progress()
            self._handle(self.core.body_sent())
            return
        self._body = BodySender(self._path, self.transport, self.run, self._progress,
                                self._body_done, self._size)
        self._body.start()

    def _progress(self) -> None:
        self._cancel_timer()
        self._update_timer()

    def _body_done(self, failure: Failure | None) -> None:
        self._body = None
        if self._gone:
            return
        if failure is not None:
            log.error("cannot read {path}: {error}", path=self._path,
                      error=failure.getErrorMessage())
            self._handle(self.core.abort("Unable to read message. (#4.3.0)"))
            return
        self._handle(self.core.body_sent())

    def _close(self) -> None:
        if not self._gone and self.transport is not None:
            self.transport.loseConnection()

    # -- the read timeout -------------------------------------------------------------------

    def _update_timer(self) -> None:
        busy = self.core.waiting or self._body is not None
        if busy and not self._gone and self._timer is None:
            self._timer = self.clock.callLater(self.timeout, self._timed_out)
        elif not busy:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        if self._body is not None:
            self._body.stopProducing()
            self._body = None
        self._handle(self.core.timed_out())
        if self.transport is not None:
            self.transport.abortConnection()


def _describe(reason: Failure) -> str:
    """A short text for a lost connection (the TLS library's reason, if that was it)."""
    value = reason.value
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list):         # OpenSSL.SSL.Error: [(lib, func, reason)]
        reasons = [entry[-1] for entry in args[0] if isinstance(entry, tuple) and entry]
        if reasons:
            return "; ".join(str(r) for r in reasons)
    return reason.getErrorMessage()


class _Factory(protocol.ClientFactory):
    def __init__(self, proto: SMTPClientProtocol, host: str) -> None:
        self.proto = proto
        self.host = host

    def buildProtocol(self, addr: Any) -> SMTPClientProtocol:  # noqa: N802
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:  # noqa: N802
        proto = self.proto
        if not proto.ready.called:
            timed_out = reason.check(error.TimeoutError) is not None
            why = "timed out" if timed_out else _describe(reason)
            proto.ready.callback(SessionFailed(DeliveryResult.temporary(
                f"Sorry, I wasn't able to establish an SMTP connection to {self.host} "
                f"({why}). (#4.4.1)", "4.4.1"), next_mx=True, tcpto=True))
        if not proto.closed.called:
            proto.closed.callback(None)


def connect(reactor: Any, ip: str, port: int, core: ClientCore, *, connect_timeout: float,
            timeout: float, run: RunInThread, tls_options: Callable[[], Any] | None = None,
            implicit_tls: bool = False, bind: str | None = None,
            clock: Any = None) -> SMTPClientProtocol:
    """Start connecting to ``ip``:``port``; wait on the returned protocol's ``ready``.

    ``clock`` (default: the reactor) runs the read timeout.
    """
    proto = SMTPClientProtocol(core, clock=clock or reactor, timeout=timeout,
                               tls_options=tls_options, run=run, implicit_tls=implicit_tls)
    factory = _Factory(proto, f"{core.host} [{ip}]")
    reactor.connectTCP(ip, port, factory, timeout=connect_timeout,
                       bindAddress=(bind, 0) if bind else None)
    return proto
