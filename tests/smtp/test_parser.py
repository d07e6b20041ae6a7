"""The sans-IO framing: command lines, DATA, BDAT, bounds, bare line endings, fuzzing."""

from __future__ import annotations

import random
import sys

import pytest

from indimail_tw.smtp import parser as p
from indimail_tw.smtp.parser import (
    BadLineEnding, BareLineEnding, Content, ContentEnd, Line, LineEndings, LineTooLong,
    SMTPParser,
)


def test_parser_imports_nothing_from_twisted_internet():
    import subprocess
    code = ("import sys, indimail_tw.smtp.parser, indimail_tw.smtp.syntax; "
            "print([m for m in sys.modules if m.startswith('twisted')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def drain(parser: SMTPParser, driver=None) -> list:
    events = []
    while True:
        event = parser.next_event()
        if event is None:
            return events
        events.append(event)
        if driver is not None:
            driver(parser, event)


def events_of(data: bytes, **kw) -> list:
    parser = SMTPParser(**kw)
    parser.feed(data)
    return drain(parser)


def test_lines_end_with_crlf_or_lf():
    assert events_of(b"EHLO a\r\nNOOP\nQUIT\r\n") == [Line(b"EHLO a"), Line(b"NOOP"),
                                                      Line(b"QUIT")]


def test_partial_line_waits():
    parser = SMTPParser()
    parser.feed(b"EHLO a")
    assert drain(parser) == []
    parser.feed(b"\r")
    assert drain(parser) == []
    parser.feed(b"\n")
    assert drain(parser) == [Line(b"EHLO a")]


def test_line_limit_exact_and_one_more():
    ok = b"x" * 1000
    assert events_of(ok + b"\r\n") == [Line(ok)]
    assert events_of(ok + b"x\r\nNOOP\r\n") == [LineTooLong(), Line(b"NOOP")]


def test_too_long_line_is_skipped_to_its_end_with_bounded_buffer():
    parser = SMTPParser(line_limit=10)
    for _ in range(1000):
        parser.feed(b"y" * 100)
        events = drain(parser)
        assert parser.buffered <= 12
    assert events == [] or events == [LineTooLong()]
    parser.feed(b"tail\r\nNOOP\r\n")
    assert drain(parser) == [Line(b"NOOP")]


def test_line_limit_is_capped():
    parser = SMTPParser(line_limit=10 ** 9)
    assert parser.line_limit == p.HARD_LINE_CAP
    parser.line_limit = 0
    assert parser.line_limit == p.DEFAULT_LINE_LIMIT


def data_mode(payload: bytes) -> list:
    parser = SMTPParser()
    parser.expect_data()
    parser.feed(payload)
    return merge(drain(parser))


def merge(events: list) -> list:
    """Join neighbouring Content events (their split depends on how bytes arrived)."""
    out: list = []
    for event in events:
        if isinstance(event, Content) and out and isinstance(out[-1], Content):
            out[-1] = Content(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def test_data_unstuffs_and_converts_to_lf():
    assert data_mode(b"Subject: x\r\n\r\n..leading dot\r\n.\r\nNOOP\r\n") == [
        Content(b"Subject: x\n\n.leading dot\n"), ContentEnd(), Line(b"NOOP")]


def test_empty_message():
    assert data_mode(b".\r\n") == [ContentEnd()]


def test_dot_inside_a_line_is_content():
    assert data_mode(b"a.b\r\n x.\r\n.\r\n") == [Content(b"a.b\n x.\n"), ContentEnd()]


SMUGGLING = [
    b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\r\n.\rX",
    b"\n", b"\r", b"\r\r\n",
]


@pytest.mark.parametrize("variant", SMUGGLING)
def test_smuggling_variants_never_end_data(variant):
    payload = (b"Subject: one\r\n\r\nbody" + variant
               + b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n")
    for feed in (whole, bytewise):
        parser = SMTPParser()
        parser.expect_data()
        events = merge(feed(parser, payload))
        assert ContentEnd() not in events
        assert not any(isinstance(e, Line) for e in events)
        assert isinstance(events[-1], BadLineEnding)
        assert parser.mode is p.Mode.DEAD
        parser.feed(b"QUIT\r\n")
        assert drain(parser) == []


def whole(parser: SMTPParser, data: bytes) -> list:
    parser.feed(data)
    return drain(parser)


def bytewise(parser: SMTPParser, data: bytes) -> list:
    events = []
    for i in range(len(data)):
        parser.feed(data[i:i + 1])
        events += drain(parser)
    return events


def test_bdat_chunk_is_counted_not_parsed():
    parser = SMTPParser()
    parser.feed(b"\r\n.\r\nRSET\r\n\n.\n" + b"NOOP\r\n")
    parser.expect_chunk(14)
    assert merge(drain(parser)) == [Content(b"\r\n.\r\nRSET\r\n\n.\n"), ContentEnd(),
                                    Line(b"NOOP")]


def test_bdat_zero_and_discard_after_starttls():
    parser = SMTPParser()
    parser.expect_chunk(0)
    assert drain(parser) == [ContentEnd()]
    parser.feed(b"STARTTLS\r\nMAIL FROM:<x@y>\r\n")
    assert parser.next_event() == Line(b"STARTTLS")
    assert parser.discard_buffered() == len(b"MAIL FROM:<x@y>\r\n")
    assert drain(parser) == []


def test_large_data_comes_in_bounded_pieces():
    parser = SMTPParser()
    parser.expect_data()
    parser.feed(b"a" * (3 * p.CHUNK + 5) + b"\r\n.\r\n")
    events = drain(parser)
    assert all(len(e.data) <= p.CHUNK + 1 for e in events if isinstance(e, Content))
    assert merge(events) == [Content(b"a" * (3 * p.CHUNK + 5) + b"\n"), ContentEnd()]


# -- BDAT line endings ------------------------------------------------------------------------

def test_line_endings_across_chunks():
    le = LineEndings()
    assert le.convert(b"a\r") == b"a"
    assert le.convert(b"\nb\r\n") == b"\nb\n"
    le.finish()


@pytest.mark.parametrize("chunks", [[b"a\nb"], [b"a\rb"], [b"a\r", b"b"], [b"\n.\n"],
                                    [b"x\r\n.\r"], [b"\r.\r"]])
def test_line_endings_refuse_bare(chunks):
    le = LineEndings()
    with pytest.raises(BareLineEnding):
        for chunk in chunks:
            le.convert(chunk)
        le.finish()


# -- fuzz invariant ---------------------------------------------------------------------------

class Driver:
    """A toy session: DATA switches to content, ``BDAT n`` reads n octets."""

    def __call__(self, parser: SMTPParser, event) -> None:
        if isinstance(event, Line):
            words = event.data.split()
            if words[:1] == [b"DATA"]:
                parser.expect_data()
            elif words[:1] == [b"BDAT"] and len(words) > 1 and words[1].isdigit():
                parser.expect_chunk(min(int(words[1]), 10 ** 6))


ALPHABET = [b"\r", b"\n", b".", b"\r\n", b"\r\n.\r\n", b"DATA\r\n", b"BDAT 3\r\n",
            b"BDAT 0\r\n", b"NOOP", b"x", b" ", b"\x00", b"\xff", b"..", b"\n.\n"]


def random_input(rng: random.Random) -> bytes:
    return b"".join(rng.choice(ALPHABET) if rng.random() < 0.8
                    else bytes([rng.randrange(256)]) for _ in range(rng.randrange(60)))


def run(data: bytes, splits: list[int], limit: int) -> list:
    parser = SMTPParser(line_limit=limit)
    driver = Driver()
    events = []
    last = 0
    for cut in [*splits, len(data)]:
        parser.feed(data[last:cut])
        events += drain(parser, driver)
        last = cut
    assert parser.buffered <= max(len(data), 0)
    return merge(events)


def test_fuzz_whole_bytewise_and_random_splits_agree():
    rng = random.Random(20250603)
    for _ in range(3000):
        data = random_input(rng)
        limit = rng.choice([5, 20, 1000])
        reference = run(data, [], limit)
        for event in reference:
            assert isinstance(event, (Line, LineTooLong, Content, ContentEnd, BadLineEnding))
            if isinstance(event, Line):
                assert b"\n" not in event.data and len(event.data) <= limit
        assert run(data, list(range(1, len(data))), limit) == reference, data
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 5))) if len(
            data) > 1 else []
        assert run(data, cuts, limit) == reference, (data, cuts)


