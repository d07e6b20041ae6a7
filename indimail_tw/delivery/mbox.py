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
from indimail_tw.datafile import open_data

_FROM = re.compile(rb"^>*From ")
CHUNK = 65536


def mbox_chunks(message_path: str, header: bytes, size: int | None = None
                ) -> Iterator[bytes]:
    """``header`` (From_ line first), the message (the first ``size`` bytes of the
    file; None: all of it) with From-quoting, a final blank line."""
    yield header
    with open_data(message_path, size) as f:
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
                 lock_timeout: float = 30.0, size: int | None = None) -> int:
    """Append the message to the mbox at ``path``; returns the bytes written."""
    return fsutil.append_locked(path, mbox_chunks(message_path, header, size), lock_timeout)
