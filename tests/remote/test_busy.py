"""The agent's admission per destination and its "room again" signal, over loopback."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.trial import unittest

from indimail_tw.remote.agent import Busy
from tests.remote.peer import Harness, PeerFactory


class BusyTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.close)

    @defer.inlineCallbacks
    def test_beyond_twice_the_hosts_slots_a_delivery_is_turned_away_at_once(self):
        self.h.write_control("concurrencyperhost", "1\n")
        peer = PeerFactory()
        peer.greet_when = defer.Deferred()              # the host is slow to answer
        port = self.h.listen(peer, "127.0.0.2")
        self.h.write_control("smtproutes", f"remote.example:[127.0.0.2]:{port}\n")
        self.h.reload()
        agent = self.h.agent(resolver=object())
        rooms: list[dict[str, int]] = []
        agent.when_room(rooms.append)
        # learn the per-host limit (1) and the route's address with a first delivery
        peer.greet_when.callback(None)
        (first,) = yield self.h.deliver(agent, self.h.message("a@remote.example"))
        self.assertTrue(first.is_ok, first)
        yield self._turn()
        self.assertEqual(rooms, [{"remote.example": 1}])
        # now two may be in progress (one on the host, one waiting); the third is busy
        peer.greet_when = defer.Deferred()
        agent.cache.close_all()
        pending = [self.h.deliver(agent, self.h.message(f"u{n}@remote.example"))
                   for n in range(3)]
        (third,) = yield pending[2]
        self.assertIsInstance(third, Busy)
        self.assertTrue(third.is_temporary and third.enhanced == "4.4.5")
        reactor.callLater(0, peer.greet_when.callback, None)
        results = yield defer.gatherResults(pending[:2])
        self.assertTrue(all(r.is_ok for (r,) in results), results)
        self.assertEqual(len(peer.messages), 3)
        yield self._turn()
        self.assertEqual(sum(r.get("remote.example", 0) for r in rooms), 3)

    def _turn(self):
        d = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        return d


class RoomHandoffTests(unittest.TestCase):
    def test_room_goes_to_one_queue_at_a_time_taking_turns(self):
        h = Harness()
        self.addCleanup(h.close)
        agent = h.agent(resolver=object())
        calls: list[tuple[str, dict]] = []

        def subscriber(name, takes):
            def callback(domains):
                calls.append((name, dict(domains)))
                return {d: min(n, takes) for d, n in domains.items()}
            return callback

        agent.when_room(subscriber("q1", takes=1))
        agent.when_room(subscriber("q2", takes=5))
        agent._released_domains = {"a.example": 3}
        agent._tell_room()
        # q2 first this time: it takes all three, q1 hears nothing
        self.assertEqual(calls, [("q2", {"a.example": 3})])
        calls.clear()
        agent._released_domains = {"a.example": 3}
        agent._tell_room()
        # q1's turn: it takes one, the other two go on to q2
        self.assertEqual(calls, [("q1", {"a.example": 3}), ("q2", {"a.example": 2})])


class BodyPathTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_large_messages_are_streamed_from_the_file_small_ones_sent_from_memory(self):
        from indimail_tw.remote import agent as agent_module

        h = Harness()
        self.addCleanup(h.close)
        peer = PeerFactory()
        port = h.listen(peer)
        h.write_control("smtproutes", f"remote.example:[127.0.0.1]:{port}\n")
        h.reload()
        agent = h.agent(resolver=object())
        body = b"Subject: big\n\n" + b".starts with a dot\nplain line\n" * 4000
        self.patch(agent_module, "INLINE_BODY", 1000)           # this one is streamed
        (big,) = yield h.deliver(agent, h.message("a@remote.example", body=body))
        self.patch(agent_module, "INLINE_BODY", 10_000_000)     # this one is not
        (small,) = yield h.deliver(agent, h.message("b@remote.example", body=body))
        self.assertTrue(big.is_ok and small.is_ok, (big, small))
        expected = body.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")  # stuffed
        self.assertEqual(len(peer.messages), 2)
        self.assertTrue(all(m.body == expected for m in peer.messages))  # (no 100 KB diff)
