"""Scheduling with a Clock: retry schedule, lifetime, bounces, concurrency, flush."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.logger import formatEvent

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue import Envelope
from indimail_tw.queue.queue import REMOVAL_SYNC
from indimail_tw.queue.states import EXPIRED_NOTE, next_retry
from tests.queue.helpers import Agent, Bounces, files, make_queue, result_of, settings


def next_timer(q):
    """Advance the clock to the scheduler's next timer."""
    (call,) = q.clock.getDelayedCalls()
    q.clock.advance(call.getTime() - q.clock.seconds())


def temporary(message, recipient):
    return DeliveryResult.temporary("mailbox busy", "4.2.1")


def permanent(message, recipient):
    return DeliveryResult.permanent(f"no mailbox {recipient.address}", "5.1.1")


@pytest.mark.parametrize(("chanskip", "expected"), [
    (10, [0, 100, 400, 900, 1600, 2500]), (20, [0, 400, 1600, 3600, 6400])])
def test_next_retry_is_qmails_schedule(chanskip, expected):
    t, times = 0.0, [0.0]
    for _ in expected[1:]:
        t = next_retry(0.0, t, chanskip)
        times.append(t)
    assert times == expected


def test_late_attempts_do_not_burst():
    # an attempt 1000 s late is followed by the next slot after now, not a catch-up
    assert next_retry(0.0, 1500.0, 10) == (38 + 10) ** 2


@pytest.mark.parametrize(("channel", "address", "skip"), [
    ("local", "a@local.test", 10), ("remote", "a@remote.test", 20)])
def test_temporary_failures_follow_the_retry_schedule(tmp_path, channel, address, skip):
    agent = Agent(temporary)
    agents = {channel: agent}
    q = make_queue(str(tmp_path / "q"), **agents)
    agent.clock = q.clock
    birth = q.clock.seconds()
    result_of(q.enqueue(Envelope.simple("s@x", address), b"m\n"))
    for _ in range(6):
        next_timer(q)
    times = [t - birth for t, _, _ in agent.calls]
    assert times == [(skip * n) ** 2 for n in range(7)]
    state = next(iter(q.scheduler.messages.values())).states[0]
    assert state.attempts == 7 and state.error == "mailbox busy"


def test_only_the_failed_recipients_are_retried(tmp_path):
    agent = Agent(lambda m, r: temporary(m, r) if r.address.startswith("b") else
                  DeliveryResult.ok())
    q = make_queue(str(tmp_path / "q"), local=agent)
    result_of(q.enqueue(Envelope.simple("s@x", "a@local.test", "b@local.test"), b"m\n"))
    assert agent.addresses() == ["a@local.test", "b@local.test"]
    q.clock.advance(100)
    assert agent.addresses() == ["a@local.test", "b@local.test", "b@local.test"]


def test_after_the_lifetime_one_last_attempt_then_a_bounce(tmp_path, logs):
    agent, bounces = Agent(temporary), Bounces()
    q = make_queue(str(tmp_path / "q"), local=agent, bounces=bounces,
                   config=settings(queuelifetime=1000))
    agent.clock = q.clock
    birth = q.clock.seconds()
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@local.test"), b"m\n"))
    while q.clock.getDelayedCalls():
        next_timer(q)
    times = [t - birth for t, _, _ in agent.calls]
    assert times == [0, 100, 400, 900, 1600]     # 1600 > 1000: the last attempt
    ((bounced_id, failures, expired),) = bounces.calls
    assert bounced_id == msg_id and expired is True
    ((address, result),) = failures
    assert address == "a@local.test" and result.is_permanent
    assert result.text == "mailbox busy" and result.enhanced == "4.2.1"
    assert msg_id not in q.scheduler.messages
    assert (f"delivery 5: failure: msg {msg_id} to local a@local.test: "
            f"mailbox busy/{EXPIRED_NOTE}") in [line.partition(": ")[2] for line in logs.lines()]


def test_an_attempt_started_late_after_the_lifetime_is_the_last(tmp_path):
    agent, bounces = Agent(temporary), Bounces()
    q = make_queue(str(tmp_path / "q"), local=agent, bounces=bounces,
                   config=settings(queuelifetime=1000))
    result_of(q.enqueue(Envelope.simple("s@x", "a@local.test"), b"m\n"))
    q.clock.advance(5000)                 # e.g. the server was down
    assert len(agent.calls) == 2 and len(bounces.calls) == 1


