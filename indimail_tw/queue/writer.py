"""Receiving one message into a queue: bounded memory, durable commit.

``write`` keeps up to ``spill_limit`` bytes in memory; beyond that the buffered
bytes go to the message's file in ``tmp/`` in the background, in order (one
disk operation at a time per message).  ``commit`` hands the message to the
queue's group committer, whose job writes the rest and the envelope into the
same file, fsyncs it and commits the batch; its Deferred fires with the queue
id once the batch is committed.  One job for everything a batch needs keeps the work
per message on the reactor (and hand-offs to threads) small.
"""

from __future__ import annotations

import dataclasses
import errno
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from indimail_tw.errors import MailError, temporary_failure
from indimail_tw.interfaces import IMessageWriter
from indimail_tw.queue.envelope import Envelope, Recipient
from indimail_tw.queue.store import DataFile, Pending, new_tmp_name

if TYPE_CHECKING:
    from indimail_tw.queue.queue import Queue

log = Logger(namespace="indimail_tw.queue")

SPILL_LIMIT = 256 * 1024
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

OPEN, COMMITTING, COMMITTED, ABORTED, FAILED = (
    "open", "committing", "committed", "aborted", "failed")


def storage_error(failure: Failure) -> Failure:
    """Turn a disk error into the MailError a receiver answers with."""
    error = failure.value
    if isinstance(error, MailError):
        return failure
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        return Failure(MailError(452, "4.3.1", "insufficient system storage", cause=error))
    log.failure("queue write failed", failure)
    return Failure(temporary_failure(error))


def with_extra_recipients(recipients: list[Recipient],
                          extra: tuple[str, ...]) -> list[Recipient]:
    """qmail-queue's ``EXTRAQUEUE``: the extra addresses come first, then the
    message's own recipients.  An address already among them is not added twice
    (qmail-queue would deliver it twice); blank lines are ignored."""
    out = list(recipients)
    if not extra:
        return out
    have = {r.address.lower() for r in recipients}
    added = []
    for address in extra:
        address = address.strip()
        if address and address.lower() not in have:
            have.add(address.lower())
            added.append(Recipient(address))
    return added + out


@implementer(IMessageWriter)
class MessageWriter:
    """One message on its way into ``queue`` (see :class:`IMessageWriter`).

    At most one disk operation per message is in flight; bytes written meanwhile
    wait in the buffer and the next spill takes them all, so a slow disk means
    fewer, larger writes.  :meth:`drained` lets a receiver pause its peer until
    the buffer is below the limit again.
    """

    def __init__(self, queue: Queue, envelope: Envelope,
                 spill_limit: int = SPILL_LIMIT) -> None:
        self.queue = queue
        self.envelope = envelope
        self.size = 0
        self.state = OPEN
        self._limit = spill_limit
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._source: Any = None
        self._data = DataFile()
        self._busy = True                   # until the queue has been recovered
        self._error: Failure | None = None
        self._result: defer.Deferred | None = None
        self._drain: list[defer.Deferred] = []
        queue.writers += 1
        queue.when_open().addCallbacks(self._idle, self._broken)

    def write(self, data: bytes) -> None:
        """Append bytes; past the spill limit they go to disk in the background.

        After a disk error the bytes are dropped: :meth:`commit` reports the error.
        """
        if self.state == FAILED:
            return
        if self.state != OPEN:
            raise RuntimeError(f"write to a message writer that is {self.state}")
        if not data:
            return
        self.size += len(data)
        self._buffer.append(bytes(data))
        self._buffered += len(data)
        if self._buffered >= self._limit and not self._busy:
            self._spill()

    def write_from(self, source: Any) -> None:
        """Take the rest of the message from a readable binary file object.

        It is read in a thread at commit time; ``size`` counts its bytes only once
        the message is committed.
        """
        self._source = source

    def drained(self) -> defer.Deferred:
        """Fires once fewer than ``spill_limit`` bytes wait in memory."""
        if self._buffered < self._limit or self.state != OPEN:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._drain.append(d)
        return d

    def commit(self) -> defer.Deferred:
        """Deferred[queue id] once the message is durable; MailError if it cannot be."""
        if self.state == FAILED and self._error is not None:
            return defer.fail(self._error)
        if self.state != OPEN:
            return defer.fail(RuntimeError(f"commit of a message writer that is {self.state}"))
        self.state = COMMITTING
        self._result = defer.Deferred()
        if not self._busy:
            self._prepare()
        return self._result

    def abort(self) -> None:
        """Throw the partial message away (its file is removed in the background)."""
        if self.state != OPEN:
            return
        self._end(ABORTED)
        self._buffer, self._buffered = [], 0
        if not self._busy:
            self._discard()

    # -- internals ------------------------------------------------------------------------

    def _take(self) -> bytes:
        chunk = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        return chunk

    def _spill(self) -> None:
        self._busy = True
        d = self.queue.run(self.queue.store.append, self._data, self._take())
        d.addCallbacks(self._idle, self._broken)
        self._release()

    def _idle(self, _: Any = None) -> None:
        """The last disk operation is done: do whatever is due next."""
        self._busy = False
        if self.state == COMMITTING:
            self._prepare()
        elif self.state == ABORTED:
            self._discard()
        elif self.state == OPEN and self._buffered >= self._limit:
            self._spill()

    def _prepare(self) -> None:
        """Join the next commit batch, whose job makes data and envelope durable.

        With a ``source`` the size is known only after copying it, so that message
        is prepared by a job of its own first.
        """
        self._busy = True
        envelope = self.envelope
        if not envelope.received_at:
            envelope = dataclasses.replace(envelope, received_at=self.queue.clock.seconds())
        envelope = dataclasses.replace(
            envelope, recipients=with_extra_recipients(envelope.recipients,
                                                       self.queue.extra_recipients()),
            extra=dict(envelope.extra))
        store, name = self.queue.store, new_tmp_name()
        if self._source is not None:
            d = self.queue.run(store.prepare, self._data, self._take(), envelope, name,
                               self._source)
            d.addCallback(self.queue.committer.submit)
        else:
            d = self.queue.committer.submit(
                Pending(self._data, self._take(), envelope, self.size, name))
        d.addCallbacks(self._committed, self._broken)

    def _committed(self, prepared: Any) -> None:
        self.size = prepared.size
        self._end(COMMITTED)
        try:
            self.queue.committed(prepared)
        except Exception:  # noqa: BLE001 -- the message is durable: acknowledge it anyway
            log.failure("scheduling msg {id} failed; it is delivered after a restart",
                        id=prepared.id)
        self._result.callback(prepared.id)

    def _broken(self, failure: Failure) -> None:
        """A disk operation failed (the store has removed the message's files)."""
        self._busy = False
        self._error = storage_error(failure)
        self._buffer, self._buffered = [], 0
        result, state = self._result, self.state
        if state in (OPEN, COMMITTING):
            self._end(FAILED)
        if state == COMMITTING:
            result.errback(self._error)
        elif state == ABORTED:
            self._discard()

    def _discard(self) -> None:
        self._busy = True
        d = self.queue.run(self.queue.store.discard, self._data)
        d.addErrback(lambda f: log.failure("discarding an aborted message", f))

    def _end(self, state: str) -> None:
        self.state = state
        self.queue.writers -= 1
        self._release()

    def _release(self) -> None:
        if self._drain and (self._buffered < self._limit or self.state != OPEN):
            waiting, self._drain = self._drain, []
            for d in waiting:
                d.callback(None)
