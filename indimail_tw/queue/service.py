"""The queue as a Twisted service, and building it from the server's context."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from indimail_tw import iouring
from indimail_tw.queue.batch import ThreadRunner
from indimail_tw.queue.queue import Queue, QueueSet

log = Logger(namespace="indimail_tw.queue")

STOP_GRACE = 30.0      # seconds stopService waits for deliveries in progress
#: Seconds a randomly drawn queue takes every new message (QueueSet ``hold``): under
#: load, messages then share commit batches (and directory fsyncs) instead of
#: spreading one or two per batch over QUEUE_COUNT queues.
QUEUE_HOLD = 0.1


class QueueService(service.Service):
    """Runs recovery and the schedulers of a :class:`QueueSet`.

    ``startService`` starts the thread pool (if given) and recovers every queue;
    injections made meanwhile wait for their queue's recovery.  ``stopService``
    starts no new delivery, waits up to ``grace`` seconds for those in progress
    (then abandons them: they stay pending and run again after a restart), waits
    for commits and bookkeeping, and stops the pool.
    """

    name = "queue"

    def __init__(self, queue_set: QueueSet, *, reactor: Any, pool: ThreadPool | None = None,
                 grace: float = STOP_GRACE,
                 on_stop: Callable[[], object] | None = None, ring: Any = None) -> None:
        self.queue_set = queue_set
        self.ring = ring
        self.reactor = reactor
        self.pool = pool
        self.grace = grace
        self.on_stop = on_stop
        self.started: defer.Deferred | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        if self.pool is not None and not self.pool.started:
            self.pool.start()
        self.started = defer.DeferredList([q.start() for q in self.queue_set.queues],
                                          consumeErrors=True)
        self.started.addCallback(self._report)

    def _report(self, results: list[tuple[bool, Any]]) -> int:
        ok = sum(1 for success, _ in results if success)
        held = sum(len(q.scheduler.messages) for q in self.queue_set.queues)
        log.info("queue: {ok}/{total} queues open, {held} messages held", ok=ok,
                 total=len(results), held=held)
        return ok

    @defer.inlineCallbacks
    def stopService(self):  # noqa: N802
        super().stopService()
        if self.on_stop is not None:
            self.on_stop()
        queues = self.queue_set.queues
        if self.started is not None:
            yield self.started
        stopped = defer.DeferredList([q.stop() for q in queues], consumeErrors=True)
        timer = self.reactor.callLater(self.grace, self._abandon)
        yield stopped
        if timer.active():
            timer.cancel()
        for queue in queues:
            queue.close()
        if self.ring is not None:
            yield self.ring.idle()
            self.ring.close()
        if self.pool is not None and self.pool.started:
            self.pool.stop()
        log.info("queue: stopped")

    def _abandon(self) -> None:
        busy = sum(q.scheduler.busy for q in self.queue_set.queues)
        log.warn("queue: abandoning {busy} deliveries still in progress; they will be "
                 "retried after a restart", busy=busy)
        for queue in self.queue_set.queues:
            queue.abandon()


def queue_paths(base: str, start: int, count: int) -> list[str]:
    """IndiMail's queue directories: ``base/queueSTART`` .. ``base/queue(START+COUNT-1)``."""
    return [os.path.join(base, f"queue{n}") for n in range(start, start + count)]


def build_queue(context: Any, agents: Mapping[str, Any], router: Callable[[str], str], *,
                bounce_factory: Callable[..., Any] | None = None, strategy: str = "random",
                threads: int | None = None, commit_ring: bool = True
                ) -> tuple[QueueSet, QueueService]:
    """The queues of an installation and the service that runs them.

    ``context`` is a :class:`indimail_tw.service.ServerContext`.  Queues live in
    ``queue_base`` (default ``paths.queue``) as ``queueN`` for N from
    ``QUEUE_START`` to ``QUEUE_START + QUEUE_COUNT - 1``; with ``context.worker``
    ``(k, n)`` (``--workers n``) this process takes the k-th, (k+n)-th, ... of them.
    ``agents`` maps ``"local"``/``"remote"`` to IDeliveryAgent (or None: keep those
    recipients queued).  Blocking disk work runs in the server's I/O pool (``context.io_pool``,
    started and stopped by the server) when there is one, else in a pool of this
    service of ``threads`` threads (default: 4 per queue, at least 32).  With
    ``commit_ring`` (the default) messages are committed through io_uring from the
    reactor where the kernel allows it (:func:`iouring.reactor_ring`; not with
    ``INDIMAIL_NO_URING``), one ring shared by the queues.
    """
    reactor = context.reactor
    if reactor is None:
        from twisted.internet import reactor
    settings = context.config.current
    base = settings.queue_base or context.paths.queue
    paths = queue_paths(base, settings.queue_start, settings.queue_count)
    index, workers = getattr(context, "worker", (0, 1))
    paths = paths[index::workers]           # --workers: every Nth queue is this process's
    pool = shared = getattr(context, "io_pool", None)
    if pool is None:
        pool = ThreadPool(minthreads=0, maxthreads=threads or max(32, 4 * len(paths)),
                          name="indimail-queue")
    run = ThreadRunner(reactor, pool)
    ring = iouring.reactor_ring(reactor) if commit_ring else None

    def current() -> Any:
        return context.config.current

    queues = [Queue(path, clock=reactor, run=run, agents=agents, router=router,
                    settings=current, bounce_factory=bounce_factory, ring=ring,
                    debug=getattr(context, "log_debug", False)) for path in paths]
    queue_set = QueueSet(queues, strategy=strategy, rng=random.Random(), hold=QUEUE_HOLD)
    unsubscribe = context.config.subscribe(
        lambda _settings: reactor.callFromThread(queue_set.settings_changed))
    return queue_set, QueueService(queue_set, reactor=reactor,
                                   pool=None if shared is not None else pool,
                                   on_stop=unsubscribe, ring=ring)
