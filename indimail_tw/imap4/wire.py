"""Encoding IMAP response data (RFC 9051 section 4, RFC 3501 section 4).

Pure functions from Python values to the bytes that go on the wire; the
session builds untagged and tagged lines from them.  Strings that cannot be
quoted (CR, LF, NUL, 8-bit without UTF8=ACCEPT, or long) become literals.
Mailbox names travel in modified UTF-7 (RFC 3501 5.1.3) unless UTF8=ACCEPT
is enabled.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

CRLF = b"\r\n"
_ATOM_SPECIALS = re.compile(rb'[\x00-\x20\x7f-\xff(){%*"\\\]]')
_QUOTABLE = re.compile(rb'[^\r\n\x00]*\Z')
_QUOTE_LIMIT = 1024


def literal(data: bytes) -> bytes:
    """``{n}CRLF`` followed by the data."""
    return b"{%d}\r\n" % len(data) + data


def quoted(data: bytes) -> bytes:
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string(data: bytes | str, utf8: bool = False) -> bytes:
    """A quoted string when possible, else a literal."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if (len(data) <= _QUOTE_LIMIT and _QUOTABLE.match(data)
            and (utf8 or data.isascii())):
        return quoted(data)
    return literal(data)


def nstring(data: bytes | str | None, utf8: bool = False) -> bytes:
    return b"NIL" if data is None else string(data, utf8)


def astring(data: bytes | str, utf8: bool = False) -> bytes:
    """An atom when the value is a plain atom, else a string."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if data and not _ATOM_SPECIALS.search(data) and data.upper() != b"NIL":
        return data
    return string(data, utf8)


def plist(items: Iterable[bytes]) -> bytes:
    """A parenthesised list of already-encoded items."""
    return b"(" + b" ".join(items) + b")"


def number(n: int) -> bytes:
    return b"%d" % n


def flags(names: Iterable[str]) -> bytes:
    """A flag list, e.g. ``(\\Seen $Junk)`` (names are atoms or \\-flags)."""
    return plist(n.encode("ascii", "replace") for n in names)


# -- modified UTF-7 (RFC 3501 5.1.3) ---------------------------------------

def _b64_encode(chunk: str) -> bytes:
    raw = chunk.encode("utf-16-be")
    return b"&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") + b"-"


def mutf7_encode(name: str) -> bytes:
    out, pending = bytearray(), []
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            if pending:
                out += _b64_encode("".join(pending))
                pending = []
            out += b"&-" if ch == "&" else ch.encode("ascii")
        else:
            pending.append(ch)
    if pending:
        out += _b64_encode("".join(pending))
    return bytes(out)


class MUTF7Error(ValueError):
    pass


def mutf7_decode(data: bytes) -> str:
    """Decode a modified UTF-7 mailbox name; raises :class:`MUTF7Error` when malformed."""
    out, i, n = [], 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x26:  # '&'
            end = data.find(b"-", i + 1)
            if end < 0:
                raise MUTF7Error("unterminated &-sequence")
            chunk = data[i + 1:end]
            if not chunk:
                out.append("&")
            else:
                b64 = chunk.replace(b",", b"/")
                b64 += b"=" * (-len(b64) % 4)
                try:
                    raw = base64.b64decode(b64, validate=True)
                    out.append(raw.decode("utf-16-be"))
                except (ValueError, UnicodeDecodeError) as e:
                    raise MUTF7Error("bad base64 in mailbox name") from e
            i = end + 1
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
            i += 1
        else:
            raise MUTF7Error("8-bit character in modified UTF-7 name")
    return "".join(out)


def mailbox(name: str, utf8: bool = False) -> bytes:
    """A mailbox name as the client expects it (mUTF-7, or UTF-8 after UTF8=ACCEPT)."""
    if name.upper() == "INBOX":
        return b"INBOX"
    encoded = name.encode("utf-8") if utf8 else mutf7_encode(name)
    return astring(encoded, utf8)


# -- response lines ----------------------------------------------------------

def tagged(tag: bytes, status: str, text: str, code: str | bytes | None = None) -> bytes:
    """``tag OK [CODE] text`` + CRLF; status is OK, NO or BAD."""
    return b"%s %s %s" % (tag, status.encode("ascii"), _with_code(text, code)) + CRLF


def untagged(data: bytes | str) -> bytes:
    """``* data`` + CRLF (data already encoded)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return b"* " + data + CRLF


def untagged_status(status: str, text: str, code: str | bytes | None = None) -> bytes:
    """``* OK [CODE] text`` + CRLF."""
    return b"* %s %s" % (status.encode("ascii"), _with_code(text, code)) + CRLF


def _with_code(text: str, code: str | bytes | None) -> bytes:
    body = text.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
    if code is None:
        return body
    if isinstance(code, str):
        code = code.encode("utf-8")
    return b"[" + code + b"] " + body
