"""SMTP smuggling: no bare CR/LF variant ends a message early or injects a second one."""

from __future__ import annotations

import pytest

from tests.smtp.support import Conn, Site, ehlo, make_factory

VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\r\n.\rX",
            b"\n..\n", b"\r\r\n.\r\n"]

SMUGGLED = (b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nwire money\r\n.\r\n")


@pytest.fixture
def site():
    s = Site()
    s.store.add_user("alice@example.com")
    yield s
    s.cleanup()


def start_data(site) -> Conn:
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    assert conn.codes() == [250, 250, 354]
    return conn


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bytewise", [False, True])
def test_data_variants(site, variant, bytewise):
    conn = start_data(site)
    payload = b"Subject: real\r\n\r\nhello" + variant + SMUGGLED + b"QUIT\r\n"
    (conn.send_bytewise if bytewise else conn.send)(payload)
    lines = conn.lines()
    assert len(lines) == 1 and lines[0].startswith("451 4.6.0 Requested action aborted: bare")
    assert conn.closed
    assert site.queue.messages == []
    assert all(w.aborted for w in site.queue.writers)


def test_clean_message_with_dot_lines_is_fine(site):
    conn = start_data(site)
    conn.send(b"a\r\n..\r\n.x\r\n. \r\n.\r\n")
    assert conn.codes() == [250]
    assert site.queue.messages[0][1].endswith(b"a\n.\nx\n \n")


BDAT_VARIANTS = [b"\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\n.\r\n", b"\r\n.\n", b"x\r"]


@pytest.mark.parametrize("variant", BDAT_VARIANTS)
def test_bdat_variants(site, variant):
    conn = Conn(make_factory(site))
    ehlo(conn)
    chunk = b"Subject: real\r\n\r\nhello" + variant + SMUGGLED
    conn.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert conn.codes() == [250, 250, 451, 250]       # refused as a whole; nothing injected
    assert site.queue.messages == []


def test_bdat_cr_at_chunk_boundary_is_fine(site):
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              b"BDAT 6\r\nline1\rBDAT 9 LAST\r\n\n\r\nbody\r\n")
    assert conn.codes() == [250, 250, 250, 250]
    assert site.queue.messages[0][1].endswith(b"line1\n\nbody\n")


def test_bdat_trailing_cr_at_last_chunk(site):
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              b"BDAT 5 LAST\r\nabcd\r")
    assert conn.codes() == [250, 250, 451]


def test_bdat_chunk_is_drained_even_after_an_internal_error(site):
    def broken_writer(envelope):
        raise RuntimeError("queue bug")

    site.queue.writer = broken_writer
    conn = Conn(make_factory(site))
    ehlo(conn)
    chunk = b"RSET\r\nMAIL FROM:<ceo@example.com>\r\n"
    conn.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert conn.codes() == [250, 250, 451, 250]
    conn.send("RCPT TO:<alice@example.com>\r\n")
    assert conn.codes() == [503]                      # no MAIL was taken from the chunk
