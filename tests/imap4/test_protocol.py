"""The IMAP protocol adapter: order, flow control, failures, COMPRESS framing, fatal input."""

from __future__ import annotations

import zlib

import pytest
from twisted.internet import defer

from tests.imap4.session_support import Server, put


@pytest.fixture
def server():
    s = Server()
    yield s
    s.cleanup()


def test_large_reply_waits_for_the_reader(server):
    conn = server.connect()
    conn.login()
    body = b"Subject: big\n\n" + b"x" * 100_000 + b"\n"
    for _ in range(10):
        put(server.maildir(), body)
    conn.ask("s SELECT INBOX")
    write = conn.transport.write

    def full_after_each_write(data):             # a client that reads slowly
        write(data)
        conn.proto.pauseProducing()

    conn.transport.write = full_after_each_write
    conn.send("f FETCH 1:* BODY.PEEK[]\r\nn NOOP\r\n")
    chunks = [conn.output()]
    while conn.proto._reply is not None or conn.proto._events:
        conn.proto.resumeProducing()
        chunks.append(conn.output())
    assert len(chunks) >= 10
    assert all(len(c) < 200_000 for c in chunks)   # one chunk per write, not everything
    everything = b"".join(chunks)
    assert everything.count(b"x" * 100_000) == 10
    assert everything.index(b"f OK") < everything.index(b"n OK NOOP completed")
    assert everything.endswith(b"n OK NOOP completed\r\n")


def test_pipelining_pauses_reading_when_many_commands_wait(server):
    server.login.gate = gate = defer.Deferred()
    conn = server.connect()
    conn.proto.session.tls = True
    conn.output()
    conn.send("a LOGIN alice@example.com s3cret\r\n" + "".join(
        f"n{i} NOOP\r\n" for i in range(50)))
    assert conn.transport.producerState == "paused"
    gate.callback(None)
    lines = conn.lines()
    assert lines[0].startswith("a OK")
    assert lines[1:] == [f"n{i} OK NOOP completed" for i in range(50)]
    assert conn.transport.producerState == "producing"


def test_unexpected_exception_is_a_temporary_no(server):
    conn = server.connect()
    conn.login()

    def broken(tag, args):
        raise RuntimeError("boom")

    conn.proto.session.do_namespace = broken
    assert conn.ask("a NAMESPACE") == ["a NO [SERVERBUG] Internal error, try again later"]
    conn.proto.session.do_namespace = lambda tag, args: defer.fail(RuntimeError("late"))
    assert conn.ask("b NAMESPACE") == ["b NO [SERVERBUG] Internal error, try again later"]

    def half(tag, args):
        yield b"* NAMESPACE NIL NIL NIL\r\n"
        raise RuntimeError("midway")

    conn.proto.session.do_namespace = half
    assert conn.ask("c NAMESPACE") == ["* NAMESPACE NIL NIL NIL",
                                       "c NO [SERVERBUG] Internal error, try again later"]
    assert conn.tagged("d NOOP") == "d OK NOOP completed"
    assert not conn.closed


def test_fatal_input_says_bye():
    s = Server(environ={"APPENDLIMIT": "1000"})
    try:
        conn = s.connect()
        conn.login()
        answer = conn.ask("a APPEND INBOX {400000000+}")
        assert answer[0].startswith("a BAD") and answer[-1].startswith("* BYE"), answer
        assert conn.closed
    finally:
        s.cleanup()


def test_append_limit_is_the_literal_bound():
    s = Server(environ={"APPENDLIMIT": "1000"})
    try:
        conn = s.connect()
        conn.login()
        assert conn.proto.parser.max_literal == 1000
        assert "APPENDLIMIT=1000" in conn.ask("c CAPABILITY")[0].split()
        answer = conn.ask("a APPEND INBOX {2000}")
        assert answer[0].startswith("a "), answer
        assert "+ " not in answer[0]
        assert conn.tagged("b NOOP") == "b OK NOOP completed"
    finally:
        s.cleanup()


def test_compress_takes_data_sent_with_the_command(server):
    conn = server.connect()
    conn.login()
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    inflate = zlib.decompressobj(-15)
    conn.send(b"a COMPRESS DEFLATE\r\n" + deflate.compress(b"b NOOP\r\n")
              + deflate.flush(zlib.Z_SYNC_FLUSH))
    out = conn.output()
    assert out.startswith(b"a OK DEFLATE active\r\n")
    assert inflate.decompress(out[len(b"a OK DEFLATE active\r\n"):]) == (
        b"b OK NOOP completed\r\n")


