"""Per-host slots and the idle-connection cache."""

from __future__ import annotations

from twisted.internet import defer, task

from indimail_tw.remote.pool import MAX_TRANSACTIONS, ConnectionCache, HostSlots


def test_slots_queue_then_refuse():
    slots = HostSlots(lambda: 2)
    assert slots.acquire("a").called and slots.acquire("a").called
    w1, w2 = slots.acquire("a"), slots.acquire("a")
    assert not w1.called and not w2.called
    assert slots.acquire("a") is None                    # twice the limit: deferred at once
    assert slots.acquire("b").called                     # other hosts are not affected
    slots.release("a")
    assert w1.called and not w2.called
    slots.release("a")
    slots.release("a")
    slots.release("a")
    assert w2.called and slots.active == {"b": 1}


class FakeProto:
    def __init__(self, clock):
        self.usable = True
        self.created = clock.seconds()
        self.closed = defer.Deferred()
        self.core = type("Core", (), {"transactions": 1})()
        self.quits = 0

    def quit(self):
        self.quits += 1
        self.usable = False


def test_cache_reuses_then_expires():
    clock = task.Clock()
    cache = ConnectionCache(clock, idle=10)
    p = FakeProto(clock)
    cache.put("k", p)
    assert cache.take("other") is None
    assert cache.take("k") is p and cache.take("k") is None
    cache.put("k", p)
    clock.advance(10)
    assert p.quits == 1 and cache.take("k") is None and len(cache) == 0


def test_cache_drops_closed_and_worn_out_connections():
    clock = task.Clock()
    cache = ConnectionCache(clock, idle=10)
    p = FakeProto(clock)
    cache.put("k", p)
    p.closed.callback(None)
    assert len(cache) == 0
    worn = FakeProto(clock)
    worn.core.transactions = MAX_TRANSACTIONS
    cache.put("k", worn)
    assert worn.quits == 1 and len(cache) == 0


def test_close_all():
    clock = task.Clock()
    cache = ConnectionCache(clock, idle=10)
    protos = [FakeProto(clock) for _ in range(3)]
    for p in protos:
        cache.put("k", p)
    assert len(cache.close_all()) == 3 and all(p.quits == 1 for p in protos)
    assert not clock.getDelayedCalls()
