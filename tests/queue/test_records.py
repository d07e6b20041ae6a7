"""The on-disk records: round trips, end markers, damaged files rejected."""

from __future__ import annotations

import pytest

from indimail_tw.queue import records
from indimail_tw.queue.envelope import Envelope, Recipient
from indimail_tw.queue.records import CorruptRecord


def full_envelope() -> Envelope:
    return Envelope(
        sender="weird sender=%,@exa mple.com",
        recipients=[Recipient("a@example.com"),
                    Recipient("ü@exämple.com", notify=("SUCCESS", "FAILURE"),
                              orcpt="rfc822;a b@example.com"),
                    Recipient('"x\\ y"@example.com', notify=("NEVER",))],
        ret="HDRS", envid="id 1\n2", body="8BITMIME", smtputf8=True, protocol="ESMTPSA",
        remote_ip="192.0.2.1", remote_host="", helo="helo\r\nname", auth_user="bob",
        received_at=1700000000.25, extra={"qqeh": "X-A: 1\nX-B: 2", "k=v": ""})


def test_envelope_round_trip_keeps_every_field():
    env = full_envelope()
    data = records.encode_envelope(env, 1234)
    assert data.endswith(b"\n") and b"\nEND " in data
    assert data.isascii() and b"\r" not in data
    decoded, size = records.decode_envelope(data)
    assert size == 1234
    assert decoded == env


def test_null_sender_and_defaults_round_trip():
    env = Envelope.simple("", "postmaster@example.com")
    assert records.decode_envelope(records.encode_envelope(env, 0)) == (env, 0)


@pytest.mark.parametrize("cut", [1, 2, 5, 20])
def test_a_truncated_envelope_file_is_rejected(cut):
    data = records.encode_envelope(full_envelope(), 10)
    with pytest.raises(CorruptRecord):
        records.decode_envelope(data[:-cut])


def test_every_prefix_of_an_envelope_file_is_rejected():
    data = records.encode_envelope(full_envelope(), 10)
    for n in range(len(data)):
        with pytest.raises(CorruptRecord):
            records.decode_envelope(data[:n])


def test_a_flipped_byte_is_rejected():
    data = bytearray(records.encode_envelope(full_envelope(), 10))
    data[len(records.MAGIC) + 5] ^= 0x01
    with pytest.raises(CorruptRecord):
        records.decode_envelope(bytes(data))


def test_garbage_is_rejected():
    for data in (b"", b"\n", b"hello\n", records.MAGIC + b"END 00000000\n"):
        with pytest.raises(CorruptRecord):
            records.decode_envelope(data)


def test_unknown_envelope_fields_are_ignored_for_forward_compatibility():
    env = Envelope.simple("a@b", "c@d")
    data = records.encode_envelope(env, 3)
    body = data[: data.rindex(b"END ")].replace(b" protocol=", b" newfield=sx protocol=")
    data = body + f"END {records._crc(body)}\n".encode()
    assert records.decode_envelope(data) == (env, 3)


def test_state_lines_round_trip_and_a_cut_last_line_is_ignored():
    a = {"i": 0, "st": "done", "a": 1, "n": 5.0, "e": ""}
    b = {"i": 1, "st": "pending", "a": 2, "n": 7.5, "e": "mailbox busy, try later"}
    log = records.encode_state(a) + records.encode_state(b)
    assert records.decode_states(log) == ([a, b], 0)
    assert records.decode_states(log[:-1]) == ([a], 1)
    assert records.decode_states(log[: len(log) // 2 + 10]) == ([a], 1)


def test_a_damaged_state_line_is_skipped_and_counted():
    a = {"i": 0, "st": "done"}
    b = {"i": 1, "st": "failed", "e": "no"}
    line = bytearray(records.encode_state(a))
    line[3] ^= 0x20
    assert records.decode_states(bytes(line) + records.encode_state(b)) == ([b], 1)


@pytest.mark.parametrize("value", [None, "", "x y", "%", "a,b", "é\n", 0, -3, 2.5, True,
                                   False, (), ("a", "b,c")])
def test_values_round_trip(value):
    text = records.encode_value(value)
    assert " " not in text and "\n" not in text
    assert records.decode_value(text) == value


def test_quote_keeps_printable_ascii_and_escapes_the_rest():
    import random

    from indimail_tw.queue.records import quote, unquote

    rng = random.Random(7)
    alphabet = "abcXYZ019@.-_%,= \t\r\n\x00\x7fé€\udc80"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        quoted = quote(text)
        assert unquote(quoted) == text
        assert all(0x21 <= ord(c) < 0x7F and c not in ",=" for c in quoted)
        assert (quoted == text) == all(0x21 <= ord(c) < 0x7F and c not in "%,=" for c in text)


@pytest.mark.parametrize("length", [1, 237, 0xFFFF, 0xFFFFFFFF])
def test_trailer_round_trips_at_a_fixed_length(length):
    trailer = records.encode_trailer(length)
    assert len(trailer) == records.TRAILER_SIZE
    assert trailer.startswith(b"ITWQ2 ") and trailer.endswith(b"\n")
    assert records.decode_trailer(trailer) == length


@pytest.mark.parametrize("data", [b"", b"ITWQ2 000000ed", b"ITWQ2 000000ed\r",
                                  b"ITWQ1 000000ed\n", b"ITWQ2 000000eG\n",
                                  b"ITWQ2 000000ED\n", b"ITWQ2 00000000\n",
                                  b"ITWQ2 -0000001\n", b"xITWQ2 000000ed\n"])
def test_a_damaged_trailer_is_rejected(data):
    with pytest.raises(CorruptRecord):
        records.decode_trailer(data)


@pytest.mark.parametrize("length", [0, -1, 1 << 32])
def test_a_trailer_needs_a_record_length_that_fits(length):
    with pytest.raises(ValueError):
        records.encode_trailer(length)
