"""The group-commit engine: batches, failures, parallel batches, idle."""

from __future__ import annotations

import pytest

from indimail_tw.queue.batch import Batcher
from tests.queue.helpers import ManualRunner, result_of


def echo(items):
    return [f"done {item}" for item in items]


def test_items_waiting_for_a_batch_form_the_next_one():
    run = ManualRunner()
    batcher = Batcher(run, echo)
    ds = [batcher.submit(i) for i in range(3)]
    assert len(run.jobs) == 1 and batcher.pending == 2     # 0 is processed; 1 and 2 wait
    run.step()
    assert result_of(ds[0]) == "done 0" and not ds[1].called
    run.step()
    assert [result_of(d) for d in ds[1:]] == ["done 1", "done 2"]
    assert batcher.batches == 2 and not run.jobs


def test_an_exception_result_fails_only_its_item_and_a_raise_fails_the_batch():
    run = ManualRunner()
    batcher = Batcher(run, lambda items: [ValueError(i) if i == "bad" else i for i in items])
    batcher.submit("first")
    ok, bad = batcher.submit("ok"), batcher.submit("bad")
    run.run_all()
    assert result_of(ok) == "ok"
    with pytest.raises(ValueError):
        result_of(bad)

    def boom(items):
        raise OSError("disk")

    broken = Batcher(run, boom)
    ds = [broken.submit(i) for i in range(2)]
    run.run_all()
    for d in ds:
        with pytest.raises(OSError):
            result_of(d)


def test_parallel_batches():
    run = ManualRunner()
    batcher = Batcher(run, echo, parallel=2)
    ds = [batcher.submit(i) for i in range(5)]
    assert len(run.jobs) == 2 and batcher.pending == 3     # 0 and 1 each start a batch
    idle = batcher.idle()
    run.step()                                            # batch {0} ends: {2, 3, 4} starts
    assert result_of(ds[0]) == "done 0" and len(run.jobs) == 2 and batcher.pending == 0
    run.run_all()
    assert [result_of(d) for d in ds[1:]] == [f"done {i}" for i in range(1, 5)]
    assert batcher.batches == 3 and idle.called
    with pytest.raises(ValueError):
        Batcher(run, echo, parallel=0)


def test_idle_waits_for_every_running_batch():
    run = ManualRunner()
    batcher = Batcher(run, echo, parallel=2)
    assert batcher.idle().called
    batcher.submit(1)
    batcher.submit(2)
    idle = batcher.idle()
    run.step()
    assert not idle.called
    run.step()
    assert idle.called


def test_call_batcher_runs_the_calls_made_meanwhile_in_one_job():
    from contextlib import contextmanager

    from indimail_tw.queue.batch import CallBatcher

    around = []

    @contextmanager
    def wrap():
        around.append("enter")
        yield
        around.append("exit")

    def boom():
        raise ValueError("bad")

    run = ManualRunner()
    calls = CallBatcher(run, around=wrap)
    first = calls(lambda x: x * 2, 1)
    rest = [calls(lambda x: x + 1, 5), calls(boom), calls(str, 7)]
    assert len(run.jobs) == 1                    # the others wait for the next job
    run.step()
    assert result_of(first) == 2 and not rest[0].called
    run.step()
    assert result_of(rest[0]) == 6 and result_of(rest[2]) == "7"
    rest[1].addErrback(lambda f: f.trap(ValueError))   # only that call failed
    assert calls.batches == 2 and around == ["enter", "exit"] * 2 and not run.jobs


# -- loop mode: a runner that can hand calls back to the reactor ----------------------------


