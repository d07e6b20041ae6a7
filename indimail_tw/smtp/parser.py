"""SMTP framing, sans-IO: bytes in, events out.  No Twisted, no sockets.

The parser is *pulled*: :meth:`SMTPParser.feed` only appends to a buffer and
:meth:`SMTPParser.next_event` returns one event at a time.  The session asks
for the next event only when it has answered the previous one, and switches
the mode (command lines, DATA content, a BDAT chunk) between events.  So a
pipelined ``DATA`` followed by content, a ``BDAT`` chunk, or plaintext sent
after ``STARTTLS`` is read exactly as the state machine expects, however the
bytes were split into segments.

Modes and their events:

* command lines (also SASL responses): :class:`Line` (without its line
  ending; CRLF or LF ends a line), or :class:`LineTooLong` when a line exceeds
  the limit (the rest of that line is skipped; the connection goes on);
* DATA content: :class:`Content` chunks (dot-unstuffed, LF line endings, as
  qmail stores messages), then :class:`ContentEnd` on ``CRLF . CRLF``;
* a BDAT chunk of N octets: :class:`Content` chunks with the raw octets, then
  :class:`ContentEnd` (use :class:`LineEndings` to check and convert them).

SMTP smuggling (bare CR / bare LF): **rejected, never normalised.**  In DATA
the only end of a message is ``CR LF . CR LF``.  A bare LF or a bare CR
anywhere in the content (``\\n.\\n``, ``\\r.\\r``, ``\\r\\n.\\r``,
``\\n.\\r\\n`` ...) gives :class:`BadLineEnding`, after which the parser
discards all further input: the session answers ``451`` (qmail's
``straynewline``) and closes the connection, so nothing the client sent after
the bare line ending can be taken as a command or a second message.  BDAT
chunks are counted, so no content can end one early; :class:`LineEndings`
rejects bare CR/LF in them too, and the message is refused.

Every buffer is bounded: a command line by the line limit (1000 by default,
RFC 5321; never above :data:`HARD_LINE_CAP`); content is handed on in pieces of
at most :data:`CHUNK` bytes as it arrives.  What is buffered while the session
is busy is the adapter's to bound (it pauses the transport; see ``buffered``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from indimail_tw.lines import TOO_LONG, take_line

DEFAULT_LINE_LIMIT = 1000          # RFC 5321 4.5.3.1.6 (text line, CRLF excluded here)
HARD_LINE_CAP = 16384              # no configuration raises a command line above this
AUTH_LINE_LIMIT = 12288            # RFC 4954 4: SASL responses may be this long
CHUNK = 65536                      # largest Content event

CR, LF, DOT = 13, 10, 46
_CRLF_CHAR = re.compile(rb"[\r\n]")


@dataclass(frozen=True)
class Line:
    data: bytes


@dataclass(frozen=True)
class LineTooLong:
    pass


@dataclass(frozen=True)
class Content:
    data: bytes


@dataclass(frozen=True)
class ContentEnd:
    pass


@dataclass(frozen=True)
class BadLineEnding:
    kind: str          # "LF" or "CR"


Event = Line | LineTooLong | Content | ContentEnd | BadLineEnding


class Mode(enum.Enum):
    COMMAND = "command"
    DATA = "data"
    CHUNK = "chunk"
    DEAD = "dead"           # everything is discarded (after a bare CR/LF, or closing)


class SMTPParser:
    """The framing state machine of one connection."""

    def __init__(self, line_limit: int = DEFAULT_LINE_LIMIT) -> None:
        self._buf = bytearray()
        self.mode = Mode.COMMAND
        self._line_limit = DEFAULT_LINE_LIMIT
        self.line_limit = line_limit
        self._skipping = False        # inside an over-long line
        self._at_line_start = True    # DATA: at the start of a content line
        self._remaining = 0           # CHUNK: octets still to come
        self._pending: Event | None = None   # DATA: an end or error after a Content

    # -- configuration -------------------------------------------------------------

    @property
    def line_limit(self) -> int:
        return self._line_limit

    @line_limit.setter
    def line_limit(self, value: int) -> None:
        if value <= 0:
            value = DEFAULT_LINE_LIMIT
        self._line_limit = min(value, HARD_LINE_CAP)

    def expect_data(self) -> None:
        """Read DATA content next (after a 354 reply)."""
        self.mode = Mode.DATA
        self._at_line_start = True
        self._pending = None

    def expect_chunk(self, size: int) -> None:
        """Read a BDAT chunk of ``size`` octets next."""
        if size < 0:
            raise ValueError("negative chunk size")
        self.mode = Mode.CHUNK
        self._remaining = size

    def close(self) -> None:
        """Discard all input from now on."""
        self.mode = Mode.DEAD
        self._buf.clear()

    def discard_buffered(self) -> int:
        """Drop whatever the client sent after the last event (STARTTLS); return how much."""
        n = len(self._buf)
        self._buf.clear()
        self._skipping = False
        return n

    @property
    def buffered(self) -> int:
        return len(self._buf)

    # -- input -----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.mode is not Mode.DEAD:
            self._buf += data

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more input is needed."""
        if self.mode is Mode.COMMAND:
            return self._next_line()
        if self.mode is Mode.DATA:
            return self._next_content()
        if self.mode is Mode.CHUNK:
            return self._next_chunk()
        self._buf.clear()
        return None

    # -- command lines ---------------------------------------------------------------

    def _next_line(self) -> Event | None:
        buf = self._buf
        line, self._skipping = take_line(buf, self._line_limit, self._skipping)
        if line is None:
            return None
        if line is TOO_LONG:
            return LineTooLong()
        return Line(line)

    # -- DATA content ------------------------------------------------------------------

    def _next_content(self) -> Event | None:
        if self._pending is not None:
            event, self._pending = self._pending, None
            self.mode = Mode.DEAD if isinstance(event, BadLineEnding) else Mode.COMMAND
            if self.mode is Mode.DEAD:
                self._buf.clear()
            return event
        buf = self._buf
        n = len(buf)
        pos = 0
        out = bytearray()
        while len(out) < CHUNK:
            if self._at_line_start:
                if pos >= n:
                    break
                if buf[pos] == DOT:
                    if n - pos < 2:
                        break
                    second = buf[pos + 1]
                    if second == CR:
                        if n - pos < 3:
                            break
                        if buf[pos + 2] == LF:             # CR LF . CR LF: the end
                            del buf[:pos + 3]
                            return self._finish(out, ContentEnd())
                        return self._finish(out, BadLineEnding("CR"))
                    if second == LF:
                        return self._finish(out, BadLineEnding("LF"))
                    pos += 1                                # dot-stuffing
                self._at_line_start = False
            # the usual case in one step: the text up to the next line that starts
            # with a dot (or as much as this event may take), when every CR and LF
            # in it is part of a CRLF pair
            limit = min(n, pos + CHUNK - len(out))
            k = buf.find(b"\r\n.", pos, limit)
            end = k + 2 if k >= 0 else limit
            if end > pos:
                segment = buf[pos:end]
                pairs = segment.count(b"\r\n")
                if segment.count(b"\r") == pairs and segment.count(b"\n") == pairs:
                    out += segment.replace(b"\r\n", b"\n") if pairs else segment
                    pos = end
                    self._at_line_start = segment.endswith(b"\r\n")
                    continue
            elif pos >= n:
                break
            # else one line at a time, which finds the bare CR or LF (or a CR
            # whose LF has not arrived yet)
            match = _CRLF_CHAR.search(buf, pos)
            if match is None:
                take = min(n - pos, CHUNK - len(out))
                out += buf[pos:pos + take]
                pos += take
                if pos >= n:
                    break
                continue
            j = match.start()
            room = CHUNK - len(out)
            if j - pos > room:                              # a long line: hand on a piece
                out += buf[pos:pos + room]
                pos += room
                continue
            out += buf[pos:j]
            if buf[j] == LF:
                return self._finish(out, BadLineEnding("LF"))
            if j + 1 >= n:                                  # a CR: wait for what follows
                pos = j
                break
            if buf[j + 1] != LF:
                return self._finish(out, BadLineEnding("CR"))
            out += b"\n"
            pos = j + 2
            self._at_line_start = True
        del buf[:pos]
        return Content(bytes(out)) if out else None

    def _finish(self, out: bytearray, event: Event) -> Event:
        if out:
            self._pending = event
            return Content(bytes(out))
        self._pending = event
        return self._next_content()

    # -- BDAT chunks -------------------------------------------------------------------

    def _next_chunk(self) -> Event | None:
        if self._remaining == 0:
            self.mode = Mode.COMMAND
            return ContentEnd()
        buf = self._buf
        if not buf:
            return None
        n = min(self._remaining, len(buf), CHUNK)
        data = bytes(buf[:n])
        del buf[:n]
        self._remaining -= n
        return Content(data)


