"""The mailbox-management commands of the IMAP session (a mixin of IMAPSession).

CREATE (with RFC 6154 ``USE``), DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST
(RFC 9051 with LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819, SPECIAL-USE RFC
6154, CHILDREN RFC 3348), LSUB, NAMESPACE, STATUS (with SIZE RFC 8438,
DELETED, HIGHESTMODSEQ RFC 7162, APPENDLIMIT RFC 7889) and QUOTA (RFC 9208:
one root ``""`` holding every folder, resources STORAGE in units of 1024
octets and MESSAGE, from ``maildirsize``).

The folder tree is :class:`~indimail_tw.maildir.folders.MailFolders`:
separator ``.``, personal namespace prefix ``""``.  Everything that touches
the disk runs through ``self.run`` (a thread in the server).  Errors carry RFC
5530 response codes: NONEXISTENT, ALREADYEXISTS, HASCHILDREN, INUSE, CANNOT.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from indimail_tw.imap4 import wire
from indimail_tw.maildir import folders as mf

SEP = mf.SEPARATOR.encode("ascii")
QUOTED_SEP = wire.quoted(SEP)
STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
                "RECENT", "HIGHESTMODSEQ", "APPENDLIMIT")


def status_values(folders: mf.MailFolders, name: str, items: tuple[str, ...],
                  append_limit: int | None = None) -> list[tuple[str, Any]]:
    """[(item, value)] for STATUS (blocking); :class:`NoSuchFolder` when it cannot be opened."""
    index = folders.open_index(name)
    try:
        counts: dict[str, int] = {}
        if any(i in ("MESSAGES", "UNSEEN", "DELETED", "SIZE") for i in items):
            counts = index.status_counts(size="SIZE" in items)   # no per-message records
        values = []
        for item in items:
            if item in ("MESSAGES", "UNSEEN", "DELETED", "SIZE"):
                value: Any = counts[item]
            elif item == "UIDNEXT":
                value = index.uidnext
            elif item == "UIDVALIDITY":
                value = index.uidvalidity
            elif item == "RECENT":
                value = _recent_count(index)
            elif item == "HIGHESTMODSEQ":
                value = index.highestmodseq
            elif item == "APPENDLIMIT":
                value = append_limit
            else:
                continue
            values.append((item, value))
        return values
    finally:
        index.close()


def _recent_count(index: Any) -> int:
    counter = getattr(index, "recent_count", None)
    if callable(counter):
        return int(counter())
    return int(counter or 0)


def status_line(name: str, values: list[tuple[str, Any]], utf8: bool) -> bytes:
    items = b" ".join(item.encode("ascii") + b" " + (b"NIL" if value is None else b"%d" % value)
                      for item, value in values)
    return wire.untagged(b"STATUS " + wire.mailbox(name, utf8) + b" (" + items + b")")


def _failure_reply(tag: bytes, failure: Failure) -> list[bytes] | None:
    if failure.check(mf.FolderError):
        error = failure.value
        return [wire.tagged(tag, "NO", error.text, error.code)]
    if failure.check(OSError):
        return [wire.tagged(tag, "NO", "Operation failed on the server", "SERVERBUG")]
    return None


class MailboxCommands:
    """The mailbox commands; see the module docstring."""

    folders: mf.MailFolders
    selected: Any
    enabled: set
    run: Any

    # -- helpers -------------------------------------------------------------------------------

    def _folder_call(self, tag: bytes, fn: Any, *args: Any, ok: str) -> defer.Deferred:
        def done(_result: Any) -> list[bytes]:
            return [wire.tagged(tag, "OK", ok)]

        def failed(failure: Failure) -> list[bytes]:
            reply = _failure_reply(tag, failure)
            return reply if reply is not None else self.internal_error(tag, failure)

        return self.run(fn, *args).addCallbacks(done, failed)

    def _selected_name(self) -> str | None:
        return getattr(self.selected, "name", None) if self.selected is not None else None

    def _in_use(self, name: str) -> bool:
        current = self._selected_name()
        if current is None:
            return False
        name = mf.canonical(name)
        return current == name or current.startswith(name + mf.SEPARATOR)

    # -- CREATE, DELETE, RENAME ------------------------------------------------------------------

    def do_create(self, tag: bytes, args: Any) -> defer.Deferred:
        folders = self.folders
        use = tuple(getattr(args, "use", None) or ())

        def create() -> None:
            name = args.mailbox.rstrip(mf.SEPARATOR) or args.mailbox
            canonical = mf.validate(name)
            if canonical == mf.INBOX or folders.exists(canonical):
                raise mf.FolderExists("Mailbox already exists")
            _create_superiors(folders, canonical)
            folders.create(canonical, use)

        def failed(failure: Failure) -> list[bytes]:
            if failure.check(mf.FolderError) and use and "special-use" in failure.value.text:
                return [wire.tagged(tag, "NO", failure.value.text, "USEATTR")]
            reply = _failure_reply(tag, failure)
            return reply if reply is not None else self.internal_error(tag, failure)

        return self.run(create).addCallbacks(
            lambda _r: [wire.tagged(tag, "OK", "CREATE completed")], failed)

    def do_delete(self, tag: bytes, args: Any) -> Any:
        if mf.canonical(args.mailbox) == mf.INBOX:
            return [wire.tagged(tag, "NO", "INBOX can't be deleted", "CANNOT")]
        if self._selected_name() == mf.canonical(args.mailbox):
            return [wire.tagged(tag, "NO", "Can't delete the selected mailbox", "INUSE")]
        return self._folder_call(tag, self.folders.delete, args.mailbox, ok="DELETE completed")

    def do_rename(self, tag: bytes, args: Any) -> Any:
        if self._in_use(args.old):
            return [wire.tagged(tag, "NO", "Can't rename the selected mailbox", "INUSE")]
        folders = self.folders

        def rename() -> None:
            folders.rename(args.old, args.new)
            _create_superiors(folders, mf.validate(args.new.rstrip(mf.SEPARATOR) or args.new))

        return self._folder_call(tag, rename, ok="RENAME completed")

    # -- subscriptions ---------------------------------------------------------------------------

    def do_subscribe(self, tag: bytes, args: Any) -> defer.Deferred:
        return self._folder_call(tag, self.folders.subscribe, args.mailbox,
                                 ok="SUBSCRIBE completed")

    def do_unsubscribe(self, tag: bytes, args: Any) -> defer.Deferred:
        return self._folder_call(tag, self.folders.unsubscribe, args.mailbox,
                                 ok="UNSUBSCRIBE completed")

    # -- LIST, LSUB, NAMESPACE ------------------------------------------------------------------

    def do_namespace(self, tag: bytes, args: Any) -> list[bytes]:
        return [wire.untagged(b'NAMESPACE (("" ' + QUOTED_SEP + b")) NIL NIL"),
                wire.tagged(tag, "OK", "NAMESPACE completed")]

    def do_list(self, tag: bytes, args: Any) -> Any:
        patterns = list(args.patterns)
        selection = {s.upper() for s in (getattr(args, "selection", None) or ())}
        returns = {r.upper() for r in (getattr(args, "returns", None) or ())}
        status_items = tuple(i.upper() for i in (getattr(args, "status_items", None) or ()))
        if status_items:
            returns.add("STATUS")
        if patterns == [""] and not selection:
            return [wire.untagged(b"LIST (\\Noselect) " + QUOTED_SEP + b' ""'),
                    wire.tagged(tag, "OK", "LIST completed")]
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            return self._bad_reply(tag, "RECURSIVEMATCH needs another selection option")
        reference = args.reference or ""
        folders, utf8 = self.folders, self.utf8
        append_limit = folders.append_limit or None
        extended = bool(selection or returns or self.rev2)
        if "HIGHESTMODSEQ" in status_items:
            self.enabled.add("CONDSTORE")

        def listing() -> list[bytes]:
            return list_lines(folders, reference, patterns, selection, returns, status_items,
                              utf8, append_limit, nonexistent=extended)

        def done(lines: list[bytes]) -> list[bytes]:
            return [*lines, wire.tagged(tag, "OK", "LIST completed")]

        return self.run(listing).addCallbacks(done, lambda f: self.internal_error(tag, f))

    def do_lsub(self, tag: bytes, args: Any) -> defer.Deferred:
        folders, utf8 = self.folders, self.utf8
        reference = args.reference or ""
        patterns = list(args.patterns)

        def listing() -> list[bytes]:
            return lsub_lines(folders, reference, patterns, utf8)

        return self.run(listing).addCallbacks(
            lambda lines: [*lines, wire.tagged(tag, "OK", "LSUB completed")],
            lambda f: self.internal_error(tag, f))

    # -- STATUS ------------------------------------------------------------------------------------

    def do_status(self, tag: bytes, args: Any) -> defer.Deferred:
        items = tuple(dict.fromkeys(i.upper() for i in args.items))
        if "HIGHESTMODSEQ" in items:
            self.enabled.add("CONDSTORE")
        folders, utf8 = self.folders, self.utf8
        limit = folders.append_limit or None
        name = args.mailbox

        def status() -> bytes:
            canonical = mf.canonical(name)
            return status_line(canonical, status_values(folders, canonical, items, limit), utf8)

        def failed(failure: Failure) -> list[bytes]:
            if failure.check(mf.FolderError):
                return [wire.tagged(tag, "NO", "Mailbox doesn't exist", "NONEXISTENT")]
            return self.internal_error(tag, failure)

        return self.run(status).addCallbacks(
            lambda line: [line, wire.tagged(tag, "OK", "STATUS completed")], failed)

    # -- QUOTA (RFC 9208) ----------------------------------------------------------------------

    def _quota_usage(self) -> tuple[int, int] | None:
        """(bytes, messages) used (blocking); None without a quota."""
        from indimail_tw.maildir import quota as mquota

        limit = self._quota_limit()
        if limit is None:
            return None
        result = mquota.check_quota(self.folders.maildir, limit, 0)
        usage = result.usage
        return (max(usage.bytes, 0), max(usage.count, 0)) if usage else (0, 0)

    def _quota_line(self, used: tuple[int, int]) -> bytes:
        limit = self._quota_limit()
        resources = []
        if limit.bytes:
            resources.append(b"STORAGE %d %d" % ((used[0] + 1023) // 1024, limit.bytes // 1024))
        if limit.count:
            resources.append(b"MESSAGE %d %d" % (used[1], limit.count))
        return wire.untagged(b'QUOTA "" (' + b" ".join(resources) + b")")

    def do_getquotaroot(self, tag: bytes, args: Any) -> defer.Deferred:
        folders, name = self.folders, mf.canonical(args.mailbox)

        def lookup() -> tuple[bool, Any]:
            if not folders.exists(name):
                return False, None
            return True, self._quota_usage()

        def done(result: tuple[bool, Any]) -> list[bytes]:
            exists, used = result
            if not exists:
                return [wire.tagged(tag, "NO", "Mailbox doesn't exist", "NONEXISTENT")]
            mailbox = wire.mailbox(name, self.utf8)
            if used is None:
                return [wire.untagged(b"QUOTAROOT " + mailbox),
                        wire.tagged(tag, "OK", "GETQUOTAROOT completed")]
            return [wire.untagged(b'QUOTAROOT ' + mailbox + b' ""'), self._quota_line(used),
                    wire.tagged(tag, "OK", "GETQUOTAROOT completed")]

        return self.run(lookup).addCallbacks(done, lambda f: self.internal_error(tag, f))

    def do_getquota(self, tag: bytes, args: Any) -> Any:
        if args.root != "" or self._quota_limit() is None:
            return [wire.tagged(tag, "NO", "No such quota root", "NONEXISTENT")]
        return self.run(self._quota_usage).addCallbacks(
            lambda used: [self._quota_line(used), wire.tagged(tag, "OK", "GETQUOTA completed")],
            lambda f: self.internal_error(tag, f))

    def do_setquota(self, tag: bytes, args: Any) -> list[bytes]:
        return [wire.tagged(tag, "NO", "Quotas are set by the administrator", "NOPERM")]


def _create_superiors(folders: mf.MailFolders, name: str) -> None:
    """RFC 9051 6.3.4 and 6.3.6: create the superior names a new name needs (blocking)."""
    levels = name.split(mf.SEPARATOR)
    for i in range(1, len(levels)):
        parent = mf.SEPARATOR.join(levels[:i])
        if parent != mf.INBOX and not folders.exists(parent):
            with contextlib.suppress(mf.FolderExists):     # created meanwhile
                folders.create(parent)


# -- listing (blocking, pure given the folder tree) ------------------------------------------

def _order(name: str) -> tuple[int, str]:
    return (0 if name == mf.INBOX else 1, name)


def list_lines(folders: mf.MailFolders, reference: str, patterns: list[str], selection: set,
               returns: set, status_items: tuple, utf8: bool,
               append_limit: int | None, nonexistent: bool = False) -> list[bytes]:
    """LIST responses.  A name that exists only as the parent of others (Maildir++ has
    no directory for it) is ``\\NonExistent`` when ``nonexistent`` (extended LIST or
    IMAP4rev2: RFC 5258 3 and RFC 9051 7.3.1 ask for it to be computed accurately),
    else ``\\Noselect`` (RFC 3501 has no \\NonExistent)."""
    tree = {info.name: info for info in folders.tree()}
    subscribed_sel = "SUBSCRIBED" in selection
    want_subscribed = subscribed_sel or "SUBSCRIBED" in returns
    subs = set(folders.subscriptions()) if want_subscribed else set()
    recursive = "RECURSIVEMATCH" in selection
    regexes = [mf.pattern_regex(reference, p) for p in patterns]

    def matched(name: str) -> bool:
        return any(r.match(name) for r in regexes)

    if subscribed_sel:
        def chosen(name: str) -> bool:
            return name in subs
    elif "SPECIAL-USE" in selection:
        def chosen(name: str) -> bool:
            info = tree.get(name)
            return bool(info and info.exists and info.special)
    else:
        def chosen(name: str) -> bool:
            return name in tree

    candidates = set(tree) | subs
    if recursive or subscribed_sel:            # parents of subscribed names, for CHILDINFO
        for name in list(subs):
            levels = name.split(mf.SEPARATOR)
            candidates.update(mf.SEPARATOR.join(levels[:i]) for i in range(1, len(levels)))
    lines: list[bytes] = []
    for name in sorted(candidates, key=_order):
        if not matched(name):
            continue
        childinfo = False
        if recursive:
            prefix = name + mf.SEPARATOR
            childinfo = any(other.startswith(prefix) and chosen(other) and not matched(other)
                            for other in candidates)
        if not chosen(name) and not childinfo:
            continue
        info = tree.get(name)
        attrs: list[str] = []
        if info is None:
            attrs.append("\\NonExistent")
        else:
            if not info.exists:
                attrs.append("\\NonExistent" if nonexistent else "\\Noselect")
            attrs.append("\\HasChildren" if info.has_children else "\\HasNoChildren")
            if info.exists:
                attrs.extend(info.special)
        if want_subscribed and name in subs:
            attrs.append("\\Subscribed")
        line = (b"LIST " + wire.flags(attrs) + b" " + QUOTED_SEP + b" "
                + wire.mailbox(name, utf8))
        if childinfo and subscribed_sel:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        lines.append(wire.untagged(line))
        if status_items and info is not None and info.exists:
            try:
                values = status_values(folders, name, status_items, append_limit)
            except (mf.FolderError, OSError):
                continue
            lines.append(status_line(name, values, utf8))
    return lines


def lsub_lines(folders: mf.MailFolders, reference: str, patterns: list[str],
               utf8: bool) -> list[bytes]:
    subs = folders.subscriptions()
    regexes = [mf.pattern_regex(reference, p) for p in patterns]
    # only a "%" wildcard brings in unsubscribed parents (RFC 3501 6.3.9)
    percent = [r for r, p in zip(regexes, patterns, strict=True) if "%" in reference + p]
    shown: dict[str, bool] = {}              # name -> subscribed itself
    for name in subs:
        if any(r.match(name) for r in regexes):
            shown[name] = True
        levels = name.split(mf.SEPARATOR)
        for i in range(1, len(levels)):      # "%": unsubscribed parents as \Noselect
            parent = mf.SEPARATOR.join(levels[:i])
            if parent not in shown and any(r.match(parent) for r in percent):
                shown.setdefault(parent, False)
    lines = []
    for name in sorted(shown, key=_order):
        attrs = b"()" if shown[name] else b"(\\Noselect)"
        lines.append(wire.untagged(b"LSUB " + attrs + b" " + QUOTED_SEP + b" "
                                   + wire.mailbox(name, utf8)))
    return lines
