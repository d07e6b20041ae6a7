"""Several queues: spreading injections, flush over all, bounces through the set."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from twisted.internet.task import Clock

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue import Envelope, QueueSet
from tests.queue.helpers import Agent, Bounces, make_queue, result_of


def queue_set(tmp_path, n=3, strategy="random", **kw):
    clock = Clock()
    queues = [make_queue(str(tmp_path / f"queue{i}"), clock=clock, **kw)
              for i in range(1, n + 1)]
    return QueueSet(queues, strategy=strategy, rng=random.Random(7))


def test_random_spreading_uses_every_queue(tmp_path):
    qs = queue_set(tmp_path)
    ids = [result_of(qs.enqueue(Envelope.simple("s@x", "r@remote.test"), b"m\n"))
           for _ in range(60)]
    per_queue = Counter(q.name for q in qs.queues for _ in q.scheduler.messages)
    assert sorted(per_queue) == ["queue1", "queue2", "queue3"]
    assert sum(per_queue.values()) == 60 == len(set(ids))
    assert qs.load == 60


def test_random_with_hold_keeps_a_queue_for_a_while(tmp_path):
    clock = Clock()
    queues = [make_queue(str(tmp_path / f"queue{i}"), clock=clock) for i in range(1, 4)]
    qs = QueueSet(queues, rng=random.Random(7), hold=0.1)
    runs = []
    for _ in range(40):
        picked = [qs.pick().name for _ in range(5)]     # messages arriving together
        assert len(set(picked)) == 1
        runs.append(picked[0])
        clock.advance(0.1)
    assert sorted(set(runs)) == ["queue1", "queue2", "queue3"]    # all get their share
    assert QueueSet(queues[:1], hold=0.1).pick() is queues[0]


def test_least_loaded_spreading_balances(tmp_path):
    qs = queue_set(tmp_path, strategy="least-loaded")
    for _ in range(30):
        w = qs.writer(Envelope.simple("s@x", "r@remote.test"))
        w.write(b"m\n")
        result_of(w.commit())
    assert [len(q.scheduler.messages) for q in qs.queues] == [10, 10, 10]


def test_least_loaded_counts_messages_being_received(tmp_path):
    qs = queue_set(tmp_path, strategy="least-loaded")
    writers = [qs.writer(Envelope.simple("s@x", "r@remote.test")) for _ in range(3)]
    assert sorted(w.queue.name for w in writers) == ["queue1", "queue2", "queue3"]


def test_flush_covers_every_queue(tmp_path):
    agent = Agent(lambda m, r: DeliveryResult.temporary("busy"))
    qs = queue_set(tmp_path, local=agent)
    for _ in range(9):
        result_of(qs.enqueue(Envelope.simple("s@x", "r@local.test"), b"m\n"))
    assert len(agent.calls) == 9
    assert qs.flush("local.test") == 9 and len(agent.calls) == 18
    assert qs.flush("elsewhere.test") == 0


def test_bounces_are_injected_through_the_set(tmp_path):
    bounces = Bounces()
    qs = queue_set(tmp_path, n=2, local=Agent(lambda m, r: DeliveryResult.permanent("no")),
                   bounces=bounces)
    msg_id = result_of(qs.enqueue(Envelope.simple("s@remote.test", "r@local.test"), b"m\n"))
    assert len(bounces.calls) == 1
    held = [m.message for q in qs.queues for m in q.scheduler.messages.values()]
    assert [m.envelope.sender for m in held] == [""] and held[0].id != msg_id


def test_a_set_needs_queues_and_a_known_strategy(tmp_path):
    with pytest.raises(ValueError):
        QueueSet([])
    with pytest.raises(ValueError):
        QueueSet([make_queue(str(tmp_path / "q"))], strategy="fastest")


def test_the_interfaces_are_provided(tmp_path):
    from zope.interface.verify import verifyObject

    from indimail_tw.interfaces import IMessageWriter, IQueue, IQueuedMessage

    qs = queue_set(tmp_path, n=1)
    verifyObject(IQueue, qs)
    verifyObject(IQueue, qs.queues[0])
    verifyObject(IMessageWriter, qs.writer(Envelope.simple("s@x", "r@remote.test")))
    result_of(qs.enqueue(Envelope.simple("s@x", "r@remote.test"), b"m\n"))
    (entry,) = qs.queues[0].scheduler.messages.values()
    verifyObject(IQueuedMessage, entry.message)
