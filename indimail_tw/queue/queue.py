"""A queue (one directory, its committer and its scheduler) and a set of queues."""

from __future__ import annotations

import random
from functools import partial
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from indimail_tw.interfaces import IQueue
from indimail_tw.logsetup import QuickLogger
from indimail_tw.queue import records
from indimail_tw.queue.batch import Batcher, Runner, SyncRunner
from indimail_tw.queue.envelope import Envelope
from indimail_tw.queue.message import QueuedMessage
from indimail_tw.queue.scheduler import Scheduler
from indimail_tw.queue.states import RecipientState
from indimail_tw.queue.store import Pending, Prepared, QueueStore, Recovered
from indimail_tw.queue.writer import SPILL_LIMIT, MessageWriter

log = QuickLogger(namespace="indimail_tw.queue")


def _default_bounce_factory(message: Any, failures: Any, settings: Any,
                            expired: bool = False) -> Any:
    from indimail_tw.delivery.bounce import make_bounce   # written alongside; import late

    return make_bounce(message, failures, settings, expired=expired)


#: A message received in memory stays there for its first deliveries (local delivery
#: then need not read it back from disk) when it is at most KEEP_MAX bytes and the
#: queue holds at most RESIDENT_LIMIT bytes of such copies; the scheduler lets go of
#: a copy once none of the message's deliveries is running.
KEEP_MAX = 64 * 1024
RESIDENT_LIMIT = 16 * 1024 * 1024


