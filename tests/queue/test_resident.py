"""Small messages received in memory reach their first deliveries without a read."""

from __future__ import annotations

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue import Envelope
from indimail_tw.queue import queue as queue_module
from tests.queue.helpers import Agent, make_queue, result_of


def test_the_bytes_go_with_the_message_and_are_let_go_after_its_deliveries(tmp_path):
    seen = []

    def answer(message, recipient):
        seen.append(message.data)
        return DeliveryResult.ok()

    agent = Agent(answer, hold=True)
    q = make_queue(str(tmp_path / "q"), local=agent)
    result_of(q.enqueue(Envelope.simple("s@x", "a@local.test", "b@local.test"), b"hello\n"))
    assert len(agent.held) == 2 and q.resident == len(b"hello\n")
    message = agent.held[0][0]
    assert message.data == b"hello\n"
    agent.held[0][2].callback(DeliveryResult.ok())
    assert message.data == b"hello\n"            # the other delivery is still running
    agent.held[1][2].callback(DeliveryResult.ok())
    assert message.data is None and q.resident == 0


def test_a_deferred_message_is_retried_from_disk(tmp_path):
    calls = []

    def answer(message, recipient):
        calls.append(message.data)
        if len(calls) == 1:
            return DeliveryResult.temporary("busy", "4.2.1")
        return DeliveryResult.ok()

    agent = Agent(answer)
    q = make_queue(str(tmp_path / "q"), local=agent)
    agent.clock = q.clock
    result_of(q.enqueue(Envelope.simple("s@x", "a@local.test"), b"hello\n"))
    assert calls == [b"hello\n"] and q.resident == 0
    q.clock.advance(1000)
    assert calls == [b"hello\n", None]


def test_big_messages_and_a_full_budget_are_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(queue_module, "KEEP_MAX", 10)
    monkeypatch.setattr(queue_module, "RESIDENT_LIMIT", 15)
    agent = Agent(hold=True)
    q = make_queue(str(tmp_path / "q"), local=agent)
    for body in (b"x" * 11, b"y" * 8, b"z" * 8):
        result_of(q.enqueue(Envelope.simple("s@x", "a@local.test"), body))
    assert [m.data for m, _, _ in agent.held] == [None, b"y" * 8, None]
    assert q.resident == 8
