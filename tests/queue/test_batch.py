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