@implementer(IQueue)
class Queue:
    """One queue directory (e.g. ``queue/queue1``) with its own scheduler.

    ``commit_jobs`` commit batches may run at once (each writes and fsyncs its
    messages one after the other, then shares the directory fsyncs).  With
    ``ring`` (an :class:`indimail_tw.iouring.ReactorRing`) the reactor commits
    messages received in memory through io_uring instead of a thread
    (:meth:`QueueStore.commit_on`).
    """

    def __init__(self, path: str, *, name: str | None = None, clock: Any, run: Runner,
                 agents: Mapping[str, Any], router: Callable[[str], str],
                 settings: Callable[[], Any], bounce_factory: Callable[..., Any] | None = None,
                 inject: Callable[[Envelope, bytes], defer.Deferred] | None = None,
                 spill_limit: int = SPILL_LIMIT, debug: bool = False,
                 commit_jobs: int = 1, ring: Any = None) -> None:
        self.store = QueueStore(path)
        self.settings = settings
        self.name = name or path.rstrip("/").rpartition("/")[2]
        self.clock = clock
        self.run = run
        self.spill_limit = spill_limit
        self.committer: Batcher[Prepared | Pending]
        if ring is None:
            self.committer = Batcher(run, self.store.commit, parallel=commit_jobs)
        else:                    # io_uring from the reactor (QueueStore.commit_on)
            self.committer = Batcher(SyncRunner(), partial(self.store.commit_on, ring, run),
                                     parallel=commit_jobs)
        if ring is None:
            journal = Batcher(run, self.store.apply)
        else:
            journal = Batcher(SyncRunner(), partial(self.store.apply_on, ring, run))
        self.journal = _Journal(journal, self.name, clock, self.store)
        self.scheduler = Scheduler(
            self.name, clock=clock, agents=agents, router=router, settings=settings,
            journal=self.journal, run=run,
            bounce_factory=bounce_factory or _default_bounce_factory,
            inject=inject or self.enqueue, debug=debug)
        self.writers = 0           # messages being received or committed
        self.resident = 0          # bytes of messages kept in memory (see committed())
        self._open: bool | Failure = False
        self._openers: list[defer.Deferred] = []

    # -- IQueue ------------------------------------------------------------------------------

    def writer(self, envelope: Envelope) -> MessageWriter:
        return MessageWriter(self, envelope, self.spill_limit)

    def enqueue(self, envelope: Envelope, message: Any) -> defer.Deferred:
        writer = self.writer(envelope)
        if isinstance(message, (bytes, bytearray, memoryview)):
            writer.write(bytes(message))
        else:
            writer.write_from(message)
        return writer.commit()

    def flush(self, domain: str | None = None) -> int:
        return self.scheduler.flush(domain)

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def load(self) -> int:
        """Messages held or being received: what least-loaded injection compares."""
        return len(self.scheduler.messages) + self.writers

    def start(self) -> defer.Deferred:
        """Open the directory, recover, schedule what was found; fires with the report."""
        d = self.run(self._open_and_recover)
        d.addCallbacks(self._recovered, self._recovery_failed)
        return d

    def _open_and_recover(self) -> Recovered:
        self.store.open()
        return self.store.recover()

    def _recovered(self, report: Recovered) -> Recovered:
        for msg_id, reason in report.corrupt:
            log.error("{queue}: msg {id} is damaged ({reason}); moved to {path}",
                      queue=self.name, id=msg_id, reason=reason, path=self.store.corrupt)
        if report.removed or report.bad_state_lines:
            log.info("{queue}: recovery removed {removed} uncommitted files, ignored "
                     "{bad} damaged state lines", queue=self.name, removed=report.removed,
                     bad=report.bad_state_lines)
        log.info("{queue}: {count} messages in the queue", queue=self.name,
                 count=len(report.messages))
        self._set_open(True)
        for stored in report.messages:
            self.scheduler.add(self._message(stored.id, stored.envelope, stored.size),
                               stored.states)
        return report

    def _recovery_failed(self, failure: Failure) -> Failure:
        log.failure("{queue}: cannot open the queue", failure, queue=self.name)
        self._set_open(failure)
        return failure

    def _set_open(self, value: bool | Failure) -> None:
        self._open = value
        openers, self._openers = self._openers, []
        for d in openers:
            d.errback(value) if isinstance(value, Failure) else d.callback(None)

    def when_open(self) -> defer.Deferred:
        """A new Deferred firing once recovery is done (writing must wait for it)."""
        if self._open is True:
            return defer.succeed(None)
        if isinstance(self._open, Failure):
            return defer.fail(self._open)
        d: defer.Deferred = defer.Deferred()
        self._openers.append(d)
        return d

    def stop(self) -> defer.Deferred:
        """Fires once deliveries in progress, commits and bookkeeping are finished."""
        d = self.scheduler.stop()
        d.addCallback(lambda _: self.committer.idle())
        d.addCallback(lambda _: self.journal.flush())
        return d

    def abandon(self) -> defer.Deferred:
        """Give up on deliveries in progress; fires once the disk work is finished."""
        self.scheduler.abandon()
        d = self.committer.idle()
        d.addCallback(lambda _: self.journal.flush())
        return d

    def close(self) -> None:
        self.store.close()

    # -- called by writers ------------------------------------------------------------------------

    def extra_recipients(self) -> tuple[str, ...]:
        """``extraqueue`` / ``EXTRAQUEUE``: addresses that get a copy of every message
        entering this queue, from any receiver, local forwards and bounces alike
        (as qmail-queue adds them to every envelope it writes)."""
        return tuple(getattr(self.settings(), "extraqueue", ()) or ())

    def committed(self, prepared: Prepared) -> None:
        """A message is durable: log it (qmail-send's ``new msg`` and ``info msg`` lines
        as one) and hand it to the scheduler."""
        envelope = prepared.envelope
        log.info("{queue}: new msg {id}: bytes {size} from <{sender}> qp {protocol} {ip}",
                 queue=self.name, id=prepared.id, size=prepared.size, sender=envelope.sender,
                 protocol=envelope.protocol, ip=envelope.remote_ip)
        states = [RecipientState(i, r, next_at=envelope.received_at)
                  for i, r in enumerate(envelope.recipients)]
        data = prepared.data
        if data is not None and (len(data) > KEEP_MAX
                                 or self.resident + len(data) > RESIDENT_LIMIT):
            data = None
        if data is not None:
            self.resident += len(data)
        self.scheduler.add(self._message(prepared.id, envelope, prepared.size, data), states)

    def _message(self, msg_id: str, envelope: Envelope, size: int,
                 data: bytes | None = None) -> QueuedMessage:
        return QueuedMessage(msg_id, envelope, self.store.mess_path(msg_id), size, self.name,
                             data, self._released if data is not None else None)

    def _released(self, size: int) -> None:
        self.resident -= size


