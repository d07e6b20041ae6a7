"""FETCH and UID FETCH (RFC 9051 6.4.5 and 7.5.2, RFC 3516 BINARY, RFC 7162).

Items are answered in the order requested.  FLAGS, UID, INTERNALDATE,
RFC822.SIZE and MODSEQ come from the index; ENVELOPE, BODY and BODYSTRUCTURE
from the structure cached in the index (parsed from the file the first
time); only body sections read the message file.  File reads and parses run
in a thread (``session.run``) unless the request is small.

Also here: :class:`StoredMessage`, the :class:`~indimail_tw.imap4.search.SearchMessage`
that SEARCH evaluates, loading the file only when a key needs its text.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from indimail_tw.imap4 import mime, wire

CACHE_KEY = "structure"
#: Read inline (no thread) when a request needs at most this many files / octets.
INLINE_FILES = 4
INLINE_OCTETS = 256 * 1024
#: One thread job reads at most this many files / octets.
BATCH_FILES = 200
BATCH_OCTETS = 16 * 1024 * 1024

_STRUCTURE_ITEMS = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE"})
_CONTENT_ITEMS = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT", "BODY[]", "BINARY[]",
                            "BINARY.SIZE[]"})
_VIEW_AND_STRUCTURE = frozenset({"UID", "FLAGS", "MODSEQ", "ENVELOPE", "BODY",
                                 "BODYSTRUCTURE"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def internaldate(when: float) -> bytes:
    """``"17-Jul-1996 02:44:25 -0700"`` in the server's local time zone."""
    t = time.localtime(when)
    off = t.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (f'"{t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year:04d} '
            f'{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"'
            ).encode("ascii")


def load_message(path: str) -> bytes:
    with open(path, "rb") as f:
        return mime.normalise(f.read())


class Loaded:
    """One message's content for FETCH: CRLF data (or None), its tree, and the
    rendered structure items from the cache (or None)."""

    __slots__ = ("data", "_root", "fresh", "pre")

    def __init__(self, data: bytes | None, root: mime.Part | None, fresh: bool = False,
                 pre: mime.Structure | None = None):
        self.data = data
        self._root = root
        self.fresh = fresh          # parsed now: put into the cache
        self.pre = pre

    @property
    def root(self) -> mime.Part:
        if self._root is None:
            try:
                self._root = self.pre.root
            except (AttributeError, ValueError, TypeError, IndexError, KeyError):
                # a damaged cache entry: parse again (and cache the new tree)
                self._root = mime.parse(self.data or b"")
                self.fresh = self.data is not None
        return self._root


def _read_batch(jobs: list[tuple[int, str, mime.Structure | None, bool, bool]]
                ) -> dict[int, Loaded]:
    """In a thread: read (and parse when needed) the files of ``jobs``
    [(uid, path, cached structure, need data, need tree)]; a vanished file is
    left out."""
    out: dict[int, Loaded] = {}
    for uid, path, pre, need_data, need_tree in jobs:
        try:
            data = load_message(path)
        except OSError:
            continue
        out[uid] = _loaded(data, pre, need_data, need_tree)
    return out


def _loaded(data: bytes, pre: mime.Structure | None, need_data: bool,
            need_tree: bool) -> Loaded:
    if pre is None and need_tree:
        return Loaded(data if need_data else None, mime.parse(data), True)
    # BODY[] and the like need no tree: none is parsed (nor cached) for them; a
    # BINARY[] that wants one after all parses it from the data when asked
    return Loaded(data if need_data else None, None, False, pre)


