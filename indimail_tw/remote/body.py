"""The message as it goes over the wire: CRLF line endings and dot-stuffing (RFC 5321 4.5.2).

Queued messages have LF line endings (as qmail stores them).  The encoder
turns each LF (or a CRLF the file may hold) into CRLF, doubles a dot that
starts a line, and ends the data with ``CRLF . CRLF`` (adding the missing line
ending of a last partial line, as qmail-remote does).  It is fed chunks of any
size, split anywhere.  :func:`scan_message` reads a message once (in a thread)
for what the client must know before MAIL FROM: the size on the wire, whether
it holds 8-bit data, and whether its header holds non-ASCII text.
"""

from __future__ import annotations

from dataclasses import dataclass

from indimail_tw.datafile import open_data

CHUNK = 256 * 1024


class BodyEncoder:
    """Stateful LF -> CRLF conversion and dot-stuffing over a stream of chunks."""

    def __init__(self) -> None:
        self._line_start = True
        self._pending_cr = False     # the previous chunk ended with CR

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if data.endswith(b"\r"):          # may be the first half of CRLF
            data, self._pending_cr = data[:-1], True
            if not data:
                return b""
        data = data.replace(b"\r\n", b"\n")
        head = b"." if self._line_start and data.startswith(b".") else b""
        self._line_start = data.endswith(b"\n")
        return head + data.replace(b"\n.", b"\n..").replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        """The rest of the data and the terminator."""
        tail = b""
        if self._pending_cr:              # a lone CR at the very end
            self._pending_cr = False
            tail, self._line_start = b"\r", False
        return tail + (b".\r\n" if self._line_start else b"\r\n.\r\n")


@dataclass(frozen=True)
class MessageInfo:
    """What :func:`scan_message` found."""

    wire_size: int           # bytes of DATA content on the wire, without the terminator
    eight_bit: bool          # some byte >= 0x80
    utf8_header: bool        # the header section holds non-ASCII bytes
    wire: bytes | None = None   # the whole DATA content + terminator, if kept


def scan_message(path: str, keep: int = 0, message_size: int | None = None) -> MessageInfo:
    """Read a message once (blocking: call it in a thread): the first
    ``message_size`` bytes of the file at ``path`` (None: the whole file).

    A message of at most ``keep`` bytes on the wire also comes back encoded
    (``wire``): sending it then needs no more file reads.
    """
    encoder = BodyEncoder()
    size = 0
    eight_bit = utf8_header = False
    in_header, first = True, True
    tail = b""                            # the end of the previous chunk
    kept: list[bytes] | None = [] if keep > 0 else None
    with open_data(path, message_size) as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            encoded = encoder.feed(chunk)
            size += len(encoded)
            if kept is not None:
                kept.append(encoded)
                if size > keep:
                    kept = None
            if not chunk.isascii():
                eight_bit = True
            if in_header:
                in_header, header_utf8 = _header_part(tail + chunk, first)
                utf8_header = utf8_header or header_utf8
            tail, first = chunk[-2:], False
    end = encoder.finish()
    size += len(end) - 3                  # the final ".\r\n" is not content
    wire = b"".join(kept) + end if kept is not None and size <= keep else None
    return MessageInfo(size, eight_bit, utf8_header, wire)


def _header_part(data: bytes, first: bool) -> tuple[bool, bool]:
    """(header continues after ``data``, the header part of ``data`` is non-ASCII)."""
    if first and data.startswith((b"\n", b"\r\n")):
        return False, False                       # an empty header
    ends = [i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0]
    header = data[:min(ends)] if ends else data
    return not ends, not header.isascii()
