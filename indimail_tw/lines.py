"""Bounded CRLF/LF line splitting for the sans-IO parsers (SMTP, POP3).

A line longer than ``limit`` octets (without its line end) is never buffered
whole: it is reported once as too long and the rest of it, up to the next LF,
is discarded -- also when it arrives in later reads (``skipping``).
"""

from __future__ import annotations

#: returned by :func:`take_line` for a line over the limit
TOO_LONG = object()


def take_line(buf: bytearray, limit: int, skipping: bool) -> tuple[bytes | object | None, bool]:
    """Remove the next line from ``buf``: ``(line without CR LF, skipping)``,
    ``(TOO_LONG, skipping)``, or ``(None, skipping)`` when more input is needed."""
    if skipping:
        i = buf.find(b"\n")
        if i < 0:
            buf.clear()
            return None, True
        del buf[:i + 1]
    i = buf.find(b"\n", 0, limit + 2)
    if i < 0:
        if len(buf) > limit + 1:          # even a final CR cannot make it fit
            end = buf.find(b"\n", limit + 2)
            if end >= 0:
                del buf[:end + 1]
                return TOO_LONG, False
            buf.clear()
            return TOO_LONG, True
        return None, False
    line = bytes(buf[:i])
    del buf[:i + 1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > limit:
        return TOO_LONG, False
    return line, False