class FetchPlan:
    """What a FETCH needs and how to answer it for one message."""

    def __init__(self, sel: Any, args: Any) -> None:
        self.sel = sel
        items = list(args.items)
        names = [i.name for i in items]
        if args.uid and "UID" not in names:
            items.insert(0, _item("UID"))
        if args.changedsince is not None and "MODSEQ" not in names:
            items.append(_item("MODSEQ"))
        self.items = items
        self.uid_mode = args.uid
        self.need_content = any(i.name in _CONTENT_ITEMS for i in items)
        self.need_tree = any(i.name in _STRUCTURE_ITEMS or (
            i.section is not None and (i.section.part or i.section.text in (
                "HEADER.FIELDS", "HEADER.FIELDS.NOT", "MIME"))) for i in items)
        self.sets_seen = (not sel.readonly
                          and any(getattr(i, "sets_seen", False) for i in items))
        self.has_flags = "FLAGS" in names
        self.has_modseq = "MODSEQ" in [i.name for i in items]
        self.has_uid = "UID" in [i.name for i in items]
        # FETCH 1:* (UID FLAGS) on a big folder: the index's view is enough
        self.binary = any(i.name in ("BINARY[]", "BINARY.SIZE[]") for i in items)
        self.view_only = all(i.name in ("UID", "FLAGS", "MODSEQ") for i in items)
        # only the view and the cached structure: no index row is read per message
        self.view_and_structure = all(i.name in _VIEW_AND_STRUCTURE for i in items)
        self.utf8 = bool(getattr(sel.session, "utf8", False))


def _item(name: str) -> Any:
    from indimail_tw.imap4.grammar import FetchItem
    return FetchItem(name)


def render(plan: FetchPlan, seq: int, rec: Any, loaded: Loaded | None,
           flags: frozenset, flags_changed: bool) -> bytes:
    """The ``* n FETCH (...)`` line of one message."""
    sel = plan.sel
    out: list[bytes] = []
    utf8 = plan.utf8
    for item in plan.items:
        name = item.name
        if name == "UID":
            out.append(b"UID %d" % rec.uid)
        elif name == "FLAGS":
            out.append(b"FLAGS " + flag_list(flags))
        elif name == "INTERNALDATE":
            out.append(b"INTERNALDATE " + internaldate(rec.internaldate))
        elif name == "RFC822.SIZE":
            size = rec.rfc822_size if loaded is None or loaded.data is None \
                else len(loaded.data)
            out.append(b"RFC822.SIZE %d" % size)
        elif name == "MODSEQ":
            out.append(b"MODSEQ (%d)" % rec.modseq)
        elif name == "ENVELOPE":
            pre = None if utf8 else loaded.pre
            out.append(b"ENVELOPE " + (pre.envelope if pre else mime.envelope(loaded.root, utf8)))
        elif name == "BODY":
            pre = None if utf8 else loaded.pre
            out.append(b"BODY " + (pre.body if pre else
                                   mime.bodystructure(loaded.root, False, utf8)))
        elif name == "BODYSTRUCTURE":
            pre = None if utf8 else loaded.pre
            out.append(b"BODYSTRUCTURE " + (pre.bodystructure if pre else
                                            mime.bodystructure(loaded.root, True, utf8)))
        elif name == "RFC822":
            out.append(b"RFC822 " + wire.literal(loaded.data))
        elif name in ("RFC822.HEADER", "RFC822.TEXT"):
            data = loaded.data
            hend, body = mime.header_end(data, 0, len(data))
            part = data[:hend] if name == "RFC822.HEADER" else data[body:]
            out.append(name.encode() + b" " + _string(part))
        elif name == "BODY[]":
            out.append(item.response_name() + b" " + _section(item, loaded))
        elif name in ("BINARY[]", "BINARY.SIZE[]"):
            content = mime.binary(loaded.data, loaded.root, item.section.part)
            if name == "BINARY.SIZE[]":
                out.append(item.response_name() + b" %d" % (len(content or b"")))
            elif content is None:
                out.append(item.response_name() + b" NIL")
            else:
                content = _partial(content, item.partial)
                out.append(item.response_name() + b" " + _literal8(content))
    if flags_changed:
        # RFC 7162 3.1: after CONDSTORE, a FETCH caused by a flag change carries UID
        # and MODSEQ too.
        if sel.condstore and not plan.has_uid:
            out.insert(0, b"UID %d" % rec.uid)
        if not plan.has_flags:
            out.append(b"FLAGS " + flag_list(flags))
        if sel.condstore and not plan.has_modseq:
            out.append(b"MODSEQ (%d)" % rec.modseq)
    return wire.untagged(b"%d FETCH " % seq + wire.plist(out))


def _order(flags: frozenset) -> list[str]:
    from indimail_tw.imap4.selected import order_flags
    return order_flags(flags)


_FLAG_LISTS: dict[frozenset, bytes] = {}


def flag_list(flags: frozenset) -> bytes:
    """``(\\Seen $Work)`` for a flag set; the few distinct sets are rendered once."""
    out = _FLAG_LISTS.get(flags)
    if out is None:
        out = wire.flags(_order(flags))
        if len(_FLAG_LISTS) < 4096:
            _FLAG_LISTS[flags] = out
    return out


