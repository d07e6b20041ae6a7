"""PIPELINING: replies leave in command order while lookups, logins and commits are pending."""

from __future__ import annotations

import base64

import pytest
from twisted.internet import task

from indimail_tw.smtp import protocol as smtp_protocol
from tests.smtp.support import Conn, Site, ehlo, make_factory


@pytest.fixture
def site():
    s = Site(environ={"SECURE_AUTH": "0"})
    s.store.add_user("alice@example.com")
    s.store.add_user("bob@example.com")
    yield s
    s.cleanup()


def test_replies_in_order_with_delayed_lookups(site):
    conn = Conn(make_factory(site))
    ehlo(conn)
    site.store.delay = []
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              "RCPT TO:<nobody@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
              "Subject: x\r\n\r\nhi\r\n.\r\nNOOP\r\n")
    # MAIL's reply is held while the first lookup is pending (more input is buffered)
    assert conn.codes() == []
    # only one lookup is in flight at a time, and nothing overtakes it
    while site.store.delay:
        d = site.store.delay.pop(0)
        d.callback(None)
    assert conn.codes() == [250, 250, 550, 250, 354, 250, 250]
    env, data = site.queue.messages[0]
    assert [r.address for r in env.recipients] == ["alice@example.com", "bob@example.com"]
    assert data.endswith(b"Subject: x\n\nhi\n")


def test_held_replies_leave_after_the_hold_limit(site):
    from indimail_tw.smtp.protocol import HOLD_LIMIT
    clock = task.Clock()
    conn = Conn(make_factory(site, clock=clock))
    ehlo(conn)
    site.store.delay = []
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nNOOP\r\n")
    assert conn.codes() == []                  # MAIL's reply waits for RCPT's ...
    clock.advance(HOLD_LIMIT)
    assert conn.codes() == [250]               # ... but not for long
    site.store.delay.pop(0).callback(None)
    assert conn.codes() == [250, 250]


def test_replies_to_one_pipelined_group_leave_in_one_write(site):
    conn = Conn(make_factory(site))
    ehlo(conn)
    site.store.delay = []
    writes = []
    write = conn.transport.write
    conn.transport.write = lambda data: (writes.append(data), write(data))
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    site.store.delay.pop(0).callback(None)
    assert len(writes) == 1 and conn.codes() == [250, 250, 354]


def test_lookups_answered_out_of_order_still_reply_in_order(site):
    conn = Conn(make_factory(site))
    ehlo(conn)
    site.store.delay = []
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              "RCPT TO:<bob@example.com>\r\nNOOP\r\n")
    first = site.store.delay.pop(0)
    assert site.store.delay == []              # the second RCPT waits for the first
    first.callback(None)
    assert conn.codes() == []                  # held: the second RCPT is still pending
    site.store.delay.pop(0).callback(None)
    assert conn.codes() == [250, 250, 250, 250]


def test_delayed_login_keeps_order(site):
    from twisted.internet import defer
    conn = Conn(make_factory(site))
    ehlo(conn)
    gate = site.checker.delay = defer.Deferred()
    conn.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.com\0secret") + b"\r\n"
              b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<x@remote.example>\r\n")
    assert conn.codes() == []
    gate.callback(None)
    assert conn.codes() == [235, 250, 250]     # the RCPT was judged after the login


def test_delayed_commit_and_next_transaction(site):
    site.queue.auto_commit = False
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
              "one\r\n.\r\nMAIL FROM:<t@remote.example>\r\nRCPT TO:<bob@example.com>\r\n")
    assert conn.codes() == [250, 250, 354]
    site.queue.fire()
    assert conn.codes() == [250, 250, 250]


def test_busy_session_pauses_the_transport(site, monkeypatch):
    monkeypatch.setattr(smtp_protocol.SMTPServerProtocol, "high_water", 1000)
    monkeypatch.setattr(smtp_protocol.SMTPServerProtocol, "low_water", 100)
    conn = Conn(make_factory(site))
    ehlo(conn)
    site.store.delay = []
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n")
    conn.send("NOOP\r\n" * 300)
    assert conn.transport.producerState == "paused"
    site.store.delay.pop(0).callback(None)
    assert conn.transport.producerState == "producing"
    assert conn.codes() == [250, 250] + [250] * 300


def test_input_overflow_closes(site, monkeypatch):
    monkeypatch.setattr(smtp_protocol, "HARD_LIMIT", 5000)
    conn = Conn(make_factory(site))
    ehlo(conn)
    site.store.delay = []
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n")
    conn.send("NOOP\r\n" * 1000)
    assert conn.closed and conn.lines()[-1].startswith("421 4.7.0")


def test_queue_backpressure_holds_the_session(site):
    from twisted.internet import defer
    site.queue.drain_gate = defer.Deferred()
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
              "first\r\n")
    assert conn.codes() == [250, 250, 354]
    conn.send("second\r\n.\r\nNOOP\r\n")
    assert conn.codes() == []                  # waiting for the queue to drain
    gate, site.queue.drain_gate = site.queue.drain_gate, None
    gate.callback(None)
    assert conn.codes() == [250, 250]
    assert site.queue.messages[0][1].endswith(b"first\nsecond\n")


def test_nagle_is_switched_off(site):
    """A reply that waited for a lookup must not wait for the ACK of the one before it."""
    from tests.smtp.support import TLSStringTransport

    calls = []

    class TCPTransport(TLSStringTransport):
        def setTcpNoDelay(self, enabled):  # noqa: N802
            calls.append(enabled)

    factory = make_factory(site)
    proto = factory.buildProtocol(None)
    proto.makeConnection(TCPTransport())
    assert calls == [True]
    assert proto.transport.value().startswith(b"220 ")

