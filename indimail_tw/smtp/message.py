"""One message on its way into the queue: size limit, hop count, the queue writer.

Content arrives with LF line endings (DATA content from the parser, BDAT
chunks through :class:`~indimail_tw.smtp.parser.LineEndings`).  When the
writer offers ``drained()`` (the real queue does) and its buffer is full, the
session waits for it, so a slow disk pauses the client instead of filling
memory.  The first
failure (too big, a write error, a bare CR/LF in BDAT) is kept as the reply
for the end of the message; from then on content is counted and dropped and
the writer is aborted, so nothing partial reaches the queue.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from indimail_tw.errors import MailError
from indimail_tw.policy.base import Reject
from indimail_tw.policy.gates import TOO_BIG
from indimail_tw.smtp.parser import BareLineEnding, LineEndings

log = Logger()

WRITE_FAILED = Reject(451, "4.3.0", "Requested action aborted: local error in processing")
_HOP_HEADERS = (b"received:", b"delivered-to:")
_HEAD = 14


def bare_line_ending(kind: str) -> Reject:
    """qmail's straynewline, for bare LF and bare CR alike."""
    return Reject(451, "4.6.0", f"Requested action aborted: bare {kind} received "
                                "(see https://cr.yp.to/docs/smtplf.html)")


class MessageReceiver:
    """Feeds one message to an ``IMessageWriter``."""

    def __init__(self, writer: Any, databytes: int = 0) -> None:
        self.writer = writer
        self.databytes = databytes
        self.size = 0                 # content bytes (LF endings), our Received line excluded
        self.hops = 0
        self.error: Reject | None = None
        self._in_header = True
        self._head = bytearray()
        self._endings = LineEndings()
        self._closed = False

    def write_header(self, data: bytes) -> defer.Deferred | None:
        """Our own header lines (not counted against databytes or as hops)."""
        return self._write(data)

    def feed(self, data: bytes) -> defer.Deferred | None:
        if self.error is not None or not data:
            return None
        self.size += len(data)
        if self.databytes and self.size > self.databytes:
            self.fail(TOO_BIG)
            return None
        if self._in_header:
            self._count_hops(data)
        return self._write(data)

    def feed_raw(self, data: bytes) -> defer.Deferred | None:
        """A BDAT chunk's octets: CRLF becomes LF; a bare CR or LF refuses the message."""
        if self.error is not None:
            return None
        try:
            converted = self._endings.convert(data)
        except BareLineEnding as e:
            self.fail(bare_line_ending(e.kind))
            return None
        return self.feed(converted)

    def finish_raw(self) -> None:
        if self.error is None:
            try:
                self._endings.finish()
            except BareLineEnding as e:
                self.fail(bare_line_ending(e.kind))

    def _write(self, data: bytes) -> defer.Deferred | None:
        try:
            result = self.writer.write(data)
        except MailError as e:
            self.fail(Reject.from_error(e))
            return None
        except Exception:  # noqa: BLE001 -- any writer failure refuses this message only
            log.failure("queue writer failed")
            self.fail(WRITE_FAILED)
            return None
        if isinstance(result, defer.Deferred):
            return result.addErrback(self._write_failed)
        drained = getattr(self.writer, "drained", None)   # the queue's backpressure
        if drained is not None:
            wait = drained()
            if isinstance(wait, defer.Deferred) and not wait.called:
                return wait.addErrback(self._write_failed)
        return None

    def _write_failed(self, failure: Any) -> None:
        if failure.check(MailError):
            self.fail(Reject.from_error(failure.value))
        else:
            log.failure("queue writer failed", failure)
            self.fail(WRITE_FAILED)

    def _count_hops(self, data: bytes) -> None:
        head = self._head
        pos, n = 0, len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl
            if len(head) < _HEAD:
                head += data[pos:min(end, pos + _HEAD - len(head))]
            if nl < 0:
                return
            if not head:                       # the empty line ends the header
                self._in_header = False
                return
            if bytes(head).lower().startswith(_HOP_HEADERS):
                self.hops += 1
            head.clear()
            pos = nl + 1

    def fail(self, reject: Reject) -> None:
        if self.error is None:
            self.error = reject
        self.abort()

    def abort(self) -> None:
        """Throw the partial message away (at most once)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.writer.abort()
        except Exception:  # noqa: BLE001
            log.failure("aborting the queue writer failed")

    def commit(self) -> defer.Deferred:
        """Deferred[queue id]; fires only when the queue has the message durably."""
        self._closed = True
        return defer.maybeDeferred(self.writer.commit)