def _partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    start, length = partial
    return data[start:start + length]


def _section(item: Any, loaded: Loaded) -> bytes:
    data = loaded.data
    sec = item.section
    if not sec.part and sec.text in (None, "HEADER", "TEXT"):
        hend, body = mime.header_end(data, 0, len(data))
        content = (data if sec.text is None else data[:hend] if sec.text == "HEADER"
                   else data[body:])
    else:
        content = mime.section(data, loaded.root, sec.part, sec.text, sec.fields)
    if content is None:
        return b"NIL"
    return _string(_partial(content, item.partial))


def _string(data: bytes) -> bytes:
    """A literal, or ``""`` for no data (e.g. a partial fetch starting past the end,
    RFC 9051 6.4.5: "an empty string is returned")."""
    return wire.literal(data) if data else b'""'


def _literal8(data: bytes) -> bytes:
    if b"\0" in data or not data.isascii():
        return b"~{%d}\r\n" % len(data) + data
    return _string(data)


def do_fetch(session: Any, tag: bytes, args: Any):
    """FETCH / UID FETCH: a list of lines or a Deferred of one."""
    from indimail_tw.imap4.selected import BadSequence

    sel = session.selected
    fast = _view_fast(sel, tag, args)
    if fast is not None:
        return fast
    try:
        msgs = sel.resolve(args.seqset, args.uid)
    except BadSequence as e:
        return [wire.tagged(tag, "BAD", str(e))]
    if args.vanished and not sel.qresync:
        return [wire.tagged(tag, "BAD", "VANISHED needs ENABLE QRESYNC")]
    if args.changedsince is not None and "CONDSTORE" not in session.enabled:
        session.enabled.add("CONDSTORE")          # RFC 7162 3.1: a CONDSTORE-enabling command
    index = sel.index
    plan = FetchPlan(sel, args)
    head: list[bytes] = []
    if args.vanished:
        largest = max(index.uidnext - 1, sel.largest_uid())
        gone = [u for u in index.vanished_since(args.changedsince)
                if args.seqset.contains(u, largest) and not sel.seq_of(u)]
        if gone:
            from indimail_tw.imap4.selected import uid_set
            head.append(wire.untagged(b"VANISHED (EARLIER) " + uid_set(gone)))
    if args.changedsince is not None:
        msgs = [(s, u) for s, u in msgs if (index.modseq(u) or 0) > args.changedsince]
    if plan.view_only:
        return _view_lines(tag, plan, msgs, head)
    uids = [u for _, u in msgs]
    folder = (getattr(index, "path", None), getattr(index, "uidvalidity", None))
    pres = _structures(index, folder, uids) if plan.need_tree and uids else {}
    if (plan.view_and_structure and not plan.utf8 and not sel.gone and len(pres) == len(uids)
            and hasattr(index, "view_arrays")):
        fast = _structure_lines(tag, plan, msgs, pres, index, head)
        if fast is not None:
            return fast
    if plan.view_and_structure and hasattr(index, "modseq"):
        # ENVELOPE, BODYSTRUCTURE, FLAGS: the view and the structure cache answer;
        # rows (file paths) only for messages whose structure must be parsed
        records = _view_records(index, [u for u in uids if u in pres])
        rest = [u for u in uids if u not in pres]
        if rest:
            records.update((r.uid, r) for r in index.records(rest))
    else:
        records = {r.uid: r for r in index.records(uids)} if uids else {}
    missing = [u for _, u in msgs if u not in records or u in sel.gone]
    if not (plan.need_content or plan.need_tree):
        return _finish(session, tag, plan, msgs, records, {}, head, bool(missing))
    jobs = []
    cached: dict[int, Loaded] = {}
    octets = 0
    for _, uid in msgs:
        rec = records.get(uid)
        if rec is None or uid in sel.gone:
            continue
        pre = pres.get(uid)
        if pre is not None and not plan.need_content:
            cached[uid] = Loaded(None, None, False, pre)
            continue
        jobs.append((uid, rec.path, pre, plan.need_content, plan.need_tree))
        octets += rec.size
    if not jobs:
        return _finish(session, tag, plan, msgs, records, cached, head, bool(missing))
    if len(jobs) <= INLINE_FILES and octets <= INLINE_OCTETS:
        cached.update(_read_batch(jobs))
        return _after_reads(session, tag, plan, msgs, records, cached, jobs, head, missing)
    if (len(jobs) > BATCH_FILES or octets > BATCH_OCTETS) and not plan.binary:
        return _streamed(session, tag, plan, msgs, records, cached, jobs, head, bool(missing))
    batches = _batches(jobs, records)

    def next_batch(result: dict[int, Loaded] | None):
        if result is not None:
            cached.update(result)
        if batches:
            return session.run(_read_batch, batches.pop(0)).addCallback(next_batch)
        return _after_reads(session, tag, plan, msgs, records, cached, jobs, head, missing)

    return next_batch(None)