def test_one_bounce_for_all_failed_recipients_of_a_batch(tmp_path):
    agent, bounces = Agent(hold=True), Bounces()
    q = make_queue(str(tmp_path / "q"), local=agent, bounces=bounces)
    msg_id = result_of(q.enqueue(
        Envelope.simple("s@x", "a@local.test", "b@local.test", "c@local.test"), b"m\n"))
    (_, ra, da), (_, rb, db), (_, rc, dc) = agent.held
    da.callback(permanent(None, ra))
    assert bounces.calls == []                   # b and c are still running
    db.callback(DeliveryResult.ok())
    dc.callback(permanent(None, rc))
    assert len(bounces.calls) == 1
    ((_, failures, expired),) = bounces.calls
    assert [a for a, _ in failures] == ["a@local.test", "c@local.test"] and not expired
    assert msg_id not in q.scheduler.messages
    (bounce_id,) = q.scheduler.messages                    # the bounce, to s@x (remote)
    with q.scheduler.messages[bounce_id].message.open() as f:
        assert f.read() == (b"bounce\na@local.test: no mailbox a@local.test\n"
                            b"c@local.test: no mailbox c@local.test\n")   # no envelope
    assert q.scheduler.messages[bounce_id].message.envelope.sender == ""


def test_bounce_factory_runs_through_the_runner_and_none_drops(tmp_path, logs):
    agent = Agent(permanent)
    bounces = Bounces(result=lambda m, f: None)
    calls = []

    def run(f, *args, **kw):
        calls.append(f)
        return defer.maybeDeferred(f, *args, **kw)

    q = make_queue(str(tmp_path / "q"), local=agent, bounces=bounces, run=run)
    msg_id = result_of(q.enqueue(Envelope.simple("", "a@local.test"), b"m\n"))
    assert bounces in calls
    assert msg_id not in q.scheduler.messages and files(q, "info") == []
    assert any(f"bounce msg {msg_id}: dropped" in line for line in logs.lines())


def test_a_failed_double_bounce_is_discarded_without_looping(tmp_path):
    bounces = Bounces()
    q = make_queue(str(tmp_path / "q"), local=Agent(permanent), bounces=bounces)
    result_of(q.enqueue(Envelope.simple("#@[]", "postmaster@local.test"), b"m\n"))
    assert bounces.calls == [] and q.scheduler.messages == {}


def test_a_bounce_that_cannot_be_made_is_tried_again(tmp_path):
    attempts = []

    def flaky(message, failures):
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk trouble")
        return Envelope.simple("", message.envelope.sender), b"bounce\n"

    q = make_queue(str(tmp_path / "q"), local=Agent(permanent), bounces=Bounces(flaky))
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@local.test"), b"m\n"))
    assert msg_id in q.scheduler.messages
    q.clock.advance(60)
    assert len(attempts) == 2 and msg_id not in q.scheduler.messages


def test_concurrency_limit_per_channel(tmp_path):
    agent = Agent(hold=True)
    q = make_queue(str(tmp_path / "q"), local=agent, config=settings(concurrencylocal=2))
    result_of(q.enqueue(Envelope.simple("s@x", *[f"u{i}@local.test" for i in range(5)]),
                        b"m\n"))
    assert len(agent.held) == 2 and q.scheduler.active["local"] == 2
    agent.held[0][2].callback(DeliveryResult.ok())
    assert len(agent.held) == 3
    for _, _, d in agent.held[1:]:
        d.callback(DeliveryResult.ok())
    assert len(agent.calls) == 5


def test_hold_and_zero_concurrency_hold_a_channel(tmp_path):
    config = settings(holdlocal=True)
    agent = Agent()
    q = make_queue(str(tmp_path / "q"), local=agent, config=config)
    result_of(q.enqueue(Envelope.simple("s@x", "a@local.test"), b"m\n"))
    assert agent.calls == []
    config.holdlocal = False
    q.scheduler.settings_changed()
    assert agent.addresses() == ["a@local.test"]


