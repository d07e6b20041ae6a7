"""The per-folder Maildir index shared by IMAP4 and POP3 (CONTRACT -- being implemented).

This file fixes the API the protocol packages code against.  Every method
blocks on disk I/O; the protocols call them through
:func:`indimail_tw.maildir.index.run` (a thread) when they may be slow
(first scan of a big folder, APPEND/COPY with fsync), directly otherwise.

One index per Maildir folder directory (the INBOX is the Maildir itself,
a Maildir++ folder is ``<Maildir>/.Name``), kept in that directory in
``indimail_tw-index.sqlite`` (SQLite, WAL): it is a cache of the Maildir plus
the facts a Maildir cannot hold (UIDs, UIDVALIDITY, modseqs, keywords, the
parsed-structure cache).  Deleting it loses no mail: the next open rebuilds it
with a new UIDVALIDITY.  Several processes (our servers, delivery agents,
other Maildir tools) may touch the folder at once: the Maildir is the truth,
file renames are atomic, index writes are SQLite transactions.

Flags live in the Maildir file name (``:2,`` info: D=\\Draft, F=\\Flagged,
P=$Forwarded, R=\\Answered, S=\\Seen, T=\\Deleted) so other Maildir readers
agree; keywords other than $Forwarded live in the index only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: IMAP system flag -> Maildir info letter.
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "$Forwarded": "P", "\\Answered": "R",
                "\\Seen": "S", "\\Deleted": "T"}


@dataclass(frozen=True)
class MessageRecord:
    uid: int
    key: str                    # Maildir unique part (file name before ":2,"; stable)
    path: str                   # current absolute path of the file
    size: int                   # octets as stored on disk
    rfc822_size: int            # octets with CRLF line endings (IMAP RFC822.SIZE, POP3 LIST)
    flags: frozenset            # IMAP flags and keywords, e.g. {"\\Seen", "$Junk"}; no \\Recent
    internaldate: float         # seconds since the epoch (file mtime at first index; APPEND date)
    modseq: int                 # CONDSTORE mod-sequence of the last change


@dataclass
class Changes:
    """What :meth:`FolderIndex.sync` found changed since the previous sync of this object."""

    added: list = field(default_factory=list)       # MessageRecord, ascending uid
    removed: list = field(default_factory=list)     # uids whose files vanished
    changed: list = field(default_factory=list)     # MessageRecord whose flags changed


class FolderIndex:
    """One folder's index.  Not thread-safe: one object per session/thread."""

    path: str                   # the folder directory
    uidvalidity: int
    uidnext: int
    highestmodseq: int

    @classmethod
    def open(cls, folder_dir: str, create: bool = False) -> FolderIndex:
        """Open (and sync) the index of ``folder_dir``; ``create`` makes a missing
        Maildir (cur/new/tmp).  Raises FileNotFoundError for a missing folder."""
        raise NotImplementedError

    def sync(self) -> Changes:
        """Bring the index up to date with the directory (cheap when new/ and cur/ are
        unchanged: it compares directory mtimes); assign UIDs to new files in
        ascending delivery order."""
        raise NotImplementedError

    def records(self) -> list[MessageRecord]:
        """Every message, ascending uid (as of the last sync)."""
        raise NotImplementedError

    def record(self, uid: int) -> MessageRecord | None:
        raise NotImplementedError

    def read(self, uid: int) -> bytes:
        """The message as stored (LF or CRLF line endings as on disk).  Raises
        FileNotFoundError when it vanished (expunged by another process)."""
        raise NotImplementedError

    def store_flags(self, uid: int, flags: frozenset, unchanged_since: int | None = None
                    ) -> MessageRecord | None:
        """Replace the flags (rename the file for system flags, keywords in the index);
        bump modseq.  None if the message is gone or its modseq > unchanged_since."""
        raise NotImplementedError

    def append(self, data: bytes, flags: frozenset = frozenset(),
               internaldate: float | None = None) -> MessageRecord:
        """Store a new message durably (tmp, fsync, rename into cur with flags, dir fsync),
        give it the next UID; internaldate sets the file mtime."""
        raise NotImplementedError

    def copy_to(self, uids: list[int], target: FolderIndex) -> list[tuple[int, int]]:
        """Copy messages keeping flags and internaldate (hard link when possible);
        returns (source uid, new uid) pairs for COPYUID."""
        raise NotImplementedError

    def expunge(self, uids: list[int]) -> list[int]:
        """Remove the messages' files; remember (uid, modseq) for QRESYNC VANISHED;
        returns the uids actually removed."""
        raise NotImplementedError

    def vanished_since(self, modseq: int) -> list[int]:
        """UIDs expunged after ``modseq`` (for QRESYNC)."""
        raise NotImplementedError

    def claim_recent(self) -> set[int]:
        """The uids this caller is the first to see (\\Recent): those at or above the
        index's recent mark; moves the mark to uidnext.  At most one session gets each."""
        raise NotImplementedError

    def cache_get(self, uid: int, key: str) -> bytes | None:
        """A cached blob for the message (e.g. key="structure"), or None."""
        raise NotImplementedError

    def cache_put(self, uid: int, key: str, blob: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
