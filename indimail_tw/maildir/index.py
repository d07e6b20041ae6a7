"""The per-folder Maildir index shared by IMAP4 and POP3.

Every method blocks on disk I/O; the protocols call them through
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

How it works
------------
* The database (one row of ``meta``; ``messages``; ``expunged``; ``cache``)
  always describes the directory as of its last *scan*.  A scan (list ``new/``
  and ``cur/``, match names by key = the part before ``:``) runs inside
  ``BEGIN IMMEDIATE``, so scans, UID assignment, APPEND and COPY of all
  processes are serialized; a scan re-reads the rows after taking the lock,
  so a file some other process already numbered keeps that number.  Every
  committed change takes the next modseq (one per transaction).
* A scan is skipped when ``new/`` and ``cur/`` still have the mtimes stored by
  the last scan; a directory whose mtime was too close to the scan (2 s for
  coarse timestamps, 100 ms for nanosecond ones) is stored as "unknown" (-1),
  so a change in the same mtime tick is never missed.  Inside that window an
  object that knows which names the rows describe (its last scan plus its own
  renames, appends and expunges, while no other connection committed) only
  lists the directories and compares names.
* New files are not read: the rfc822 size (CRLF line ends) comes from ``,W=``
  in the name (Dovecot's convention; our APPEND, COPY and delivery write it),
  else it is stored as -1 and computed on first need (a MessageRecord, STATUS
  SIZE), then remembered.
* Each :class:`FolderIndex` object keeps its own *view* (what its session has
  been told): uids, flags and modseqs in three compact arrays, about 16 bytes
  a message.  :meth:`FolderIndex.sync` scans if needed, then reads the rows
  whose modseq is above the one it last saw and reports the difference.  The
  object's own STORE and EXPUNGE update its view at once (sync does not report
  them again); its APPEND and COPY show up at the next sync, like a delivery.
* New files are not moved from ``new/`` to ``cur/`` (POP3 and other readers
  share the folder); a flag change renames the file into ``cur/``.
* A folder of SNAPSHOT_MIN messages or more keeps its view in one row
  (``snapshot``: uids, flag-set numbers and modseqs as packed arrays, as of a
  modseq); an open reads it and then the rows and tombstones changed since,
  like a sync.
* :meth:`FolderIndex.close` keeps the connection and view as a spare (a few per
  process); the next :meth:`FolderIndex.open` of that folder syncs the spare
  instead of connecting and reading every row (SELECT, STATUS, APPEND targets).
* A corrupt index file is moved aside (``...sqlite.corrupt-<time>``) and
  rebuilt; the rebuilt index has a new UIDVALIDITY (never a reused one: the
  last is remembered in ``indimail_tw-uidvalidity``) and the next sync of an
  open object reports ``uidvalidity_changed``.

Beyond the original contract: ``Changes.uidvalidity_changed``; the light view
accessors ``uids()``, ``flags(uid)``, ``modseq(uid)``, ``len()``,
``recent_count()``, ``status_counts()`` and ``records(uids)`` (use these on big
folders: a MessageRecord costs ~400 bytes, the view 16); ``store_many()`` (one
transaction for a STORE over many messages); ``changed_since_last_sync()``
(cheap IDLE poll); ``IndexVersionError``; ``rfc822_size()``; ``flags_of()``.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from indimail_tw import fsutil
from indimail_tw.maildir import quota
from indimail_tw.maildir.watch import FolderWatch

#: IMAP system flag -> Maildir info letter.
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "$Forwarded": "P", "\\Answered": "R",
                "\\Seen": "S", "\\Deleted": "T"}

INDEX_NAME = "indimail_tw-index.sqlite"
UIDVALIDITY_NAME = "indimail_tw-uidvalidity"
SCHEMA_VERSION = 1
#: Seconds a process waits for another one's index transaction (a first scan of a
#: large folder holds the lock while it reads every new file).
BUSY_TIMEOUT = 60.0
#: A directory mtime this close to "now" may hide a change in the same tick:
#: 2 s where timestamps look coarse (whole milliseconds or seconds: FAT, old
#: ext3, some network filesystems), else a bound on the kernel's coarse clock
#: tick (1-10 ms) with a wide margin.
_RECENT_NS = 2_000_000_000
_RECENT_FINE_NS = 100_000_000
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
#: At least this many unnumbered files: read them before taking the index lock.
_PREMEASURE = 500
#: Checkpoint the WAL (copy it into the database: two fsyncs) after this many of one
#: connection's commits.  SQLite's own automatic checkpoint (at 1000 pages) is off:
#: it runs inside whichever COMMIT crosses the mark, on the reactor thread for an
#: inline STORE or EXPUNGE.  So is the fsync of a restarted WAL's header, done by
#: the first commit after a complete checkpoint: :func:`checkpoint_wal` makes that
#: commit itself.  Checkpoints run in a thread (see ``checkpoint_due``).  The WAL
#: file's size cannot tell when: it stays at its high-water mark after a restart.
CHECKPOINT_COMMITS = 500

_LETTER_FLAGS = {letter: flag for flag, letter in FLAG_LETTERS.items()}
_CANONICAL = {flag.lower(): flag for flag in FLAG_LETTERS}

_SCHEMA = (
    """CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL,
        highestmodseq INTEGER NOT NULL,
        recent_mark INTEGER NOT NULL,
        new_mtime INTEGER NOT NULL,      -- st_mtime_ns of new/ at the last scan, -1 unknown
        cur_mtime INTEGER NOT NULL)""",
    """CREATE TABLE messages (
        uid INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,        -- file name before ':'
        dir TEXT NOT NULL,               -- 'new' or 'cur'
        info TEXT NOT NULL,              -- the rest of the file name ('' or ':2,FS')
        keywords TEXT NOT NULL,          -- space-separated, sorted
        size INTEGER NOT NULL,
        rfc822_size INTEGER NOT NULL,
        internaldate REAL NOT NULL,
        modseq INTEGER NOT NULL)""",
    "CREATE INDEX messages_modseq ON messages (modseq)",
    """CREATE TABLE expunged (            -- tombstones, for QRESYNC and for stale views
        uid INTEGER PRIMARY KEY,
        modseq INTEGER NOT NULL,
        key TEXT NOT NULL, dir TEXT NOT NULL, info TEXT NOT NULL,
        size INTEGER NOT NULL, rfc822_size INTEGER NOT NULL, internaldate REAL NOT NULL)""",
    "CREATE INDEX expunged_modseq ON expunged (modseq)",
    """CREATE TABLE cache (
        uid INTEGER NOT NULL, name TEXT NOT NULL, blob BLOB NOT NULL,
        PRIMARY KEY (uid, name)) WITHOUT ROWID""",
)

_ROW = "uid, key, dir, info, keywords, size, rfc822_size, internaldate, modseq"


class IndexVersionError(RuntimeError):
    """The index was written by a newer version of this software."""


@dataclass(frozen=True, slots=True)
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
    #: The index was rebuilt (deleted or corrupt): every old uid is in ``removed``,
    #: every message in ``added``; an IMAP session must end (UIDVALIDITY changed).
    uidvalidity_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.uidvalidity_changed)


# -- flags ---------------------------------------------------------------------

# Shared, bounded caches: every message with the same flags holds the same frozenset.
_FLAGSETS: dict[tuple[str, str], frozenset] = {}
_INTERNED: dict[frozenset, frozenset] = {}
_CACHE_LIMIT = 4096


def _intern(flags: frozenset) -> frozenset:
    shared = _INTERNED.get(flags)
    if shared is None:
        if len(_INTERNED) >= _CACHE_LIMIT:
            return flags
        shared = _INTERNED.setdefault(flags, flags)
    return shared


def _letters(info: str) -> str:
    return info[3:] if info.startswith(":2,") else ""


def flags_of(info: str, keywords: str) -> frozenset:
    """The IMAP flags of a file with ``info`` (``:2,FS``) and index ``keywords``."""
    flags = _FLAGSETS.get((info, keywords))
    if flags is None:
        found = {_LETTER_FLAGS[c] for c in _letters(info) if c in _LETTER_FLAGS}
        if keywords:
            found.update(keywords.split(" "))
        flags = _intern(frozenset(found))
        if len(_FLAGSETS) < _CACHE_LIMIT:
            _FLAGSETS[(info, keywords)] = flags
    return flags


def _split_flags(flags: Iterable[str], old_info: str) -> tuple[str, str]:
    """(new info, keywords) for ``flags``; unknown info letters of ``old_info``
    (e.g. Dovecot's lowercase keyword letters) are kept."""
    letters = set()
    keywords = set()
    for flag in flags:
        canonical = _CANONICAL.get(flag.lower(), flag)
        if canonical in FLAG_LETTERS:
            letters.add(FLAG_LETTERS[canonical])
        elif not flag.startswith("\\") and flag:
            keywords.add(flag)              # \Recent and unknown \flags are not stored
    letters.update(c for c in _letters(old_info) if c not in _LETTER_FLAGS)
    return ":2," + "".join(sorted(letters)), " ".join(sorted(keywords))


def _system_letters(info: str) -> str:
    return "".join(sorted(c for c in _letters(info) if c in _LETTER_FLAGS))


# -- file names and sizes --------------------------------------------------------

def _name_fields(key: str) -> tuple[int | None, int | None]:
    """``,S=<size>`` and ``,W=<rfc822 size>`` from a file name's key, when present."""
    size = vsize = None
    for part in key.split(",")[1:]:
        if part[:2] == "S=" and part[2:].isdigit():
            size = int(part[2:])
        elif part[:2] == "W=" and part[2:].isdigit():
            vsize = int(part[2:])
    return size, vsize


def rfc822_size(data: bytes) -> int:
    """Octets with CRLF line ends: every LF not preceded by CR counts one more."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def file_rfc822_size(path: str) -> int:
    """:func:`rfc822_size` of a file, read in chunks.  Raises FileNotFoundError."""
    extra = total = 0
    last = b""
    with open(path, "rb") as f:
        while chunk := f.read(262144):
            total += len(chunk)
            extra += chunk.count(b"\n") - chunk.count(b"\r\n")
            if last == b"\r" and chunk[:1] == b"\n":
                extra -= 1
            last = chunk[-1:]
    return total + extra


def _measure_file(path: str, key: str, dir_fd: int | None = None
                  ) -> tuple[int, int, int] | None:
    """(size, rfc822 size, mtime_ns) of a new file, None if it vanished meanwhile.
    The file is not read: the rfc822 size comes from ``,W=`` in the name, else it
    is -1 (unknown) and computed when first needed (see ``_with_sizes``).
    ``dir_fd``: ``path`` is a name in that directory (no path walk per file)."""
    size, vsize = _name_fields(key) if "," in key else (None, None)
    try:
        st = os.stat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    return (st.st_size if size is None else size), (-1 if vsize is None else vsize), \
        st.st_mtime_ns


def _settled(mtime_ns: int, now_ns: int) -> bool:
    """Is a directory mtime old enough that a later change must change it?"""
    window = _RECENT_NS if mtime_ns % 1_000_000 == 0 else _RECENT_FINE_NS
    return now_ns - mtime_ns >= window


@contextlib.contextmanager
def _subdir_fds(folder: str) -> Iterator[dict[str, int]]:
    """Descriptors of ``new/`` and ``cur/`` (stat by name relative to them)."""
    fds: dict[str, int] = {}
    try:
        for sub in ("new", "cur"):
            fds[sub] = os.open(f"{folder}/{sub}", os.O_RDONLY | os.O_DIRECTORY)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def _dir_mtimes(folder: str) -> tuple[int, int]:
    return (os.stat(os.path.join(folder, "new")).st_mtime_ns,
            os.stat(os.path.join(folder, "cur")).st_mtime_ns)


def _quota_root(folder: str) -> str | None:
    """The Maildir whose ``maildirsize`` counts ``folder``; None for Trash (not counted)."""
    name = os.path.basename(folder)
    if name.startswith("."):
        if name == ".Trash" or name.startswith(".Trash."):
            return None
        return os.path.dirname(folder)
    return folder


class ScanNeeded(Exception):
    """``sync(scan=False)``: the directories changed; :meth:`FolderIndex.scan` (in a
    thread) must record that first."""


def _first_item(raw: bytes, item: bytes, width: int) -> int:
    """The position of the first ``width``-byte item equal to ``item`` in ``raw`` (an
    array's bytes), or -1: a memchr-speed search instead of a Python step per item."""
    at = raw.find(item)
    while at >= 0 and at % width:
        at = raw.find(item, at + 1)
    return at // width if at >= 0 else -1


def checkpoint_wal(folder: str) -> None:
    """Copy the index's WAL into its database (a PASSIVE checkpoint: two fsyncs,
    blocking: for a thread) through a connection of its own, so the index object of
    the caller (on the reactor thread) stays free; then one small commit, so that
    the WAL restarts (and its new header is fsynced) here and not in the caller's
    next commit."""
    path = os.path.join(folder, INDEX_NAME)
    try:        # mode=rw: never create an index file that was removed meanwhile
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=rw", uri=True,
                               timeout=BUSY_TIMEOUT, isolation_level=None)
    except sqlite3.OperationalError:
        return
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        with contextlib.suppress(sqlite3.OperationalError):         # busy: next time
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and frames > 0 and frames == done:
                # a commit that changes a page (an unchanged row writes none): the
                # header's user_version, which nothing else uses, counts restarts
                (count,) = conn.execute("PRAGMA user_version").fetchone()
                conn.execute(f"PRAGMA user_version = {(count + 1) & 0x7FFFFFFF}")
    finally:
        conn.close()


def usage_file(folder: str) -> str | None:
    """The ``maildirsize`` that counts ``folder`` when there is one (a stat), else None:
    no usage line to write, so no thread trip for it."""
    root = _quota_root(folder)
    if root is None:
        return None
    path = os.path.join(root, quota.MAILDIRSIZE)
    return path if os.path.exists(path) else None


def record_usage(folder: str, size: int, count: int) -> None:
    """Add a ``<size> <count>`` line to the quota file counting ``folder`` (if it has
    one; an fsync: blocking)."""
    root = _quota_root(folder)
    if root is not None and count:
        quota.add_usage(root, size, count)


def _is_corrupt(e: sqlite3.DatabaseError) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    text = str(e)
    return "malformed" in text or "not a database" in text


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
    """An exclusive flock on the folder directory: creating or replacing the index."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def run(reactor, fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)`` in the reactor's thread pool; a Deferred of its result."""
    from twisted.internet.threads import deferToThreadPool

    return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)


