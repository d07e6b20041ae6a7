"""The agent behind the real durable queue, and build_remote_agent on a server context."""

from __future__ import annotations

import os
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.trial import unittest

from indimail_tw.queue import Envelope, Queue, SyncRunner
from indimail_tw.remote import build_remote_agent
from tests.remote.peer import Harness, PeerFactory


def queue_settings():
    return SimpleNamespace(queuelifetime=604800, concurrencylocal=10, concurrencyremote=20,
                           holdlocal=False, holdremote=False)


class Watched:
    """Passes deliveries on and remembers their results."""

    def __init__(self, agent, expected: int) -> None:
        self.agent = agent
        self.results: list = []
        self.expected = expected
        self.all_done: defer.Deferred = defer.Deferred()

    def deliver(self, message, recipient):
        def record(result):
            self.results.append((recipient.address, result))
            if len(self.results) == self.expected:
                self.all_done.callback(None)
            return result

        return self.agent.deliver(message, recipient).addCallback(record)


class QueueIntegrationTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.close)

    @defer.inlineCallbacks
    def test_queued_message_leaves_by_smtp_and_is_removed(self):
        peer = PeerFactory()
        port = self.h.listen(peer)
        self.h.write_control("smtproutes", f"routed.example:[127.0.0.1]:{port}\n")
        self.h.reload()
        agent = Watched(self.h.agent(resolver=object()), expected=2)
        queue = Queue(os.path.join(self.h.queue, "queue1"), clock=reactor, run=SyncRunner(),
                      agents={"local": None, "remote": agent},
                      router=lambda address: "local" if address.endswith("@me.example")
                      else "remote", settings=queue_settings)
        yield queue.start()
        envelope = Envelope.simple("alice@me.example", "bob@routed.example",
                                   "carol@routed.example")
        queue_id = yield queue.enqueue(envelope, b"Subject: queued\n\nfrom the queue\n")
        yield agent.all_done
        self.assertTrue(all(result.is_ok for _, result in agent.results))
        (msg,) = peer.messages
        self.assertEqual(len(msg.rcpts), 2)                  # one transaction for both
        self.assertTrue(msg.body.endswith(b"Subject: queued\r\n\r\nfrom the queue\r\n"))
        yield queue.stop()
        self.assertNotIn(queue_id, queue.scheduler.messages)


class BuildTests(unittest.TestCase):
    def test_build_remote_agent_from_a_context(self):
        h = Harness()
        self.addCleanup(h.close)
        context = SimpleNamespace(
            paths=SimpleNamespace(certs=h.certs, queue=h.queue, control=h.control),
            config=h.config, reactor=reactor, environ={"MIN_PENALTY": "60"})
        agent = build_remote_agent(context, resolver=object())
        self.addCleanup(agent.stop)
        self.assertEqual(agent.tcpto.path, os.path.join(h.queue, "tcpto"))
        self.assertEqual(agent.port, 25)
        h.write_control("queue_base", os.path.join(h.root, "q2") + "\n")
        h.reload()
        other = build_remote_agent(context, resolver=object())
        self.addCleanup(other.stop)
        self.assertEqual(other.tcpto.path, os.path.join(h.root, "q2", "tcpto"))

    def test_without_a_resolver_the_system_one_is_built_on_the_agents_reactor(self):
        # regression: twisted.names.client.createResolver takes no reactor argument, so
        # the first delivery of a running server failed with a TypeError
        from twisted.internet.testing import MemoryReactorClock

        h = Harness()
        self.addCleanup(h.close)
        class UDPRecorder(MemoryReactorClock):
            def __init__(self):
                super().__init__()
                self.udp = []

            def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):  # noqa
                self.udp.append(protocol)
                return SimpleNamespace(stopListening=lambda: None,
                                       write=lambda *a: None, connect=lambda *a: None)

        memory = UDPRecorder()
        context = SimpleNamespace(
            paths=SimpleNamespace(certs=h.certs, queue=h.queue, control=h.control),
            config=h.config, reactor=memory, environ={})
        agent = build_remote_agent(context)
        d = defer.Deferred.fromCoroutine(agent.mx.mx_candidates("example.test"))
        self.assertTrue(memory.udp, "no DNS query went out on the agent's reactor")
        d.cancel()
        d.addErrback(lambda _: None)


