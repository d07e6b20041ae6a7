"""Reading a message that is the first ``size`` bytes of a file.

A queue file (format 2, see :mod:`indimail_tw.queue.store`) holds the message
bytes and after them its envelope record: whoever reads the message reads
bytes [0, size) only, through :func:`open_data`.  Blocking: call it in a thread.
"""

from __future__ import annotations

import io
import os


class DataReader(io.RawIOBase):
    """A raw, seekable binary file reading the first ``size`` bytes of a file: it
    returns EOF at ``size`` even when the file goes on (a queue file holds the
    envelope after the message).  It has no ``fileno``, so nothing can hand the
    whole file on by mistake."""

    def __init__(self, path: str, size: int | None = None) -> None:
        super().__init__()
        self.name = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.size = os.fstat(self._fd).st_size if size is None else size
        except BaseException:
            os.close(self._fd)
            raise
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = min(len(buffer), self.size - self._pos)
        if n <= 0:
            return 0
        view = memoryview(buffer).cast("B")
        got = os.preadv(self._fd, [view[:n]], self._pos)
        self._pos += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def open_data(path: str, size: int | None = None) -> DataReader:
    """The message at ``path``: its first ``size`` bytes (None: the whole file, for
    files that hold nothing else).  Blocking: call it in a thread."""
    return DataReader(path, size)


def read_data(path: str, size: int | None = None, limit: int | None = None) -> bytes:
    """The message bytes (at most ``limit`` of them)."""
    with open_data(path, size) as f:
        want = f.size if limit is None else min(limit, f.size)
        data = bytearray()
        while len(data) < want:
            chunk = f.read(want - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)
