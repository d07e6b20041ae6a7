"""FETCH / UID FETCH against a real Maildir and FolderIndex."""

from __future__ import annotations

import re

import pytest

from indimail_tw.imap4 import fetch, grammar, mime
from tests.imap4.test_messages_harness import Harness, text

SIMPLE = b"From: Ann <ann@example.com>\nTo: bob@example.com\nSubject: hello\n\nHi Bob\nbye\n"
MULTI = (b"From: a@b\nSubject: parts\nContent-Type: multipart/mixed; boundary=b\n\n"
         b"--b\n\none\n--b\nContent-Type: text/plain; charset=utf-8\n"
         b"Content-Transfer-Encoding: base64\n\naMOpbGxv\n"
         b"--b\nContent-Type: application/x\nContent-Transfer-Encoding: x-weird\n\n???\n--b--\n")


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.cleanup()


def test_index_items_in_the_order_requested(h):
    h.deliver(SIMPLE, mtime=1700000000)
    h.select()
    out = text(h.command("a FETCH 1 (RFC822.SIZE FLAGS UID INTERNALDATE)"))
    size = len(mime.normalise(SIMPLE))
    date = fetch.internaldate(1700000000).decode()
    assert out == (f"* 1 FETCH (RFC822.SIZE {size} FLAGS (\\Recent) UID 1 INTERNALDATE {date})"
                   "\r\na OK Fetch completed\r\n")
    assert re.fullmatch(r'"\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"', date)


def test_macros_and_uid_fetch_adds_uid(h):
    h.deliver(SIMPLE)
    h.deliver(SIMPLE)
    h.select()
    out = text(h.command("a UID FETCH 2 FAST"))
    assert out.startswith("* 2 FETCH (UID 2 FLAGS (\\Recent) INTERNALDATE ")
    out = text(h.command("a FETCH 1:* ALL"))
    assert out.count("ENVELOPE (NIL \"hello\"") == 2
    out = text(h.command("a FETCH 2 FULL"))
    assert 'BODY ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 2)' in out


def test_whole_body_is_the_crlf_form_and_sets_seen(h):
    h.deliver(SIMPLE)
    h.select()
    lines = h.command("a FETCH 1 (BODY.PEEK[])")
    data = mime.normalise(SIMPLE)
    assert lines[0] == b"* 1 FETCH (BODY[] {%d}\r\n" % len(data) + data + b")\r\n"
    lines = h.command("a FETCH 1 (RFC822.SIZE BODY[])")
    assert lines[0] == (b"* 1 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n" % (len(data), len(data))
                        + data + b" FLAGS (\\Recent \\Seen))\r\n")
    # already seen: no FLAGS this time
    assert b"FLAGS" not in h.command("a FETCH 1 BODY[TEXT]")[0]


def test_examine_never_sets_seen(h):
    h.deliver(SIMPLE)
    h.select(readonly=True)
    out = text(h.command("a FETCH 1 (RFC822 FLAGS)"))
    # \Recent shows under EXAMINE too (RFC 3501 6.3.2: the same output as SELECT)
    assert "FLAGS (\\Recent)" in out and "\\Seen" not in out


def test_rfc822_items(h):
    h.deliver(SIMPLE)
    h.select()
    data = mime.normalise(SIMPLE)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = h.command("a FETCH 1 (RFC822.HEADER)")
    assert lines[0] == b"* 1 FETCH (RFC822.HEADER {%d}\r\n%s\r\n\r\n)\r\n" % (len(head) + 4, head)
    lines = h.command("a FETCH 1 (RFC822.TEXT)")
    assert lines[0] == (b"* 1 FETCH (RFC822.TEXT {%d}\r\n" % len(body) + body
                        + b" FLAGS (\\Recent \\Seen))\r\n")


def test_partial_fetch(h):
    h.deliver(SIMPLE)
    h.select()
    lines = h.command("a FETCH 1 (BODY.PEEK[]<0.4> BODY.PEEK[TEXT]<3.100> BODY.PEEK[]<9999.5>)")
    assert lines[0] == (b"* 1 FETCH (BODY[]<0> {4}\r\nFrom BODY[TEXT]<3> {10}\r\nBob\r\nbye\r\n"
                        b' BODY[]<9999> "")\r\n')


def test_header_fields_echo_and_sections(h):
    h.deliver(MULTI)
    h.select()
    lines = h.command('a FETCH 1 (BODY.PEEK[HEADER.FIELDS (subject "From")] BODY.PEEK[2.MIME])')
    assert lines[0].startswith(b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT FROM)] {29}\r\n"
                               b"From: a@b\r\nSubject: parts\r\n\r\n BODY[2.MIME] {")
    lines = h.command("a FETCH 1 (BODY.PEEK[1] BODY.PEEK[4] BODY.PEEK[1.2])")
    assert lines[0] == b"* 1 FETCH (BODY[1] {3}\r\none BODY[4] NIL BODY[1.2] NIL)\r\n"


