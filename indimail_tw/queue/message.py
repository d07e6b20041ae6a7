"""What a delivery agent receives: a committed message (IQueuedMessage)."""

from __future__ import annotations

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
    path: str            # the message data file (exactly the bytes received)
    size: int
    queue: str = ""      # the name of the queue holding it, e.g. "queue3"
    #: The bytes of ``path`` while the queue keeps them in memory for the first
    #: deliveries (small messages just received), else None: read ``path``.
    data: bytes | None = field(default=None, repr=False)
    on_release: Callable[[int], None] | None = field(default=None, repr=False)

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