def test_compressed_bomb_is_bounded(server):
    conn = server.connect()
    conn.login()
    conn.ask("a COMPRESS DEFLATE")
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    inflate = zlib.decompressobj(-15)
    bomb = deflate.compress(b"b NOOP " + b"x" * 20_000_000) + deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    conn.send(bomb)
    assert len(conn.proto.parser._buf) < 200_000
    conn.send(deflate.compress(b"\r\nc NOOP\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
    out = inflate.decompress(conn.output())
    assert b"BAD" in out and out.endswith(b"c OK NOOP completed\r\n")


def test_idle_loop_only_while_idling(server):
    conn = server.connect()
    conn.login()
    conn.ask("a SELECT INBOX")
    assert len(server.clock.getDelayedCalls()) == 1          # the autologout timer
    conn.ask("b IDLE")
    assert len(server.clock.getDelayedCalls()) == 2
    conn.ask("DONE")
    assert len(server.clock.getDelayedCalls()) == 1


def test_early_talker_waits_for_the_greeting(server):
    conn = server.connect()
    conn.send("a NOOP\r\nb NOOP\r\n")
    assert conn.lines()[1:] == ["a OK NOOP completed", "b OK NOOP completed"]


def test_bytewise_input(server):
    conn = server.connect()
    conn.output()
    for byte in b'a ID ("name" {3}\r\nabc)\r\nb NOOP\r\n':
        conn.send(bytes([byte]))
    assert conn.lines() == ["+ Ready for literal data", "* ID NIL", "a OK ID completed",
                            "b OK NOOP completed"]


def test_connection_lost_mid_command(server):
    server.login.gate = gate = defer.Deferred()
    conn = server.connect()
    conn.proto.session.tls = True
    conn.send("a LOGIN alice@example.com s3cret\r\n")
    conn.lose()
    gate.callback(None)
    assert server.login.logouts == ["alice@example.com"]
    assert server.clock.getDelayedCalls() == []


def test_close_unregisters_the_producer_first(server):
    """TLS shuts down only once no producer is registered (mbsync waited forever)."""
    conn = server.connect()
    assert conn.transport.producer is conn.proto
    seen = []
    lose = conn.transport.loseConnection

    def lose_connection():
        seen.append(conn.transport.producer)
        lose()

    conn.transport.loseConnection = lose_connection
    conn.ask("a LOGOUT")
    assert seen == [None]


def test_idle_update_that_ends_the_session(server):
    conn = server.connect()
    conn.login()
    conn.ask("a SELECT INBOX")
    conn.ask("b IDLE")
    session = conn.proto.session

    def gone(expunge_allowed, scan=True):
        session.action = "close"
        return [b"* BYE [UNAVAILABLE] Mailbox UIDVALIDITY changed, reconnect\r\n"]

    session.selected.changed = lambda: True
    session.selected.poll = gone
    server.clock.advance(1)
    assert conn.lines() == ["* BYE [UNAVAILABLE] Mailbox UIDVALIDITY changed, reconnect"]
    assert conn.closed


def test_a_big_fetch_reads_one_group_at_a_time_as_the_client_reads(monkeypatch):
    """FETCH 1:* BODY[] over more messages than one read job takes is streamed: the
    files of the next group are read only once the client has taken what was
    written, so memory holds one group whatever the size of the folder."""
    from indimail_tw.imap4 import fetch

    monkeypatch.setattr(fetch, "BATCH_FILES", 3)
    monkeypatch.setattr(fetch, "INLINE_FILES", 0)
    server = Server()
    reads = []

    def run(fn, *args):
        if fn is fetch._read_batch:              # held until the test lets it finish
            d = defer.Deferred()
            reads.append((args[0], d))
            return d
        return defer.maybeDeferred(fn, *args)

    server.factory.run = run
    try:
        conn = server.connect()
        conn.login()
        for i in range(8):
            put(server.maildir(), b"Subject: m%d\n\nbody %d\n" % (i, i))
        conn.ask("s SELECT INBOX")
        write = conn.transport.write

        def slow_reader(data):
            write(data)
            conn.proto.pauseProducing()

        conn.transport.write = slow_reader
        conn.send("f FETCH 1:* (BODY.PEEK[])\r\n")
        seen = []
        while conn.proto._reply is not None:
            waiting = [r for r in reads if not r[1].called]
            assert len(waiting) <= 1                  # one group read at a time
            if waiting:
                jobs, d = waiting[0]
                d.callback(fetch._read_batch(jobs))
            conn.proto.resumeProducing()
            seen.append(conn.output())
        out = b"".join(seen)
        assert [len(jobs) for jobs, _ in reads] == [3, 3, 2]
        for i in range(8):
            assert b"* %d FETCH (BODY[] {" % (i + 1) in out and b"body %d\r\n" % i in out
        assert out.endswith(b"f OK Fetch completed\r\n")
    finally:
        server.cleanup()


def test_a_streamed_fetch_reports_messages_gone_meanwhile(monkeypatch):
    import os

    from indimail_tw.imap4 import fetch

    monkeypatch.setattr(fetch, "BATCH_FILES", 2)
    monkeypatch.setattr(fetch, "INLINE_FILES", 0)
    server = Server()
    try:
        conn = server.connect()
        conn.login()
        paths = [put(server.maildir(), b"Subject: m%d\n\nbody\n" % i) for i in range(5)]
        conn.ask("s SELECT INBOX")
        real = fetch._read_batch

        unique = os.path.basename(paths[4]).split(",")[0]

        def read_and_lose(jobs):                  # another process expunges the last one
            for sub in ("new", "cur"):
                folder = os.path.join(server.maildir(), sub)
                for name in os.listdir(folder):
                    if name.startswith(unique):
                        os.unlink(os.path.join(folder, name))
            return real(jobs)

        monkeypatch.setattr(fetch, "_read_batch", read_and_lose)
        lines = conn.ask("f FETCH 1:* (BODY.PEEK[])")
        assert lines[-1].startswith("f NO [EXPUNGEISSUED]")
        assert sum(1 for line in lines if " FETCH (BODY[] {" in line) == 4
    finally:
        server.cleanup()


def test_new_files_are_numbered_in_a_thread_not_on_the_reactor(monkeypatch):
    """A delivery seen by the poll that ends a command (or by IDLE): the scan that
    numbers it, with its fsync, runs through the thread runner; the reactor's own
    poll only reads the index."""
    from indimail_tw.maildir import index as mindex

    server = Server()
    held = []
    in_thread = [False]

    def thread(fn, *args):
        in_thread[0] = True
        try:
            return fn(*args)
        finally:
            in_thread[0] = False

    def run(fn, *args):
        if getattr(fn, "__name__", "") == "scan":      # held until the test releases it
            d = defer.Deferred()
            held.append((fn, args, d))
            return d
        return defer.maybeDeferred(thread, fn, *args)

    server.factory.run = run
    synced_on_reactor = []
    real_sync_wal = mindex.FolderIndex._sync_wal

    def sync_wal(self):
        synced_on_reactor.append(not in_thread[0])
        real_sync_wal(self)

    monkeypatch.setattr(mindex.FolderIndex, "_sync_wal", sync_wal)
    try:
        conn = server.connect()
        conn.login()
        put(server.maildir())
        conn.ask("a SELECT INBOX")
        put(server.maildir(), b"Subject: second\n\nbody\n")
        conn.send("b NOOP\r\n")
        assert conn.lines() == [] and len(held) == 1           # waits for the scan
        fn, args, d = held.pop()
        d.callback(thread(fn, *args))
        lines = conn.lines()
        assert "* 2 EXISTS" in lines and lines[-1] == "b OK NOOP completed"
        conn.ask("c IDLE")
        put(server.maildir(), b"Subject: third\n\nbody\n")
        server.clock.advance(1)
        assert len(held) == 1 and conn.lines() == []
        fn, args, d = held.pop()
        d.callback(thread(fn, *args))
        assert "* 3 EXISTS" in conn.lines()
        assert synced_on_reactor and not any(synced_on_reactor)   # never on the reactor
    finally:
        server.cleanup()


def test_the_index_is_closed_through_the_thread_runner():
    """Closing the last SQLite connection of a folder checkpoints its log (fsyncs):
    UNSELECT, CLOSE, another SELECT and logout close the index in a thread."""
    server = Server()
    calls = []

    def run(fn, *args):
        calls.append(getattr(fn, "__name__", ""))
        return defer.maybeDeferred(fn, *args)

    server.factory.run = run
    try:
        conn = server.connect()
        conn.login()
        put(server.maildir())
        conn.ask("a SELECT INBOX")
        index = conn.proto.session.selected.index
        calls.clear()
        assert conn.ask("b UNSELECT")[-1] == "b OK Unselect completed"
        assert calls == ["close"] and index._conn is None
    finally:
        server.cleanup()