def test_binary(h):
    h.deliver(MULTI)
    h.select()
    lines = h.command("a FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1]<1.1>)")
    assert lines[0] == ("* 1 FETCH (BINARY[2] ~{6}\r\nhéllo BINARY.SIZE[2] 6 "
                        "BINARY[1]<1> {1}\r\nn)\r\n").encode()
    lines = h.command("a FETCH 1 (BINARY.PEEK[3])")
    assert lines == [b"a NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding\r\n"]


def test_structure_comes_from_the_cache_the_second_time(h, monkeypatch):
    for _ in range(6):
        h.deliver(MULTI)
    h.select()
    first = h.command("a FETCH 1:* (ENVELOPE BODYSTRUCTURE)")
    assert h.session.selected.index.cache_get(1, fetch.CACHE_KEY) is not None

    def no_reads(path):
        raise AssertionError("the file was read")

    monkeypatch.setattr(fetch, "load_message", no_reads)
    assert h.command("a FETCH 1:* (ENVELOPE BODYSTRUCTURE)") == first
    # a section still reads the file (and keeps using the cached tree)
    monkeypatch.undo()
    assert b"BODY[2] {8}" in h.command("a FETCH 1 BODY.PEEK[2]")[0]


def test_many_messages_are_read_in_threads(h):
    for i in range(fetch.INLINE_FILES + 3):
        h.deliver(SIMPLE + b"%d\n" % i)
    h.select()
    before = h.session.runs
    lines = h.command("a FETCH 1:* (BODY.PEEK[TEXT])")
    assert h.session.runs > before
    assert len(lines) == fetch.INLINE_FILES + 4
    assert lines[-1] == b"a OK Fetch completed\r\n"
    assert all(b"Hi Bob\r\nbye\r\n%d\r\n" % i in lines[i] for i in range(len(lines) - 1))


def test_batches_split_by_size():
    records = {i: type("R", (), {"size": 10 * 1024 * 1024})() for i in range(5)}
    jobs = [(i, "p", None, True) for i in range(5)]
    assert [len(b) for b in fetch._batches(jobs, records)] == [1, 1, 1, 1, 1]


def test_sequence_numbers_out_of_range(h):
    h.deliver(SIMPLE)
    h.select()
    assert h.command("a FETCH 2 FLAGS") == [b"a BAD Invalid message sequence number\r\n"]
    assert h.command("a UID FETCH 5:9 FLAGS") == [b"a OK Fetch completed\r\n"]
    assert text(h.command("a UID FETCH 9:* FLAGS")).startswith("* 1 FETCH (UID 1 ")


def test_fetch_of_a_message_expunged_elsewhere(h):
    h.deliver(SIMPLE)
    h.deliver(SIMPLE)
    h.select()
    other = h.other_index()
    other.expunge([1])
    other.close()
    # FETCH may not announce the expunge: sequence numbers stay
    out = h.command("a FETCH 1:2 (UID BODY.PEEK[])")
    assert out[0].startswith(b"* 2 FETCH (UID 2 BODY[] ")
    assert out[-1] == b"a NO [EXPUNGEISSUED] Some of the requested messages no longer exist\r\n"
    assert b"* 1 EXPUNGE" not in b"".join(out)
    assert text(h.command("a CHECK")) == "* 1 EXPUNGE\r\na OK Check completed\r\n"
    assert text(h.command("a FETCH 1 UID")) == "* 1 FETCH (UID 2)\r\na OK Fetch completed\r\n"


def test_recent_is_not_a_flag_in_imap4rev2(h):
    h.deliver(SIMPLE)
    h.session.enabled.add("IMAP4REV2")
    h.select()
    assert text(h.command("a FETCH 1 FLAGS")).startswith("* 1 FETCH (FLAGS ())")


