"""SMTP replies as a client reads them, sans-IO: bytes in, :class:`Reply` objects out.

A reply is one or more lines ``NNN-text`` ... ``NNN text`` (RFC 5321 4.2).
The reader is bounded: a line longer than :data:`MAX_LINE` or a reply of more
than :data:`MAX_LINES` lines is the peer's fault (:class:`PeerError`), as is
anything that is not a reply line.  Also here: the EHLO keywords
(:class:`Capabilities`) and the RFC 3461 xtext encoding used in DSN parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_LINE = 4096          # RFC 5321 allows 512; be lenient, never unbounded
MAX_LINES = 200

_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)\Z", re.S)
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|\Z)")


class PeerError(Exception):
    """The peer broke the protocol (malformed or oversized reply)."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]           # the text of each line, without the code

    @property
    def kind(self) -> int:
        """2, 3, 4 or 5."""
        return self.code // 100

    @property
    def enhanced(self) -> str:
        """The RFC 3463 status of the first line, when it carries a matching one."""
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        if m and int(m.group(1)) == self.kind:
            return m.group(0)
        return ""

    def status(self) -> str:
        """The enhanced status, or ``X.0.0`` for the reply's class."""
        return self.enhanced or f"{self.kind}.0.0"

    def wire_text(self) -> str:
        """All lines as the server sent them, joined with newlines (for the bounce)."""
        return "\n".join(f"{self.code} {line}".rstrip() for line in self.lines)

    def one_line(self) -> str:
        """``code text text ...`` on one line (for the DSN diagnostic code)."""
        text = " ".join(line.strip() for line in self.lines if line.strip())
        return f"{self.code} {text}".rstrip()


class ReplyReader:
    """Splits received bytes into replies, pulled one at a time (:meth:`next_reply`), so
    the caller can stop reading where the protocol changes (after ``220`` to STARTTLS).
    Line endings: CRLF or a bare LF."""

    def __init__(self) -> None:
        self._buffer = b""
        self._code: int | None = None
        self._lines: list[str] = []

    def append(self, data: bytes) -> None:
        self._buffer += data

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None; :class:`PeerError` if the input is bad."""
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise PeerError("reply line too long")
                return None
            line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            if len(line) > MAX_LINE:
                raise PeerError("reply line too long")
            reply = self._line(line.rstrip(b"\r"))
            if reply is not None:
                return reply

    def feed(self, data: bytes) -> list[Reply]:
        """Every complete reply in what has been received so far."""
        self.append(data)
        replies = []
        while (reply := self.next_reply()) is not None:
            replies.append(reply)
        return replies

    def _line(self, line: bytes) -> Reply | None:
        m = _LINE.match(line)
        if m is None or (m.group(2) == b"" and m.group(3)):
            raise PeerError(f"not an SMTP reply: {line[:80]!r}")
        code = int(m.group(1))
        if self._code is not None and code != self._code:
            raise PeerError("reply code changed within a multi-line reply")
        self._code = code
        self._lines.append(m.group(3).decode("utf-8", "replace"))
        if len(self._lines) > MAX_LINES:
            raise PeerError("reply has too many lines")
        if m.group(2) == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code, self._lines = None, []
        return reply

    @property
    def pending(self) -> bool:
        """Whether part of a reply has been received."""
        return bool(self._buffer) or self._code is not None


@dataclass(frozen=True)
class Capabilities:
    """The EHLO keywords of a server (upper case) and their parameters."""

    keywords: dict[str, str] = field(default_factory=dict)
    esmtp: bool = True

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        keywords: dict[str, str] = {}
        for line in reply.lines[1:]:
            word, _, params = line.strip().partition(" ")
            word = word.upper()
            if word.startswith("AUTH="):          # old style "AUTH=LOGIN PLAIN"
                word, params = "AUTH", (word[5:] + " " + params).strip()
            if word:
                keywords[word] = (keywords.get(word, "") + " " + params).strip() \
                    if word == "AUTH" else params.strip()
        return cls(keywords)

    @classmethod
    def none(cls) -> Capabilities:
        """What a HELO-only (RFC 821) server offers."""
        return cls({}, esmtp=False)

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def size_limit(self) -> int:
        """The SIZE limit; 0 when none is announced."""
        value = self.keywords.get("SIZE", "")
        return int(value) if value.isdigit() else 0

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        return tuple(m.upper() for m in self.keywords.get("AUTH", "").split())


def encode_xtext(text: str) -> str:
    """RFC 3461 xtext: ``+``, ``=``, controls and non-ASCII as ``+XX``."""
    out = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)
