"""Reading a queue without owning it: safe while the server runs.

Nothing here writes.  The server may commit, change and remove messages while
we read; a message whose ``mess/ID`` (or, for an old format-1 message, its
``info/ID``) disappears while it is being read has left the queue and is
skipped, never reported as an error.  A state log is read
as recovery reads it, so a line the server is appending right now is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from indimail_tw.queue import records
from indimail_tw.queue.envelope import Envelope
from indimail_tw.queue.states import BOUNCED, DONE, FAILED, LOCAL, PENDING, RecipientState
from indimail_tw.queue.store import QueueStore
from indimail_tw.queuetools.common import QueueDir


@dataclass
class Message:
    """A committed message as found on disk."""

    queue: str
    id: str
    envelope: Envelope
    size: int
    states: list[RecipientState]
    path: str                      # mess/ID: the message is its first ``size`` bytes

    @property
    def birth(self) -> float:
        return self.envelope.received_at


@dataclass
class Damaged:
    """A committed message that cannot be read (recovery will move it to corrupt/)."""

    queue: str
    id: str
    reason: str


@dataclass
class Counts:
    """What ``qmail-qread -c`` prints for one queue, or for all of them."""

    messages: int = 0
    uncommitted: int = 0           # files in tmp/: being received
    damaged: int = 0               # unreadable messages in mess/ + messages in corrupt/
    recipients: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((PENDING, DONE, FAILED, BOUNCED), 0))
    pending_local: int = 0
    pending_remote: int = 0

    def add(self, other: Counts) -> None:
        self.messages += other.messages
        self.uncommitted += other.uncommitted
        self.damaged += other.damaged
        for state, n in other.recipients.items():
            self.recipients[state] += n
        self.pending_local += other.pending_local
        self.pending_remote += other.pending_remote

    def count(self, message: Message, route: Callable[[str], str]) -> None:
        self.messages += 1
        for state in message.states:
            self.recipients[state.status] += 1
            if state.status == PENDING:
                if route(state.address) == LOCAL:
                    self.pending_local += 1
                else:
                    self.pending_remote += 1


class QueueReader:
    """The committed messages of one queue directory, read-only."""

    def __init__(self, queue: QueueDir) -> None:
        self.queue = queue
        self.store = QueueStore(queue.path)   # never opened: no lock, no recovery

    def ids(self) -> list[str]:
        """The committed ids (OSError if mess/ cannot be listed)."""
        return sorted(os.listdir(self.store.mess))

    def read(self, msg_id: str) -> Message | Damaged | None:
        """One message; None when it left the queue meanwhile."""
        store = self.store
        mess, info = store.mess_path(msg_id), os.path.join(store.info, msg_id)
        old = os.path.lexists(info)                # format 1: info/ID goes first
        try:
            stored = store.load(msg_id)
        except FileNotFoundError:
            return None
        except (records.CorruptRecord, OSError) as e:
            if not os.path.lexists(mess) or (old and not os.path.lexists(info)):
                return None                        # removed while we read it
            reason = (f"unreadable: {e.strerror}" if isinstance(e, OSError) and e.strerror
                      else str(e))
            return Damaged(self.queue.name, msg_id, reason)
        if not os.path.lexists(mess) or (stored.format == 1 and not os.path.lexists(info)):
            return None                            # finished while we read its states
        return Message(self.queue.name, msg_id, stored.envelope, stored.size, stored.states,
                       store.mess_path(msg_id))

    def messages(self, ids: list[str] | None = None) -> Iterator[Message | Damaged]:
        for msg_id in self.ids() if ids is None else ids:
            found = self.read(msg_id)
            if found is not None:
                yield found

    def uncommitted(self) -> int:
        """Files in tmp/: messages being received (or crash leftovers)."""
        try:
            return len(os.listdir(self.store.tmp))
        except FileNotFoundError:
            return 0

    def corrupt(self) -> int:
        """Messages recovery moved to corrupt/ (files ``ID.info``, ``ID.mess``, ...)."""
        try:
            names = os.listdir(self.store.corrupt)
        except FileNotFoundError:
            return 0
        return len({name.rpartition(".")[0] or name for name in names})

    def counts(self, route: Callable[[str], str]) -> Counts:
        counts = Counts()
        ids = self.ids()
        for found in self.messages(ids):
            if isinstance(found, Damaged):
                counts.damaged += 1
            else:
                counts.count(found, route)
        counts.uncommitted = self.uncommitted()
        counts.damaged += self.corrupt()
        return counts
