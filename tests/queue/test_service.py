"""The queue with real threads and the real reactor: service, build_queue, bounces."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from indimail_tw.config import Config, ControlDir
from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.paths import Paths
from indimail_tw import iouring
from indimail_tw.queue import Envelope, Queue, QueueService, QueueSet, ThreadRunner, build_queue
from tests.queue.helpers import route_by_domain, settings


class CountingAgent:
    """Delivers (reading the file in a thread) and fires ``done`` after ``expect`` calls."""

    def __init__(self, expect: int, hold: bool = False) -> None:
        self.expect = expect
        self.hold = hold
        self.delivered: list[tuple[str, str, bytes]] = []
        self.held: list[defer.Deferred] = []
        self.done: defer.Deferred = defer.Deferred()

    def deliver(self, message, recipient):
        if self.hold:
            d: defer.Deferred = defer.Deferred()
            self.held.append(d)
            return d
        d = ThreadRunner(reactor, reactor.getThreadPool())(_read, message)
        d.addCallback(self._got, message, recipient)
        return d

    def _got(self, data, message, recipient):
        self.delivered.append((message.id, recipient.address, data))
        if len(self.delivered) == self.expect:
            reactor.callLater(0, self.done.callback, None)
        return DeliveryResult.ok()


def _read(message):
    with message.open() as f:
        return f.read()


def names(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


class ServiceTests(unittest.TestCase):
    def build(self, n_queues=3, agent=None, grace_clock=None, ring=None):
        base = self.mktemp()
        pool = ThreadPool(0, 20, "test-queue")
        run = ThreadRunner(reactor, pool)
        snapshot = settings()
        queues = [Queue(os.path.join(base, f"queue{i}"), clock=reactor, run=run,
                        agents={"local": agent, "remote": None}, router=route_by_domain,
                        settings=lambda: snapshot, bounce_factory=lambda *a, **k: None,
                        ring=ring)
                  for i in range(1, n_queues + 1)]
        qs = QueueSet(queues, rng=random.Random(3))
        svc = QueueService(qs, reactor=grace_clock or reactor, pool=pool, ring=ring)
        return base, qs, svc

    def test_concurrent_messages_are_committed_delivered_and_removed(self):
        return self.concurrent_messages()

    def test_concurrent_messages_through_io_uring(self):
        """Commits and removals from the reactor through io_uring (large messages,
        spilled while received, still commit in threads)."""
        ring = iouring.reactor_ring(reactor)
        if ring is None:
            raise unittest.SkipTest("no io_uring here")
        d = self.concurrent_messages(ring)
        return d.addCallback(lambda _: self.assertNotIn(ring, reactor.getReaders()))

    @defer.inlineCallbacks
    def concurrent_messages(self, ring=None):
        n = 60
        agent = CountingAgent(expect=2 * n)
        base, qs, svc = self.build(agent=agent, ring=ring)
        svc.startService()
        yield svc.started
        bodies = {}

        def one(i):
            body = os.urandom(100 + 997 * i)
            env = Envelope.simple("s@x", f"a{i}@local.test", f"b{i}@local.test")
            if i % 2:
                d = qs.enqueue(env, body)
            else:
                w = qs.writer(env)
                for k in range(0, len(body), 1000):
                    w.write(body[k:k + 1000])
                d = w.commit()
            return d.addCallback(lambda msg_id: bodies.__setitem__(msg_id, body))

        results = yield defer.DeferredList([one(i) for i in range(n)], consumeErrors=True)
        assert all(ok for ok, _ in results), results
        assert len(bodies) == n
        yield agent.done
        for msg_id, _, data in agent.delivered:
            assert data == bodies[msg_id]
        yield svc.stopService()
        for q in qs.queues:
            for sub in ("info", "mess", "state", "tmp"):
                assert names(os.path.join(q.store.path, sub)) == [], (q.name, sub)
        assert sum(q.committer.batches for q in qs.queues) <= n

    @defer.inlineCallbacks
    def test_stop_abandons_deliveries_after_the_grace_period(self):
        agent = CountingAgent(expect=1, hold=True)
        grace = Clock()
        base, qs, svc = self.build(n_queues=1, agent=agent, grace_clock=grace)
        svc.startService()
        yield svc.started
        msg_id = yield qs.enqueue(Envelope.simple("s@x", "a@local.test"), b"m\n")
        while not agent.held:
            yield deferLater(0)
        stopped = svc.stopService()
        yield deferLater(0)
        assert not stopped.called
        grace.advance(svc.grace)
        yield stopped
        agent.held[0].callback(DeliveryResult.ok())      # too late: ignored
        assert names(qs.queues[0].store.mess) == [msg_id]


def deferLater(delay):  # noqa: N802
    from twisted.internet.task import deferLater as later

    return later(reactor, delay, lambda: None)


class BuildQueueTests(unittest.TestCase):
    def context(self, environ):
        root = os.path.abspath(self.mktemp())
        paths = Paths.resolve(root, {})
        paths.ensure()
        config = Config(ControlDir(paths.control, environ), fqdn=lambda: "mx.example.com")
        return SimpleNamespace(paths=paths, config=config, reactor=reactor, environ=environ)

    @defer.inlineCallbacks
    def test_queues_follow_queue_start_and_count(self):
        ctx = self.context({"QUEUE_COUNT": "3", "QUEUE_START": "2"})
        qs, svc = build_queue(ctx, {"local": None, "remote": None}, route_by_domain)
        assert [q.name for q in qs.queues] == ["queue2", "queue3", "queue4"]
        ring = svc.ring                     # one io_uring for all of them, where there is one
        svc.startService()
        opened = yield svc.started
        assert opened == 3
        assert names(ctx.paths.queue) == ["queue2", "queue3", "queue4"]
        assert set(names(os.path.join(ctx.paths.queue, "queue2"))) >= {
            "mess", "info", "tmp", "state", "corrupt", "lock"}
        msg_id = yield qs.enqueue(Envelope.simple("s@x", "r@remote.test"), b"hello\n")
        assert any(msg_id in names(q.store.mess) for q in qs.queues)
        yield svc.stopService()
        assert ring is None or ring not in reactor.getReaders()

    @defer.inlineCallbacks
    def test_default_bounce_factory_makes_a_real_bounce(self):
        ctx = self.context({"QUEUE_COUNT": "1"})
        agent = CountingAgent(expect=1)
        agent._got = lambda data, m, r: DeliveryResult.permanent("no such user", "5.1.1")
        qs, svc = build_queue(ctx, {"local": agent, "remote": None}, route_by_domain)
        svc.startService()
        yield svc.started
        msg_id = yield qs.enqueue(Envelope.simple("s@remote.test", "r@local.test"),
                                  b"Subject: hi\n\nhello\n")
        (queue,) = qs.queues
        while msg_id in queue.scheduler.messages:
            yield deferLater(0.01)
        (entry,) = queue.scheduler.messages.values()
        bounce = entry.message
        assert bounce.envelope.sender == ""
        assert [r.address for r in bounce.envelope.recipients] == ["s@remote.test"]
        data = _read(bounce)
        assert b"r@local.test" in data and b"no such user" in data
        yield svc.stopService()
