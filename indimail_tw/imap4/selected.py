"""The selected mailbox as one IMAP session sees it (RFC 9051 7.5.1, RFC 7162 3.2.10).

The folder index (:class:`~indimail_tw.maildir.index.FolderIndex`) keeps the
flags and modseqs of the messages this session knows; this object adds what
IMAP needs on top: message sequence numbers that stay stable while an expunge
by someone else waits to be announced (no EXPUNGE during FETCH, STORE, SEARCH),
the session's \\Recent messages, and the untagged responses that tell the
client what changed (EXISTS, RECENT, FETCH FLAGS, EXPUNGE or VANISHED).

Memory: 4 bytes a message for the sequence map (``array('I')``) plus the
index's own view; flags are not duplicated here.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger

from indimail_tw.imap4 import wire
from indimail_tw.maildir.index import ScanNeeded

log = Logger()

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def uid_set(uids: Iterable[int]) -> bytes:
    """A compact sequence set (``1:3,7``) of sorted unique numbers."""
    out: list[bytes] = []
    start = prev = None
    for n in sorted(set(uids)):
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
        start = prev = n
    if start is not None:
        out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(out)


def order_flags(flags: Iterable[str]) -> list[str]:
    """System flags first, then keywords, each sorted (a stable, readable order)."""
    return sorted(flags, key=lambda f: (not f.startswith("\\"), f))


class BadSequence(Exception):
    """A message sequence number beyond the mailbox (RFC 9051 6.4: BAD)."""


class SelectedMailbox:
    """The session's view of its selected mailbox (see the module docstring)."""

    def __init__(self, index: Any, name: str, readonly: bool, session: Any) -> None:
        self.index = index
        self.name = name
        self.readonly = readonly
        self.session = session
        self.uids = index.uids()               # seq - 1 -> uid, expunged-but-unannounced kept
        self.gone: set[int] = set()            # expunged by others, not yet announced
        # EXAMINE sees \Recent without taking it from the next session (RFC 3501 6.3.2)
        self.recent: set[int] = index.peek_recent() if readonly else index.claim_recent()
        self.closed = False
        self.keywords: set[str] = set()        # announced in FLAGS
        session.searchres = set()              # RFC 5182: $ is empty after SELECT

    # -- helpers used by fetch/messages -----------------------------------------------

    @property
    def exists(self) -> int:
        return len(self.uids)

    @property
    def condstore(self) -> bool:
        enabled = getattr(self.session, "enabled", ())
        return "CONDSTORE" in enabled or "QRESYNC" in enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in getattr(self.session, "enabled", ())

    @property
    def rev2(self) -> bool:
        return bool(getattr(self.session, "rev2", False))

    def seq_of(self, uid: int) -> int:
        """The sequence number of ``uid`` (0 when not in the view)."""
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def largest_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def resolve(self, seqset: Any, uid: bool) -> list[tuple[int, int]]:
        """[(seq, uid)] the set names, ascending.  ``$`` is the saved SEARCH result;
        a sequence number beyond the mailbox raises :class:`BadSequence`."""
        uids = self.uids
        if getattr(seqset, "saved", False):
            saved = getattr(self.session, "searchres", None) or ()
            return [(s, u) for u in sorted(saved) if (s := self.seq_of(u))]
        if uid:
            out: list[tuple[int, int]] = []
            largest = self.largest_uid()
            if not uids:
                return out
            for lo, hi in _merge(seqset.bounds(largest)):
                i = bisect.bisect_left(uids, lo)
                j = bisect.bisect_right(uids, hi)
                out.extend((k + 1, uids[k]) for k in range(i, j))
            return out
        n = len(uids)
        if seqset.out_of_range(n):
            raise BadSequence("Invalid message sequence number")
        out = []
        for lo, hi in _merge(seqset.bounds(n)):
            out.extend((k, uids[k - 1]) for k in range(lo, hi + 1))
        return out

    def flags(self, uid: int) -> frozenset:
        """The message's flags as this session knows them, \\Recent included (rev1)."""
        flags = self.index.flags(uid) or frozenset()
        if uid in self.recent and not self.rev2:
            return flags | {"\\Recent"}
        return flags

    def fetch_flags_line(self, seq: int, uid: int, with_uid: bool = False) -> bytes:
        items = []
        if with_uid or self.condstore:        # RFC 7162 3.1: UID and MODSEQ
            items.append(b"UID %d" % uid)
        items.append(b"FLAGS " + wire.flags(order_flags(self.flags(uid))))
        if self.condstore:
            items.append(b"MODSEQ (%d)" % (self.index.modseq(uid) or 0))
        return wire.untagged(b"%d FETCH " % seq + wire.plist(items))

    # -- SELECT ----------------------------------------------------------------------------

    def _scan_flags(self) -> int | None:
        """Collect the keywords in use; return the first unseen sequence number.
        The index shares one frozenset among messages with the same flags, so each
        distinct set is looked at once."""
        summary = getattr(self.index, "flag_summary", None)
        if summary is not None and len(self.uids) == len(self.index):
            first, keywords = summary("\\Seen")  # same positions: uids is the view's copy
            self.keywords.update(keywords)
            return first + 1 if first >= 0 else None
        flags_of = self.index.flags
        done: set[int] = set()
        unseen = None
        keywords = self.keywords
        for seq, uid in enumerate(self.uids, 1):
            flags = flags_of(uid) or frozenset()
            if unseen is None and "\\Seen" not in flags:
                unseen = seq
            if id(flags) not in done:
                done.add(id(flags))
                keywords.update(f for f in flags if not f.startswith("\\"))
        return unseen

    def _flags_lines_with(self, keywords: set[str]) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS again, now with ``keywords`` (a STORE adds them)."""
        self.keywords |= keywords
        return self._flags_response()

    def _flags_response(self) -> list[bytes]:
        names = [*SYSTEM_FLAGS, *sorted(self.keywords)]
        permanent = [] if self.readonly else [*names, "\\*"]
        return [wire.untagged(b"FLAGS " + wire.flags(names)),
                wire.untagged_status("OK", "Flags permitted" if permanent else
                                     "No permanent flags permitted",
                                     b"PERMANENTFLAGS " + wire.flags(permanent))]

    def open_responses(self, qresync: Any = None) -> list[bytes]:
        """The untagged responses of SELECT/EXAMINE (the session adds the tagged OK)."""
        index = self.index
        out = [wire.untagged(b"%d EXISTS" % self.exists)]
        self.keywords = {"$Forwarded"}
        unseen = self._scan_flags()
        if not self.rev2:
            out.append(wire.untagged(b"%d RECENT" % len(self.recent)))
            if unseen is not None:
                out.append(wire.untagged_status("OK", f"First unseen: {unseen}",
                                                f"UNSEEN {unseen}"))
        out.append(wire.untagged_status("OK", "UIDs valid", f"UIDVALIDITY {index.uidvalidity}"))
        out.append(wire.untagged_status("OK", "Predicted next UID", f"UIDNEXT {index.uidnext}"))
        out += self._flags_response()
        if self.condstore:
            out.append(wire.untagged_status("OK", "Highest",
                                            f"HIGHESTMODSEQ {index.highestmodseq}"))
        if self.rev2:
            utf8 = bool(getattr(self.session, "utf8", False))
            sep = getattr(self.session, "separator", None) or _separator()
            out.append(wire.untagged(b"LIST () " + wire.quoted(sep.encode()) + b" "
                                     + wire.mailbox(self.name, utf8)))
        if qresync is not None and qresync.uidvalidity == index.uidvalidity:
            out += self._qresync_responses(qresync)
        return out

    def _qresync_responses(self, q: Any) -> list[bytes]:
        """RFC 7162 3.2.5: VANISHED (EARLIER) and the FETCH of what changed since q.modseq."""
        index = self.index
        out = []
        known = q.known_uids
        vanished = [u for u in index.vanished_since(q.modseq)
                    if known is None or known.contains(u, index.uidnext)]
        vanished = [u for u in vanished if not self.seq_of(u)]
        if vanished:
            out.append(wire.untagged(b"VANISHED (EARLIER) " + uid_set(vanished)))
        for seq, uid in enumerate(self.uids, 1):
            if (index.modseq(uid) or 0) > q.modseq:
                out.append(self.fetch_flags_line(seq, uid, with_uid=True))
        return out

    # -- updates -------------------------------------------------------------------------

    def changed(self) -> bool:
        """Cheap: might :meth:`poll` have something to say?"""
        if self.closed:
            return False
        try:
            return bool(self.gone) or self.index.changed_since_last_sync()
        except Exception:  # noqa: BLE001 -- a vanished folder: let poll find out
            return True

    def scan(self) -> None:
        """Blocking (a thread): the index records the directories' changes."""
        self.index.scan()

    def poll(self, expunge_allowed: bool, scan: bool = True) -> list[bytes]:
        """Sync the index and describe the changes (RFC 9051 7.5.1).  With ``scan``
        false, ScanNeeded is raised when the directories must be scanned first
        (:meth:`scan`, in a thread)."""
        if self.closed:
            return []
        out: list[bytes] = []
        try:
            changes = self.index.sync(scan=scan)
        except ScanNeeded:
            raise
        except Exception:  # noqa: BLE001 -- e.g. the folder was deleted under us
            return out
        finally:
            self._checkpoint_if_due()
        if changes.uidvalidity_changed:
            # The index was rebuilt under us (deleted or corrupt): every UID the client
            # holds is void.  End the session (the client resynchronizes on reconnect).
            self.closed = True
            if hasattr(self.session, "action"):
                self.session.action = "close"
            return [wire.untagged_status("BYE", "Mailbox UIDVALIDITY changed, reconnect",
                                         "UNAVAILABLE")]
        self.gone.update(u for u in changes.removed if self.seq_of(u))
        for rec in changes.changed:
            seq = self.seq_of(rec.uid)
            if seq and rec.uid not in self.gone:
                out.append(self.fetch_flags_line(seq, rec.uid))
                new = {f for f in rec.flags if not f.startswith("\\")} - self.keywords
                if new:
                    out = [*self._flags_lines_with(new), *out]
        if expunge_allowed and self.gone:
            out += self.announce_expunged(sorted(self.gone))
        added = [r.uid for r in changes.added if r.uid > self.largest_uid()]
        if added:
            self.uids.extend(added)
            self.recent.update(self.index.peek_recent() if self.readonly
                               else self.index.claim_recent())
            out.append(wire.untagged(b"%d EXISTS" % self.exists))
            if not self.rev2:
                out.append(wire.untagged(b"%d RECENT" % len(self.recent)))
            new = {f for r in changes.added for f in r.flags
                   if not f.startswith("\\")} - self.keywords
            if new:
                out = [*self._flags_lines_with(new), *out]
        return out

    def _checkpoint_if_due(self) -> None:
        """The index's commits on this (the reactor) thread grew its WAL: checkpoint
        it in a thread (SQLite's automatic checkpoint, with its fsyncs, is off).
        Here because every command on the mailbox ends with a poll."""
        index = self.index
        run = getattr(self.session, "run", None)
        if run is None or not getattr(index, "checkpoint_due", False):
            return
        from indimail_tw.maildir.index import checkpoint_wal

        if index.take_checkpoint_due():
            run(checkpoint_wal, index.path).addErrback(
                lambda f: log.failure("index checkpoint of {path} failed", f, path=index.path))

    def announce_expunged(self, uids: list[int]) -> list[bytes]:
        """Drop ``uids`` from the view: ``* n EXPUNGE`` lines (ascending, each number as
        it is after the previous ones), or one ``* VANISHED`` with QRESYNC."""
        present = [u for u in uids if self.seq_of(u)]
        for u in uids:
            self.gone.discard(u)
            self.recent.discard(u)
        if not present:
            return []
        if self.qresync:
            lines = [wire.untagged(b"VANISHED " + uid_set(present))]
        else:
            lines = []
            for removed, uid in enumerate(present):
                lines.append(wire.untagged(b"%d EXPUNGE" % (self.seq_of(uid) - removed)))
        drop = set(present)
        self.uids = array("I", (u for u in self.uids if u not in drop))
        searchres = getattr(self.session, "searchres", None)
        if searchres:
            searchres.difference_update(drop)
        return lines

    def close_silently(self) -> None:
        """Forget the selection (CLOSE, UNSELECT, another SELECT, logout).  The index
        is closed in a thread: closing the last SQLite connection to a folder
        checkpoints its log, with fsyncs."""
        if self.closed:
            return
        self.closed = True
        run = getattr(self.session, "run", None)
        if run is None:
            self.index.close()
            return
        d = run(self.index.close)
        d.addErrback(lambda f: log.failure("closing the index of {folder}", f,
                                           folder=self.name))


def _merge(bounds: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(bounds):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _separator() -> str:
    try:
        from indimail_tw.maildir.folders import SEPARATOR
    except ImportError:  # pragma: no cover
        return "."
    return SEPARATOR