def test_remote_recipients_wait_untouched_without_a_remote_agent(tmp_path):
    local, bounces = Agent(), Bounces()
    q = make_queue(str(tmp_path / "q"), local=local, bounces=bounces,
                   config=settings(queuelifetime=10))
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@local.test", "r@remote.test"),
                                 b"m\n"))
    q.clock.advance(10 * 86400)
    assert local.addresses() == ["a@local.test"] and bounces.calls == []
    state = q.scheduler.messages[msg_id].states[1]
    assert state.status == "pending" and state.attempts == 0
    assert q.flush() == 0
    remote = Agent()
    q.scheduler.set_agent("remote", remote)       # a remote agent arrives later
    assert remote.addresses() == ["r@remote.test"]
    assert msg_id not in q.scheduler.messages


def test_flush_retries_now(tmp_path):
    answers = {"a@local.test": temporary, "b@other.test": temporary}
    agent = Agent(lambda m, r: answers[r.address](m, r))
    q = make_queue(str(tmp_path / "q"), local=agent)
    q.scheduler.router = lambda address: "local"
    result_of(q.enqueue(Envelope.simple("s@x", "a@local.test", "b@other.test"), b"m\n"))
    assert len(agent.calls) == 2
    assert q.flush("OTHER.test") == 1
    assert agent.addresses()[2:] == ["b@other.test"]
    answers["b@other.test"] = lambda m, r: DeliveryResult.ok()
    assert q.flush() == 2
    assert agent.addresses()[3:] == ["a@local.test", "b@other.test"]
    assert q.flush() == 1                          # only a is still waiting


def test_an_agent_error_is_a_temporary_failure(tmp_path, logs):
    def broken(message, recipient):
        raise RuntimeError("bug")

    agent = Agent(broken)
    q = make_queue(str(tmp_path / "q"), local=agent)
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@local.test"), b"m\n"))
    state = q.scheduler.messages[msg_id].states[0]
    assert state.status == "pending" and state.attempts == 1
    assert "internal error" in state.error
    q.clock.advance(100)
    assert len(agent.calls) == 2


def test_log_lines_follow_qmail_send(tmp_path, logs):
    q = make_queue(str(tmp_path / "q"), local=Agent(permanent))
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@local.test"), b"m\n"))
    lines = [line.partition(": ")[2] for line in logs.lines()][1:]   # after the recovery line
    assert lines[:2] == [
        f"new msg {msg_id}: bytes 2 from <s@x> qp ESMTP ",
        f"delivery 1: failure: msg {msg_id} to local a@local.test: no mailbox a@local.test"]
    assert any(line.startswith(f"bounce msg {msg_id} qp ") for line in lines)
    assert all(event["log_level"].name != "debug" for event in logs.events)


def test_debug_lines_only_when_asked_for(tmp_path, logs):
    q = make_queue(str(tmp_path / "q"), local=Agent(permanent), debug=True)
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@local.test"), b"m\n"))
    debug = [formatEvent(e).partition(": ")[2] for e in logs.events
             if e["log_level"].name == "debug"]
    assert debug[:2] == [f"starting delivery 1: msg {msg_id} to local a@local.test",
                         "status: local 1/10 remote 0/20"]
    assert f"end msg {msg_id}" in debug


def test_stop_waits_for_deliveries_in_progress(tmp_path):
    agent = Agent(hold=True)
    q = make_queue(str(tmp_path / "q"), local=agent)
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@local.test", "b@local.test"),
                                 b"m\n"))
    stopped = q.stop()
    assert not stopped.called
    agent.held[0][2].callback(DeliveryResult.ok())
    assert not stopped.called
    agent.held[1][2].callback(temporary(None, None))
    assert stopped.called
    assert q.scheduler._timer is None              # no retry is scheduled any more
    states = q.scheduler.messages[msg_id].states
    assert [s.status for s in states] == ["done", "pending"]


def test_the_last_delivery_writes_no_state_line_only_the_removal(tmp_path, monkeypatch):
    q = make_queue(str(tmp_path / "q"), local=Agent())
    ops = []
    real = q.store.apply
    monkeypatch.setattr(q.journal.batcher, "_process", lambda batch: (ops.extend(batch),
                                                                      real(batch))[1])
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@local.test", "b@local.test"),
                                 b"m\n"))
    assert [op[:2] for op in ops] == [("state", msg_id), ("retire", msg_id)]
    assert files(q, "info") == []
    q.clock.advance(REMOVAL_SYNC)
    assert files(q, "state") == [] and files(q, "mess") == []
