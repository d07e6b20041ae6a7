"""What the line-based server protocols (SMTP, POP3) share: closing, input flow
control, starting TLS after STARTTLS/STLS and the idle timer.

A mixin of a Twisted ``Protocol`` that has ``parser`` (with ``buffered``,
``close()`` and ``discard_buffered()``), ``factory`` (``clock``,
``tls_options()``), ``session`` (``config.timeout``, ``tls_started()``),
``client``, ``_timer``, ``_closing``, ``_paused``, ``_waiting`` and ``_timed_out()``,
``_resume()``, ``_fatal()`` and ``_emit()``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Any

from twisted.internet import defer, tcp
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


def no_delay(transport: Any) -> None:
    """Switch Nagle's algorithm off where the transport has a TCP socket: replies
    are small and each waits for the client's next command, so Nagle plus the
    peer's delayed ACK would hold every reply up to 40 ms."""
    # not TCP (a UNIX socket, a test transport): nothing to do
    with contextlib.suppress(AttributeError, NotImplementedError, OSError):
        transport.setTcpNoDelay(True)


def direct_socket(transport: Any) -> Any:
    """The socket of a plain TCP transport (reactor-driven, no TLS), else None."""
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        return transport.socket
    return None


def _load_quick_send() -> Any:
    """libc's ``send`` called without giving up the interpreter lock (Linux), or None.

    Python gives up the lock around every socket call, even one on a
    non-blocking socket that returns at once; in a busy server another thread
    (a queue or delivery job) then takes it, and the reactor thread waits for
    that thread's next system call before it can go on, on every reply (measured:
    about 120 microseconds per send under load).  A non-blocking ``send`` never
    waits, so keeping the lock costs nothing.
    """
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.PyDLL(None, use_errno=True).send
    except (OSError, AttributeError, ImportError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_ssize_t
    return fn


_quick_send = _load_quick_send()
_DONTWAIT = 0x40 | 0x4000            # MSG_DONTWAIT | MSG_NOSIGNAL (Linux)


def _send(sock: Any, data: bytes) -> int:
    """Bytes of ``data`` the socket took (0 when it takes none now); OSError on an error."""
    if _quick_send is None or not isinstance(sock, socket.socket):
        return sock.send(data)
    sent = _quick_send(sock.fileno(), data, len(data), _DONTWAIT)
    if sent >= 0:
        return sent
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
        return 0
    raise OSError(err, os.strerror(err))


def send_now(transport: Any, sock: Any, data: bytes) -> None:
    """``transport.write(data)``, but sending at once what the socket takes when
    nothing is queued before it.

    ``transport.write`` only queues the bytes, asks the reactor for a writable
    event and sends them on the next loop turn: two ``epoll_ctl`` calls and a
    dispatch per reply, about a tenth of the CPU of a POP3 RETR or an SMTP
    transaction.  ``sock`` is :func:`direct_socket`'s result, None under TLS
    (then everything goes through the transport).  Whatever the socket does not
    take at once is queued in order behind nothing.
    """
    if (sock is not None and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and transport.connected and not transport.disconnecting
            and transport.producer is None):
        try:
            sent = _send(sock, data)
        except OSError:          # EAGAIN, or an error the transport's own write will meet
            sent = 0
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)


class LineServerMixin:
    transport: Any
    parser: Any
    factory: Any
    session: Any
    client: Any
    _timer: Any
    _closing: bool
    _paused: bool
    _waiting: bool
    #: the plain TCP socket replies may be sent on directly (:func:`send_now`);
    #: None under TLS (set by the protocol once it knows the transport)
    _socket: Any = None

    #: pause reading when this many bytes wait for the session; resume below the low mark
    high_water = 64 * 1024
    low_water = 16 * 1024
    #: the command's name, for the log
    starttls_command = "STARTTLS"

    def _handle_events(self) -> None:
        """Hand the parser's events to the session in order until one needs to wait
        (a Deferred: ``_resume`` carries on) or the input runs out."""
        while not self._waiting and not self._closing and self.session is not None:
            event = self.parser.next_event()
            if event is None:
                break
            try:
                result = self.session.handle(event)
            except Exception:  # noqa: BLE001 -- the session handles its own; belt and braces
                result = self.session.internal_error(Failure())
            if isinstance(result, defer.Deferred):
                self._waiting = True
                result.addCallback(self._resume).addErrback(self._fatal)
            else:
                self._emit(result)

    def _close(self) -> None:
        self._closing = True
        self.parser.close()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.transport.loseConnection()

    def _flow(self) -> None:
        buffered = self.parser.buffered
        if not self._paused and buffered > self.high_water and not self._closing:
            self._paused = True
            self.transport.pauseProducing()
        elif self._paused and (buffered < self.low_water or self._closing):
            self._paused = False
            self.transport.resumeProducing()

    def _start_tls(self) -> None:
        """Start TLS; whatever the client pipelined after the command is discarded
        (the plaintext-injection class of bugs)."""
        self._socket = None              # from now on every byte goes through TLS
        dropped = self.parser.discard_buffered()
        if dropped:
            log.warn("discarded {n} bytes pipelined after {command} from {ip}", n=dropped,
                     command=self.starttls_command,
                     ip=self.client.remote_ip if self.client else "")
        try:
            self.transport.startTLS(self.factory.tls_options())
        except Exception:  # noqa: BLE001
            log.failure("{command} failed", command=self.starttls_command)
            self._close()
            return
        if self.session is not None:
            self.session.tls_started()

    def _arm_timer(self) -> None:
        if self.session is None or self._closing:
            return
        timeout = self.session.config.timeout
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self.factory.clock.callLater(timeout, self._timed_out)

    def _timed_out(self) -> None:
        raise NotImplementedError
