"""What a delivery agent receives: a committed message (IQueuedMessage).

The file at ``path`` holds more than the message: in the queue's format 2 the
envelope record follows the message bytes in the same file.  Every reader of
the message therefore reads bytes [0, ``size``) only: through
:func:`open_data` (or :meth:`QueuedMessage.open`), never with a plain ``open``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zope.interface import implementer

from indimail_tw.datafile import DataReader, open_data, read_data
from indimail_tw.interfaces import IQueuedMessage
from indimail_tw.queue.envelope import Envelope

__all__ = ["DataReader", "QueuedMessage", "open_data", "read_data"]


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
