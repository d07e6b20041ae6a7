"""What local delivery needs to know about a queued message, and the lines it adds.

The queue stores messages with LF line ends (qmail's format); every header
line built here ends in ``\\n``.  Functions that read the message file block:
call them in a thread.
"""

from __future__ import annotations

import io
import os
import re
import time
from dataclasses import dataclass
from email.utils import formatdate

from indimail_tw.datafile import open_data

#: Stop scanning the header block after this many bytes (a hostile message
#: cannot make loop detection read the whole file).
MAX_HEADER_SCAN = 1024 * 1024
_READ_CHUNK = 64 * 1024
_ENHANCED = re.compile(r"#([245])\.(\d{1,3})\.(\d{1,3})")


@dataclass(frozen=True)
class HeaderScan:
    """The header block of a message (bounded) and its Delivered-To values."""

    header: bytes  # up to and including the blank line (or what was read)
    delivered_to: tuple[str, ...]  # values, stripped, lower-cased


def read_header(path: str, limit: int = MAX_HEADER_SCAN, size: int | None = None
                ) -> HeaderScan:
    """Read the header block of the message file at ``path`` (the message is its
    first ``size`` bytes; None: the whole file)."""
    return read_message_header(path, limit, size)[1]


def read_message_header(path: str, limit: int = MAX_HEADER_SCAN, size: int | None = None
                        ) -> tuple[int, HeaderScan]:
    """The size of the message at ``path`` and its header block (one open;
    reading stops at the end of the header)."""
    size, scan, _ = read_message_start(path, limit, size)
    return size, scan


def read_message_start(path: str, limit: int = MAX_HEADER_SCAN, size: int | None = None
                       ) -> tuple[int, HeaderScan, bytes | None]:
    """:func:`read_message_header`, and the whole message when the reads up to the
    end of the header took all of it (small messages: one read), else None, so
    that a delivery need not open and read the file again.  The message is the
    first ``size`` bytes of the file (a queue file goes on with its envelope);
    None: the whole file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if size is None:
            size = os.fstat(fd).st_size
        data = b""
        while len(data) < min(limit, size):
            chunk = os.read(fd, min(_READ_CHUNK, limit - len(data), size - len(data)))
            if not chunk:
                break
            data += chunk
            if len(data) >= size or data.find(b"\n\n", max(0, len(data) - len(chunk) - 1)) >= 0:
                break
    finally:
        os.close(fd)
    return size, scan_header(data), data if len(data) == size else None


def scan_header(data: bytes) -> HeaderScan:
    """The header block at the start of ``data`` and its Delivered-To values."""
    end = data.find(b"\n\n")
    if end >= 0:
        data = data[:end + 2]
    values = []
    for line in data.split(b"\n"):
        if line[:13].lower() == b"delivered-to:":
            values.append(line[13:].strip().decode("utf-8", "replace").lower())
    return HeaderScan(data, tuple(values))


def dtline_address(local: str, domain: str) -> str:
    """IndiMail's Delivered-To address: qmail-local's ``local@host`` after the
    virtualdomains rewrite, i.e. ``<domain>-<user>@<domain>``."""
    return f"{domain}-{local}@{domain}"


def header_line(name: str, value: str) -> bytes:
    """``Name: value\\n``; newlines in the value become ``_`` (qmail-local does this)."""
    value = value.replace("\r", "_").replace("\n", "_")
    return f"{name}: {value}\n".encode("utf-8", "surrogateescape")


def rpline(sender: str) -> bytes:
    return header_line("Return-Path", f"<{sender}>")


def dtline(address: str) -> bytes:
    return header_line("Delivered-To", address)


def ufline(sender: str, when: float | None = None) -> bytes:
    """The mbox ``From `` line: blanks in the sender become ``-``; ctime date."""
    who = re.sub(r"[ \t\n]", "-", sender) if sender else "MAILER-DAEMON"
    return f"From {who} {time.ctime(time.time() if when is None else when)}\n".encode(
        "utf-8", "surrogateescape")


def count_line(scan: HeaderScan, address: str) -> int:
    """How many Delivered-To lines of the header equal ``address``."""
    address = address.lower()
    return sum(1 for value in scan.delivered_to if value == address)


def is_looping(scan: HeaderScan, address: str, max_delivered_to: int) -> bool:
    """qmail-local's rule: more than ``max_delivered_to`` identical lines (-1: never)."""
    return max_delivered_to > -1 and count_line(scan, address) > max_delivered_to


def forward_loops(scan: HeaderScan, address: str) -> bool:
    """IndiMail's check before forwarding: the target already delivered this copy
    (its address, or ``<domain>-<address>``, is in a Delivered-To line)."""
    address = address.lower()
    return any(v == address or v.endswith("-" + address) for v in scan.delivered_to)


def enhanced_from_text(text: str, default: str) -> str:
    """The ``#x.y.z`` code qmail programs put in their reports, else ``default``."""
    found = _ENHANCED.findall(text)
    if not found:
        return default
    cls, subject, detail = found[-1]
    return f"{cls}.{subject}.{detail}"


def rfc2822_date(when: float | None = None) -> str:
    return formatdate(time.time() if when is None else when, localtime=True)


class PrefixedReader(io.RawIOBase):
    """A binary file object reading ``prefix`` and then the message at ``path`` (its
    first ``size`` bytes; None: the whole file).

    Used to hand a forwarded copy (with our Delivered-To line first) to the
    queue without loading the message into memory.  Opening happens at
    construction (call it in a thread); the queue reads it in its own threads.
    """

    def __init__(self, prefix: bytes, path: str, size: int | None = None) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._file = open_data(path, size)
        self.size = len(prefix) + self._file.size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._file.readinto(view)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()
