"""The wire form of a message: CRLF, dot-stuffing, terminator; the pre-scan."""

from __future__ import annotations

import pytest

from indimail_tw.remote.body import BodyEncoder, scan_message


def encode(data: bytes, split: int | None = None) -> bytes:
    enc = BodyEncoder()
    if split is None:
        return enc.feed(data) + enc.finish()
    out = b"".join(enc.feed(data[i:i + split]) for i in range(0, len(data), split))
    return out + enc.finish()


CASES = [
    (b"", b".\r\n"),
    (b"a\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),                                  # partial last line completed
    (b".\n", b"..\r\n.\r\n"),
    (b"a\n.b\n..\n", b"a\r\n..b\r\n...\r\n.\r\n"),
    (b"x\n.\n", b"x\r\n..\r\n.\r\n"),
    (b"crlf\r\n.already\r\n", b"crlf\r\n..already\r\n.\r\n"),  # CRLF in the file: not doubled
    (b"bare\rcr\n", b"bare\rcr\r\n.\r\n"),                   # a lone CR passes as qmail sends it
    (b"end\r", b"end\r\r\n.\r\n"),
]


@pytest.mark.parametrize("data, wire", CASES)
def test_encoding(data, wire):
    assert encode(data) == wire


@pytest.mark.parametrize("data, wire", CASES)
def test_encoding_byte_by_byte_is_the_same(data, wire):
    assert encode(data, 1) == wire
    assert encode(data, 2) == wire


def test_scan(tmp_path):
    path = tmp_path / "m"
    body = b"Subject: caf\xc3\xa9\n\n.dot\nplain\n"
    path.write_bytes(body)
    info = scan_message(str(path))
    assert info.wire_size == len(encode(body)) - 3
    assert info.eight_bit and info.utf8_header


def test_scan_ascii_header_8bit_body(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"Subject: x\n\nbody \xe9\n")
    info = scan_message(str(path))
    assert info.eight_bit and not info.utf8_header


def test_scan_header_split_over_chunks(tmp_path, monkeypatch):
    import indimail_tw.remote.body as body

    monkeypatch.setattr(body, "CHUNK", 3)
    path = tmp_path / "m"
    path.write_bytes(b"A: b\n\nnon-ascii \xe9 in the body only\n")
    assert not scan_message(str(path)).utf8_header
    path.write_bytes(b"A: b\nB: \xe9\n\nx\n")
    assert scan_message(str(path)).utf8_header
    path.write_bytes(b"\nno header \xe9\n")
    assert not scan_message(str(path)).utf8_header


def test_scan_keeps_the_wire_form_of_a_small_message(tmp_path):
    data = b"Subject: x\n\n.dot\n" + b"line\n" * 10_000
    path = tmp_path / "m"
    path.write_bytes(data)
    info = scan_message(str(path), keep=1_000_000)
    assert info.wire == encode(data)
    assert info.wire_size == len(info.wire) - 3
    assert scan_message(str(path), keep=1000).wire is None       # too big: read again later
    assert scan_message(str(path)).wire is None


def test_scan_reads_only_the_message_of_a_queue_file(tmp_path):
    """A queue file goes on with the envelope record: only [0, size) is sent."""
    body = b"Subject: x\n\n.dot\nplain\n"
    path = tmp_path / "m"
    path.write_bytes(body + b"indimail-tw-queue envelope 1\nEND 0\nITWQ2 00000010\n")
    info = scan_message(str(path), keep=1_000_000, message_size=len(body))
    assert info.wire == encode(body)
    assert info.wire_size == len(encode(body)) - 3
    from indimail_tw.remote.client import _open_message

    with _open_message(str(path), len(body)) as f:
        assert f.read() == body