def settle() -> defer.Deferred:
    """One reactor turn: the scheduler handles the result Watched has just seen."""
    from twisted.internet import task

    return task.deferLater(reactor, 0, lambda: None)


class LifetimeTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.close)

    @defer.inlineCallbacks
    def test_a_peer_that_keeps_saying_4xx_gets_a_bounce_after_the_queue_lifetime(self):
        import email
        import email.policy

        from twisted.internet.task import Clock

        peer = PeerFactory()
        peer.replies[b"RCPT"] = b"451 4.2.1 mailbox busy, try later"
        port = self.h.listen(peer)
        self.h.write_control("smtproutes", f"routed.example:[127.0.0.1]:{port}\n")
        self.h.reload()
        agent = Watched(self.h.agent(resolver=object()), expected=1)
        clock = Clock()                        # the queue's time; the network is real
        clock.advance(1_700_000_000)
        settings = SimpleNamespace(**{**vars(queue_settings()), "queuelifetime": 1000},
                                   me="me.example", bouncefrom="MAILER-DAEMON",
                                   bouncehost="me.example", bouncemaxbytes=50000)
        queue = Queue(os.path.join(self.h.queue, "queue1"), clock=clock, run=SyncRunner(),
                      agents={"local": None, "remote": agent},
                      router=lambda address: "local" if address.endswith("@me.example")
                      else "remote", settings=lambda: settings)
        yield queue.start()
        self.addCleanup(queue.stop)
        original = b"Subject: will expire\nMessage-ID: <expire@me.example>\n\nbody\n"
        msg_id = yield queue.enqueue(Envelope.simple("alice@me.example",
                                                     "bob@routed.example"), original)
        yield agent.all_done                  # attempt 1 at birth: 451
        yield settle()
        (_, first), = agent.results
        self.assertTrue(first.is_temporary, first)
        self.assertEqual(queue.scheduler.messages[msg_id].states[0].status, "pending")
        # qmail's remote attempts: birth, +400 s, +1600 s; the last is past the
        # lifetime (1000 s), so its 451 is final
        agent.all_done, agent.expected = defer.Deferred(), 2
        clock.advance(400)
        yield agent.all_done
        yield settle()
        self.assertTrue(agent.results[1][1].is_temporary)     # at 400 s: still in time
        agent.all_done, agent.expected = defer.Deferred(), 3
        clock.advance(1200)
        yield agent.all_done
        yield settle()
        (bounce_entry,) = [e for e in queue.scheduler.messages.values()
                           if e.message.envelope.sender == ""]
        self.assertEqual([r.address for r in bounce_entry.message.envelope.recipients],
                         ["alice@me.example"])
        with bounce_entry.message.open() as f:      # the message, not the envelope after it
            bounce = email.message_from_bytes(f.read(), policy=email.policy.default)
        self.assertEqual(bounce.get_content_type(), "multipart/report")
        self.assertEqual(bounce.get_param("report-type"), "delivery-status")
        human, status, returned = bounce.iter_parts()
        self.assertIn("in the queue too long", human.get_content())
        self.assertIn("bob@routed.example", human.get_content())
        _per_message, per_recipient = status.get_payload()
        self.assertEqual(str(per_recipient["Final-Recipient"]).strip(),
                         "rfc822; bob@routed.example")
        self.assertEqual(str(per_recipient["Action"]).strip(), "failed")
        self.assertEqual(str(per_recipient["Status"]).strip(), "5.2.1")    # failed now
        self.assertEqual(" ".join(str(per_recipient["Diagnostic-Code"]).split()),
                         "smtp; 451 4.2.1 mailbox busy, try later")
        self.assertEqual(str(per_recipient["Remote-MTA"]).strip(), "dns; [127.0.0.1]")
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        (inner,) = returned.get_payload()
        self.assertEqual(inner["Message-ID"], "<expire@me.example>")
        # the original message is gone once its recipient is bounced
        self.assertNotIn(msg_id, queue.scheduler.messages)