def _cte_known(plan: FetchPlan, loaded: Loaded) -> bool:
    for item in plan.items:
        if item.name in ("BINARY[]", "BINARY.SIZE[]") and item.section.part:
            node = mime.find_part(loaded.root, item.section.part)
            if (node is not None and node.children is None and node.message is None
                    and node.encoding.lower() not in mime.KNOWN_CTES):
                return False
    return True


#: Parsed structure cache blobs of recently fetched messages, by (folder directory,
#: UIDVALIDITY, UID): a message's content never changes under one UID, so every
#: session of the process can share them (FLAGS ENVELOPE BODYSTRUCTURE of the same
#: messages again skips the query).  About 1-2 kB an entry (rendered items and the
#: undecoded tree): 8192 hold the recent messages of ten 300-message mailboxes.
_STRUCTURES: OrderedDict[tuple, mime.Structure] = OrderedDict()
STRUCTURES = 8192


class _ViewRecord:
    """What FETCH of FLAGS, UID, MODSEQ and cached structure items needs of a message:
    the view's numbers, no index row."""

    __slots__ = ("uid", "flags", "modseq")

    def __init__(self, uid: int, flags: frozenset, modseq: int) -> None:
        self.uid, self.flags, self.modseq = uid, flags, modseq


def _structure_lines(tag: bytes, plan: FetchPlan, msgs: list[tuple[int, int]],
                     pres: dict[int, mime.Structure], index: Any, head: list[bytes]
                     ) -> list[bytes] | None:
    """FLAGS, UID, MODSEQ, ENVELOPE, BODY, BODYSTRUCTURE of messages whose structures
    are all cached, straight from the view's arrays: what :func:`render` gives,
    without a record, a Loaded or a generic item loop per message.  None when a
    message is not in the view (the general path says EXPUNGEISSUED)."""
    uids, fids, fsets, modseqs = index.view_arrays()
    sel = plan.sel
    recent = sel.recent if not sel.rev2 else ()
    names = tuple(i.name for i in plan.items)
    shown: dict[int, bytes] = {}
    lines = list(head)
    n = len(uids)
    for seq, uid in msgs:
        k = bisect.bisect_left(uids, uid)
        if k == n or uids[k] != uid:
            return None
        pre = pres[uid]
        parts = []
        for name in names:
            if name == "FLAGS":
                if recent and uid in recent:
                    parts.append(b"FLAGS " + flag_list(fsets[fids[k]] | {"\\Recent"}))
                else:
                    flags = shown.get(fids[k])
                    if flags is None:
                        flags = shown[fids[k]] = b"FLAGS " + flag_list(fsets[fids[k]])
                    parts.append(flags)
            elif name == "ENVELOPE":
                parts.append(b"ENVELOPE " + pre.envelope)
            elif name == "BODYSTRUCTURE":
                parts.append(b"BODYSTRUCTURE " + pre.bodystructure)
            elif name == "BODY":
                parts.append(b"BODY " + pre.body)
            elif name == "UID":
                parts.append(b"UID %d" % uid)
            else:                               # MODSEQ
                parts.append(b"MODSEQ (%d)" % modseqs[k])
        lines.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
    lines.append(wire.tagged(tag, "OK", "Fetch completed"))
    return lines


def _view_records(index: Any, uids: list[int]) -> dict[int, _ViewRecord]:
    flags_of, modseq_of = index.flags, index.modseq
    out = {}
    for uid in uids:
        flags = flags_of(uid)
        if flags is not None:
            out[uid] = _ViewRecord(uid, flags, modseq_of(uid) or 0)
    return out


