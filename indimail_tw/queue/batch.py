"""Running blocking work off the reactor, and group commit.

A *runner* is ``run(f, *args) -> Deferred``: :class:`ThreadRunner` runs ``f`` in
a thread pool; tests use :class:`SyncRunner` (runs ``f`` at once) or a runner
they step by hand.

:class:`Batcher` is the group-commit engine: items submitted while a batch is
being processed wait, and the next batch takes all of them at once, so the
fixed cost of a batch (directory fsyncs) is shared by every message that was
ready at that moment and throughput grows with concurrency.

With a runner that can also hand calls back to the reactor (``call_from_thread``,
as :class:`ThreadRunner` does), a one-at-a-time Batcher keeps its thread while
work waits: the job that processed a batch takes the next one itself, up to
:data:`LOOP_ROUNDS` batches, and hands each batch's results to the reactor as
it finishes.  Otherwise every batch would go back to the reactor to start the
next, and under load the new job waited milliseconds for a thread to wake and
get the interpreter lock (measured: 2-3 ms per commit batch, a quarter of it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet import defer, threads
from twisted.python.failure import Failure

T = TypeVar("T")


#: Batches one job of a looping Batcher processes at most before it gives its
#: thread back to the pool (other work waits for the pool's few threads).
LOOP_ROUNDS = 4


class Runner(Protocol):
    def __call__(self, f: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred: ...


class ThreadRunner:
    """Runs blocking calls in a Twisted thread pool, results back on the reactor."""

    def __init__(self, reactor: Any, pool: Any) -> None:
        self.reactor = reactor
        self.pool = pool

    def __call__(self, f: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.pool, f, *args, **kw)

    def call_from_thread(self, f: Callable[..., Any], *args: Any) -> None:
        """Run ``f(*args)`` on the reactor thread (from a thread of the pool), after
        the calls handed over before it."""
        self.reactor.callFromThread(f, *args)


class SyncRunner:
    """Runs calls at once, in the caller's thread: for unit tests, and for a
    Batcher whose ``process`` does not block (it returns a Deferred)."""

    def __call__(self, f: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
        return defer.maybeDeferred(f, *args, **kw)


class Batcher(Generic[T]):
    """Processes submitted items in batches, up to ``parallel`` batches at a time.

    ``process(items)`` runs through ``run`` and returns one result per item; a
    result that is an exception fails that item's Deferred.  If ``process``
    raises, every item of the batch fails.  With ``parallel`` 1 (the default)
    batches run one after the other, in the order of submission; then, when
    ``run`` has ``call_from_thread``, one job processes up to ``rounds`` batches
    in a row (see the module docstring).  Results are always reported on the
    reactor thread, batch by batch, in order.
    """

    def __init__(self, run: Runner,
                 process: Callable[[Sequence[T]], Sequence[Any]], parallel: int = 1,
                 rounds: int = LOOP_ROUNDS) -> None:
        if parallel < 1:
            raise ValueError("a Batcher needs parallel >= 1")
        self._run = run
        self._process = process
        self.parallel = parallel
        self.rounds = rounds
        self._waiting: list[tuple[T, defer.Deferred]] = []
        self._running = 0         # jobs started whose Deferred has not fired yet
        self._idle: list[defer.Deferred] = []
        self.batches = 0          # how many batches ran (for tests and stats)
        self._hand_back = getattr(run, "call_from_thread", None) if parallel == 1 else None
        # loop mode: _waiting is shared with the job's thread; _looping says a job
        # takes batches (set when one starts, cleared by the job as it stops taking)
        self._lock = threading.Lock()
        self._looping = False

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def submit(self, item: T) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self._hand_back is None:
            self._waiting.append((item, d))
            self._next()
            return d
        with self._lock:
            self._waiting.append((item, d))
            if self._looping:             # the running job takes it
                return d
            self._looping = True
        self._start_loop()
        return d

    def idle(self) -> defer.Deferred:
        """Fires once nothing is waiting or being processed."""
        if not self._running and not self._waiting:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    def _next(self) -> None:
        if self._hand_back is not None:
            with self._lock:
                start = not self._looping and bool(self._waiting)
                if start:
                    self._looping = True
            if start:
                self._start_loop()
            elif not self._running and not self._looping:
                self._fire_idle()
            return
        if self._running >= self.parallel:
            return
        if not self._waiting:
            if not self._running:
                self._fire_idle()
            return
        batch, self._waiting = self._waiting, []
        self._running += 1
        self.batches += 1
        d = self._run(self._process, [item for item, _ in batch])
        d.addBoth(self._done, batch)

    def _fire_idle(self) -> None:
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    def _done(self, results: Any, batch: list[tuple[T, defer.Deferred]]) -> None:
        self._running -= 1
        _report(results, batch)
        self._next()

    # -- loop mode ---------------------------------------------------------------------------

    def _start_loop(self) -> None:
        self._running += 1
        d = self._run(self._loop)
        d.addBoth(self._loop_ended)

    def _loop(self) -> None:
        """In the pool's thread: process the waiting items batch after batch until
        none wait or ``rounds`` batches are done; report each batch to the reactor."""
        hand_back = self._hand_back
        assert hand_back is not None
        for _ in range(self.rounds):
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._looping = False
                    return
            self.batches += 1
            try:
                results: Any = self._process([item for item, _ in batch])
            except BaseException:  # noqa: BLE001 -- the batch's failure, reported per item
                results = Failure()
            hand_back(_report, results, batch)
        with self._lock:
            self._looping = False         # _loop_ended starts another job for the rest

    def _loop_ended(self, outcome: Any) -> None:
        # fires after every batch this job reported (the reactor runs calls from a
        # thread in order); a failure here is the job's own, not a batch's
        self._running -= 1
        if isinstance(outcome, Failure):
            with self._lock:
                self._looping = False
                batch, self._waiting = self._waiting, []
            _report(outcome, batch)
        self._next()


def _report(results: Any, batch: list[tuple[Any, defer.Deferred]]) -> None:
    """Fire each item's Deferred with its result (a Failure: all of them fail)."""
    if isinstance(results, Failure):
        outcomes: Sequence[Any] = [results] * len(batch)
    else:
        outcomes = results
    for (_, d), outcome in zip(batch, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            d.errback(Failure(outcome))
        elif isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)


