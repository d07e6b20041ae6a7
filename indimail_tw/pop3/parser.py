"""POP3 framing and message encoding, sans-IO: bytes in, events out; messages in, bytes out.

No Twisted, no sockets.  :class:`POP3Parser` is *pulled* like the SMTP
parser: :meth:`~POP3Parser.feed` appends, :meth:`~POP3Parser.next_event`
returns one :class:`Line` (without its CRLF or LF) or :class:`LineTooLong` at
a time, so the session reads pipelined commands (RFC 2449 PIPELINING) one by
one, and anything pipelined after ``STLS`` can be thrown away before TLS
starts.

Bounds: a command line is at most :data:`COMMAND_LINE_LIMIT` octets (RFC 2449
says 255; clients send longer ``USER``/``PASS`` lines, so we are lenient up
to 1 KB); while a SASL exchange runs the session raises it to
:data:`AUTH_LINE_LIMIT` (RFC 5034 lets responses be long).  An over-long line
is skipped up to its end and reported once.

:class:`MessageEncoder` turns a Maildir file (LF or CRLF line endings) into the
multi-line response body of RETR and TOP (RFC 1939 section 3): CRLF line
endings, a ``.`` doubled at the start of a line, a final CRLF if the message
lacks one, then the terminating ``.CRLF``.  It works on chunks of any size with
a constant amount of state, so a big message streams through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from indimail_tw.lines import TOO_LONG, take_line

COMMAND_LINE_LIMIT = 1024          # RFC 2449 section 4: 255; lenient (long PASS lines)
AUTH_LINE_LIMIT = 12288            # a SASL response (RFC 5034; same bound as RFC 4954)
HARD_LINE_CAP = 16384
_DOT_AFTER_LF = re.compile(rb"\n\.")


@dataclass(frozen=True)
class Line:
    data: bytes


@dataclass(frozen=True)
class LineTooLong:
    pass


Event = Line | LineTooLong


class POP3Parser:
    """The line framing of one connection."""

    def __init__(self, line_limit: int = COMMAND_LINE_LIMIT) -> None:
        self._buf = bytearray()
        self._line_limit = COMMAND_LINE_LIMIT
        self.line_limit = line_limit
        self._skipping = False        # inside an over-long line
        self.closed = False

    @property
    def line_limit(self) -> int:
        return self._line_limit

    @line_limit.setter
    def line_limit(self, value: int) -> None:
        self._line_limit = min(value, HARD_LINE_CAP) if value > 0 else COMMAND_LINE_LIMIT

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if not self.closed:
            self._buf += data

    def close(self) -> None:
        """Discard all input from now on."""
        self.closed = True
        self._buf.clear()

    def discard_buffered(self) -> int:
        """Drop whatever the client sent after the last event (STLS); return how much."""
        n = len(self._buf)
        self._buf.clear()
        self._skipping = False
        return n

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more input is needed."""
        buf = self._buf
        if self.closed:
            return None
        line, self._skipping = take_line(buf, self._line_limit, self._skipping)
        if line is None:
            return None
        if line is TOO_LONG:
            return LineTooLong()
        return Line(line)


def split_command(line: bytes) -> tuple[str, list[bytes]]:
    """(upper-case keyword, arguments) of a command line; ('', []) for an empty line.

    Keywords are 3-4 printable characters (RFC 1939); anything else is returned
    as it is and answered as an unknown command.  Arguments are separated by
    single or repeated spaces (tabs are tolerated).
    """
    words = line.replace(b"\t", b" ").split()
    if not words:
        return "", []
    return words[0].decode("ascii", "replace").upper(), words[1:]


def parse_number(arg: bytes) -> int | None:
    """A message number or line count: decimal digits only, no sign; None otherwise."""
    if not arg or len(arg) > 10 or not arg.isdigit():
        return None
    return int(arg)


# -- message encoding ----------------------------------------------------------------------------

class MessageEncoder:
    """A message as a POP3 multi-line response body, chunk by chunk.

    ``body_lines``: ``None`` for RETR (the whole message); ``n >= 0`` for TOP:
    the header, the blank line after it, and ``n`` lines of the body.  Feed the
    file's bytes with :meth:`feed` (until it returns ``done``), then call
    :meth:`finish` for the final line ending and the ``.CRLF`` terminator.
    """

    def __init__(self, body_lines: int | None = None) -> None:
        if body_lines is not None and body_lines < 0:
            raise ValueError("negative line count")
        self._remaining = body_lines
        self._in_header = body_lines is not None
        self._carry = b""            # a CR at the end of the previous chunk
        self._line_start = True      # the next output byte starts a line
        self.done = False            # TOP: every wanted line is out; feed nothing more

    def feed(self, chunk: bytes) -> bytes:
        if self.done or not chunk:
            return b""
        data = self._carry + chunk
        if data.endswith(b"\r"):
            self._carry, data = b"\r", data[:-1]
        else:
            self._carry = b""
        return self._encode(data)

    def finish(self) -> bytes:
        out = b"" if self.done else self._encode(self._carry)
        self._carry = b""
        self.done = True
        if not self._line_start:
            out += b"\r\n"
            self._line_start = True
        return out + b".\r\n"

    def _encode(self, data: bytes) -> bytes:
        if not data:
            return b""
        # the scans (in) are much cheaper than the copies (replace) they often spare
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        if self._remaining is not None:
            data = self._limit(data)
            if not data:
                return b""
        # the regex engine's literal search is ~3x faster here than bytes.replace/find,
        # which stop at every LF to test the next byte
        stuffed = _DOT_AFTER_LF.sub(b"\n..", data)
        if self._line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        self._line_start = stuffed.endswith(b"\n")
        return stuffed.replace(b"\n", b"\r\n")

    def _limit(self, data: bytes) -> bytes:
        """TOP: the part of ``data`` (LF line endings) within the header and n body lines."""
        pos = 0
        if self._in_header:
            if self._line_start and data.startswith(b"\n"):
                end = 0
            else:
                end = data.find(b"\n\n")
                if end < 0:
                    return data
                end += 1
            self._in_header = False
            pos = end + 1                     # up to and including the blank line
        while self._remaining > 0 and pos < len(data):
            i = data.find(b"\n", pos)
            if i < 0:
                return data
            pos = i + 1
            self._remaining -= 1
        if self._remaining == 0:
            self.done = True
            return data[:pos]
        return data


def encode_message(data: bytes, body_lines: int | None = None) -> bytes:
    """A whole message at once (small messages): the body and the terminator."""
    encoder = MessageEncoder(body_lines)
    return encoder.feed(data) + encoder.finish()
