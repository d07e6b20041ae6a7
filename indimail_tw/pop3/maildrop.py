"""The POP3 maildrop: the lock, the snapshot of the INBOX at login, and the UPDATE state.

Every method here blocks (file system and the folder index); the session calls
them through a thread runner.

The lock (RFC 1939 section 8 asks for an exclusive-access lock on the
maildrop): ``<Maildir>/indimail_tw-pop3.lock`` locked with ``flock(2)``
``LOCK_EX | LOCK_NB`` for the whole session.  ``flock`` locks belong to the open
file description, so two sessions conflict whether they run in one process
(threads, the reactor) or in several (``--workers``, a second server); the
kernel drops the lock when the process dies, so a crash leaves no stale lock.
A second session gets :class:`MaildropLocked` (``-ERR [IN-USE]``), as Dovecot
does with ``pop3_lock_session = yes``.  IMAP sessions do not take this lock:
they may expunge messages meanwhile, which POP3 sees as vanished messages.

The snapshot: the INBOX's messages in ascending UID order at login, numbered
1..n; mail that arrives later is not shown until the next session.

UIDL (RFC 1939 section 7): ``%08X%08X`` of the index UID and the folder's
UIDVALIDITY, upper-case hex, 16 characters -- Dovecot's ``%08Xu%08Xv``.  The
UID is the IMAP UID of the same message, so the two protocols agree, and a
rebuilt index (new UIDVALIDITY) changes every UIDL, which makes clients that
keep mail on the server fetch it once more rather than miss any.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from typing import BinaryIO

from indimail_tw.maildir.index import FolderIndex

LOCK_NAME = "indimail_tw-pop3.lock"


class MaildropLocked(Exception):
    """Another POP3 session holds this maildrop."""


class MessageGone(Exception):
    """The message was removed by someone else (an IMAP expunge, another tool)."""


@dataclass
class Message:
    """One message of the snapshot."""

    uid: int
    size: int                  # RFC 822 size (CRLF line endings): LIST, STAT, RETR's +OK
    path: str                  # where the file was at the last look
    deleted: bool = False      # DELE'd in this session


def uidl(uid: int, uidvalidity: int) -> str:
    return f"{uid:08X}{uidvalidity:08X}"


class Maildrop:
    """The locked INBOX of one session (see the module docstring)."""

    def __init__(self, maildir: str, index: FolderIndex, lock_fd: int) -> None:
        self.maildir = maildir
        self.index = index
        self.uidvalidity = index.uidvalidity
        self._lock_fd: int | None = lock_fd
        self.messages = [Message(r.uid, r.rfc822_size, r.path) for r in index.records()]

    @classmethod
    def open(cls, maildir: str) -> Maildrop:
        """Lock and snapshot ``maildir`` (created when missing).  Raises MaildropLocked."""
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(maildir, sub), mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(maildir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MaildropLocked(maildir) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            index = FolderIndex.open(maildir, create=True)
        except BaseException:
            _unlock(fd)
            raise
        try:
            return cls(maildir, index, fd)
        except BaseException:
            index.close()
            _unlock(fd)
            raise

    def uidl(self, message: Message) -> str:
        return uidl(message.uid, self.uidvalidity)

    def open_message(self, message: Message) -> BinaryIO:
        """The message's file, opened for reading; MessageGone when it vanished.

        Another session may have renamed the file (flags changed by IMAP): then
        the index is synced and the file is looked for under its new name.
        """
        try:
            return open(message.path, "rb", buffering=0)  # noqa: SIM115 -- the caller closes it
        except FileNotFoundError:
            pass
        self.index.sync()
        record = self.index.record(message.uid)
        if record is None:
            raise MessageGone(message.uid)
        message.path = record.path
        try:
            return open(record.path, "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            raise MessageGone(message.uid) from None

    def expunge(self) -> tuple[int, int]:
        """UPDATE state: remove the DELE'd messages; (asked, removed).  Messages someone
        else removed already count as removed."""
        uids = [m.uid for m in self.messages if m.deleted]
        if not uids:
            return 0, 0
        self.index.sync()
        present = {uid for uid in uids if self.index.record(uid) is not None}
        removed = set(self.index.expunge(sorted(present))) if present else set()
        return len(uids), len(uids) - len(present - removed)

    def finish(self) -> tuple[int, int]:
        """QUIT: :meth:`expunge`, then :meth:`close` whatever happened, so the lock is free
        before the client reads ``+OK`` (a client that reconnects at once is not IN-USE)."""
        try:
            return self.expunge()
        finally:
            self.close()

    def close(self) -> None:
        """Close the index and release the lock (idempotent)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            self.index.close()
        finally:
            _unlock(fd)


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