# -- spare indexes: reused by the next open of the same folder ---------------------

#: Closed indexes kept open per process (their connection and view), most recently
#: closed last; a spare is used by one caller at a time like any index.
SPARES = 16
#: Folders with at least this many messages keep a snapshot of the view (one row:
#: the open of a 100,000-message folder reads 1.6 MB instead of 100,000 rows); it
#: is rewritten when an open finds more than SNAPSHOT_STALE rows changed since.
SNAPSHOT_MIN = 5000
SNAPSHOT_STALE = 2000
#: A view bigger than this is not kept (16 bytes a message).
_SPARE_VIEW_LIMIT = 250_000
_spares: OrderedDict[int, FolderIndex] = OrderedDict()
_spares_lock = threading.Lock()


def _take_spare(path: str) -> FolderIndex | None:
    with _spares_lock:
        for key in reversed(_spares):
            if _spares[key].path == path:
                return _spares.pop(key)
    return None


def _keep_spare(index: FolderIndex) -> None:
    evicted = []
    with _spares_lock:
        _spares[id(index)] = index
        while len(_spares) > SPARES:
            evicted.append(_spares.popitem(last=False)[1])
    for old in evicted:
        old._disconnect()


def close_spares() -> None:
    """Close every spare index of this process (tests; anything that must let the files go)."""
    with _spares_lock:
        spares = list(_spares.values())
        _spares.clear()
    for spare in spares:
        spare._disconnect()


# -- the index -------------------------------------------------------------------