#: Seconds after a removal by which its data is gone too when no commit batch came
#: meanwhile to make the removal durable (see :meth:`QueueStore.apply`).
REMOVAL_SYNC = 1.0


class _Journal:
    """State lines and removals of one queue, applied in order in batches."""

    def __init__(self, batcher: Batcher, name: str, clock: Any, store: QueueStore) -> None:
        self.batcher = batcher
        self.name = name
        self.clock = clock
        self.store = store
        self._timer: Any = None

    def record(self, msg_id: str, state: RecipientState) -> None:
        d = self.batcher.submit(("state", msg_id, records.encode_state(state.fields())))
        d.addErrback(lambda f: log.failure("{queue}: recording the state of msg {id}", f,
                                           queue=self.name, id=msg_id))

    def remove(self, msg_id: str) -> defer.Deferred:
        d = self.batcher.submit(("retire", msg_id, b""))
        if self._timer is None:
            self._timer = self.clock.callLater(REMOVAL_SYNC, self._sync)
        return d

    def _sync(self) -> None:
        self._timer = None
        if self.store.pending_removals:        # else a commit batch has done it
            self._submit_sync()

    def _submit_sync(self) -> defer.Deferred:
        d = self.batcher.submit(("sync", "", b""))
        d.addErrback(lambda f: log.failure("{queue}: removing finished messages' data", f,
                                           queue=self.name))
        return d

    def flush(self) -> defer.Deferred:
        """Fires once everything submitted is applied and every removal is complete."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._submit_sync()
        return self.batcher.idle()

    def idle(self) -> defer.Deferred:
        return self.batcher.idle()


@implementer(IQueue)
class QueueSet:
    """Several queues behind one IQueue: each injection goes to one of them.

    ``strategy`` is ``"random"`` (IndiMail's qmail-multi) or ``"least-loaded"``
    (fewest messages held or being received; ties broken at random).  With
    ``hold`` seconds, a queue drawn at random takes every injection for that
    long: messages received together are committed in the same batches and
    share their directory fsyncs, while over time every queue gets its share.
    Bounces made by any queue are injected through the set as well.
    """

    def __init__(self, queues: Sequence[Queue], *, strategy: str = "random",
                 rng: random.Random | None = None, hold: float = 0.0) -> None:
        if not queues:
            raise ValueError("a QueueSet needs at least one queue")
        if strategy not in ("random", "least-loaded"):
            raise ValueError(f"unknown queue strategy {strategy!r}")
        self.queues = list(queues)
        self.strategy = strategy
        self.rng = rng or random.Random()
        self.hold = hold
        self._held: Queue | None = None
        self._until = 0.0
        for queue in self.queues:
            queue.scheduler.inject = self.enqueue

    def pick(self) -> Queue:
        if len(self.queues) == 1:
            return self.queues[0]
        if self.strategy == "random":
            if self.hold <= 0:
                return self.rng.choice(self.queues)
            now = self.queues[0].clock.seconds()
            if self._held is None or now >= self._until:
                self._held, self._until = self.rng.choice(self.queues), now + self.hold
            return self._held
        low = min(q.load for q in self.queues)
        return self.rng.choice([q for q in self.queues if q.load == low])

    def writer(self, envelope: Envelope) -> MessageWriter:
        return self.pick().writer(envelope)

    def enqueue(self, envelope: Envelope, message: Any) -> defer.Deferred:
        return self.pick().enqueue(envelope, message)

    def flush(self, domain: str | None = None) -> int:
        return sum(q.flush(domain) for q in self.queues)

    def settings_changed(self) -> None:
        for queue in self.queues:
            queue.scheduler.settings_changed()

    def set_agent(self, channel: str, agent: Any) -> None:
        for queue in self.queues:
            queue.scheduler.set_agent(channel, agent)

    @property
    def load(self) -> int:
        return sum(q.load for q in self.queues)
