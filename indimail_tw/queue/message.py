"""What a delivery agent receives: a committed message (IQueuedMessage).

The file at ``path`` holds more than the message: in the queue's format 2 the
envelope record follows the message bytes in the same file.  Every reader of
the message therefore reads bytes [0, ``size``) only: through
:func:`open_data` (or :meth:`QueuedMessage.open`), never with a plain ``open``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from zope.interface import implementer

from indimail_tw.interfaces import IQueuedMessage
from indimail_tw.queue.envelope import Envelope


@implementer(IQueuedMessage)
@dataclass(frozen=True, eq=False)
class QueuedMessage:
    """A committed message.  Read ``path`` in a thread, never on the reactor."""

    id: str
    envelope: Envelope
    path: str            # the message file: the bytes received are [0, size)
    size: int
    queue: str = ""      # the name of the queue holding it, e.g. "queue3"
    #: The bytes of ``path`` while the queue keeps them in memory for the first
    #: deliveries (small messages just received), else None: read ``path``.
    data: bytes | None = field(default=None, repr=False)
    on_release: Callable[[int], None] | None = field(default=None, repr=False)

    def open(self) -> DataReader:
        """The message bytes as a raw binary file (blocking: call it in a thread)."""
        return open_data(self.path, self.size)

    def release_data(self) -> None:
        """Stop keeping the bytes in memory (later deliveries read ``path``)."""
        data = self.data
        if data is not None:
            object.__setattr__(self, "data", None)
            if self.on_release is not None:
                self.on_release(len(data))

    @property
    def birth(self) -> float:
        """When the message was accepted (Unix time): the retry schedule's origin."""
        return self.envelope.received_at


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