def _reference_data(data: bytes):
    """DATA content read octet by octet (the rules of the module docstring): the
    content, then "end", ("bad", "CR"|"LF") or None when more input is needed."""
    out = bytearray()
    i, n, line_start = 0, len(data), True
    while True:
        if line_start:
            if i >= n:
                return bytes(out), None
            if data[i:i + 1] == b".":
                if i + 1 >= n:
                    return bytes(out), None
                if data[i + 1:i + 2] == b"\r":
                    if i + 2 >= n:
                        return bytes(out), None
                    return bytes(out), "end" if data[i + 2:i + 3] == b"\n" else ("bad", "CR")
                if data[i + 1:i + 2] == b"\n":
                    return bytes(out), ("bad", "LF")
                i += 1
            line_start = False
        if i >= n:
            return bytes(out), None
        c = data[i:i + 1]
        if c == b"\n":
            return bytes(out), ("bad", "LF")
        if c == b"\r":
            if i + 1 >= n:
                return bytes(out), None
            if data[i + 1:i + 2] != b"\n":
                return bytes(out), ("bad", "CR")
            out += b"\n"
            i += 2
            line_start = True
            continue
        out += c
        i += 1


def test_data_content_matches_an_octet_by_octet_reading_however_it_is_split():
    """The bulk path (whole runs of CRLF lines at once) gives exactly what reading
    octet by octet gives, for random mixes of line ends, dots and split points."""
    import random

    from indimail_tw.smtp.parser import CHUNK, BadLineEnding, Content, ContentEnd

    rng = random.Random(25)
    pieces = [b"a", b"\r\n", b"\r", b"\n", b".", b"\r\n.", b"\r\n.\r\n", b"x" * 40,
              b"\r\n..", b"\r\n.\r", b"\r\n.\n"]
    for _ in range(4000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 3)))
        parser = SMTPParser()
        parser.expect_data()
        content, outcome, last = bytearray(), None, 0
        for cut in cuts + [len(data)]:
            parser.feed(data[last:cut])
            last = cut
            while outcome is None and (event := parser.next_event()) is not None:
                if isinstance(event, Content):
                    assert 0 < len(event.data) <= CHUNK
                    content += event.data
                elif isinstance(event, ContentEnd):
                    outcome = "end"
                elif isinstance(event, BadLineEnding):
                    outcome = ("bad", event.kind)
        assert (bytes(content), outcome) == _reference_data(data), data