class BareLineEnding(ValueError):
    """A CR or LF that is not part of a CRLF pair."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"bare {kind}")
        self.kind = kind


class LineEndings:
    """Checks raw message octets (BDAT) and converts CRLF to LF, across chunk boundaries.

    A bare CR or LF raises :class:`BareLineEnding`; the same rule as DATA.
    """

    def __init__(self) -> None:
        self._cr_pending = False

    def convert(self, data: bytes) -> bytes:
        out = bytearray()
        if self._cr_pending:
            if not data:
                return b""
            if data[0] != LF:
                raise BareLineEnding("CR")
            out += b"\n"
            data = data[1:]
            self._cr_pending = False
        start = 0
        for match in _CRLF_CHAR.finditer(data):
            j = match.start()
            if j < start:                      # the LF of a CRLF handled below
                continue
            if data[j] == LF:
                raise BareLineEnding("LF")
            out += data[start:j]
            if j + 1 == len(data):
                self._cr_pending = True
                start = len(data)
                break
            if data[j + 1] != LF:
                raise BareLineEnding("CR")
            out += b"\n"
            start = j + 2
        out += data[start:]
        return bytes(out)

    def finish(self) -> None:
        """The message is complete: a CR still waiting for its LF is bare."""
        if self._cr_pending:
            raise BareLineEnding("CR")