class CallBatcher:
    """A runner (``run(f, *args) -> Deferred``) that groups blocking calls: the calls
    made while a job is running wait, and the next job runs all of them, one after
    the other, in one trip to a thread.

    A trip to a thread costs two wake-ups and a hand-over of the interpreter lock
    each way; under load a job takes every call that was made meanwhile, so that
    cost is paid once per batch instead of once per call.  ``around`` (optional)
    is a context manager factory entered in the thread around each batch: what it
    does on exit (e.g. fsync the directories the batch wrote into) happens before
    any result is reported; if it raises, every call of the batch fails.  An
    exception raised by one call fails that call only.
    """

    def __init__(self, run: Runner, parallel: int = 1,
                 around: Callable[[], Any] | None = None) -> None:
        self._around = around
        self._batcher: Batcher[tuple[Callable[..., Any], tuple[Any, ...]]] = Batcher(
            run, self._process, parallel=parallel)

    @property
    def batches(self) -> int:
        return self._batcher.batches

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        return self._batcher.submit((f, args))

    def idle(self) -> defer.Deferred:
        return self._batcher.idle()

    def _process(self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]
                 ) -> list[Any]:
        if self._around is None:
            return _call_each(calls)
        with self._around():
            return _call_each(calls)


def _call_each(calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    results: list[Any] = []
    for f, args in calls:
        try:
            results.append(f(*args))
        except Exception:  # noqa: BLE001 -- this call's error, not the batch's
            results.append(Failure())
    return results
