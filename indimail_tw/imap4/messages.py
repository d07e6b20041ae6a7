"""The message commands of an IMAP session: FETCH, STORE, SEARCH, COPY, MOVE,
EXPUNGE, APPEND, CLOSE, UNSELECT, CHECK (RFC 9051 6.3-6.4, RFC 3501, with
UIDPLUS 4315, MOVE 6851, CONDSTORE/QRESYNC 7162, ESEARCH 4731, SEARCHRES 5182,
BINARY 3516, APPENDLIMIT 7889).

:class:`MessageCommands` is a mixin of the session
(:class:`~indimail_tw.imap4.session.IMAPSession`), which checks the state,
parses the arguments (:mod:`~indimail_tw.imap4.grammar`) and adds the
selected mailbox's pending updates before each tagged reply.  Every handler
returns the response lines (the tagged one last) or a Deferred of them;
blocking work (reading many files, APPEND, COPY, EXPUNGE with their fsyncs)
runs in a thread through ``self.run``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from indimail_tw.imap4 import fetch, grammar, search, wire
from indimail_tw.imap4.selected import BadSequence, uid_set

log = Logger()

#: Search inline (no thread) when keys need no message text, or for this few messages.
INLINE_SEARCH = 50
#: EXPUNGE of at most this many messages runs inline (unlinks and one index commit,
#: no fsync); more go to a thread (and fsync their directories).
INLINE_EXPUNGE = 32


def _tagged(tag: bytes, status: str, text: str, code: str | bytes | None = None) -> bytes:
    return wire.tagged(tag, status, text, code)


def _has_modseq(key: Any) -> bool:
    from indimail_tw.imap4.grammar import And, ModSeqKey, Not, Or

    if isinstance(key, ModSeqKey):
        return True
    if isinstance(key, And):
        return any(_has_modseq(k) for k in key.keys)
    if isinstance(key, Or):
        return _has_modseq(key.left) or _has_modseq(key.right)
    if isinstance(key, Not):
        return _has_modseq(key.key)
    return False


_INDEX_KEYS = (grammar.All, grammar.FlagKey, grammar.RecentKey, grammar.SeqKey,
               grammar.ModSeqKey)


def _index_only(key: Any) -> bool:
    """Whether the key tree needs nothing but flags, numbers, \\Recent and modseq."""
    if isinstance(key, grammar.And):
        return all(_index_only(k) for k in key.keys)
    if isinstance(key, grammar.Or):
        return _index_only(key.left) and _index_only(key.right)
    if isinstance(key, grammar.Not):
        return _index_only(key.key)
    return isinstance(key, _INDEX_KEYS)


class IndexedMessage:
    """What SEARCH needs of a message when its keys are all index data."""

    __slots__ = ("seq", "uid", "flags", "recent", "modseq", "largest_seq", "largest_uid")

    def __init__(self, seq: int, uid: int, flags: frozenset, recent: bool, modseq: int,
                 largest_seq: int, largest_uid: int) -> None:
        self.seq, self.uid, self.flags, self.recent = seq, uid, flags, recent
        self.modseq, self.largest_seq, self.largest_uid = modseq, largest_seq, largest_uid


def _folder_path(folders: Any, name: str) -> str | None:
    """The absolute directory of folder ``name``, None when it has none."""
    try:
        return os.path.abspath(folders.path(name))
    except Exception:  # noqa: BLE001 -- a bad name: open_index reports it
        return None


class MessageCommands:
    """Message commands (mixed into the IMAP session; see the module docstring)."""

    searchres: set | None = None

    # -- helpers -------------------------------------------------------------------------

    def _run(self, fn, *args):
        run = getattr(self, "run", None)
        if run is None:
            return defer.maybeDeferred(fn, *args)
        return run(fn, *args)

    def _failed(self, failure, tag: bytes, what: str) -> list[bytes]:
        log.failure("IMAP {what} failed", failure, what=what)
        return [_tagged(tag, "NO", f"{what} failed: internal error", "SERVERBUG")]

    def _deselect(self) -> None:
        end = getattr(self, "_end_selection", None)
        if end is not None:
            end()
            return
        selected, self.selected = self.selected, None
        if selected is not None:
            selected.close_silently()

    # -- FETCH -----------------------------------------------------------------------------

    def do_fetch(self, tag: bytes, args: Any):
        try:
            result = fetch.do_fetch(self, tag, args)
        except Exception:  # noqa: BLE001 -- the session answers NO, the log tells why
            return self._failed(defer.Failure(), tag, "FETCH")
        if isinstance(result, defer.Deferred):
            return result.addErrback(self._failed, tag, "FETCH")
        return result

    # -- STORE -----------------------------------------------------------------------------

    def do_store(self, tag: bytes, args: Any):
        sel = self.selected
        if sel.readonly:
            return [_tagged(tag, "NO", "Mailbox is read-only", "READ-ONLY")]
        try:
            msgs = sel.resolve(args.seqset, args.uid)
        except BadSequence as e:
            return [_tagged(tag, "BAD", str(e))]
        if "\\Recent" in args.flags:
            return [_tagged(tag, "BAD", "\\Recent cannot be stored")]
        if args.unchangedsince is not None:
            self.enabled.add("CONDSTORE")
        index = sel.index
        condstore = sel.condstore
        given = frozenset(args.flags)
        lines: list[bytes] = []
        modified: list[int] = []
        new_keywords = {f for f in given if not f.startswith("\\")} - sel.keywords
        if new_keywords and args.mode != "-":
            lines += sel._flags_lines_with(new_keywords)
        plan: list[tuple[int, int, bool]] = []          # (seq, uid, store it)
        updates: list[tuple[int, frozenset]] = []
        for seq, uid in msgs:
            if uid in sel.gone:
                continue
            current = index.flags(uid)
            if current is None:
                continue
            if args.unchangedsince is not None and (index.modseq(uid) or 0) > args.unchangedsince:
                modified.append(uid if args.uid else seq)
                continue
            if args.mode == "+":
                wanted = current | given
            elif args.mode == "-":
                wanted = current - given
            else:
                wanted = given
            plan.append((seq, uid, wanted != current))
            if wanted != current:
                updates.append((uid, frozenset(wanted)))
        results = iter(index.store_many(updates, args.unchangedsince) if updates else ())
        for seq, uid, stored in plan:
            if stored and next(results) is None:
                if args.unchangedsince is not None and index.flags(uid) is not None:
                    modified.append(uid if args.uid else seq)
                continue
            items: list[bytes] = []
            if args.uid or (condstore and (stored or not args.silent)):
                items.append(b"UID %d" % uid)
            if not args.silent:
                items.append(b"FLAGS " + fetch.flag_list(sel.flags(uid)))
            if condstore and (stored or not args.silent):
                items.append(b"MODSEQ (%d)" % (index.modseq(uid) or 0))
            if not args.silent or (condstore and stored):
                lines.append(wire.untagged(b"%d FETCH " % seq + wire.plist(items)))
        if modified:
            code = b"MODIFIED " + uid_set(modified)         # sorted, as a set
            lines.append(_tagged(tag, "OK", "Conditional STORE failed", code))
        else:
            lines.append(_tagged(tag, "OK", "Store completed"))
        return lines

    # -- SEARCH ----------------------------------------------------------------------------

    def do_search(self, tag: bytes, args: Any):
        sel = self.selected
        uses_modseq = _has_modseq(args.key)
        if uses_modseq:
            self.enabled.add("CONDSTORE")
        index = sel.index
        gone = sel.gone
        largest_seq, largest_uid = sel.exists, sel.largest_uid()
        recent = sel.recent
        rev2 = self.rev2
        saved = self.searchres or set()
        if _index_only(args.key):
            # flags, \Recent, numbers and modseq are in the index's arrays: no record
            # per message (big folders, RFC 9051 SEARCH of flags is the common case)
            found = []
            for seq, uid in enumerate(sel.uids, 1):
                if uid in gone:
                    continue
                msg = IndexedMessage(seq, uid, index.flags(uid) or frozenset(),
                                     uid in recent and not rev2, index.modseq(uid) or 0,
                                     largest_seq, largest_uid)
                if search.matches(args.key, msg, saved):
                    found.append((seq, uid, msg.modseq))
            return self._search_reply(found, tag, args, uses_modseq)
        records = index.records()
        entries = []
        for rec in records:
            if rec.uid in gone:
                continue
            seq = sel.seq_of(rec.uid)
            if seq:
                entries.append((seq, rec))

        def evaluate(may_read: bool) -> list[tuple[int, int, int]]:
            out = []
            for seq, rec in entries:
                msg = fetch.StoredMessage(seq, rec, rec.uid in recent and not rev2,
                                          largest_seq, largest_uid, may_read)
                if search.matches(args.key, msg, saved):
                    out.append((seq, rec.uid, rec.modseq))
            return out

        try:
            try:
                found = evaluate(len(entries) <= INLINE_SEARCH)
            except fetch.NeedsContent:
                return self._run(evaluate, True).addCallback(
                    self._search_reply, tag, args, uses_modseq).addErrback(
                    self._failed, tag, "SEARCH")
            return self._search_reply(found, tag, args, uses_modseq)
        except Exception:  # noqa: BLE001
            return self._failed(defer.Failure(), tag, "SEARCH")

    def _search_reply(self, found: list[tuple[int, int, int]], tag: bytes, args: Any,
                      uses_modseq: bool) -> list[bytes]:
        opts = args.return_opts
        if opts is None and self.rev2:
            opts = ("ALL",)
        numbers = [u if args.uid else s for s, u, _m in found]
        lines = []
        if opts is None:
            text = b"SEARCH"
            if numbers:
                text += b" " + b" ".join(b"%d" % n for n in numbers)
                if uses_modseq:
                    text += b" (MODSEQ %d)" % max(m for _s, _u, m in found)
            lines.append(wire.untagged(text))
            lines.append(_tagged(tag, "OK", "Search completed"))
            return lines
        chosen = found
        if "ALL" not in opts and "COUNT" not in opts and ("MIN" in opts or "MAX" in opts):
            chosen = []
            if found:
                if "MIN" in opts:
                    chosen.append(found[0])
                if "MAX" in opts and found[-1] is not (chosen[0] if chosen else None):
                    chosen.append(found[-1])
        if "SAVE" in opts:
            self.searchres = {u for _s, u, _m in chosen}
        if opts != ("SAVE",):
            text = b"ESEARCH (TAG " + wire.quoted(tag) + b")"
            if args.uid:
                text += b" UID"
            if numbers and "MIN" in opts:
                text += b" MIN %d" % min(numbers)
            if numbers and "MAX" in opts:
                text += b" MAX %d" % max(numbers)
            if "COUNT" in opts:
                text += b" COUNT %d" % len(numbers)
            if numbers and "ALL" in opts:
                text += b" ALL " + uid_set(numbers)
            if uses_modseq and chosen:
                text += b" MODSEQ %d" % max(m for _s, _u, m in chosen)
            lines.append(wire.untagged(text))
        lines.append(_tagged(tag, "OK", "Search completed"))
        return lines

    # -- COPY and MOVE ---------------------------------------------------------------------

    def do_copy(self, tag: bytes, args: Any):
        return self._copy(tag, args, move=False)

    def do_move(self, tag: bytes, args: Any):
        return self._copy(tag, args, move=True)

    def _copy(self, tag: bytes, args: Any, move: bool):
        from indimail_tw.maildir.folders import FolderError, NoSuchFolder

        sel = self.selected
        what = "MOVE" if move else "COPY"
        if move and sel.readonly:
            return [_tagged(tag, "NO", "Mailbox is read-only", "READ-ONLY")]
        try:
            msgs = sel.resolve(args.seqset, args.uid)
        except BadSequence as e:
            return [_tagged(tag, "BAD", str(e))]
        uids = [u for _s, u in msgs if u not in sel.gone]
        missing = len(uids) != len(msgs)
        if not uids:
            if missing:
                return [_tagged(tag, "NO", "Some of the requested messages no longer exist",
                                "EXPUNGEISSUED")]
            return [_tagged(tag, "OK", f"{what} completed")]
        index = sel.index
        size = sum(r.size for r in index.records(uids))
        over = self.quota_check(size) if hasattr(self, "quota_check") else None
        if over:
            return [_tagged(tag, "NO", over, "OVERQUOTA")]
        folders = self.folders

        def work():
            target = folders.open_index(args.mailbox)
            try:
                pairs = index.copy_to(uids, target)
                validity = target.uidvalidity
            finally:
                target.close()
            removed = index.expunge([s for s, _d in pairs]) if move else []
            return validity, pairs, removed

        def done(result) -> list[bytes]:
            validity, pairs, removed = result
            if not pairs:
                return [_tagged(tag, "NO", "Some of the requested messages no longer exist",
                                "EXPUNGEISSUED")]
            code = b"COPYUID %d %s %s" % (validity, uid_set(s for s, _d in pairs),
                                           uid_set(d for _s, d in pairs))
            if not move:
                return [_tagged(tag, "OK", "Copy completed", code)]
            lines = [wire.untagged_status("OK", "Moved", code)]
            lines += sel.announce_expunged(sorted(removed))
            lines.append(_tagged(tag, "OK", "Move completed"))
            return lines

        def failed(failure) -> list[bytes]:
            if failure.check(NoSuchFolder):
                return [_tagged(tag, "NO", "Mailbox doesn't exist", "TRYCREATE")]
            if failure.check(FolderError):
                return [_tagged(tag, "NO", failure.value.text, failure.value.code)]
            return self._failed(failure, tag, what)

        return self._run(work).addCallbacks(done, failed)

    # -- EXPUNGE ---------------------------------------------------------------------------

    def do_expunge(self, tag: bytes, args: Any):
        sel = self.selected
        if sel.readonly:
            return [_tagged(tag, "NO", "Mailbox is read-only", "READ-ONLY")]
        lines = sel.poll(True)              # fresh flags; other sessions' expunges first
        index = sel.index
        if getattr(args, "seqset", None) is not None:
            try:
                candidates = [u for _s, u in sel.resolve(args.seqset, True)]
            except BadSequence as e:
                return [*lines, _tagged(tag, "BAD", str(e))]
        elif hasattr(index, "uids_with"):       # no step per message of the folder
            candidates = [u for u in index.uids_with("\\Deleted") if sel.seq_of(u)]
        else:
            candidates = list(sel.uids)
        doomed = [u for u in candidates if "\\Deleted" in (index.flags(u) or ())]
        if not doomed:
            return [*lines, _tagged(tag, "OK", "Expunge completed")]

        def done(removed: list[int]) -> list[bytes]:
            return [*lines, *sel.announce_expunged(sorted(removed)),
                    _tagged(tag, "OK", "Expunge completed")]

        inline = getattr(index, "expunge_unsynced", None)
        if inline is not None and len(doomed) <= INLINE_EXPUNGE:
            # A few unlinks and one commit, no fsync (see expunge_unsynced): here,
            # as STORE does its renames, instead of a trip to a thread and back.
            try:
                removed, size = inline(doomed)
            except Exception:  # noqa: BLE001 -- the session answers NO, the log tells why
                return self._failed(defer.Failure(), tag, "EXPUNGE")
            if removed:
                self._record_usage(index.path, -size, -len(removed))
            return done(removed)
        return self._run(index.expunge, doomed).addCallbacks(
            done, self._failed, errbackArgs=(tag, "EXPUNGE"))

    def _record_usage(self, folder: str, size: int, count: int) -> None:
        """The quota file's line for a change made on this thread: written (with its
        fsync) in a thread, not waited for; nothing to do without a quota file."""
        from indimail_tw.maildir import index as mindex

        if mindex.usage_file(folder) is None:
            return
        self._run(mindex.record_usage, folder, size, count).addErrback(
            lambda f: log.failure("quota usage update of {folder} failed", f, folder=folder))

    # -- APPEND ----------------------------------------------------------------------------

    def do_append(self, tag: bytes, args: Any):
        from indimail_tw.maildir.folders import FolderError, NoSuchFolder

        data = args.data
        folders = self.folders
        if not data:
            return [_tagged(tag, "NO", "Can't save a zero-length message")]
        limit = getattr(folders, "append_limit", 0) or 0
        if limit and len(data) > limit:
            return [_tagged(tag, "NO", "Message too large", "TOOBIG")]
        over = self.quota_check(len(data)) if hasattr(self, "quota_check") else None
        if over:
            return [_tagged(tag, "NO", over, "OVERQUOTA")]
        if not args.binary and b"\r" in data:
            # Maildir files hold LF line ends, as qmail-local and other tools write them;
            # every size and offset IMAP shows is on the CRLF form anyway.
            data = data.replace(b"\r\n", b"\n")
        flags = frozenset(f for f in args.flags if f != "\\Recent")
        date = args.date

        sel = getattr(self, "selected", None)
        own = getattr(sel.index, "path", None) if sel is not None else None

        def work():
            # Into the selected mailbox: through its own index (no second connection
            # whose commit would make the session's next poll rescan the folder).
            if own is not None and not sel.closed and own == _folder_path(folders,
                                                                          args.mailbox):
                # \Recent in this session, claimed with the UID (no write at the poll)
                rec = sel.index.append(data, flags, date, claim_recent=not sel.readonly)
                return sel.index.uidvalidity, rec.uid
            target = folders.open_index(args.mailbox)
            try:
                rec = target.append(data, flags, date)
                return target.uidvalidity, rec.uid
            finally:
                target.close()

        def done(result) -> list[bytes]:
            validity, uid = result
            return [_tagged(tag, "OK", "Append completed", f"APPENDUID {validity} {uid}")]

        def failed(failure) -> list[bytes]:
            if failure.check(NoSuchFolder):
                return [_tagged(tag, "NO", "Mailbox doesn't exist", "TRYCREATE")]
            if failure.check(FolderError):
                return [_tagged(tag, "NO", failure.value.text, failure.value.code)]
            if failure.check(OSError) and getattr(failure.value, "errno", None) in (28, 122):
                return [_tagged(tag, "NO", "Not enough disk space", "OVERQUOTA")]
            return self._failed(failure, tag, "APPEND")

        return self._run(work).addCallbacks(done, failed)

    # -- CLOSE, UNSELECT, CHECK ------------------------------------------------------------

    def do_close(self, tag: bytes, args: Any = None):
        sel = self.selected
        if sel is None or sel.readonly:
            self._deselect()
            return [_tagged(tag, "OK", "Close completed")]
        index = sel.index
        self.selected = None                 # no untagged responses from here on

        def work():
            with contextlib.suppress(Exception):  # else expunge what this view knows
                index.sync()
            doomed = [u for u in index.uids() if "\\Deleted" in (index.flags(u) or ())]
            if doomed:
                index.expunge(doomed)

        def done(_result) -> list[bytes]:
            self.selected = sel
            self._deselect()
            return [_tagged(tag, "OK", "Close completed")]

        def failed(failure) -> list[bytes]:
            self.selected = sel
            self._deselect()
            return self._failed(failure, tag, "CLOSE")

        return self._run(work).addCallbacks(done, failed)

    def do_unselect(self, tag: bytes, args: Any = None):
        self._deselect()
        return [_tagged(tag, "OK", "Unselect completed")]

    def do_check(self, tag: bytes, args: Any = None):
        return [_tagged(tag, "OK", "Check completed")]