class LoopRunner(ManualRunner):
    """A ManualRunner whose jobs hand results back through ``call_from_thread``: the
    calls wait in ``handed`` (the reactor's queue of calls from threads), and a job's
    own Deferred fires after them, as deferToThreadPool's does."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list = []

    def call_from_thread(self, f, *args) -> None:
        self.handed.append((f, args))

    def step(self) -> bool:
        if not self.jobs:
            return False
        f, args, kw, d = self.jobs.pop(0)
        try:
            result = f(*args, **kw)
        except Exception:  # noqa: BLE001
            from twisted.python.failure import Failure
            result = Failure()
        self.handed.append((lambda r: d.errback(r) if hasattr(r, "trap") else d.callback(r),
                            (result,)))
        return True

    def flush(self) -> None:
        while self.handed:
            f, args = self.handed.pop(0)
            f(*args)


def test_loop_mode_one_job_takes_the_batches_submitted_meanwhile():
    run = LoopRunner()
    seen = []

    def process(items):
        seen.append(list(items))
        if items == [0]:                       # submitted while batch {0} is processed
            later.extend([batcher.submit(1), batcher.submit(2)])
        return echo(items)

    later: list = []
    batcher = Batcher(run, process)
    first = batcher.submit(0)
    assert len(run.jobs) == 1
    idle = batcher.idle()
    run.step()
    assert seen == [[0], [1, 2]] and batcher.batches == 2 and not run.jobs
    assert not first.called and not idle.called        # nothing fires before the reactor runs
    run.flush()
    assert result_of(first) == "done 0" and [result_of(d) for d in later] == ["done 1", "done 2"]
    assert idle.called and not run.jobs


def test_loop_mode_gives_the_thread_back_after_rounds_batches():
    run = LoopRunner()
    batcher = Batcher(run, lambda items: (ds.append(batcher.submit(items[0] + 1))
                                          if items[0] < 4 else None) or echo(items), rounds=2)
    ds = [batcher.submit(0)]
    run.step()
    assert batcher.batches == 2 and batcher.pending == 1 and not run.jobs
    run.flush()                                    # the job has ended: another one starts
    assert ds[0].called and ds[1].called and not ds[2].called and len(run.jobs) == 1
    run.step()
    run.flush()
    run.step()
    run.flush()
    assert [result_of(d) for d in ds] == [f"done {i}" for i in range(5)]
    assert batcher.batches == 5 and batcher.idle().called


def test_loop_mode_failures_per_item_and_per_batch():
    run = LoopRunner()

    def process(items):
        if "boom" in items:
            raise OSError("disk")
        return [ValueError(i) if i == "bad" else i for i in items]

    batcher = Batcher(run, process)
    ok = batcher.submit("ok")
    run.step()
    run.flush()
    bad, boom, other = batcher.submit("bad"), batcher.submit("x"), batcher.submit("y")
    run.step()
    run.flush()
    assert result_of(ok) == "ok"
    with pytest.raises(ValueError):
        result_of(bad)
    assert result_of(boom) == "x" and result_of(other) == "y"
    both = [batcher.submit("boom"), batcher.submit("z")]
    run.step()
    run.flush()
    for d in both:
        with pytest.raises(OSError):
            result_of(d)
    assert batcher.idle().called


def test_loop_mode_with_a_real_thread():
    """Submissions from the 'reactor' thread race with the job taking batches in its
    own thread: every item is processed once, in order, and reported."""
    import queue
    import threading

    from twisted.internet import defer

    reactor_calls: queue.Queue = queue.Queue()
    gate = threading.Event()

    class ThreadedRunner:
        def __call__(self, f, *args):
            d = defer.Deferred()

            def work():
                try:
                    result = f(*args)
                except Exception as e:  # noqa: BLE001
                    result = e
                reactor_calls.put((d.callback, (result,)))
            threading.Thread(target=work).start()
            return d

        def call_from_thread(self, f, *args):
            reactor_calls.put((f, args))

    processed: list = []

    def process(items):
        gate.wait(5)
        processed.extend(items)
        return echo(items)

    batcher = Batcher(ThreadedRunner(), process, rounds=3)
    ds = [batcher.submit(i) for i in range(50)]
    gate.set()
    ds += [batcher.submit(i) for i in range(50, 200)]
    idle = batcher.idle()
    while not idle.called:
        f, args = reactor_calls.get(timeout=5)
        f(*args)
    assert processed == list(range(200))
    assert [result_of(d) for d in ds] == [f"done {i}" for i in range(200)]