def test_condstore_modseq_and_changedsince(h):
    for _ in range(3):
        h.deliver(SIMPLE)
    h.select()
    index = h.session.selected.index
    out = text(h.command("a FETCH 1:* (MODSEQ)"))
    modseqs = [int(m) for m in re.findall(r"MODSEQ \((\d+)\)", out)]
    assert len(modseqs) == 3
    mark = index.highestmodseq
    h.command("a STORE 2 +FLAGS.SILENT (\\Flagged)")
    out = text(h.command(f"a FETCH 1:* (FLAGS) (CHANGEDSINCE {mark})"))
    assert out.startswith("* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (")
    assert out.count("FETCH") == 1
    assert "CONDSTORE" in h.session.enabled
    # an implicit \Seen carries UID and MODSEQ once CONDSTORE is on
    out = text(h.command("a FETCH 3 (BODY[TEXT])"))
    assert re.search(r"\* 3 FETCH \(UID 3 BODY\[TEXT\] \{\d+\}\r\n.*"
                     r" FLAGS \(\\Recent \\Seen\) MODSEQ \(\d+\)\)", out, re.S)


def test_qresync_vanished_earlier(h):
    for _ in range(4):
        h.deliver(SIMPLE)
    h.session.enabled |= {"QRESYNC", "CONDSTORE"}
    h.select()
    mark = h.session.selected.index.highestmodseq
    h.command("a STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    h.command("a EXPUNGE")
    h.command("a STORE 1 +FLAGS.SILENT (\\Answered)")
    out = text(h.command(f"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE {mark} VANISHED)"))
    assert out.startswith("* VANISHED (EARLIER) 1,3\r\n* 1 FETCH (UID 2 FLAGS (\\Answered")
    with pytest.raises(grammar.BadArgs):
        h.command(f"a FETCH 1 FLAGS (CHANGEDSINCE {mark} VANISHED)")


def test_unknown_cte_sets_no_seen_flag(h):
    h.deliver(MULTI)
    h.select()
    assert h.command("a FETCH 1 (BODY[1] BINARY[3])") == [
        b"a NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding\r\n"]
    assert text(h.command("a FETCH 1 FLAGS")).startswith("* 1 FETCH (FLAGS (\\Recent))")


def _as_imaplib(lines: list[bytes]) -> list:
    """FETCH response lines in the shape imaplib hands them to imapclient."""
    out: list = []
    for line in lines:
        assert line.startswith(b"* ")
        rest = line[2:-2].replace(b" FETCH ", b" ", 1)      # imaplib drops the name
        pending = b""
        while True:
            m = re.search(rb"~?\{(\d+)\}\r\n", rest)
            if m is None:
                break
            n = int(m.group(1))
            head = pending + rest[:m.end() - 2]
            out.append((head.replace(b"~{", b"{"), rest[m.end():m.end() + n]))
            rest = rest[m.end() + n:]
            pending = b""
        out.append(pending + rest)
    return out


NESTED = (b"From: Ann <ann@example.com>\nTo: \"Doe, J\" <j@x.org>, group: a@b, c@d;\n"
          b"Cc: =?utf-8?q?Z=C3=B6e?= <z@x.org>\nSubject: nested (test) \"quoted\"\n"
          b"Message-ID: <m1@x>\nContent-Type: multipart/mixed; boundary=o\n\n"
          b"--o\nContent-Type: text/plain; charset=utf-8\n\nhi\n"
          b"--o\nContent-Type: message/rfc822\nContent-Disposition: inline\n\n"
          b"From: inner@x\nSubject: inner\nContent-Type: multipart/alternative; boundary=i\n\n"
          b"--i\n\nplain\n--i\nContent-Type: text/html\nContent-Language: en\n\n<b>x</b>\n--i--\n"
          b"--o\nContent-Type: application/octet-stream; name=\"a b.bin\"\n"
          b"Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=x\n\n"
          b"AAEC\n--o--\n")


def test_an_independent_parser_reads_our_responses(h):
    """imapclient's response parser (not ours) reads ENVELOPE, BODYSTRUCTURE and
    sections back into the structure we meant."""
    from imapclient.response_parser import parse_fetch_response

    h.deliver(NESTED)
    h.select()
    lines = h.command("a UID FETCH 1 (FLAGS ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE "
                      "BODY.PEEK[2.1.MIME] BODY.PEEK[2.HEADER.FIELDS (subject)] "
                      "BINARY.PEEK[3] BODY.PEEK[]<5.7>)")
    assert lines[-1] == b"a OK Fetch completed\r\n"
    parsed = parse_fetch_response(_as_imaplib(lines[:-1]))[1]
    env = parsed[b"ENVELOPE"]
    assert env.subject == b'nested (test) "quoted"'
    assert env.message_id == b"<m1@x>"
    assert [(a.name, a.mailbox, a.host) for a in env.to] == [
        (b"Doe, J", b"j", b"x.org"), (None, b"group", None), (None, b"a", b"b"),
        (None, b"c", b"d"), (None, None, None)]
    assert env.cc[0].name == b"=?utf-8?q?Z=C3=B6e?="
    assert env.sender[0].mailbox == b"ann"
    bs = parsed[b"BODYSTRUCTURE"]
    assert bs.is_multipart
    parts, subtype = bs[0], bs[1]
    assert subtype == b"mixed" and len(parts) == 3
    assert parts[0][:2] == (b"text", b"plain")
    inner = parts[1]
    assert inner[:2] == (b"message", b"rfc822")
    assert inner[7][1] == b"inner"                        # nested envelope: subject
    nested = inner[8]                                     # nested body structure
    assert nested[0][:2] == (b"text", b"plain") and nested[1][:2] == (b"text", b"html")
    assert nested[2] == b"alternative"
    assert parts[2][2] == (b"name", b"a b.bin")
    assert parsed[b"BINARY[3]"] == b"\x00\x01\x02"
    assert parsed[b"BODY[]<5>"] == b" Ann <a"
    assert parsed[b"BODY[2.1.MIME]"] == b"\r\n"
    assert parsed[b"BODY[2.HEADER.FIELDS (SUBJECT)]"] == b"Subject: inner\r\n\r\n"
    body = parse_fetch_response(_as_imaplib(lines[:-1]))[1][b"BODY"]
    assert body[1] == b"mixed"


def test_whole_body_fetch_parses_nothing_and_caches_nothing(h, monkeypatch):
    h.deliver(MULTI)
    h.select()

    def no_parse(data):
        raise AssertionError("BODY[] parsed the message")

    monkeypatch.setattr(mime, "parse", no_parse)
    lines = h.command("a FETCH 1 (BODY.PEEK[] RFC822.HEADER RFC822.SIZE)")
    assert lines[-1] == b"a OK Fetch completed\r\n"
    assert h.session.selected.index.cache_get(1, fetch.CACHE_KEY) is None


def test_cached_structure_items_read_no_index_rows(h, monkeypatch):
    for _ in range(3):
        h.deliver(MULTI)
    h.select()
    line = "a FETCH 1:3 (FLAGS ENVELOPE BODYSTRUCTURE MODSEQ)"
    first = h.command(line)                          # parses and caches
    index = h.session.selected.index

    def no_rows(uids=None):
        raise AssertionError("records() read rows")

    monkeypatch.setattr(index, "records", no_rows)
    fetch._STRUCTURES.clear()                        # from the index's cache table
    assert h.command(line) == first
    assert h.command(line) == first                  # from this process's cache
    h.command("a STORE 2 +FLAGS (\\Flagged)")
    again = text(h.command(line))
    assert again.count("\\Flagged") == 1 and "* 2 FETCH (FLAGS (\\Flagged \\Recent)" in again


def test_commands_after_our_own_changes_list_no_directory(h, monkeypatch):
    import os
    for _ in range(3):
        h.deliver(SIMPLE)
    h.select()
    h.command("a STORE 1 +FLAGS (\\Seen)")          # the first change: one full scan
    h.command("a FETCH 1 FLAGS")
    if h.session.selected.index._watch is None:
        pytest.skip("no inotify here")
    calls = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: calls.append(p) or real(p))
    h.command("a STORE 2 +FLAGS (\\Flagged)")
    h.command("a FETCH 1:* FLAGS")
    assert b"* 4 EXISTS\r\n" in h.command("a APPEND INBOX (\\Seen) {5}\r\nx\r\ny")
    h.command("a STORE 4 +FLAGS.SILENT (\\Deleted)")
    assert h.command("a EXPUNGE")[0] == b"* 4 EXPUNGE\r\n"
    h.command("a FETCH 1:* FLAGS")
    assert calls == []
    h.deliver(SIMPLE)                                 # another process: seen at once
    assert b"* 4 EXISTS\r\n" in h.command("a FETCH 1 FLAGS")


@pytest.mark.parametrize("line", [
    "a FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE)", "a UID FETCH 2:* (BODY FLAGS)",
    "a FETCH 2,4 (MODSEQ ENVELOPE UID)", "a UID FETCH 1:* (ENVELOPE) (CHANGEDSINCE 1)"])
def test_cached_structure_lines_are_those_of_the_general_path(h, monkeypatch, line):
    for i in range(4):
        h.deliver(MULTI if i % 2 else SIMPLE)
    h.select()
    h.command("a STORE 3 +FLAGS (\\Seen $Work)")
    h.command("a FETCH 1:* (ENVELOPE BODYSTRUCTURE)")      # parsed and cached
    fast = h.command(line)
    assert any(b"FETCH (" in x for x in fast)
    monkeypatch.setattr(fetch, "_structure_lines", lambda *args: None)
    assert h.command(line) == fast
