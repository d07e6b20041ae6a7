"""A domain's directory as local delivery and the recipient check read it, cached.

Every delivery and every checked RCPT needs the same facts about
``domains/<domain>``: whether it exists, which ``.qmail-*`` files it holds, and
the catch-all handler of its ``.qmail-default``.  :class:`DomainFiles` reads
them once and again only when they change, so a use costs a ``stat`` of the
directory and one of ``.qmail-default`` instead of a listing, an open and a
read, and within :data:`RECHECK` seconds of the last check not even that (as
the TLS certificate is checked at most once a second): a change is seen within
that time (a missing directory is looked for every time).  The listing is
compared by the directory's inode and modification time (adding, removing or
renaming a file changes it), the catch-all by the file's inode, modification
time and size (an edit in place changes them).
What was read less than :data:`RACY` seconds after its last change is read
again next time, because a second change within the same clock tick would
leave the time as it was.

Blocking file I/O: call it in a thread.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from indimail_tw.delivery.catchall import QMAIL_DEFAULT, CatchAll, parse_qmail_default
from indimail_tw.delivery.dotqmail import DotQmail, check_home, read_dot_qmail

PREFIX = ".qmail-"
RACY = 2.0
RECHECK = 1.0


@dataclass(frozen=True)
class DomainDir:
    """What ``domains/<domain>`` holds."""

    exists: bool
    names: frozenset[str] = frozenset()     # the ``.qmail-*`` entries
    catchall: CatchAll | None = None        # None: no ``.qmail-default``

    def path_of(self, directory: str, name: str) -> str | None:
        """``directory/name`` when the listing has ``name``, else None."""
        return os.path.join(directory, name) if name in self.names else None


MISSING = DomainDir(False)


@dataclass(frozen=True)
class _Seen:
    stamp: tuple
    value: object
    racy: bool


class DomainFiles:
    """The domain directories under ``domains_dir`` (see the module docstring)."""

    def __init__(self, domains_dir: str, now: Callable[[], float] = time.time,
                 recheck: float = RECHECK) -> None:
        self.domains_dir = domains_dir
        self._now = now
        self.recheck = recheck
        self._listings: dict[str, _Seen] = {}
        self._catchalls: dict[str, _Seen] = {}
        self._checked: dict[str, tuple[float, DomainDir]] = {}

    def directory(self, domain: str) -> str:
        return os.path.join(self.domains_dir, domain)

    def get(self, domain: str) -> DomainDir:
        """The domain's directory; :data:`MISSING` when there is none (or the name
        could leave ``domains_dir``)."""
        if not domain or "/" in domain or domain.startswith("."):
            return MISSING
        checked = self._checked.get(domain)
        now = self._now()
        if checked is not None and 0 <= now - checked[0] < self.recheck:
            return checked[1]
        found = self._look(domain)
        if found.exists:        # a missing domain is looked for again every time
            self._checked[domain] = (now, found)
        else:
            self._checked.pop(domain, None)
        return found

    def _look(self, domain: str) -> DomainDir:
        path = self.directory(domain)
        try:
            st = os.stat(path)
        except OSError:
            return MISSING
        if not stat.S_ISDIR(st.st_mode):
            return MISSING
        names = self._cached(self._listings, path, (st.st_ino, st.st_mtime_ns), st.st_mtime,
                             lambda: frozenset(n for n in os.listdir(path)
                                               if n.startswith(PREFIX)))
        catchall = None
        if QMAIL_DEFAULT in names:
            catchall = self._catchall(os.path.join(path, QMAIL_DEFAULT))
        return DomainDir(True, names, catchall)

    def _catchall(self, path: str) -> CatchAll | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

        def read() -> CatchAll | None:
            try:
                with open(path, encoding="utf-8", errors="surrogateescape") as f:
                    return parse_qmail_default(f.read())
            except (FileNotFoundError, NotADirectoryError):
                return None

        return self._cached(self._catchalls, path, (st.st_ino, st.st_mtime_ns, st.st_size),
                            st.st_mtime, read)

    def _cached(self, table: dict[str, _Seen], path: str, stamp: tuple, mtime: float,
                read: Callable[[], object]) -> object:
        seen = table.get(path)
        if seen is not None and seen.stamp == stamp and not seen.racy:
            return seen.value
        value = read()
        table[path] = _Seen(stamp, value, self._now() - mtime < RACY)
        return value


class HomeQmail:
    """A user's ``.qmail`` as qmail-local reads it (a sticky home defers the
    delivery), with its absence remembered: most users have none, and creating one
    changes the home directory's time.  A home checked less than :data:`RECHECK` seconds ago is not
    looked at again; after that a ``stat`` of it (the sticky check qmail-local makes
    anyway) shows whether anything changed.  An existing ``.qmail`` is read every
    time.  Blocking: call it in a thread."""

    def __init__(self, now: Callable[[], float] = time.time,
                 recheck: float = RECHECK) -> None:
        self._now = now
        self.recheck = recheck
        self._absent: dict[str, tuple[float, tuple]] = {}   # home -> (checked, stamp)

    def read(self, home: str) -> DotQmail | None:
        if not home:
            return None
        now = self._now()
        seen = self._absent.get(home)
        if seen is not None and 0 <= now - seen[0] < self.recheck:
            return None
        st = check_home(home)
        stamp = (st.st_ino, st.st_mtime_ns) if st is not None else None
        if seen is not None and stamp is not None and seen[1] == stamp:
            self._absent[home] = (now, stamp)
            return None
        qmail = read_dot_qmail(os.path.join(home, ".qmail"))
        if qmail is None and stamp is not None and now - st.st_mtime >= RACY:
            if len(self._absent) >= _MAX_HOMES:
                self._absent.clear()
            self._absent[home] = (now, stamp)
        else:
            self._absent.pop(home, None)
        return qmail


_MAX_HOMES = 100_000