def _structures(index: Any, folder: tuple, uids: list[int]) -> dict[int, mime.Structure]:
    """The cached structures of ``uids`` that have one: from this process's cache,
    else from the index's cache table (then kept in the process)."""
    out: dict[int, mime.Structure] = {}
    many = getattr(index, "cache_get_many", None)
    if many is None or not folder[0]:
        for uid in uids:
            blob = index.cache_get(uid, CACHE_KEY)
            pre = mime.load_structure(blob) if blob else None
            if pre is not None:
                out[uid] = pre
        return out
    path, validity = folder
    ask = []
    for uid in uids:
        key = (path, validity, uid)
        pre = _STRUCTURES.get(key)
        if pre is not None:
            _STRUCTURES.move_to_end(key)
            out[uid] = pre
        else:
            ask.append(uid)
    if ask:
        for uid, blob in many(ask, CACHE_KEY).items():
            pre = mime.load_structure(blob) if blob else None
            if pre is not None:
                out[uid] = pre
                _remember_structure((path, validity, uid), pre)
    return out


def _remember_structure(key: tuple, structure: mime.Structure) -> None:
    _STRUCTURES[key] = structure
    if len(_STRUCTURES) > STRUCTURES:
        _STRUCTURES.popitem(last=False)


def _view_fast(sel: Any, tag: bytes, args: Any) -> Iterator[bytes] | None:
    """UID, FLAGS and MODSEQ of whole ranges straight from the index's view arrays,
    rendered in blocks while the reply is written: FETCH 1:* (UID FLAGS) on a
    100,000-message folder makes no tuple, record or line object per message.
    None when the general path must answer (pending expunges, ``$``, CHANGEDSINCE,
    VANISHED, a bad sequence number, a view that differs from the session's)."""
    from indimail_tw.imap4.selected import _merge

    arrays = getattr(sel.index, "view_arrays", None)
    if (arrays is None or sel.gone or args.changedsince is not None or args.vanished
            or getattr(args.seqset, "saved", False)):
        return None
    plan = FetchPlan(sel, args)
    if not plan.view_only:
        return None
    uids, fids, fsets, modseqs = arrays()
    if uids != sel.uids:                        # same messages in the same order
        return None
    n = len(uids)
    if args.uid:
        spans = [(bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi))
                 for lo, hi in _merge(args.seqset.bounds(uids[-1]))] if n else []
    elif args.seqset.out_of_range(n):
        return None
    else:
        spans = [(lo - 1, hi) for lo, hi in _merge(args.seqset.bounds(n))]
    names = tuple(i.name for i in plan.items)
    recent = sel.recent if not sel.rev2 else ()

    def lines() -> Iterator[bytes]:
        # The session handles no other command (and no IDLE poll) until this reply
        # is written, so the view does not change under the loop.
        shown = [b"FLAGS " + flag_list(f) for f in fsets]
        block: list[bytes] = []
        for start, stop in spans:
            for k in range(start, stop):
                uid = uids[k]
                flags = shown[fids[k]]
                if recent and uid in recent:
                    flags = b"FLAGS " + flag_list(fsets[fids[k]] | {"\\Recent"})
                if names == ("UID", "FLAGS"):
                    block.append(b"* %d FETCH (UID %d %s)\r\n" % (k + 1, uid, flags))
                else:
                    out = [b"UID %d" % uid if name == "UID" else flags if name == "FLAGS"
                           else b"MODSEQ (%d)" % modseqs[k] for name in names]
                    block.append(b"* %d FETCH (%s)\r\n" % (k + 1, b" ".join(out)))
                if len(block) >= 512:
                    yield b"".join(block)
                    block = []
        if block:
            yield b"".join(block)
        yield wire.tagged(tag, "OK", "Fetch completed")

    return lines()


