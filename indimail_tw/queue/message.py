"""What a delivery agent receives: a committed message (IQueuedMessage)."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def birth(self) -> float:
        """When the message was accepted (Unix time): the retry schedule's origin."""
        return self.envelope.received_at
