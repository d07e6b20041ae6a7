"""The message commands through the real session and protocol (in memory):
pipelining, the update rules around FETCH/STORE/SEARCH, IDLE, two sessions."""

from __future__ import annotations

import re

import pytest

from tests.imap4.session_support import Server, put, untagged

MSG = b"From: a@example.com\nSubject: s%d\n\nbody %d\n"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.cleanup()


def logged_in(server, n: int = 3):
    for i in range(1, n + 1):
        put(server.maildir(), MSG % (i, i))
    conn = server.connect()
    conn.login()
    return conn


def test_a_client_session(server):
    conn = logged_in(server)
    answer = conn.ask("s SELECT INBOX")
    assert "* 3 EXISTS" in answer and answer[-1].startswith("s OK [READ-WRITE]")
    answer = conn.ask("f1 FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert len(untagged(answer, "FETCH")) == 3 and answer[-1] == "f1 OK Fetch completed"
    assert conn.tagged("st STORE 2 +FLAGS (\\Deleted)") == "st OK Store completed"
    assert conn.ask("se UID SEARCH DELETED") == ["* SEARCH 2", "se OK Search completed"]
    assert conn.tagged("c CREATE Work").startswith("c OK")
    answer = conn.ask("m UID MOVE 1 Work")
    assert re.match(r"\* OK \[COPYUID \d+ 1 1\] Moved", answer[0])
    assert answer[1:] == ["* 1 EXPUNGE", "m OK Move completed"]
    assert conn.ask("e EXPUNGE") == ["* 1 EXPUNGE", "e OK Expunge completed"]
    assert conn.ask("f2 FETCH 1 (UID)") == ["* 1 FETCH (UID 3)", "f2 OK Fetch completed"]
    assert conn.tagged("cl CLOSE") == "cl OK Close completed"
    assert conn.tagged("f3 FETCH 1 UID").startswith("f3 BAD")


def test_pipelined_commands_answer_in_order(server):
    conn = logged_in(server)
    conn.tagged("s SELECT INBOX")
    conn.output()
    conn.send("a STORE 1 +FLAGS.SILENT (\\Seen)\r\nb FETCH 1 FLAGS\r\nc SEARCH SEEN\r\n")
    assert conn.lines() == ["a OK Store completed", "* 1 FETCH (FLAGS (\\Recent \\Seen))",
                            "b OK Fetch completed", "* SEARCH 1", "c OK Search completed"]


def test_no_expunge_during_fetch_store_search(server):
    conn = logged_in(server)
    conn.tagged("s SELECT INBOX")
    other = server.connect()
    other.login()
    other.tagged("s SELECT INBOX")
    other.tagged("x STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.tagged("y EXPUNGE")
    answer = conn.ask("f FETCH 1:3 UID")
    assert "EXPUNGE" not in " ".join(answer[:-1])
    # message 1 keeps its number (and what we knew of it) until the NOOP
    assert untagged(answer, "FETCH") == ["* 1 FETCH (UID 1)", "* 2 FETCH (UID 2)",
                                         "* 3 FETCH (UID 3)"]
    assert conn.ask("n NOOP")[0] == "* 1 EXPUNGE"


def test_idle_sees_a_delivery_and_another_sessions_flags(server):
    conn = logged_in(server, 1)
    conn.tagged("s SELECT INBOX")
    conn.ask("i IDLE")
    put(server.maildir(), MSG % (9, 9))
    server.clock.advance(2)
    lines = conn.lines()
    assert "* 2 EXISTS" in lines
    other = server.connect()
    other.login()
    other.tagged("s SELECT INBOX")
    other.tagged("x STORE 1 +FLAGS.SILENT (\\Flagged)")
    server.clock.advance(2)
    assert "* 1 FETCH (FLAGS (\\Flagged \\Recent))" in conn.lines()
    assert conn.ask("DONE") == ["i OK IDLE terminated"]


def test_append_and_fetch_back(server):
    conn = logged_in(server, 0)
    data = b"Subject: appended\r\n\r\nhello\r\n"
    conn.output()
    conn.send(b"a APPEND INBOX (\\Flagged) {%d+}\r\n" % len(data) + data + b"\r\n")
    answer = conn.lines()
    assert re.match(r"a OK \[APPENDUID \d+ 1\] Append completed", answer[-1])
    conn.tagged("s SELECT INBOX")
    conn.output()
    conn.send("f FETCH 1 (FLAGS BODY[])\r\n")
    out = conn.output()
    # FLAGS shows the \\Seen the BODY[] fetch set
    assert out == (b"* 1 FETCH (FLAGS (\\Flagged \\Recent \\Seen) BODY[] {%d}\r\n" % len(data)
                   + data + b")\r\nf OK Fetch completed\r\n")
