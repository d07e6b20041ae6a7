"""One user's Maildir++ folder tree: names, create/delete/rename, subscriptions, special use.

Layout (Courier's and Dovecot's Maildir++): the INBOX is the Maildir itself;
folder ``A.B`` is the directory ``<Maildir>/.A.B`` holding ``cur``/``new``/
``tmp`` and an empty ``maildirfolder`` marker.  The hierarchy separator is
``.`` and the personal namespace has the prefix ``""`` (Dovecot's Maildir++
default), so a folder is called ``Sent`` or ``Lists.python`` by IMAP clients.
A parent need not exist: ``.A.B`` alone makes ``A`` a non-selectable
(``\\Noselect``) name with children.

Names are Python ``str``.  On disk a name is stored in modified UTF-7 (RFC 3501
5.1.3), as Dovecot and Courier do, so ``Entwürfe`` is ``.Entw&APw-rfe``.
Refused: empty names, ``/``, the LIST wildcards ``*`` and ``%``, control
characters, a leading, trailing or doubled ``.``, a level ``.``/``..`` and
names longer than :data:`MAX_NAME`.
``INBOX`` is case-insensitive, also as the first level of a longer name.

Subscriptions live in ``courierimapsubscribed`` (Courier's format: one name
a line, ``INBOX`` or ``INBOX.<folder>``; written atomically).  Special-use
attributes (RFC 6154) live in ``indimail_tw-specialuse`` (``<mUTF-7 name>
TAB <attribute>[ SP <attribute>]`` lines); the first login creates Drafts,
Sent, Trash, Junk and Archive (see :meth:`MailFolders.ensure_special_use`).

Every method blocks on disk I/O (directory scans, fsyncs): the IMAP session
runs them in a thread.  All writes go through :mod:`indimail_tw.fsutil`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from indimail_tw import fsutil
from indimail_tw.imap4.wire import MUTF7Error, mutf7_decode, mutf7_encode
from indimail_tw.maildir.deliver import FOLDER_MARKER

SEPARATOR = "."
INBOX = "INBOX"
MAX_NAME = 255          # characters; the encoded directory name must also fit NAME_MAX
SUBSCRIPTIONS = "courierimapsubscribed"
SPECIAL_USE_FILE = "indimail_tw-specialuse"
SPECIAL_USES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
#: What the first login creates (RFC 6154 attribute, folder name).
DEFAULT_SPECIAL = (("\\Drafts", "Drafts"), ("\\Sent", "Sent"), ("\\Trash", "Trash"),
                   ("\\Junk", "Junk"), ("\\Archive", "Archive"))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FolderError(Exception):
    """A folder operation that cannot be done; ``code`` is the IMAP response code."""

    code = "CANNOT"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class BadFolderName(FolderError):
    code = "CANNOT"


class NoSuchFolder(FolderError):
    code = "NONEXISTENT"


class FolderExists(FolderError):
    code = "ALREADYEXISTS"


class HasChildren(FolderError):
    code = "HASCHILDREN"


@dataclass(frozen=True)
class FolderInfo:
    """One name in the tree: ``exists`` False for a parent implied by its children."""

    name: str
    exists: bool
    has_children: bool
    special: tuple[str, ...] = ()


def canonical(name: str) -> str:
    """``INBOX`` (any case) as the first level becomes ``INBOX``; other names unchanged."""
    head, sep, rest = name.partition(SEPARATOR)
    if head.upper() == INBOX:
        return INBOX + sep + rest
    return name


def validate(name: str) -> str:
    """The canonical form of a folder name, or :class:`BadFolderName`."""
    if not name:
        raise BadFolderName("Empty mailbox name")
    name = canonical(name)
    if len(name) > MAX_NAME:
        raise BadFolderName("Mailbox name too long")
    if "/" in name or "*" in name or "%" in name or _CONTROL.search(name):
        raise BadFolderName("Invalid characters in mailbox name")
    levels = name.split(SEPARATOR)
    if any(level in ("", ".", "..") for level in levels):
        raise BadFolderName("Invalid hierarchy in mailbox name")
    if name != INBOX and len(_encode(name)) + 1 > 250:
        raise BadFolderName("Mailbox name too long")
    return name


def _encode(name: str) -> str:
    return mutf7_encode(name).decode("ascii")


def dir_name(name: str) -> str:
    """The directory entry of a (valid, non-INBOX) folder: ``.`` + modified UTF-7."""
    return "." + _encode(name)


def name_of(entry: str) -> str | None:
    """The folder name of a directory entry, or None when it is not a valid folder name."""
    if not entry.startswith(".") or entry in (".", ".."):
        return None
    try:
        name = mutf7_decode(entry[1:].encode("ascii"))
        return validate(name)
    except (UnicodeEncodeError, MUTF7Error, BadFolderName):
        return None


class MailFolders:
    """The folders of the Maildir ``maildir`` (see the module docstring)."""

    __slots__ = ("maildir", "append_limit")

    def __init__(self, maildir: str, append_limit: int = 0) -> None:
        self.maildir = maildir.rstrip("/") or "/"
        self.append_limit = append_limit

    # -- names and paths ---------------------------------------------------------------------

    def path(self, name: str) -> str:
        name = validate(name)
        if name == INBOX:
            return self.maildir
        return os.path.join(self.maildir, dir_name(name))

    def names(self) -> set[str]:
        """Every existing folder except INBOX."""
        found = set()
        try:
            with os.scandir(self.maildir) as entries:
                for entry in entries:
                    if entry.name.startswith(".") and entry.is_dir():
                        name = name_of(entry.name)
                        if name is not None and name != INBOX:
                            found.add(name)
        except FileNotFoundError:
            pass
        return found

    def exists(self, name: str) -> bool:
        try:
            path = self.path(name)
        except BadFolderName:
            return False
        return os.path.isdir(path)

    def tree(self) -> list[FolderInfo]:
        """INBOX, every folder and every implied parent, sorted by name."""
        existing = self.names()
        existing.add(INBOX)
        special = self.special_uses()
        nodes: dict[str, bool] = {name: True for name in existing}
        children: set[str] = set()
        for name in existing:
            levels = name.split(SEPARATOR)
            for i in range(1, len(levels)):
                parent = SEPARATOR.join(levels[:i])
                children.add(parent)
                nodes.setdefault(parent, False)
        return [FolderInfo(name, exists, name in children, tuple(special.get(name, ())))
                for name, exists in sorted(nodes.items())]

    def open_index(self, name: str, create: bool = False):
        """The :class:`~indimail_tw.maildir.index.FolderIndex` of an existing folder;
        :class:`NoSuchFolder` when there is none."""
        from indimail_tw.maildir.index import FolderIndex

        try:
            path = self.path(name)
        except BadFolderName:
            raise NoSuchFolder("Mailbox doesn't exist") from None
        if not os.path.isdir(path) and not (create and validate(name) == INBOX):
            raise NoSuchFolder("Mailbox doesn't exist")
        try:
            return FolderIndex.open(path, create=create or validate(name) == INBOX)
        except FileNotFoundError:
            raise NoSuchFolder("Mailbox doesn't exist") from None

    # -- create, delete, rename --------------------------------------------------------------

    def create(self, name: str, special: Iterable[str] = ()) -> str:
        """Create a folder (a trailing separator is ignored, RFC 9051 6.3.4); returns its name."""
        if name.endswith(SEPARATOR):
            name = name.rstrip(SEPARATOR)
        name = validate(name)
        canonical_uses = {a.upper(): a for a in SPECIAL_USES}
        try:
            special = tuple(dict.fromkeys(canonical_uses[a.upper()] for a in special))
        except KeyError:
            raise FolderError("Unsupported special-use attribute") from None
        if name == INBOX or self.exists(name):
            raise FolderExists("Mailbox already exists")
        path = self.path(name)
        fsutil.make_maildir(path)
        marker = os.path.join(path, FOLDER_MARKER)
        if not os.path.exists(marker):
            fsutil.atomic_write(marker, b"", 0o600)
        if special:
            uses = self.special_uses()
            uses[name] = special
            self._write_special(uses)
        return name

    def delete(self, name: str) -> None:
        """Remove a folder and its messages; its children stay (the name then has
        ``\\Noselect`` semantics).  A name that only exists as a parent is refused."""
        name = validate(name)
        if name == INBOX:
            raise FolderError("INBOX can't be deleted")
        if not self.exists(name):
            prefix = name + SEPARATOR
            if any(other.startswith(prefix) for other in self.names()):
                raise HasChildren("Mailbox has children, delete them first")
            raise NoSuchFolder("Mailbox doesn't exist")
        path = self.path(name)
        # rename away first so that a crash never leaves half a folder visible
        trash = os.path.join(self.maildir, "tmp", f"deleted.{fsutil.unique_name()}")
        try:
            fsutil.rename(path, trash)
            fsutil.fsync_dir(self.maildir)
        except OSError:
            trash = path
        fsutil.remove_tree(trash)
        uses = self.special_uses()
        if uses.pop(name, None) is not None:
            self._write_special(uses)

    def rename(self, old: str, new: str) -> list[tuple[str, str]]:
        """Rename a folder and its children; returns the (old, new) names renamed.

        Renaming INBOX moves its messages into the new folder and leaves INBOX
        empty (RFC 9051 6.3.6); INBOX's children stay where they are.
        """
        old, new = validate(old), validate(new.rstrip(SEPARATOR) or new)
        if new == INBOX or self.exists(new):
            raise FolderExists("Target mailbox already exists")
        if new.startswith(old + SEPARATOR) and old != INBOX:
            raise FolderError("Can't rename a mailbox to its own child")
        if old == INBOX:
            self._move_inbox(new)
            return [(INBOX, new)]
        prefix = old + SEPARATOR
        children = sorted(n for n in self.names() if n.startswith(prefix))
        if not self.exists(old) and not children:
            raise NoSuchFolder("Mailbox doesn't exist")
        new_prefix = new + SEPARATOR
        if any(n.startswith(new_prefix) for n in self.names()):
            raise FolderExists("Target mailbox already has children")
        pairs = ([(old, new)] if self.exists(old) else []) + [
            (child, new + child[len(old):]) for child in children]
        for _source, target in pairs:
            validate(target)
        done: list[tuple[str, str]] = []
        try:
            for source, target in pairs:
                fsutil.rename(self.path(source), self.path(target))
                done.append((source, target))
        except OSError:
            for source, target in reversed(done):       # put back what moved
                with contextlib.suppress(OSError):
                    fsutil.rename(self.path(target), self.path(source))
            raise
        finally:
            fsutil.fsync_dir(self.maildir)
        uses = self.special_uses()
        moved = {source: target for source, target in done}
        if any(source in uses for source in moved):
            self._write_special({moved.get(k, k): v for k, v in uses.items()})
        return done

    def _move_inbox(self, new: str) -> None:
        self.create(new)
        target = self.path(new)
        for sub in ("cur", "new"):
            source_dir = os.path.join(self.maildir, sub)
            try:
                entries = os.listdir(source_dir)
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.startswith("."):
                    continue
                try:
                    fsutil.rename(os.path.join(source_dir, entry),
                                  os.path.join(target, sub, entry))
                except FileNotFoundError:     # expunged meanwhile
                    continue
            fsutil.fsync_dirs([source_dir, os.path.join(target, sub)])

    # -- subscriptions ------------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        """Subscribed names in file order (they need not exist)."""
        try:
            with open(os.path.join(self.maildir, SUBSCRIPTIONS), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        names: dict[str, None] = {}
        for raw in data.split(b"\n"):
            line = raw.strip(b"\r")
            if not line:
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                continue
            name = _from_courier(text)
            if name is not None:
                names[name] = None
        return list(names)

    def subscribe(self, name: str) -> None:
        name = validate(name)
        current = self.subscriptions()
        if name not in current:
            self._write_subscriptions([*current, name])

    def unsubscribe(self, name: str) -> bool:
        """False when the name was not subscribed."""
        name = canonical(name)
        current = self.subscriptions()
        if name not in current:
            return False
        self._write_subscriptions([n for n in current if n != name])
        return True

    def _write_subscriptions(self, names: list[str]) -> None:
        data = "".join(_to_courier(n) + "\n" for n in names).encode("utf-8")
        fsutil.atomic_write(os.path.join(self.maildir, SUBSCRIPTIONS), data, 0o600)

    # -- special use (RFC 6154) ---------------------------------------------------------------

    def special_uses(self) -> dict[str, tuple[str, ...]]:
        """{folder name: attributes} as recorded (names need not exist any more)."""
        try:
            with open(os.path.join(self.maildir, SPECIAL_USE_FILE), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        uses: dict[str, tuple[str, ...]] = {}
        for line in data.decode("ascii", "replace").splitlines():
            encoded, _, attributes = line.partition("\t")
            try:
                name = validate(mutf7_decode(encoded.encode("ascii")))
            except (MUTF7Error, BadFolderName, UnicodeEncodeError):
                continue
            attrs = tuple(a for a in attributes.split() if a in SPECIAL_USES)
            if attrs:
                uses[name] = attrs
        return uses

    def _write_special(self, uses: dict[str, tuple[str, ...]]) -> None:
        data = "".join(f"{_encode(name)}\t{' '.join(attrs)}\n"
                       for name, attrs in sorted(uses.items()) if attrs)
        fsutil.atomic_write(os.path.join(self.maildir, SPECIAL_USE_FILE),
                            data.encode("ascii"), 0o600)

    def ensure_special_use(self) -> list[str]:
        """At the first login (no special-use file yet): create the default special-use
        folders that are missing, record their attributes and subscribe them; returns
        the names created.  Later logins only read the file."""
        if not os.path.isdir(self.maildir):
            return []
        if os.path.exists(os.path.join(self.maildir, SPECIAL_USE_FILE)):
            return []
        created = []
        uses = {}
        for attribute, name in DEFAULT_SPECIAL:
            if not self.exists(name):
                self.create(name)
                created.append(name)
            uses[name] = (attribute,)
        self._write_special(uses)
        subscribed = self.subscriptions()
        wanted = [name for _attribute, name in DEFAULT_SPECIAL if name not in subscribed]
        if wanted:
            self._write_subscriptions([*subscribed, *wanted])
        return created


def _to_courier(name: str) -> str:
    return INBOX if name == INBOX else f"{INBOX}{SEPARATOR}{name}"


def _from_courier(line: str) -> str | None:
    """Courier writes ``INBOX.<name>``; a bare name (other servers) is taken as it is."""
    if line.upper() == INBOX:
        return INBOX
    head, sep, rest = line.partition(SEPARATOR)
    if head.upper() == INBOX and sep and rest:
        line = rest
    try:
        return validate(line)
    except BadFolderName:
        return None


# -- LIST pattern matching (RFC 9051 6.3.9) -------------------------------------------------

def pattern_regex(reference: str, pattern: str) -> re.Pattern:
    """A regex for the canonical LIST pattern ``reference + pattern``: ``*`` matches
    anything, ``%`` anything but the separator; ``INBOX`` as the first level matches
    in any case."""
    canonical_pattern = reference + pattern
    parts = []
    for ch in canonical_pattern:
        if ch == "*":
            parts.append(".*")
        elif ch == "%":
            parts.append(f"[^{re.escape(SEPARATOR)}]*")
        else:
            parts.append(re.escape(ch))
    body = "".join(parts)
    # INBOX is case-insensitive: let a literal INBOX prefix match the canonical name
    head = canonical_pattern.partition(SEPARATOR)[0]
    if head.upper() == INBOX:
        body = re.escape(INBOX) + body[len(re.escape(head)):]
    return re.compile(body + r"\Z", re.S)


def matches(regex: re.Pattern, name: str) -> bool:
    return regex.match(name) is not None