def _view_lines(tag: bytes, plan: FetchPlan, msgs, head) -> list[bytes]:
    """UID, FLAGS and MODSEQ only: no records, no file, nothing but the view."""
    sel = plan.sel
    index = sel.index
    recent = sel.recent if not sel.rev2 else ()
    gone = sel.gone
    lines = list(head)
    names = [i.name for i in plan.items]
    incomplete = False
    for seq, uid in msgs:
        flags = index.flags(uid)
        if flags is None or uid in gone:
            incomplete = True
            continue
        if uid in recent:
            flags = flags | {"\\Recent"}
        out = []
        for name in names:
            if name == "UID":
                out.append(b"UID %d" % uid)
            elif name == "FLAGS":
                out.append(b"FLAGS " + flag_list(flags))
            else:
                out.append(b"MODSEQ (%d)" % (index.modseq(uid) or 0))
        lines.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(out)))
    if incomplete:
        lines.append(wire.tagged(tag, "NO", "Some of the requested messages no longer exist",
                                 "EXPUNGEISSUED"))
    else:
        lines.append(wire.tagged(tag, "OK", "Fetch completed"))
    return lines


def _batches(jobs: list, records: dict) -> list[list]:
    out: list[list] = [[]]
    octets = 0
    for job in jobs:
        size = records[job[0]].size
        if out[-1] and (len(out[-1]) >= BATCH_FILES or octets + size > BATCH_OCTETS):
            out.append([])
            octets = 0
        out[-1].append(job)
        octets += size
    return out


def _after_reads(session: Any, tag: bytes, plan: FetchPlan, msgs, records, cached, jobs,
                 head, missing) -> list[bytes]:
    lost = _reread(plan, jobs, cached)
    return _finish(session, tag, plan, msgs, records, cached, head, bool(missing) or lost)


def _finish(session: Any, tag: bytes, plan: FetchPlan, msgs, records, cached, head,
            incomplete: bool) -> list[bytes]:
    lines = list(head)
    rendered = _render_all(plan, msgs, records, cached)
    if rendered is None:
        # RFC 3516 4.3: nothing is sent (and no \Seen set) for a FETCH that fails
        return [wire.tagged(tag, "NO", "Unknown Content-Transfer-Encoding", "UNKNOWN-CTE")]
    lines += rendered[0]
    lines.append(_done(tag, incomplete or rendered[1]))
    return lines


def _done(tag: bytes, incomplete: bool) -> bytes:
    if incomplete:
        return wire.tagged(tag, "NO", "Some of the requested messages no longer exist",
                           "EXPUNGEISSUED")
    return wire.tagged(tag, "OK", "Fetch completed")


def _render_all(plan: FetchPlan, msgs, records, cached) -> tuple[list[bytes], bool] | None:
    """The FETCH lines of ``msgs`` (setting \\Seen where the items do) and whether
    some could not be answered; None when a BINARY item meets an unknown
    Content-Transfer-Encoding (then nothing may be sent)."""
    sel = plan.sel
    index = sel.index
    lines: list[bytes] = []
    incomplete = False
    need_loaded = plan.need_content or plan.need_tree
    todo = []
    for seq, uid in msgs:
        rec = records.get(uid)
        loaded = cached.get(uid)
        if rec is None or uid in sel.gone or (need_loaded and loaded is None):
            incomplete = True
            continue
        if plan.binary and not _cte_known(plan, loaded):
            return None
        todo.append((seq, uid, rec, loaded))
    stored: dict[int, Any] = {}
    if plan.sets_seen:
        updates = [(uid, rec.flags | {"\\Seen"}) for _s, uid, rec, _l in todo
                   if "\\Seen" not in rec.flags]
        if updates:
            for new in index.store_many(updates):
                if new is not None:
                    stored[new.uid] = new
    recent = sel.recent if not sel.rev2 else ()
    for seq, uid, rec, loaded in todo:
        changed = uid in stored
        if changed:
            rec = stored[uid]
        flags = rec.flags | {"\\Recent"} if uid in recent else rec.flags
        lines.append(render(plan, seq, rec, loaded, flags, changed))
    return lines, incomplete


