"""A busy agent (no room for a destination right now): parked, not retried on qmail's schedule."""

from __future__ import annotations

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue import Envelope
from indimail_tw.queue.scheduler import PARK_RETRY, UNPARK_BATCH
from indimail_tw.remote.agent import Busy, busy
from tests.queue.helpers import LogCapture, make_queue, result_of


class BusyAgent:
    """Busy for the first ``busy_for`` calls, then delivers; can announce room."""

    def __init__(self, busy_for: int) -> None:
        self.busy_for = busy_for
        self.calls: list[str] = []
        self.subscribers: list = []

    def deliver(self, message, recipient):
        self.calls.append(recipient.address)
        if len(self.calls) <= self.busy_for:
            return busy("remote.test", "192.0.2.1")
        return DeliveryResult.ok()

    def when_room(self, callback):
        self.subscribers.append(callback)

    def room(self, domains):
        for callback in self.subscribers:
            callback(domains)


def test_busy_is_a_temporary_result_that_says_so():
    result = busy("mx.example", "192.0.2.1")
    assert isinstance(result, Busy) and isinstance(result, DeliveryResult)
    assert result.is_temporary and result.enhanced == "4.4.5" and result.busy


def test_a_parked_recipient_starts_again_when_the_agent_has_room(tmp_path):
    logs = LogCapture()
    try:
        agent = BusyAgent(busy_for=1)
        q = make_queue(str(tmp_path / "q"), remote=agent)
        msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@remote.test"), b"m\n"))
        assert agent.calls == ["a@remote.test"]
        state = q.scheduler.messages[msg_id].states[0]
        assert state.attempts == 0 and state.error == ""      # not an attempt
        assert len(agent.subscribers) == 1
        agent.room({"other.test": 1})                          # not its destination
        assert agent.calls == ["a@remote.test"]
        agent.room({"remote.test": 1})
        assert agent.calls == ["a@remote.test", "a@remote.test"]
        assert msg_id not in q.scheduler.messages              # delivered and removed
        assert not any("deferral" in line for line in logs.lines())
        # the subscription stays: parking again does not subscribe twice
        assert len(agent.subscribers) == 1
    finally:
        logs.close()


def test_room_for_one_slot_starts_a_few_parked_recipients_not_all(tmp_path):
    agent = BusyAgent(busy_for=10)
    q = make_queue(str(tmp_path / "q"), remote=agent)
    result_of(q.enqueue(Envelope.simple("s@x", *[f"u{n}@remote.test" for n in range(10)]),
                        b"m\n"))
    assert len(agent.calls) == 10
    agent.room({"remote.test": 1})
    assert len(agent.calls) == 10 + UNPARK_BATCH


def test_parked_recipients_are_retried_after_a_while_without_a_room_signal(tmp_path):
    agent = BusyAgent(busy_for=1)
    agent.when_room = None            # an agent that cannot tell
    del agent.when_room
    q = make_queue(str(tmp_path / "q"), remote=agent)
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@remote.test"), b"m\n"))
    q.clock.advance(PARK_RETRY - 0.1)
    assert len(agent.calls) == 1
    q.clock.advance(0.1)
    assert len(agent.calls) == 2 and msg_id not in q.scheduler.messages


def test_flush_starts_a_parked_recipient_once(tmp_path):
    agent = BusyAgent(busy_for=1)
    q = make_queue(str(tmp_path / "q"), remote=agent)
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@remote.test"), b"m\n"))
    assert q.flush() == 1
    assert len(agent.calls) == 2 and msg_id not in q.scheduler.messages
    agent.room({"remote.test": 1})                       # the stale parking is ignored
    q.clock.advance(PARK_RETRY)
    assert len(agent.calls) == 2


def test_stop_with_parked_recipients_leaves_them_pending(tmp_path):
    agent = BusyAgent(busy_for=5)
    q = make_queue(str(tmp_path / "q"), remote=agent)
    msg_id = result_of(q.enqueue(Envelope.simple("s@x", "a@remote.test"), b"m\n"))
    d = q.stop()
    assert result_of(d) is None                          # nothing running: stops at once
    q.clock.advance(PARK_RETRY * 2)
    assert len(agent.calls) == 1
    assert q.scheduler.messages[msg_id].states[0].status == "pending"
