"""mbox delivery (a ``.qmail`` line naming a file): qmail-local's ``mailfile``.

The message is appended after a ``From `` line, ``Return-Path`` and
``Delivered-To``; body lines starting with ``From `` (after any ``>``) get a
``>``; a blank line ends the entry.  :func:`indimail_tw.fsutil.append_locked`
holds the flock, fsyncs, and truncates back on a failed write.  Blocking.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from indimail_tw import fsutil

_FROM = re.compile(rb"^>*From ")
CHUNK = 65536


def mbox_chunks(message_path: str, header: bytes) -> Iterator[bytes]:
    """``header`` (From_ line first), the message with From-quoting, a final blank line."""
    yield header
    with open(message_path, "rb") as f:
        pending = b""
        while data := f.read(CHUNK):
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            if lines:
                yield b"".join(_quote(line) + b"\n" for line in lines)
        if pending:  # a last line without its newline gets one, as in qmail
            yield _quote(pending) + b"\n"
    yield b"\n"


def _quote(line: bytes) -> bytes:
    return b">" + line if _FROM.match(line) else line


def deliver_mbox(path: str, message_path: str, header: bytes,
                 lock_timeout: float = 30.0) -> int:
    """Append the message to the mbox at ``path``; returns the bytes written."""
    return fsutil.append_locked(path, mbox_chunks(message_path, header), lock_timeout)
