"""Running blocking work off the reactor, and group commit.

A *runner* is ``run(f, *args) -> Deferred``: :class:`ThreadRunner` runs ``f`` in
a thread pool; tests use :class:`SyncRunner` (runs ``f`` at once) or a runner
they step by hand.

:class:`Batcher` is the group-commit engine: items submitted while a batch is
being processed wait, and the next batch takes all of them at once, so the
fixed cost of a batch (directory fsyncs) is shared by every message that was
ready at that moment and throughput grows with concurrency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet import defer, threads
from twisted.python.failure import Failure

T = TypeVar("T")


class Runner(Protocol):
    def __call__(self, f: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred: ...


class ThreadRunner:
    """Runs blocking calls in a Twisted thread pool, results back on the reactor."""

    def __init__(self, reactor: Any, pool: Any) -> None:
        self.reactor = reactor
        self.pool = pool

    def __call__(self, f: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.pool, f, *args, **kw)


class SyncRunner:
    """Runs blocking calls at once, in the caller's thread (unit tests only)."""

    def __call__(self, f: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
        return defer.maybeDeferred(f, *args, **kw)


class Batcher(Generic[T]):
    """Processes submitted items in batches, up to ``parallel`` batches at a time.

    ``process(items)`` runs through ``run`` and returns one result per item; a
    result that is an exception fails that item's Deferred.  If ``process``
    raises, every item of the batch fails.  With ``parallel`` 1 (the default)
    batches run one after the other, in the order of submission.
    """

    def __init__(self, run: Runner,
                 process: Callable[[Sequence[T]], Sequence[Any]], parallel: int = 1) -> None:
        if parallel < 1:
            raise ValueError("a Batcher needs parallel >= 1")
        self._run = run
        self._process = process
        self.parallel = parallel
        self._waiting: list[tuple[T, defer.Deferred]] = []
        self._running = 0
        self._idle: list[defer.Deferred] = []
        self.batches = 0          # how many batches ran (for tests and stats)

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def submit(self, item: T) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((item, d))
        self._next()
        return d

    def idle(self) -> defer.Deferred:
        """Fires once nothing is waiting or being processed."""
        if not self._running and not self._waiting:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    def _next(self) -> None:
        if self._running >= self.parallel:
            return
        if not self._waiting:
            if not self._running:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)
            return
        batch, self._waiting = self._waiting, []
        self._running += 1
        self.batches += 1
        d = self._run(self._process, [item for item, _ in batch])
        d.addBoth(self._done, batch)

    def _done(self, results: Any, batch: list[tuple[T, defer.Deferred]]) -> None:
        self._running -= 1
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
        self._next()


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
