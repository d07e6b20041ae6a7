"""The sans-IO IMAP framing: tokens, literals, bounds, resynchronisation, pauses, fuzzing."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from indimail_tw.imap4.parser import (
    ContinuationNeeded, IMAPParser, ParseError, RawLine,
)
from indimail_tw.imap4.tokens import Atom, Command, List, String


def feed(data: bytes, **kw) -> list:
    return IMAPParser(**kw).feed(data)


def feed_bytewise(data: bytes, **kw) -> list:
    parser = IMAPParser(**kw)
    events = []
    for i in range(len(data)):
        events += parser.feed(data[i:i + 1])
    return events


def test_parser_imports_nothing_from_twisted():
    code = ("import sys, indimail_tw.imap4.parser, indimail_tw.imap4.grammar, "
            "indimail_tw.imap4.search; "
            "print([m for m in sys.modules if m.startswith('twisted')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# -- plain commands --------------------------------------------------------------

def test_simple_command():
    assert feed(b"a1 NOOP\r\n") == [Command(b"a1", "NOOP", ())]


def test_command_name_is_upper_cased_and_bare_lf_accepted():
    assert feed(b"a1 noop\n") == [Command(b"a1", "NOOP", ())]


def test_atoms_quoted_and_lists():
    [cmd] = feed(b'x LOGIN fred "pass \\"word\\" \\\\ok"\r\n')
    assert cmd.args == (Atom(b"fred"), String(b'pass "word" \\ok'))


def test_nested_lists():
    [cmd] = feed(b"t FOO (a (b (c)) ()) d\r\n")
    assert cmd.args == (List((Atom(b"a"), List((Atom(b"b"), List((Atom(b"c"),)))), List())),
                        Atom(b"d"))


def test_bracketed_atom_is_one_token():
    [cmd] = feed(b"a FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From To)]<0.100> FLAGS)\r\n")
    assert cmd.args == (Atom(b"1:*"), List((
        Atom(b"BODY.PEEK[HEADER.FIELDS (From To)]<0.100>"), Atom(b"FLAGS"))))


def test_bracketed_atom_with_quoted_field_containing_bracket():
    [cmd] = feed(b'a FETCH 1 BODY[HEADER.FIELDS ("X-A]" To)]\r\n')
    assert cmd.args[1] == Atom(b'BODY[HEADER.FIELDS ("X-A]" To)]')


def test_uid_keeps_subcommand_in_args():
    [cmd] = feed(b"a UID FETCH 1 UID\r\n")
    assert cmd == Command(b"a", "UID", (Atom(b"FETCH"), Atom(b"1"), Atom(b"UID")))


def test_flags_and_wildcards_are_atoms():
    [cmd] = feed(b"a STORE 1 +FLAGS (\\Seen $Junk)\r\n")
    assert cmd.args[2] == List((Atom(b"\\Seen"), Atom(b"$Junk")))
    [cmd] = feed(b'a LIST "" %/*\r\n')
    assert cmd.args == (String(b""), Atom(b"%/*"))


def test_tag_may_contain_bracket():
    assert feed(b"a] NOOP\r\n") == [Command(b"a]", "NOOP", ())]


def test_pipelined_commands_in_order():
    data = b"".join(b"t%d NOOP\r\n" % i for i in range(20))
    events = feed(data)
    assert [e.tag for e in events] == [b"t%d" % i for i in range(20)]


def test_extra_spaces_are_tolerated():
    [cmd] = feed(b"a SELECT  INBOX \r\n")
    assert cmd.args == (Atom(b"INBOX"),)


# -- literals -----------------------------------------------------------------------

def test_synchronizing_literal_asks_for_continuation():
    p = IMAPParser()
    assert p.feed(b"a LOGIN {4}\r\n") == [ContinuationNeeded()]
    assert p.feed(b"fr") == []
    assert p.feed(b"ed {4}\r\n") == [ContinuationNeeded()]
    assert p.feed(b"x\r\ny\r\n") == [Command(b"a", "LOGIN", (
        String(b"fred", literal=True), String(b"x\r\ny", literal=True)))]


def test_literal_split_across_many_feeds_same_as_whole():
    data = b"a APPEND INBOX (\\Seen) {12}\r\nHello\r\nWorld\r\nb NOOP\r\n"
    whole = feed(data)
    assert whole == feed_bytewise(data)
    assert whole[1] == Command(b"a", "APPEND", (
        Atom(b"INBOX"), List((Atom(b"\\Seen"),)), String(b"Hello\r\nWorld", literal=True)))
    assert whole[2] == Command(b"b", "NOOP", ())


def test_empty_literal():
    events = feed(b"a LOGIN {0}\r\n {0+}\r\n\r\n")
    assert events == [ContinuationNeeded(), Command(b"a", "LOGIN", (
        String(b"", literal=True), String(b"", literal=True)))]


def test_literal_plus_has_no_continuation():
    events = feed(b"a LOGIN {4+}\r\nfred {3+}\r\nabc\r\n")
    assert events == [Command(b"a", "LOGIN", (String(b"fred", literal=True),
                                              String(b"abc", literal=True)))]


def test_literal8():
    [cmd] = feed(b"a APPEND INBOX ~{3+}\r\n\x00\x01\x02\r\n")
    assert cmd.args[1] == String(b"\x00\x01\x02", literal=True, binary=True)


def test_literal_inside_list_then_close():
    [cmd] = feed(b"a SEARCH (SUBJECT {2+}\r\nhi)\r\n")
    assert cmd.args == (List((Atom(b"SUBJECT"), String(b"hi", literal=True))),)


def test_literal_data_may_contain_anything():
    data = b'a LOGIN {10+}\r\n(")\r\n{1}\r\n x\r\n'
    [cmd] = feed(data)
    assert cmd.args == (String(b'(")\r\n{1}\r\n', literal=True), Atom(b"x"))


def test_literal_minus_refuses_big_nonsync_and_discards_it():
    big = b"x" * 5000
    data = b"a APPEND INBOX {5000+}\r\n" + big + b"\r\nb NOOP\r\n"
    events = feed(data, literal_minus=True)
    assert events[0].tag == b"a" and isinstance(events[0], ParseError)
    assert "TOOBIG" in events[0].text and not events[0].fatal
    assert events[1:] == [Command(b"b", "NOOP", ())]
    assert feed_bytewise(data, literal_minus=True) == events


def test_literal_minus_accepts_small_nonsync():
    [cmd] = feed(b"a LOGIN {4096+}\r\n" + b"p" * 4096 + b" x\r\n", literal_minus=True)
    assert cmd.name == "LOGIN" and len(cmd.args[0].value) == 4096


def test_literal_minus_sync_literal_is_fine():
    events = feed(b"a APPEND INBOX {5000}\r\n", literal_minus=True)
    assert events == [ContinuationNeeded()]


def test_too_big_sync_literal_is_refused_without_waiting():
    p = IMAPParser(max_literal=100)
    events = p.feed(b"a APPEND INBOX {101}\r\n")
    assert len(events) == 1 and isinstance(events[0], ParseError)
    assert events[0].tag == b"a" and not events[0].fatal
    # Not waiting for data: the next line is a new command.
    assert p.feed(b"b NOOP\r\n") == [Command(b"b", "NOOP", ())]


def test_small_literal_limit_for_other_commands():
    p = IMAPParser(max_small_literal=10)
    [err] = p.feed(b"a LOGIN {11}\r\n")
    assert isinstance(err, ParseError)
    assert p.feed(b"b APPEND X {11}\r\n") == [ContinuationNeeded()]


def test_total_literal_bytes_of_a_command_are_bounded():
    p = IMAPParser(max_small_literal=10)
    events = p.feed(b"a LOGIN {6+}\r\n123456 {6+}\r\n123456\r\nb NOOP\r\n")
    assert isinstance(events[0], ParseError) and events[0].tag == b"a"
    assert events[1:] == [Command(b"b", "NOOP", ())]


def test_huge_literal_size_is_bad_immediately():
    for size in (b"99999999999999999999", b"18446744073709551616"):
        events = feed(b"a APPEND INBOX {" + size + b"}\r\nb NOOP\r\n")
        assert isinstance(events[0], ParseError) and events[0].tag == b"a"
        assert events[1] == Command(b"b", "NOOP", ())


def test_huge_nonsync_literal_is_fatal():
    [err] = feed(b"a APPEND INBOX {99999999999+}\r\nabc\r\n")
    assert isinstance(err, ParseError) and err.fatal and err.tag == b"a"


def test_negative_or_garbage_literal_size_is_bad_immediately():
    for lit in (b"{-1}", b"{}", b"{abc}", b"{1 }", b"{+}", b"~{-5+}", b"{123456789012345678901}"):
        events = feed(b"a LOGIN " + lit + b"\r\nb NOOP\r\n")
        assert isinstance(events[0], ParseError), lit
        assert events[0].tag == b"a" and not events[0].fatal
        assert events[1] == Command(b"b", "NOOP", ()), lit


def test_literal_announcement_not_at_end_of_line():
    events = feed(b"a LOGIN {3} x\r\nb NOOP\r\n")
    assert isinstance(events[0], ParseError)
    assert events[1] == Command(b"b", "NOOP", ())


def test_too_many_literals():
    data = b"a X" + b" {1+}\r\nx" * 5 + b"\r\nb NOOP\r\n"
    events = feed(data, max_literals=4)
    assert isinstance(events[0], ParseError)
    assert events[1:] == [Command(b"b", "NOOP", ())]


def test_refused_command_discards_later_nonsync_literals():
    # The first literal is refused; the client still sends it and the rest.
    data = b"a X {20+}\r\n" + b"y" * 20 + b" {3+}\r\nzzz\r\nb NOOP\r\n"
    events = feed(data, max_small_literal=10)
    assert isinstance(events[0], ParseError)
    assert events[1:] == [Command(b"b", "NOOP", ())]
    assert feed_bytewise(data, max_small_literal=10) == events


# -- errors and resynchronisation ---------------------------------------------------

@pytest.mark.parametrize("line, tag", [
    (b"+ NOOP", None), (b"* NOOP", None), (b"a(b NOOP", None), (b'"a" NOOP', None),
    (b"a{1} NOOP", None), (b"a%b NOOP", None), (b"a\\b NOOP", None), (b"a+ NOOP", None),
    (b"\xc3\xa9 NOOP", None),
    (b"", None), (b" NOOP", None), (b"tag", b"tag"), (b"tag ", b"tag"),
    (b"tag (NOOP)", b"tag"), (b"tag NO{OP", b"tag"),
])
def test_bad_tags_and_missing_command(line, tag):
    events = feed(line + b"\r\nok NOOP\r\n")
    assert isinstance(events[0], ParseError) and events[0].tag == tag
    assert events[1] == Command(b"ok", "NOOP", ())


@pytest.mark.parametrize("args", [
    b"(a", b"a)", b'"abc', b'"a\\b"', b"a\x01b", b"((((", b"BODY[1", b"BODY[1]]x{",
    b'"\x00"', b"a\rb", b"BODY[{3}\r\nabc]",
])
def test_malformed_arguments_give_bad_then_resync(args):
    events = feed(b"a CMD " + args + b"\r\nb NOOP\r\n")
    assert isinstance(events[0], ParseError) and events[0].tag == b"a"
    assert events[-1] == Command(b"b", "NOOP", ())


def test_nesting_depth_is_bounded():
    events = feed(b"a X " + b"(" * 40 + b")" * 40 + b"\r\nb NOOP\r\n", max_depth=32)
    assert isinstance(events[0], ParseError)
    [cmd] = feed(b"a X " + b"(" * 10 + b")" * 10 + b"\r\n", max_depth=32)
    assert cmd.name == "X"


def test_line_too_long_gives_bad_at_once_and_resyncs():
    p = IMAPParser(max_line=100)
    events = p.feed(b"a1 NOOP " + b"x" * 200)
    assert events == [ParseError(b"a1", "Command line too long")]
    assert p.feed(b"y" * 10000) == []           # still skipping, nothing buffered
    assert len(p._buf) == 0
    assert p.feed(b"zz\r\nb NOOP\r\n") == [Command(b"b", "NOOP", ())]


def test_line_limit_is_exact_and_crlf_not_counted():
    line = b"a X " + b"y" * 96
    assert len(line) == 100
    [cmd] = feed(line + b"\r\n", max_line=100)
    assert cmd.name == "X"
    assert feed_bytewise(line + b"\r\n", max_line=100) == [cmd]
    [err] = feed(line + b"y\r\n", max_line=100)
    assert isinstance(err, ParseError)
    assert feed_bytewise(line + b"y\r\n", max_line=100) == [err]


def test_line_limit_counts_all_segments_of_a_command():
    data = b"a X " + b"y" * 60 + b" {1+}\r\nz " + b"w" * 60 + b"\r\nb NOOP\r\n"
    events = feed(data, max_line=100)
    assert isinstance(events[0], ParseError) and events[0].tag == b"a"
    assert events[1] == Command(b"b", "NOOP", ())


def test_overlong_line_whose_tag_is_too_long():
    [err] = feed(b"x" * 300, max_line=100)
    assert err == ParseError(None, "Command line too long")


# -- pauses and raw line mode ---------------------------------------------------------

def test_idle_pauses_then_raw_done():
    p = IMAPParser()
    assert p.feed(b"a IDLE\r\nDONE\r\nb NOOP\r\n") == [Command(b"a", "IDLE", ())]
    assert p.paused
    assert p.raw_line_mode(True) == [RawLine(b"DONE")]
    assert p.raw_line_mode(False) == [Command(b"b", "NOOP", ())]


def test_authenticate_exchange_in_raw_mode():
    p = IMAPParser()
    assert p.feed(b"a AUTHENTICATE PLAIN\r\n") == [Command(b"a", "AUTHENTICATE",
                                                            (Atom(b"PLAIN"),))]
    assert p.raw_line_mode(True) == []
    assert p.feed(b"AGZyZWQAc2VjcmV0\r\nb NOOP\r\n") == [RawLine(b"AGZyZWQAc2VjcmV0")]
    assert p.feed(b"c NOOP\r\n") == []
    assert p.raw_line_mode(False) == [Command(b"b", "NOOP", ()), Command(b"c", "NOOP", ())]


def test_raw_line_is_bounded():
    p = IMAPParser(max_line=50)
    p.feed(b"a IDLE\r\n")
    p.raw_line_mode(True)
    assert p.feed(b"x" * 60) == [ParseError(None, "Command line too long")]
    assert p.feed(b"xx\r\nDONE\r\n") == [RawLine(b"DONE")]


def test_starttls_pause_and_take_buffer():
    p = IMAPParser()
    events = p.feed(b"a STARTTLS\r\nb LOGIN injected x\r\n")
    assert events == [Command(b"a", "STARTTLS", ())]
    assert p.take_buffer() == b"b LOGIN injected x\r\n"
    assert p.resume() == []
    assert p.feed(b"c NOOP\r\n") == [Command(b"c", "NOOP", ())]


def test_compress_pause_hands_over_compressed_bytes():
    p = IMAPParser()
    p.feed(b"a COMPRESS DEFLATE\r\n\x78\x9c")
    assert p.take_buffer() == b"\x78\x9c"
    p.resume()
    assert p.feed(b"b NOOP\r\n") == [Command(b"b", "NOOP", ())]


def test_data_buffered_while_paused_is_bounded():
    p = IMAPParser(max_line=100)
    p.feed(b"a IDLE\r\n")
    assert p.feed(b"x" * 100) == []
    [err] = p.feed(b"x")
    assert err.fatal
    assert p.feed(b"b NOOP\r\n") == [] and p.resume() == []


def test_resume_without_pause_is_harmless():
    p = IMAPParser()
    assert p.resume() == []
    assert p.feed(b"a NOOP\r\n") == [Command(b"a", "NOOP", ())]


# -- fuzzing ----------------------------------------------------------------------------

_ALPHABET = [b"a", b"1", b" ", b"(", b")", b"{", b"}", b"+", b"~", b'"', b"\\", b"[", b"]",
             b"\r\n", b"\n", b"\r", b"*", b"%", b"<", b">", b".", b"\x00", b"\xff", b"{3}\r\n",
             b"{2+}\r\n", b"~{1+}\r\n", b"NOOP", b"FETCH", b"BODY[", b"{99999999999+}\r\n"]


def _random_input(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    return b"".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(60)))


def _run(data: bytes, chunks) -> list:
    p = IMAPParser(max_line=80, max_small_literal=50, max_depth=5)
    events = []
    pos = 0
    for size in chunks:
        events += p.feed(data[pos:pos + size])
        pos += size
        while p.paused:
            events += p.raw_line_mode(False)
    events += p.feed(data[pos:])
    while p.paused:
        events += p.raw_line_mode(False)
    return events


def test_fuzz_never_raises_and_split_does_not_matter():
    rng = random.Random(1234)
    for _ in range(1500):
        data = _random_input(rng)
        whole = _run(data, [])
        assert all(isinstance(e, Command | ContinuationNeeded | ParseError | RawLine)
                   for e in whole)
        assert _run(data, [1] * len(data)) == whole
        cuts = [rng.randrange(1, 8) for _ in range(len(data) // 2)]
        assert _run(data, cuts) == whole
