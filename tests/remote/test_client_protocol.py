"""The Twisted adapter in memory: streaming with back-pressure, timeouts, read errors;
and implicit TLS against a real listener."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from indimail_tw.queue.envelope import Recipient
from indimail_tw.remote import client as client_module
from indimail_tw.remote.client import SMTPClientProtocol, connect
from indimail_tw.remote.client_parser import ClientCore, SessionFailed, TLSMode, Transaction
from indimail_tw.remote.tls import OpportunisticTLS
from tests.remote.peer import Harness, PeerFactory


class QueuedRun:
    """A thread runner whose calls wait until the test lets them run."""

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.calls.append((f, args, d))
        return d

    def step(self) -> None:
        """Run the calls waiting now (not those they start)."""
        calls, self.calls = self.calls, []
        for f, args, d in calls:
            try:
                result = f(*args)
            except Exception:  # noqa: BLE001
                d.errback()
            else:
                d.callback(result)


def sync_run(f, *args):
    return defer.maybeDeferred(f, *args)


def client(run=sync_run, timeout=30):
    clock = task.Clock()
    core = ClientCore("peer.example", "me.example", tls=TLSMode.NONE)
    proto = SMTPClientProtocol(core, clock=clock, timeout=timeout, tls_options=None, run=run)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def greet(proto, transport):
    proto.dataReceived(b"220 hi\r\n")
    proto.dataReceived(b"250-peer\r\n250 PIPELINING\r\n")
    transport.clear()


class ProtocolTests(unittest.TestCase):
    def message(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_body_streams_with_back_pressure(self):
        self.patch(client_module, "CHUNK", 4)
        run = QueuedRun()
        proto, transport, _clock = client(run)
        greet(proto, transport)
        self.assertIsNone(self.successResultOf(proto.ready))
        d = proto.transact(Transaction("s@x", [Recipient("a@y")]),
                           self.message(b"line one\n.two\n"))
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n")
        transport.clear()
        run.step()                                     # the file is opened
        self.assertIsNotNone(transport.producer)
        transport.producer.pauseProducing()
        run.step()                                     # the read in flight is written ...
        self.assertEqual(transport.value(), b"line")
        self.assertEqual(run.calls, [])                # ... but no further read starts
        transport.producer.resumeProducing()
        while run.calls:
            run.step()
        self.assertEqual(transport.value(), b"line one\r\n..two\r\n.\r\n")
        self.assertIsNone(transport.producer)
        self.assertNoResult(d)
        proto.dataReceived(b"250 ok\r\n")
        done = self.successResultOf(d)
        self.assertTrue(done.results[0].is_ok and done.reusable)

    def test_greeting_timeout(self):
        proto, transport, clock = client(timeout=60)
        clock.advance(59)
        self.assertNoResult(proto.ready)
        clock.advance(1)
        failed = self.successResultOf(proto.ready)
        self.assertIsInstance(failed, SessionFailed)
        self.assertTrue(failed.next_mx and failed.tcpto)
        self.assertTrue(transport.disconnecting or getattr(transport, "aborted", False))

    def test_no_timer_while_idle(self):
        proto, transport, clock = client()
        greet(proto, transport)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_replies_reset_the_timer(self):
        proto, transport, clock = client(timeout=10)
        greet(proto, transport)
        d = proto.transact(Transaction("s@x", [Recipient("a@y")]), self.message(b"x\n"))
        clock.advance(9)
        proto.dataReceived(b"250 ok\r\n")
        clock.advance(9)
        proto.dataReceived(b"250 ok\r\n")
        self.assertNoResult(d)
        clock.advance(10)
        done = self.successResultOf(d)
        self.assertIn("timed out", done.results[0].text)

    def test_unreadable_message_aborts_the_transaction(self):
        proto, transport, _clock = client()
        greet(proto, transport)
        d = proto.transact(Transaction("s@x", [Recipient("a@y")]),
                           os.path.join(self.mktemp(), "missing"))
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n")
        done = self.successResultOf(d)
        self.assertIn("Unable to read message", done.results[0].text)
        self.assertFalse(done.reusable)
        self.assertNotIn(b"\r\n.\r\n", transport.value())   # never a terminator


class ImplicitTLSTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_tls_from_the_first_byte(self):
        h = Harness()
        self.addCleanup(h.close)
        from indimail_tw.smtp.service import load_certificate
        peer = PeerFactory()
        pem = h.certificate("smtps.pem", "relay.example")
        listening = reactor.listenSSL(0, peer, load_certificate(pem), interface="127.0.0.1")
        h.ports.append(listening)
        core = ClientCore("relay.example", "me.example", tls=TLSMode.OPPORTUNISTIC,
                          implicit_tls=True)
        proto = connect(reactor, "127.0.0.1", listening.getHost().port, core,
                        connect_timeout=10, timeout=10, run=sync_run,
                        tls_options=lambda: OpportunisticTLS("relay.example"),
                        implicit_tls=True)
        self.assertIsNone((yield proto.ready))
        self.assertNotIn(b"STARTTLS", peer.connections[0].commands)
        proto.quit()
        yield proto.closed
