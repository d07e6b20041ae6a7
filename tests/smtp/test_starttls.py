"""STARTTLS: plaintext injection (CVE-2011-0411 class), state reset, availability, 465."""

from __future__ import annotations

import base64

import pytest

from tests.smtp.support import Conn, Site, ehlo, make_factory


@pytest.fixture
def site():
    s = Site()
    s.store.add_user("alice@example.com")
    yield s
    s.cleanup()


def test_commands_pipelined_after_starttls_are_discarded(site):
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\n"
              "RCPT TO:<alice@example.com>\r\nDATA\r\n")
    out = conn.output()
    assert out == b"220 2.0.0 ready for tls\r\n"
    assert conn.transport.tls_started_at == len(conn.transport.value())
    assert conn.transport.tls_options == "tls-options"
    # after the handshake the injected commands are gone: the client must start over
    conn.send("MAIL FROM:<a@remote.example>\r\n")
    assert conn.lines() == ["503 5.5.1 Polite people say hello first"]


def test_injection_in_the_same_segment_as_a_pending_command(site):
    conn = Conn(make_factory(site))
    ehlo(conn)
    site.store.delay = []
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nRSET\r\n"
              "STARTTLS\r\nRSET\r\n")
    conn.send("MAIL FROM:<evil@attacker.example>\r\n")     # arrives while a lookup is pending
    site.store.delay.pop(0).callback(None)
    assert conn.codes() == [250, 250, 250, 220]
    conn.send("EHLO again\r\n")
    assert conn.codes() == [250]


def test_tls_resets_helo_and_enables_auth(site):
    conn = Conn(make_factory(site, service="submission"))
    ehlo(conn)
    conn.send("MAIL FROM:<alice@example.com>\r\n")
    assert conn.lines() == ["530 5.7.0 authentication required"]
    conn.send("STARTTLS\r\n")
    assert conn.codes() == [220]
    lines = ehlo(conn)
    assert "250-AUTH PLAIN LOGIN CRAM-MD5" in lines and "250-STARTTLS" not in lines
    conn.send("STARTTLS\r\n")
    assert conn.codes() == [503]


def test_no_certificate_no_starttls(site):
    conn = Conn(make_factory(site, tls=False))
    assert "250-STARTTLS" not in ehlo(conn)
    conn.send("STARTTLS\r\nSTARTTLS now\r\n")
    assert conn.codes() == [454, 501]
    assert conn.transport.tls_started_at is None


def test_implicit_tls_smtps(site):
    conn = Conn(make_factory(site, service="smtps", implicit_tls=True))
    from zope.interface import directlyProvides
    from twisted.internet import interfaces
    directlyProvides(conn.transport, interfaces.ISSLTransport)
    lines = ehlo(conn)
    assert "250-STARTTLS" not in lines and "250-AUTH PLAIN LOGIN CRAM-MD5" in lines
    conn.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.com\0secret") + b"\r\n"
              b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<x@remote.example>\r\nDATA\r\n"
              b"hi\r\n.\r\n")
    assert conn.codes() == [235, 250, 250, 354, 250]
    env, data = site.queue.messages[0]
    assert env.protocol == "ESMTPSA" and b"(TLSv1.3 TLS_AES_256_GCM_SHA384)" in data


def test_force_tls_on_port_25(site):
    site.environ["FORCE_TLS"] = "1"
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\n")
    assert conn.lines() == ["530 5.7.0 must issue a STARTTLS command first"]
    conn.send("STARTTLS\r\n")
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\n")
    assert conn.codes() == [250]