class FolderIndex:
    """One folder's index.  Not thread-safe: one object per session/thread
    (it may move between threads, one call at a time)."""

    path: str                   # the folder directory
    uidvalidity: int
    uidnext: int
    highestmodseq: int

    def __init__(self, folder_dir: str) -> None:
        """Use :meth:`open`."""
        self.path = os.path.abspath(folder_dir)
        self._db_path = os.path.join(self.path, INDEX_NAME)
        self._conn: sqlite3.Connection | None = None
        self._db_id: tuple[int, int] | None = None
        self._sync_mode = ""
        #: The names in new/ and cur/ the database describes, as this object last
        #: listed or changed them, valid while no other connection commits
        #: (``PRAGMA data_version`` still ``_known_version``): a rescan inside the
        #: mtime window then needs only a listing, not the rows.
        self._known: tuple[set[str], set[str]] | None = None
        self._known_version = -1
        #: inotify on new/ and cur/, started before the listing that makes ``_known``:
        #: while every event since agrees with ``_known``, no listing is needed
        #: after this object's own changes (see indimail_tw.maildir.watch)
        self._watch: FolderWatch | None = None
        self._watch_tried = False
        self._dirty = False                  # this object committed rows its view lacks
        self._wal_sync_due = False           # the open transaction gave out UIDs
        self._commits = 0
        #: CHECKPOINT_COMMITS commits since the last checkpoint: a caller on the reactor
        #: thread takes it (:meth:`take_checkpoint_due`) and runs :func:`checkpoint_wal`
        #: in a thread; durable operations (in a thread anyway) checkpoint themselves.
        self.checkpoint_due = False
        self._guard = threading.RLock()      # held by each call that uses the connection
        self._depth = 0
        self._close_pending = False          # close() came while another thread was inside
        self._reset_view()

    def _reset_view(self) -> None:
        self.uidvalidity = 0
        self.uidnext = 1
        self.highestmodseq = 0
        self._seen = 0                       # highest modseq this view has read
        self._uids = array("I")
        self._fids = array("I")              # index into self._fsets
        self._modseqs = array("Q")
        self._fsets: list[frozenset] = []
        self._fset_ids: dict[frozenset, int] = {}
        self._mtimes = (-1, -1)
        self._data_version = -1
        self._own_recent: set[int] = set()  # claimed by append(claim_recent=True)

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, folder_dir: str, create: bool = False) -> FolderIndex:
        """Open (and sync) the index of ``folder_dir``; ``create`` makes a missing
        Maildir (cur/new/tmp).  Raises FileNotFoundError for a missing folder."""
        if create:
            fsutil.make_maildir(folder_dir)
        for sub in ("cur", "new"):
            if not os.path.isdir(os.path.join(folder_dir, sub)):
                raise FileNotFoundError(f"no Maildir folder at {folder_dir}")
        spare = _take_spare(os.path.abspath(folder_dir)) if cls is FolderIndex else None
        if spare is not None:
            try:
                version = spare._conn.execute("SELECT version FROM meta").fetchone()
                if version is not None and version[0] <= SCHEMA_VERSION:
                    spare.sync()                # the view as a fresh open would load it
                    return spare
            except Exception:  # noqa: BLE001 -- e.g. the folder went away: open afresh
                pass
            spare._disconnect()
        self = cls(folder_dir)
        try:
            try:
                self._connect()
                self._scan_if_needed()
                self._load_view()
            except sqlite3.DatabaseError as e:
                if not _is_corrupt(e):
                    raise
                self._recover()
                self._scan_if_needed()
                self._load_view()
        except BaseException:
            self._disconnect()
            raise
        return self

    def _connect(self) -> None:
        if not os.path.exists(self._db_path):
            with _folder_lock(self.path):
                if not os.path.exists(self._db_path):
                    for suffix in ("-wal", "-shm"):  # a stale log must not meet a new file
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._db_path + suffix)
                self._connect_file(locked=True)
        else:
            self._connect_file(locked=False)

    def _connect_file(self, locked: bool) -> None:
        conn = sqlite3.connect(self._db_path, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
        self._conn = conn
        self._sync_mode = ""
        self._known = None
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        conn.execute("PRAGMA wal_autocheckpoint = 0")      # see CHECKPOINT_COMMITS
        try:
            version = conn.execute("SELECT version FROM meta").fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise
            version = None
        if version is None:
            if locked:
                self._create_schema()
            else:
                with _folder_lock(self.path):
                    self._create_schema()
        elif version[0] > SCHEMA_VERSION:
            raise IndexVersionError(
                f"{self._db_path}: index version {version[0]} is newer than {SCHEMA_VERSION}")
        st = os.stat(self._db_path)
        self._db_id = (st.st_dev, st.st_ino)

    def _create_schema(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode = WAL")
        with self._transaction(durable=True):
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                return                                      # another process was first
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES (1, ?, ?, 1, 1, 1, -1, -1)",
                         (SCHEMA_VERSION, self._new_uidvalidity()))

    def _new_uidvalidity(self) -> int:
        """Time-based, and above any this folder had before (kept in a small file)."""
        path = os.path.join(self.path, UIDVALIDITY_NAME)
        previous = 0
        with contextlib.suppress(OSError, ValueError), open(path, "rb") as f:
            previous = int(f.read().strip() or 0)
        value = max(int(time.time()), previous + 1) & 0xFFFFFFFF or 1
        fsutil.atomic_write(path, b"%d\n" % value, 0o600)
        return value

    def _recover(self) -> None:
        """Move a corrupt index file aside and build a new one (new UIDVALIDITY)."""
        bad_id = self._db_id
        self._disconnect()
        with _folder_lock(self.path):
            try:
                st = os.stat(self._db_path)
                current = (st.st_dev, st.st_ino)
            except FileNotFoundError:
                current = None
            # Another process may have replaced it already; a file we never opened
            # (bad_id None: it failed on open) is the corrupt one.
            if current is not None and (bad_id is None or current == bad_id):
                aside = f"{self._db_path}.corrupt-{int(time.time())}"
                fsutil.rename(self._db_path, aside)
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        fsutil.rename(self._db_path + suffix, aside + suffix)
                fsutil.fsync_dir(self.path)
        self._connect()

    def close(self) -> None:
        """Done with this object.  Its connection and view go to a small per-process
        pool of spares (:func:`_keep_spare`): the next :meth:`open` of the folder
        syncs a spare instead of connecting and reading every row again.

        A close while another thread is inside a call (a session ending while its
        command runs in the thread pool) happens when that call returns; later calls
        find the index closed."""
        if not self._guard.acquire(blocking=False):
            self._close_pending = True
            if not self._guard.acquire(blocking=False):
                return                          # the thread inside will close it
        try:
            if self._depth and self._close_pending:
                return                          # this thread is inside a call: on return
            self._close_pending = False
            self._close_now()
        finally:
            self._guard.release()

    def _close_now(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if conn.in_transaction or len(self._uids) > _SPARE_VIEW_LIMIT:
            self._disconnect()
            return
        spare = FolderIndex.__new__(FolderIndex)
        spare.__dict__.update(self.__dict__)
        spare._guard = threading.RLock()
        spare._depth = 0
        self._conn = None                       # this object is closed and empty
        self._known = None
        self._watch, self._watch_tried = None, False    # the spare's now
        self._reset_view()
        _keep_spare(spare)

    def _disconnect(self) -> None:
        watch, self._watch, self._watch_tried = self._watch, None, False
        if watch is not None:
            watch.close()
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> FolderIndex:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, durable: bool = False, write: bool = True
                     ) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE (serializes writers of all processes) ... COMMIT.

        ``durable`` commits with an fsync (UID assignment: a UID given out must
        never be given again); other changes (flags, recent mark, cache) are
        WAL-ordered but may be lost in a power failure, like Dovecot's.
        """
        conn = self._conn
        if conn is None:
            raise ValueError("the index is closed")
        mode = "FULL" if durable else "NORMAL"
        if write and mode != self._sync_mode:
            conn.execute(f"PRAGMA synchronous = {mode}")
            self._sync_mode = mode
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            self._known = None                  # files may have moved, rows not
            self._wal_sync_due = False
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if self._wal_sync_due:
            self._wal_sync_due = False
            self._sync_wal()
        if write:
            self._commits += 1
            if self._commits >= CHECKPOINT_COMMITS:
                self.checkpoint_due = True

    def take_checkpoint_due(self) -> bool:
        """True (once) when a WAL checkpoint is due: the caller runs
        :func:`checkpoint_wal` in a thread."""
        if not self.checkpoint_due:
            return False
        self.checkpoint_due = False
        self._commits = 0
        return True

    def _checkpoint_if_due(self) -> None:
        """For blocking (thread) callers, before a write transaction (whose commit then
        restarts the WAL, here): the WAL checkpoint that is due."""
        if self.checkpoint_due:
            self.checkpoint_due = False
            self._commits = 0
            with contextlib.suppress(sqlite3.OperationalError):     # busy: next time
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _sync_wal(self) -> None:
        """Make the last commit durable after the fact (what synchronous=FULL does at
        commit): a scan learns only inside its transaction that it numbers new
        files, and SQLite cannot change the mode inside one."""
        try:
            fd = os.open(self._db_path + "-wal", os.O_RDONLY)
        except FileNotFoundError:               # checkpointed: synced by SQLite
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _meta(self) -> tuple:
        return self._conn.execute(
            "SELECT uidvalidity, uidnext, highestmodseq, recent_mark, new_mtime, cur_mtime"
            " FROM meta").fetchone()

    # -- scanning the directory --------------------------------------------------------

    def scan(self) -> None:
        """Blocking (a thread): record what changed in the directories, numbering
        new files durably (an fdatasync of the index log when there are any)."""
        try:
            if not self._db_replaced():
                self._scan_if_needed()
        except sqlite3.DatabaseError as e:
            if not _is_corrupt(e):
                raise                           # the next sync() reports it

    def _scan_if_needed(self, force: bool = False, inline: bool = True) -> tuple[int, int]:
        """Scan when new/ or cur/ changed since the last scan of any process (with
        ``inline`` false, raise :class:`ScanNeeded` instead)."""
        mtimes = _dir_mtimes(self.path)
        asked = False
        if (not force and self._watch is not None and self._known is not None
                and self._version() == self._known_version):
            # Every create/delete/rename since agrees with the names the rows
            # describe (e.g. only this object's own STORE, APPEND, EXPUNGE): the
            # directories hold those names, nothing to list or scan.
            if self._watch.quiet(self._known):
                return mtimes
            asked = True                        # events used up: list before asking again
        meta = self._meta()
        if not force and (meta[4], meta[5]) == mtimes:
            if asked:
                self._known = None
            return mtimes
        if not inline:
            if asked:
                self._known = None              # the watch's events are used up
            raise ScanNeeded(self.path)
        listing = None
        if not force and self._known is not None and self._version() == self._known_version:
            now = time.time_ns()
            # Inside the mtime window: nobody else committed since we last matched
            # the rows with the names, so equal names mean no change.
            if not (_settled(mtimes[0], now) and _settled(mtimes[1], now)):
                if meta[4] == mtimes[0] or meta[5] == mtimes[1]:
                    # One directory is as the last scan stored it (settled then, so
                    # unchanged since): list only the other one.
                    j = 1 if meta[4] == mtimes[0] else 0
                    if self._list(("new", "cur")[j]) == self._known[j]:
                        return mtimes
                else:
                    listing = self._listing()
                    if listing == self._known:
                        return mtimes
        measured = self._measure_unlocked(meta[1], listing)
        with self._transaction():               # durable if it numbers files (_sync_wal)
            self._scan_locked(force, measured)
        return mtimes

    def _measure_unlocked(self, uidnext: int, listing: tuple[set[str], set[str]] | None = None
                          ) -> dict[str, tuple[int, int, int]]:
        """Before a scan that will meet many new files (the first index of a folder, a
        mass import), stat them without holding the lock, so other sessions of the
        folder wait only for the short numbering step.  ``listing``: one just made."""
        new_names, cur_names = listing if listing is not None else self._listing()
        if len(new_names) + len(cur_names) - (uidnext - 1) < _PREMEASURE:
            return {}
        found = self._by_key(new_names, cur_names)
        del new_names, cur_names
        for (key,) in self._conn.execute("SELECT key FROM messages"):
            found.pop(key, None)
        measured = {}
        with _subdir_fds(self.path) as fds:
            while found:
                key, (sub, info) = found.popitem()
                size = _measure_file(key + info, key, fds[sub])
                if size is not None:
                    measured[key] = size
        return measured

    def _scan_locked(self, force: bool = False,
                     measured: dict[str, tuple[int, int, int]] | None = None,
                     modseq: int | None = None) -> list[int]:
        """Bring the database up to date with the directory (inside a write
        transaction; changes get ``modseq``, by default the next one); returns the
        uids found vanished."""
        conn = self._conn
        now = time.time_ns()
        mtimes = _dir_mtimes(self.path)
        meta = self._meta()
        if not force and (meta[4], meta[5]) == mtimes:
            return []                           # another process scanned meanwhile
        uidnext, highest = meta[1], meta[2]
        if modseq is None:
            modseq = highest + 1
        if not self._watch_tried:               # before the listing that makes _known
            self._watch_tried = True
            self._watch = FolderWatch.start(self.path)
        elif self._watch is not None:
            self._watch.reset()                 # older events: the listing tells more
        new_names, cur_names = self._listing()
        known = (set(new_names), set(cur_names))
        moved: dict[str, tuple] = {}            # key -> row, file not where the row says
        for row in conn.execute("SELECT uid, key, dir, info FROM messages"):
            names = cur_names if row[2] == "cur" else new_names
            name = row[1] + row[3]
            if name in names:
                names.discard(name)
            else:
                moved[row[1]] = row
        found = self._by_key(new_names, cur_names)     # unmatched files
        del new_names, cur_names
        if moved and any(key not in found for key in moved):
            # A rename (flag change by another process) may hide a file from one
            # listing; look again before declaring anything vanished.
            known = None
            again_new, again_cur = self._listing()
            for key, where in self._by_key(again_new, again_cur).items():
                if key in moved:
                    found.setdefault(key, where)
        vanished = [row for key, row in moved.items() if key not in found]
        renamed = [(row, found.pop(key)) for key, row in moved.items() if key in found]
        fresh = []
        with _subdir_fds(self.path) as fds:
            for key, (sub, info) in found.items():
                size = measured.get(key) if measured else None
                if size is None:
                    size = _measure_file(key + info, key, fds[sub])
                if size is not None:
                    fresh.append((size[2], key, sub, info, size[0], size[1]))
                else:
                    known = None                # vanished since the listing
        del found
        if measured:
            measured.clear()                    # the caller's dict: free it now
        flag_changes = [(sub, info, row[0]) for row, (sub, info) in renamed
                        if _system_letters(info) != _system_letters(row[3])]
        moves = [(sub, info, row[0]) for row, (sub, info) in renamed
                 if _system_letters(info) == _system_letters(row[3])]
        changed = bool(vanished or flag_changes or fresh)
        if changed:
            highest = max(highest, modseq)
        if moves:
            conn.executemany("UPDATE messages SET dir = ?, info = ? WHERE uid = ?", moves)
        if flag_changes:
            conn.executemany(f"UPDATE messages SET dir = ?, info = ?, modseq = {modseq}"
                             " WHERE uid = ?", flag_changes)
        if vanished:
            self._tombstone([row[0] for row in vanished], modseq)
        if fresh:
            if self._sync_mode != "FULL":
                self._wal_sync_due = True       # a UID given out is never given again
            fresh.sort()                        # delivery order: (mtime, name)
            first = uidnext
            uidnext += len(fresh)
            conn.executemany(
                "INSERT INTO messages VALUES (?, ?, ?, ?, '', ?, ?, ?, ?)",
                ((first + i, key, sub, info, size, vsize, mtime_ns / 1e9, modseq)
                 for i, (mtime_ns, key, sub, info, size, vsize) in enumerate(fresh)))
            del fresh
        stored = tuple(m if _settled(m, now) else -1 for m in mtimes)
        if changed or stored != (meta[4], meta[5]):   # no write, no fsync otherwise
            conn.execute("UPDATE meta SET uidnext = ?, highestmodseq = ?, new_mtime = ?,"
                         " cur_mtime = ?", (uidnext, highest, *stored))
        if changed or moves:
            self._dirty = True
        self._known = known
        self._known_version = self._version()
        return [row[0] for row in vanished]

    def _version(self) -> int:
        """SQLite's data_version: changes when another connection commits."""
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def _known_move(self, old: tuple[str, str] | None, new: tuple[str, str] | None) -> None:
        """This object renamed, created or removed a file (old/new: (sub, name))."""
        known = self._known
        if known is None:
            return
        if old is not None:
            names = known[0] if old[0] == "new" else known[1]
            if old[1] not in names:
                self._known = None
                return
            names.discard(old[1])
        if new is not None:
            (known[0] if new[0] == "new" else known[1]).add(new[1])

    def _tombstone(self, uids: list[int], modseq: int) -> None:
        conn = self._conn
        conn.executemany(
            "INSERT OR REPLACE INTO expunged SELECT uid, ?, key, dir, info, size, rfc822_size,"
            " internaldate FROM messages WHERE uid = ?", [(modseq, uid) for uid in uids])
        conn.executemany("DELETE FROM messages WHERE uid = ?", [(uid,) for uid in uids])
        conn.executemany("DELETE FROM cache WHERE uid = ?", [(uid,) for uid in uids])

    def _listing(self) -> tuple[set[str], set[str]]:
        return self._list("new"), self._list("cur")

    def _list(self, sub: str) -> set[str]:
        try:
            names = os.listdir(f"{self.path}/{sub}")
        except FileNotFoundError:
            return set()
        return {name for name in names if name[:1] != "."}

    @staticmethod
    def _by_key(new_names: set[str], cur_names: set[str]) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        for sub, names in (("new", new_names), ("cur", cur_names)):   # cur wins
            for name in names:
                key, sep, rest = name.partition(":")
                found[key] = (sub, sep + rest)
        return found

    # -- this object's view --------------------------------------------------------------

    def _fid(self, flags: frozenset) -> int:
        fid = self._fset_ids.get(flags)
        if fid is None:
            fid = self._fset_ids[flags] = len(self._fsets)
            self._fsets.append(flags)
        return fid

    def _load_view(self) -> None:
        """Read the whole view (uids, flags, modseqs) without touching a message file:
        from the snapshot (plus the rows changed since) when there is one, else row
        by row (then a big folder's view is saved as a snapshot)."""
        self._reset_view()
        mtimes = _dir_mtimes(self.path)
        if self._load_snapshot(mtimes):
            return
        with self._transaction(write=False) as conn:
            meta = self._meta()
            version = self._version()
            uids, fids, modseqs = self._uids, self._fids, self._modseqs
            fid_of: dict[tuple[str, str], int] = {}
            for uid, info, keywords, modseq in conn.execute(
                    "SELECT uid, info, keywords, modseq FROM messages ORDER BY uid"):
                fid = fid_of.get((info, keywords))
                if fid is None:
                    fid = fid_of[(info, keywords)] = self._fid(flags_of(info, keywords))
                uids.append(uid)
                fids.append(fid)
                modseqs.append(modseq)
        self.uidvalidity, self.uidnext, self.highestmodseq = meta[0], meta[1], meta[2]
        self._seen = meta[2]
        self._mtimes = mtimes
        self._data_version = version
        self._dirty = False
        if len(uids) >= SNAPSHOT_MIN:
            self._save_snapshot()

    # -- view snapshots: a big folder's view in one row ----------------------------------

    def _save_snapshot(self) -> None:
        """Store the view (as of modseq ``_seen``) in the ``snapshot`` table (created
        on first use; older versions ignore it).  Best effort, not durable."""
        fsets = json.dumps([sorted(f) for f in self._fsets])
        try:
            with self._transaction() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS snapshot ("
                             " id INTEGER PRIMARY KEY CHECK (id = 1),"
                             " uidvalidity INTEGER NOT NULL, uidnext INTEGER NOT NULL,"
                             " modseq INTEGER NOT NULL, uids BLOB NOT NULL,"
                             " fids BLOB NOT NULL, modseqs BLOB NOT NULL,"
                             " fsets TEXT NOT NULL)")
                conn.execute("INSERT OR REPLACE INTO snapshot VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                             (self.uidvalidity, self.uidnext, self._seen,
                              memoryview(self._uids), memoryview(self._fids),
                              memoryview(self._modseqs), fsets))
        except sqlite3.OperationalError:        # busy, read-only: load row by row next time
            pass

    def _load_snapshot(self, mtimes: tuple[int, int]) -> bool:
        """The view from the snapshot, brought up to date like a sync (rows and
        tombstones with a higher modseq).  False when there is no usable one."""
        conn = self._conn
        try:
            with self._transaction(write=False):
                meta = self._meta()
                row = conn.execute("SELECT uidvalidity, uidnext, modseq, fsets"
                                   " FROM snapshot").fetchone()
                if row is None or row[0] != meta[0] or row[2] > meta[2]:
                    return False
                # Straight into the arrays in small pieces, through a small page
                # cache: no 1.6 MB copies left behind in this thread's heap.
                conn.execute("PRAGMA cache_size = -64")
                try:
                    for column, values in (("uids", self._uids), ("fids", self._fids),
                                           ("modseqs", self._modseqs)):
                        with conn.blobopen("snapshot", column, 1, readonly=True) as blob:
                            while chunk := blob.read(65536):
                                values.frombytes(chunk)
                finally:
                    conn.execute("PRAGMA cache_size = -2000")
        except sqlite3.OperationalError:        # no snapshot table
            self._reset_view()
            return False
        self.uidvalidity, self.uidnext, self.highestmodseq = row[0], row[1], row[2]
        self._seen = row[2]
        for flags in json.loads(row[3]):
            self._fid(_intern(frozenset(flags)))
        if not len(self._uids) == len(self._fids) == len(self._modseqs):
            self._reset_view()
            return False
        self._dirty = True                      # read what changed since the snapshot
        changes = self._refresh(mtimes)
        if changes.uidvalidity_changed:         # rebuilt meanwhile: _refresh reloaded
            return True
        if len(changes.added) + len(changes.removed) + len(changes.changed) > SNAPSHOT_STALE:
            self._save_snapshot()
        return True

    def _position(self, uid: int) -> int:
        """Index of ``uid`` in the view, or -1."""
        i = bisect.bisect_left(self._uids, uid)
        return i if i < len(self._uids) and self._uids[i] == uid else -1

    def _drop(self, uids: Iterable[int]) -> None:
        gone = set(uids)
        if not gone:
            return
        if len(gone) < 32:
            for uid in gone:
                i = self._position(uid)
                if i >= 0:
                    del self._uids[i], self._fids[i], self._modseqs[i]
            return
        keep = [i for i, uid in enumerate(self._uids) if uid not in gone]
        self._uids = array("I", (self._uids[i] for i in keep))
        self._fids = array("I", (self._fids[i] for i in keep))
        self._modseqs = array("Q", (self._modseqs[i] for i in keep))

    def _record(self, row: tuple, flags: frozenset | None = None,
                modseq: int | None = None) -> MessageRecord:
        uid, key, sub, info, keywords, size, vsize, date, row_modseq = row
        return MessageRecord(uid, key, f"{self.path}/{sub}/{key}{info}", size, vsize,
                             flags_of(info, keywords) if flags is None else flags, date,
                             row_modseq if modseq is None else modseq)

    def _db_replaced(self) -> bool:
        try:
            st = os.stat(self._db_path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._db_id

    # -- the API ----------------------------------------------------------------------

    def sync(self, scan: bool = True) -> Changes:
        """Bring the index up to date with the directory (cheap when new/ and cur/ are
        unchanged: it compares directory mtimes); assign UIDs to new files in
        ascending delivery order.

        With ``scan`` false, :class:`ScanNeeded` is raised instead of scanning when
        the directories hold changes the index has not recorded (the cheap checks,
        directory mtimes and the inotify watch, still run here).  For the reactor
        thread, which must not wait for the fsync that numbering new files takes:
        it then runs :meth:`scan` in a thread and syncs again."""
        try:
            if self._db_replaced():
                self._disconnect()
                self._connect()
                return self._reset_changes()
            mtimes = self._scan_if_needed(inline=scan)
            return self._refresh(mtimes)
        except sqlite3.DatabaseError as e:
            if not _is_corrupt(e):
                raise
            self._recover()
            return self._reset_changes()

    def _reset_changes(self) -> Changes:
        removed = list(self._uids)
        self._scan_if_needed()
        self._load_view()
        return Changes(self.records(), removed, [], uidvalidity_changed=True)

    def _refresh(self, mtimes: tuple[int, int] | None = None) -> Changes:
        changes = Changes()
        if mtimes is None:
            mtimes = _dir_mtimes(self.path)
        if not self._dirty and self._version() == self._data_version:
            self._mtimes = mtimes               # nobody committed anything since
            return changes
        with self._transaction(write=False) as conn:
            meta = self._meta()
            version = self._version()           # of this read snapshot
            if meta[0] != self.uidvalidity:
                changes = None
            elif meta[2] != self._seen:
                rows = conn.execute(f"SELECT {_ROW} FROM messages WHERE modseq > ?"
                                    " ORDER BY uid", (self._seen,)).fetchall()
                gone = [uid for (uid,) in conn.execute(
                    "SELECT uid FROM expunged WHERE modseq > ?", (self._seen,))]
        if changes is None:
            return self._reset_changes()
        self._mtimes = mtimes
        self._data_version = version
        self._dirty = False
        if meta[2] == self._seen:
            return changes
        removed = sorted(uid for uid in gone if self._position(uid) >= 0)
        self._drop(removed)
        changes.removed = removed
        rows = self._with_sizes(rows)
        for row in rows:
            uid, modseq = row[0], row[8]
            i = self._position(uid)
            if i < 0:
                record = self._record(row)
                changes.added.append(record)
                if not self._uids or uid > self._uids[-1]:
                    self._uids.append(uid)
                    self._fids.append(self._fid(record.flags))
                    self._modseqs.append(modseq)
                else:
                    self._uids.insert(i := bisect.bisect_left(self._uids, uid), uid)
                    self._fids.insert(i, self._fid(record.flags))
                    self._modseqs.insert(i, modseq)
            elif self._modseqs[i] != modseq:
                record = self._record(row)
                self._fids[i] = self._fid(record.flags)
                self._modseqs[i] = modseq
                changes.changed.append(record)
        self.uidnext = meta[1]
        self._seen = meta[2]
        self.highestmodseq = max(self.highestmodseq, meta[2])
        return changes

    def changed_since_last_sync(self) -> bool:
        """Would :meth:`sync` find anything?  Cheap enough to poll (IDLE): two directory
        stats, one index stat and SQLite's data_version; it may say True for nothing."""
        try:
            mtimes = _dir_mtimes(self.path)
        except FileNotFoundError:
            return True
        if mtimes != self._mtimes:
            return True
        now = time.time_ns()
        if not (_settled(mtimes[0], now) and _settled(mtimes[1], now)):
            return True
        if self._dirty or self._db_replaced():
            return True
        version = self._version()
        if version == self._data_version:
            return False
        meta = self._meta()
        if meta[0] == self.uidvalidity and meta[2] == self._seen:
            self._data_version = version
            return False
        return True

    def uids(self) -> array:
        """The view's uids, ascending (a copy; 4 bytes a message)."""
        return array("I", self._uids)

    def __len__(self) -> int:
        return len(self._uids)

    def flags(self, uid: int) -> frozenset | None:
        """The view's flags of ``uid`` (no database access), or None."""
        i = self._position(uid)
        return self._fsets[self._fids[i]] if i >= 0 else None

    def modseq(self, uid: int) -> int | None:
        """The view's modseq of ``uid``, or None."""
        i = self._position(uid)
        return self._modseqs[i] if i >= 0 else None

    def recent_count(self) -> int:
        """How many messages of the view the next :meth:`claim_recent` would get
        (STATUS RECENT); claims nothing."""
        mark = self._conn.execute("SELECT recent_mark FROM meta").fetchone()[0]
        return len(self._uids) - bisect.bisect_left(self._uids, mark)

    def status_counts(self, size: bool = True) -> dict[str, int]:
        """STATUS MESSAGES, UNSEEN, DELETED and SIZE (sum of RFC822.SIZE) of the view,
        without building a record for each message.  ``size`` False leaves SIZE out
        (it may have to read messages whose rfc822 size is not known yet)."""
        seen = [("\\Seen" in f, "\\Deleted" in f) for f in self._fsets]
        unseen = deleted = 0
        for fid in self._fids:
            is_seen, is_deleted = seen[fid]
            unseen += not is_seen
            deleted += is_deleted
        counts = {"MESSAGES": len(self._uids), "UNSEEN": unseen, "DELETED": deleted}
        if size:
            fills: list[tuple[int, int, str]] = []
            with self._transaction(write=False) as conn:     # one snapshot for both
                total = conn.execute(
                    "SELECT coalesce(sum(rfc822_size), 0) FROM messages WHERE uid < ?"
                    " AND rfc822_size >= 0", (self.uidnext,)).fetchone()[0]
                unknown = conn.execute(
                    "SELECT uid, key, dir, info, size FROM messages"
                    " WHERE uid < ? AND rfc822_size < 0", (self.uidnext,)).fetchall()
            for uid, key, sub, info, stored in unknown:
                total += self._measure_size(f"{self.path}/{sub}/{key}{info}", stored, fills,
                                            uid, key)
            self._store_sizes(fills)
            counts["SIZE"] = total
        return counts

    def view_arrays(self) -> tuple[array, array, list[frozenset], array]:
        """(uids, flag-set numbers, flag sets, modseqs) of the view, by position: the
        live arrays, for rendering many messages at once.  Read only, and only
        until the next call that changes the view."""
        return self._uids, self._fids, self._fsets, self._modseqs

    def uids_with(self, flag: str) -> list[int]:
        """The view's uids whose flags include ``flag``, ascending (EXPUNGE's
        \\Deleted): a C-speed search of the view for each flag set that has it."""
        fids, uids = self._fids, self._uids
        positions: list[int] = []
        for fid, flags in enumerate(self._fsets):
            if flag in flags:
                i = -1
                with contextlib.suppress(ValueError):
                    while True:
                        i = fids.index(fid, i + 1)
                        positions.append(i)
        return [uids[i] for i in sorted(positions)]

    def flag_summary(self, flag: str = "\\Seen") -> tuple[int, set[str]]:
        """(position in the view of the first message without ``flag`` or -1, the
        keywords of the view's messages): SELECT's UNSEEN and FLAGS without a Python
        step per message (the view holds a small number for each flag set)."""
        raw = self._fids.tobytes()
        width = self._fids.itemsize
        keywords: set[str] = set()
        first = -1
        for fid, flags in enumerate(self._fsets):
            position = _first_item(raw, fid.to_bytes(width, sys.byteorder), width)
            if position < 0:
                continue                                    # no message has this set
            keywords.update(f for f in flags if not f.startswith("\\"))
            if flag not in flags and (first < 0 or position < first):
                first = position
        return first, keywords

    def records(self, uids: Iterable[int] | None = None) -> list[MessageRecord]:
        """Every message, ascending uid (as of the last sync); ``uids`` limits
        them to those (in the view) uids."""
        view, fsets, fids, modseqs = self._uids, self._fsets, self._fids, self._modseqs
        if uids is not None:
            wanted = sorted({uid for uid in uids if self._position(uid) >= 0})
            if len(wanted) < 500:
                return self._few_records(wanted)
            wanted_set = set(wanted)
        else:
            wanted_set = None
        out: list[MessageRecord] = []
        missing: list[int] = []
        fills: list[tuple[int, int, str]] = []
        i, n = 0, len(view)
        path = self.path
        for uid, key, sub, info, _kw, size, vsize, date, _m in self._conn.execute(
                f"SELECT {_ROW} FROM messages WHERE uid < ? ORDER BY uid", (self.uidnext,)):
            while i < n and view[i] < uid:
                missing.append(i)
                i += 1
            if i < n and view[i] == uid:
                if wanted_set is None or uid in wanted_set:
                    file = f"{path}/{sub}/{key}{info}"
                    if vsize < 0:
                        vsize = self._measure_size(file, size, fills, uid, key)
                    out.append(MessageRecord(uid, key, file, size, vsize, fsets[fids[i]],
                                             date, modseqs[i]))
                i += 1
        missing.extend(range(i, n))
        self._store_sizes(fills)
        if missing:                          # expunged by another process since our sync
            out.extend(r for r in (self._tombstone_record(view[j]) for j in missing)
                       if r is not None and (wanted_set is None or r.uid in wanted_set))
            out.sort(key=lambda r: r.uid)
        return out

    def record(self, uid: int) -> MessageRecord | None:
        """One message of the view (as of the last sync), or None."""
        found = self._few_records([uid] if self._position(uid) >= 0 else [])
        return found[0] if found else None

    def _few_records(self, wanted: list[int]) -> list[MessageRecord]:
        """records() of a few uids of the view (sorted): one query."""
        if not wanted:
            return []
        rows = []
        for start in range(0, len(wanted), 250):
            part = wanted[start:start + 250]
            rows += self._conn.execute(
                f"SELECT {_ROW} FROM messages WHERE uid IN ({','.join('?' * len(part))})",
                part).fetchall()
        rows = self._with_sizes(rows)
        fsets, fids, modseqs = self._fsets, self._fids, self._modseqs
        out = []
        for row in rows:
            i = self._position(row[0])
            if i >= 0:
                out.append(self._record(row, fsets[fids[i]], modseqs[i]))
        if len(rows) < len(wanted):            # expunged by another process since our sync
            got = {row[0] for row in rows}
            out += [r for r in (self._tombstone_record(uid) for uid in wanted
                                if uid not in got) if r is not None]
        out.sort(key=lambda r: r.uid)
        return out

    # -- rfc822 sizes computed when first needed -------------------------------------

    def _measure_size(self, file: str, size: int, fills: list, uid: int, key: str) -> int:
        """The rfc822 size of a message whose row has none; remembered in ``fills``
        for :meth:`_store_sizes`.  A file gone meanwhile counts its stored size."""
        try:
            vsize = file_rfc822_size(file)
        except OSError:
            return size
        fills.append((vsize, uid, key))
        return vsize

    def _with_sizes(self, rows: list[tuple]) -> list[tuple]:
        """``rows`` (in _ROW order) with every unknown rfc822 size computed and stored."""
        if all(row[6] >= 0 for row in rows):
            return rows
        fills: list[tuple[int, int, str]] = []
        out = []
        for row in rows:
            if row[6] < 0:
                file = f"{self.path}/{row[2]}/{row[1]}{row[3]}"
                row = (*row[:6], self._measure_size(file, row[5], fills, row[0], row[1]),
                       *row[7:])
            out.append(row)
        self._store_sizes(fills)
        return out

    def _sized(self, records: list) -> list:
        """``records`` (MessageRecord or None) with unknown rfc822 sizes computed."""
        if all(r is None or r.rfc822_size >= 0 for r in records):
            return records
        fills: list[tuple[int, int, str]] = []
        out = [r if r is None or r.rfc822_size >= 0 else dataclasses.replace(
            r, rfc822_size=self._measure_size(r.path, r.size, fills, r.uid, r.key))
            for r in records]
        self._store_sizes(fills)
        return out

    def _store_sizes(self, fills: list[tuple[int, int, str]]) -> None:
        """Remember computed sizes (content, not state: no modseq; best effort)."""
        if not fills:
            return
        try:
            with self._transaction() as conn:
                conn.executemany("UPDATE messages SET rfc822_size = ? WHERE uid = ? AND key = ?"
                                 " AND rfc822_size < 0", fills)
        except sqlite3.OperationalError:        # e.g. busy: compute again next time
            pass
        fills.clear()

    def _tombstone_record(self, uid: int) -> MessageRecord | None:
        i = self._position(uid)
        row = self._conn.execute(
            "SELECT uid, key, dir, info, '', size, rfc822_size, internaldate, modseq"
            " FROM expunged WHERE uid = ?", (uid,)).fetchone()
        if row is None or i < 0:
            return None
        if row[6] < 0:                          # the file is gone: its stored size
            row = (*row[:6], row[5], *row[7:])
        return self._record(row, self._fsets[self._fids[i]], self._modseqs[i])

    def _path_of(self, uid: int) -> tuple | None:
        return self._conn.execute(f"SELECT {_ROW} FROM messages WHERE uid = ?",
                                  (uid,)).fetchone()

    def read(self, uid: int) -> bytes:
        """The message as stored (LF or CRLF line endings as on disk).  Raises
        FileNotFoundError when it vanished (expunged by another process)."""
        for attempt in range(2):
            row = self._path_of(uid)
            if row is not None:
                try:
                    with open(f"{self.path}/{row[2]}/{row[1]}{row[3]}", "rb") as f:
                        return f.read()
                except FileNotFoundError:
                    if attempt:
                        raise
                    self._scan_if_needed(force=True)      # renamed by another process?
                    continue
            break
        raise FileNotFoundError(f"message {uid} of {self.path} is gone")

    def store_flags(self, uid: int, flags: frozenset, unchanged_since: int | None = None
                    ) -> MessageRecord | None:
        """Replace the flags (rename the file for system flags, keywords in the index);
        bump modseq.  None if the message is gone or its modseq > unchanged_since."""
        return self.store_many([(uid, flags)], unchanged_since)[0]

    def store_many(self, updates: Iterable[tuple[int, frozenset]],
                   unchanged_since: int | None = None) -> list[MessageRecord | None]:
        """:meth:`store_flags` for many messages in one transaction (one modseq for
        all): ``updates`` is (uid, new flags) pairs; one result for each, in order."""
        results: list[MessageRecord | None] = []
        with self._transaction() as conn:
            modseq = conn.execute("SELECT highestmodseq FROM meta").fetchone()[0] + 1
            bumped = False
            for uid, flags in updates:
                record = self._store_locked(uid, flags, unchanged_since, modseq)
                bumped = bumped or (record is not None and record.modseq == modseq)
                results.append(record)
            if bumped:
                conn.execute("UPDATE meta SET highestmodseq = max(highestmodseq, ?)",
                             (modseq,))
        results = self._sized(results)
        for record in results:
            if record is not None:
                i = self._position(record.uid)
                if i >= 0:
                    self._fids[i] = self._fid(record.flags)
                    self._modseqs[i] = record.modseq
                    self.highestmodseq = max(self.highestmodseq, record.modseq)
        return results

    def _store_locked(self, uid: int, flags: frozenset, unchanged_since: int | None,
                      modseq: int) -> MessageRecord | None:
        conn = self._conn
        for attempt in range(2):
            row = conn.execute(f"SELECT {_ROW} FROM messages WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                return None
            _, key, sub, info, keywords, *_rest, old_modseq = row
            if unchanged_since is not None and old_modseq > unchanged_since:
                return None
            new_info, new_keywords = _split_flags(flags, info)
            if _system_letters(new_info) == _system_letters(info):
                new_info = info                 # no rename for keyword-only changes
            if new_info == info and new_keywords == keywords:
                return self._record(row)        # nothing changes: same modseq
            new_sub = "cur" if new_info != info else sub
            if new_info != info:
                try:
                    fsutil.rename(f"{self.path}/{sub}/{key}{info}",
                                  f"{self.path}/cur/{key}{new_info}")
                except FileNotFoundError:       # renamed or removed by another process
                    if attempt:
                        return None
                    self._scan_locked(force=True, modseq=modseq)
                    continue
                self._known_move((sub, key + info), ("cur", key + new_info))
            conn.execute("UPDATE messages SET dir = ?, info = ?, keywords = ?, modseq = ?"
                         " WHERE uid = ?", (new_sub, new_info, new_keywords, modseq, uid))
            return self._record((uid, key, new_sub, new_info, new_keywords, *row[5:8],
                                 modseq))
        return None

    def append(self, data: bytes, flags: frozenset = frozenset(),
               internaldate: float | None = None, claim_recent: bool = False
               ) -> MessageRecord:
        """Store a new message durably (tmp, fsync, rename into cur with flags, dir fsync),
        give it the next UID; internaldate (default: now) sets the file mtime.

        ``claim_recent``: this object's session has the folder selected read-write and
        is the first to see the message (\\Recent), unless older messages still wait
        for their claim: :meth:`claim_recent` reports it, and then needs no write of
        its own (the mark moved in this transaction)."""
        info, keywords = _split_flags(flags, "")
        size = len(data)
        cur = os.path.join(self.path, "cur")
        # the date is written with the file (no stat afterwards to learn it)
        date = time.time() if internaldate is None else internaldate
        while True:
            unique = fsutil.unique_name()
            tmp = os.path.join(self.path, "tmp", unique)
            try:
                fsutil.write_new_file_dated(tmp, [data], date)
                break
            except FileExistsError:
                continue
        vsize = rfc822_size(data)
        key = f"{unique},S={size},W={vsize}"
        try:
            fsutil.rename(tmp, os.path.join(cur, key + info))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsutil.fsync_dir(cur)
        (record,) = self._insert_new([(key, "cur", info, keywords, size, vsize, date)],
                                     claim_recent)
        self._add_usage(size, 1)
        return record

    def _insert_new(self, entries: list[tuple], claim_recent: bool = False
                    ) -> list[MessageRecord]:
        """Number files this process just put in cur/ (one durable transaction, in
        order).  A file another process's scan numbered first keeps that UID (and
        gets our keywords and date; the UID reserved for it stays unused, a gap).

        Few statements (each one lets the interpreter lock go, which costs a thread
        switch while the reactor is busy): the UIDs and the modseq are reserved by
        one UPDATE ... RETURNING, each row is one INSERT OR IGNORE.  With
        ``claim_recent`` that UPDATE also moves the recent mark past them when it
        stood at the first (see :meth:`append`)."""
        out = []
        n = len(entries)
        self._checkpoint_if_due()
        # (the right-hand sides of an UPDATE all see the row as it was)
        mark = (", recent_mark = CASE WHEN recent_mark = uidnext THEN uidnext + ?"
                " ELSE recent_mark END" if claim_recent else "")
        with self._transaction(durable=True) as conn:
            first, modseq, new_mark = conn.execute(
                "UPDATE meta SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1"
                f"{mark} RETURNING uidnext - ?, highestmodseq, recent_mark",
                (n, n, n) if claim_recent else (n, n)).fetchone()
            claimed = claim_recent and new_mark == first + n
            for i, (key, sub, info, keywords, size, vsize, date) in enumerate(entries):
                uid = first + i
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (uid, key, sub, info, keywords, size, vsize, date, modseq)).rowcount
                if inserted != 1:               # numbered by another process's scan
                    uid = conn.execute("SELECT uid FROM messages WHERE key = ?",
                                       (key,)).fetchone()[0]
                    conn.execute("UPDATE messages SET keywords = ?, internaldate = ?,"
                                 " modseq = ? WHERE uid = ?", (keywords, date, modseq, uid))
                elif claimed:
                    self._own_recent.add(uid)
                out.append(self._record((uid, key, sub, info, keywords, size, vsize, date,
                                         modseq)))
        for key, sub, info, *_rest in entries:
            self._known_move(None, (sub, key + info))
        self._dirty = True
        return self._sized(out)

    def _add_usage(self, size: int, count: int) -> None:
        record_usage(self.path, size, count)

    def copy_to(self, uids: list[int], target: FolderIndex) -> list[tuple[int, int]]:
        """Copy messages keeping flags and internaldate (hard link when possible);
        returns (source uid, new uid) pairs for COPYUID."""
        sources = []
        entries = []
        cur = os.path.join(target.path, "cur")
        tmp_dir = os.path.join(target.path, "tmp")
        for uid in sorted(set(uids)):
            for attempt in range(2):
                row = self._path_of(uid)
                if row is None:
                    break
                _, key, sub, info, keywords, size, vsize, date, _m = row
                letters = "".join(sorted(_letters(info)))
                new_key = f"{fsutil.unique_name()},S={size}" + (f",W={vsize}" if vsize >= 0
                                                                else "")
                new_info = ":2," + letters
                try:
                    fsutil.link_or_copy(f"{self.path}/{sub}/{key}{info}",
                                        os.path.join(cur, new_key + new_info), tmp_dir, date)
                except FileNotFoundError:
                    if attempt:
                        break
                    self._scan_if_needed(force=True)
                    continue
                sources.append(uid)
                entries.append((new_key, "cur", new_info, keywords, size, vsize, date))
                break
        if not entries:
            return []
        fsutil.fsync_dir(cur)
        records = target._insert_new(entries)
        target._add_usage(sum(e[4] for e in entries), len(entries))
        return [(uid, record.uid) for uid, record in zip(sources, records, strict=True)]

    def expunge(self, uids: list[int]) -> list[int]:
        """Remove the messages' files; remember (uid, modseq) for QRESYNC VANISHED;
        returns the uids actually removed.  The directories are fsynced and the
        quota file (``maildirsize``) gets its line before it returns: blocking
        work, for a thread."""
        self._checkpoint_if_due()
        removed, size = self._expunge(uids, sync_dirs=True)
        self._add_usage(-size, -len(removed))
        return removed

    def expunge_unsynced(self, uids: list[int]) -> tuple[list[int], int]:
        """:meth:`expunge` without the fsyncs: unlinks and one index commit
        (``synchronous = NORMAL``), no directory fsync and no ``maildirsize`` line;
        returns (uids removed, their bytes) for the caller's
        :func:`record_usage`.  Cheap enough for the reactor thread when few
        messages go (an IMAP EXPUNGE of a handful, like a STORE's renames).

        Why no fsync is needed: a crash may bring an expunged message back (its
        unlink or its tombstone lost), never lose another one.  It cannot make a
        UID name two messages either: this commit gives out no UID, and a UID is
        only ever given out by a durable commit (:meth:`_insert_new`, a scan's
        :meth:`_sync_wal`), which also makes every earlier WAL frame (these
        tombstones) durable.  After a crash the message is found under its old row
        (same UID, same file) or, if only the tombstone survived, numbered afresh
        as a new message with a new UID."""
        return self._expunge(uids, sync_dirs=False)

    def _expunge(self, uids: list[int], sync_dirs: bool) -> tuple[list[int], int]:
        removed: list[int] = []
        size = 0
        dirs = set()
        wanted = sorted(set(uids))
        if not wanted:
            return [], 0
        with self._transaction() as conn:
            rescanned = False
            for uid in wanted:
                for _attempt in range(2):
                    row = conn.execute("SELECT key, dir, info, size FROM messages WHERE uid = ?",
                                       (uid,)).fetchone()
                    if row is None:
                        break
                    try:
                        fsutil.remove_file(f"{self.path}/{row[1]}/{row[0]}{row[2]}")
                    except FileNotFoundError:
                        if rescanned:
                            break
                        rescanned = True
                        self._scan_locked(force=True)
                        continue
                    self._known_move((row[1], row[0] + row[2]), None)
                    removed.append(uid)
                    size += row[3]
                    dirs.add(os.path.join(self.path, row[1]))
                    break
            if removed:
                if sync_dirs:
                    fsutil.fsync_dirs(sorted(dirs))
                (modseq,) = conn.execute("UPDATE meta SET highestmodseq = highestmodseq + 1"
                                         " RETURNING highestmodseq").fetchone()
                self._tombstone(removed, modseq)
                self.highestmodseq = max(self.highestmodseq, modseq)
        self._drop(removed)
        return removed, size

    def vanished_since(self, modseq: int) -> list[int]:
        """UIDs expunged after ``modseq`` (for QRESYNC)."""
        return [uid for (uid,) in self._conn.execute(
            "SELECT uid FROM expunged WHERE modseq > ? ORDER BY uid", (modseq,))]

    def claim_recent(self) -> set[int]:
        """The uids this caller is the first to see (\\Recent): those at or above the
        index's recent mark; moves the mark to uidnext.  At most one session gets each.

        Only the uids in this object's view are claimed (the mark moves to the
        view's uidnext), so a message not yet synced stays for the next claim.
        Messages this object's :meth:`append` claimed count too, once they are in the
        view.  Nothing to claim (the mark at the view's uidnext): one read, no write
        transaction (the mark only ever moves up)."""
        own = set()
        if self._own_recent:
            own = {uid for uid in self._own_recent if self._position(uid) >= 0}
            self._own_recent -= own
        mark = self._conn.execute("SELECT recent_mark FROM meta").fetchone()[0]
        if self.uidnext <= mark:
            return own
        with self._transaction() as conn:
            mark = conn.execute("SELECT recent_mark FROM meta").fetchone()[0]
            if self.uidnext > mark:
                conn.execute("UPDATE meta SET recent_mark = ?", (self.uidnext,))
        if self.uidnext <= mark:
            return own
        return own | set(self._uids[bisect.bisect_left(self._uids, mark):])

    def peek_recent(self) -> set[int]:
        """The uids :meth:`claim_recent` would give now, claiming none (EXAMINE must
        not take \\Recent away from the next session, RFC 3501 6.3.2)."""
        mark = self._conn.execute("SELECT recent_mark FROM meta").fetchone()[0]
        return set(self._uids[bisect.bisect_left(self._uids, mark):])

    def cache_get(self, uid: int, key: str) -> bytes | None:
        """A cached blob for the message (e.g. key="structure"), or None."""
        row = self._conn.execute("SELECT blob FROM cache WHERE uid = ? AND name = ?",
                                 (uid, key)).fetchone()
        return None if row is None else bytes(row[0])

    def cache_get_many(self, uids: Iterable[int], key: str) -> dict[int, bytes]:
        """:meth:`cache_get` of many messages in few queries: {uid: blob} of those
        that have one."""
        wanted = sorted(set(uids))
        out: dict[int, bytes] = {}
        for start in range(0, len(wanted), 250):
            part = wanted[start:start + 250]
            for uid, blob in self._conn.execute(
                    f"SELECT uid, blob FROM cache WHERE name = ? AND uid IN"
                    f" ({','.join('?' * len(part))})", (key, *part)):
                out[uid] = bytes(blob)
        return out

    def cache_put(self, uid: int, key: str, blob: bytes) -> None:
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM messages WHERE uid = ?", (uid,)).fetchone():
                conn.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?)",
                             (uid, key, bytes(blob)))


def _guarded(method):
    """Hold the index's guard during the call (see :meth:`FolderIndex.close`)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._guard:
            self._depth += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0 and self._close_pending:
                    self._close_pending = False
                    self._close_now()

    return call


for _name in ("sync", "changed_since_last_sync", "recent_count", "status_counts", "records",
              "record", "read", "store_many", "append", "copy_to", "expunge", "expunge_unsynced",
              "vanished_since", "claim_recent", "peek_recent", "cache_get", "cache_get_many",
              "cache_put"):
    setattr(FolderIndex, _name, _guarded(getattr(FolderIndex, _name)))
del _name