def _streamed(session: Any, tag: bytes, plan: FetchPlan, msgs, records, cached, jobs,
              head, incomplete: bool) -> Iterator[Any]:
    """A FETCH too big to hold at once (more than one read job): the lines of one
    group of messages at a time, each group's files read by a thread job.

    Yields lines and, while a group's files are being read, the Deferred of that
    read: the protocol waits for it before asking for more, and asks for more
    only while the client keeps up with what was written, so memory holds one
    group's messages whatever the size of the mailbox (BATCH_FILES files,
    BATCH_OCTETS octets, or one message when it alone is bigger).
    """
    yield from head
    job_of = {job[0]: job for job in jobs}
    for group in _groups(msgs, job_of, records):
        group_jobs = [job_of[uid] for _, uid in group if uid in job_of]
        loaded = {uid: cached[uid] for _, uid in group if uid in cached}
        if group_jobs:
            box: list[Any] = []
            d = session.run(_read_batch, group_jobs)
            d.addBoth(box.append)
            if not box:
                yield d
            result = box[0]
            if not isinstance(result, dict):          # a Failure: the protocol answers
                result.raiseException()
            loaded.update(result)
            incomplete |= _reread(plan, group_jobs, loaded)
        rendered = _render_all(plan, group, records, loaded)
        if rendered is None:                          # binary plans are never streamed
            raise AssertionError("BINARY FETCH streamed")
        yield from rendered[0]
        incomplete |= rendered[1]
    yield _done(tag, incomplete)


def _groups(msgs, job_of: dict, records: dict) -> Iterator[list[tuple[int, int]]]:
    """``msgs`` cut into consecutive groups whose files fit one read job."""
    group: list[tuple[int, int]] = []
    files = octets = 0
    for seq, uid in msgs:
        if uid in job_of:
            size = records[uid].size
            if files and (files >= BATCH_FILES or octets + size > BATCH_OCTETS):
                yield group
                group, files, octets = [], 0, 0
            files += 1
            octets += size
        group.append((seq, uid))
    if group:
        yield group


def _reread(plan: FetchPlan, jobs, cached: dict) -> bool:
    """After a read job: files renamed meanwhile are read again through the index
    (on this thread: few and small), fresh trees go into the structure cache.
    Returns whether some message could not be read at all."""
    index = plan.sel.index
    lost = False
    for uid, _path, pre, need_data, _tree in jobs:
        if uid in cached:
            continue
        try:                                # renamed meanwhile? the index knows
            data = mime.normalise(index.read(uid))
        except OSError:
            lost = True
            continue
        cached[uid] = _loaded(data, pre, need_data, plan.need_tree)
    for uid, loaded in cached.items():
        if loaded.fresh:
            loaded.fresh = False
            with contextlib.suppress(Exception):      # the cache is only a cache
                index.cache_put(uid, CACHE_KEY, mime.dump(loaded.root))
    return lost


# -- SEARCH's view of a message ---------------------------------------------------------

class NeedsContent(Exception):
    """A search key needs the message text and this pass may not read files."""


class StoredMessage:
    """:class:`~indimail_tw.imap4.search.SearchMessage` over an index record; the file
    is read (and parsed) at most once, on the first key that needs it."""

    __slots__ = ("seq", "uid", "flags", "recent", "internaldate", "rfc822_size", "modseq",
                 "largest_seq", "largest_uid", "_path", "_data", "_root", "_may_read",
                 "_reader")

    def __init__(self, seq: int, rec: Any, recent: bool, largest_seq: int, largest_uid: int,
                 may_read: bool = True, reader: Any = None) -> None:
        self.seq = seq
        self.uid = rec.uid
        self.flags = rec.flags
        self.recent = recent
        self.internaldate = rec.internaldate
        self.rfc822_size = rec.rfc822_size
        self.modseq = rec.modseq
        self.largest_seq = largest_seq
        self.largest_uid = largest_uid
        self._path = rec.path
        self._data: bytes | None = None
        self._root: mime.Part | None = None
        self._may_read = may_read
        self._reader = reader

    def _load(self) -> tuple[bytes, mime.Part]:
        if self._root is None:
            if not self._may_read:
                raise NeedsContent()
            try:
                data = load_message(self._path)
            except OSError:
                data = b""
                if self._reader is not None:
                    try:
                        data = mime.normalise(self._reader(self.uid))
                    except Exception:  # noqa: BLE001 -- gone: an empty message
                        data = b""
            self._data, self._root = data, mime.parse(data)
        return self._data, self._root

    def header_values(self, name: str) -> list[str]:
        data, root = self._load()
        return mime.header_values(data, root, name)

    def header_text(self) -> str:
        data, root = self._load()
        return mime.header_text(data, root)

    def body_text(self) -> str:
        data, root = self._load()
        return mime.body_text(data, root)

    def sent_date(self) -> float | None:
        _data, root = self._load()
        return mime.sent_date(root)
