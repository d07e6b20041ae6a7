"""Maildir++ quota: IndiMail's quota specs and Courier's ``maildirsize`` file.

Two halves:

* Quota specs, as stored in the ``pw_shell`` column (``5242880``,
  ``5242880,1000``, Courier's ``5242880S,1000C`` or ``NOQUOTA``) and as typed to
  vadduser/vmoduser/vsetuserquota ``-q`` (``5M``, ``+1M``, ``NOQUOTA``).
  Suffixes k/m/g are powers of 1024, as in IndiMail's ``parse_quota.c``.
  Numbers are decimal only (IndiMail's ``strtoll(..., 0)`` would read ``010`` as
  octal 8; we refuse to guess).
* ``Maildir/maildirsize`` (Courier maildirquota(7)): a header ``<bytes>S`` or
  ``<bytes>S,<count>C``, then ``<size-delta> <count-delta>`` lines.  Writers
  append one line with ``O_APPEND`` and no lock; a recalculation scans the
  folders and replaces the file (temp file in ``tmp/`` + rename) while holding
  an fcntl lock on ``maildirsize.lock``.  Like Courier's, the cache is
  approximate between recalculations: a delta appended while a recalculation
  renames the file may be lost or counted twice, and the next recalculation
  corrects it.

Every function here does blocking file I/O; the server calls them in a thread
(``deferToThread``), never on the reactor thread.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from indimail_tw.fsutil import fsync_dir, unique_name, write_all

MAILDIRSIZE = "maildirsize"
LOCK_NAME = "maildirsize.lock"
#: IndiMail's defaults (env MAILDIRSIZE_MAX_SIZE, MAILDIRSIZE_MAX_AGE, OVERQUOTA_MAILSIZE).
MAILDIRSIZE_MAX_SIZE = 8192
MAILDIRSIZE_MAX_AGE = 43200
OVERQUOTA_MAILSIZE = 1000

_MAX_VALUE = 2**63 - 1  # BIGINT, IndiMail's mdir_t
_MULTIPLIERS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_COMPONENT = re.compile(r"([0-9]+)([kKmMgGsScC]?)")
_RELATIVE = re.compile(r"([+-])([0-9]+)([kKmMgG]?)")
_USAGE_LINE = re.compile(r"\s*(-?[0-9]+)\s+(-?[0-9]+)\s*")
_SPEC_HELP = "expected <bytes>[k|m|g][,<count>], <bytes>S,<count>C or NOQUOTA"
_SCAN_ATTEMPTS = 3


@dataclass(frozen=True)
class Quota:
    """A limit on total message bytes and on message count; 0 means unlimited."""

    bytes: int
    count: int = 0

    def __post_init__(self) -> None:
        for value in (self.bytes, self.count):
            if not isinstance(value, int) or value < 0 or value > _MAX_VALUE:
                raise ValueError(f"quota values must be integers in 0..2**63-1: {self!r}")

    @property
    def unlimited(self) -> bool:
        return self.bytes == 0 and self.count == 0


@dataclass(frozen=True)
class Usage:
    """What ``maildirsize`` says: summed usage, its header, and facts about the file."""

    bytes: int
    count: int
    quota: Quota | None  # the header; None when the header line is empty
    lines: int  # usage lines after the header
    size_of_file: int
    mtime: float
    corrupt: bool = False  # a malformed header or line was seen


@dataclass(frozen=True)
class QuotaCheck:
    """The answer for one incoming message."""

    allowed: bool
    over_quota: bool
    grace: bool  # over quota but small enough to be accepted anyway
    reason: str  # "", "size" or "count"
    quota: Quota | None
    usage: Usage | None  # None when there is no limit to check


# -- quota specs ------------------------------------------------------------

def _parse_spec(text: str) -> tuple[int | None, int | None]:
    """Split a spec into (bytes, count); bytes None means NOQUOTA, count None means absent."""
    parts = [part.strip() for part in text.strip().split(",")]
    if not parts[0] or len(parts) > 2:
        raise ValueError(f"invalid quota {text!r}: {_SPEC_HELP}")
    size: int | None = None
    count: int | None = None
    noquota = parts[0].upper() == "NOQUOTA"
    for index, part in enumerate(parts):
        if index == 0 and noquota:
            continue
        match = _COMPONENT.fullmatch(part)
        if match is None:
            raise ValueError(f"invalid quota {text!r}: bad part {part!r}; {_SPEC_HELP}")
        value, unit = int(match[1]), match[2].lower()
        is_count = unit == "c" or (index == 1 and unit == "")
        if unit in _MULTIPLIERS:
            value *= _MULTIPLIERS[unit]
        if value > _MAX_VALUE:
            raise ValueError(f"invalid quota {text!r}: {part!r} is too large")
        if is_count and count is None:
            count = value
        elif not is_count and size is None and not noquota:
            size = value
        else:
            raise ValueError(f"invalid quota {text!r}: {_SPEC_HELP}")
    if size is None and not noquota:
        size = 0  # a count-only Courier spec such as "100C"
    return size, count


def parse_quota(pw_shell: str) -> Quota | None:
    """Parse the pw_shell column; ``NOQUOTA`` (any case) gives None (unlimited)."""
    size, count = _parse_spec(pw_shell)
    if size is None and not count:
        return None
    return Quota(size or 0, count or 0)


def parse_quota_arg(text: str, current: Quota | None = None) -> Quota | None:
    """Parse a ``-q`` argument of vadduser, vmoduser or vsetuserquota.

    ``+N``/``-N`` (k/m/g allowed) change the current byte limit (vmoduser).  A
    spec without a count keeps ``current``'s count, as vmoduser does; pass
    ``current=None`` for vadduser/vsetuserquota, which then set no count.
    Deviations from IndiMail, which would silently do something surprising:
    a relative change of an unlimited byte limit, or one that leaves 0 or
    less, raises ValueError instead of setting a tiny limit or removing it.
    """
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative is None:
        if text.startswith(("+", "-")):
            raise ValueError(f"invalid relative quota {text!r}: expected +N or -N, k|m|g allowed")
        size, count = _parse_spec(text)
        if size is None and not count:
            return None
        if count is None and current is not None:
            count = current.count
        return Quota(size or 0, count or 0)
    if current is None or current.bytes == 0:
        raise ValueError(f"cannot apply {text!r}: the current byte quota is unlimited")
    delta = int(relative[2]) * _MULTIPLIERS[relative[3].lower()]
    size = current.bytes + delta if relative[1] == "+" else current.bytes - delta
    if size <= 0:
        raise ValueError(f"quota {current.bytes}{text} leaves {size} bytes; use NOQUOTA for none")
    if size > _MAX_VALUE:
        raise ValueError(f"quota {current.bytes} {text} is too large")
    return Quota(size, current.count)


def format_quota(q: Quota | None) -> str:
    """The pw_shell form: ``NOQUOTA``, ``bytes`` or ``bytes,count``."""
    if q is None:
        return "NOQUOTA"
    return f"{q.bytes},{q.count}" if q.count else str(q.bytes)


def _header(q: Quota | None) -> str:
    q = q or Quota(0)
    return f"{q.bytes}S,{q.count}C" if q.count else f"{q.bytes}S"


# -- maildirsize -------------------------------------------------------------

def read_usage(maildir: str) -> Usage | None:
    """Sum ``maildirsize``; None if the file does not exist."""
    try:
        fd = os.open(os.path.join(maildir, MAILDIRSIZE), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    text = b"".join(chunks).decode("ascii", "replace")
    corrupt = bool(text) and not text.endswith("\n")
    if corrupt:  # a torn last line: its numbers may be cut short, so ignore it
        text = text[:text.rfind("\n") + 1] or text
    header, _, body = text.partition("\n")
    quota = None
    if header.strip():
        try:
            quota = parse_quota(header)
        except ValueError:
            corrupt = True
    size = count = lines = 0
    for line in body.splitlines():
        if not line.strip():
            continue
        match = _USAGE_LINE.fullmatch(line)
        if match is None:
            corrupt = True
            continue
        size += int(match[1])
        count += int(match[2])
        lines += 1
    return Usage(size, count, quota, lines, st.st_size, st.st_mtime, corrupt)


def add_usage(maildir: str, size_delta: int, count_delta: int) -> bool:
    """Append one ``<size> <count>`` line; False (and nothing written) if there is no file.

    A single ``O_APPEND`` write needs no lock (Courier's rule).  A missing file
    is left missing: the next check recalculates it from the folders.
    """
    try:
        fd = os.open(os.path.join(maildir, MAILDIRSIZE), os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return False
    try:
        write_all(fd, f"{int(size_delta)} {int(count_delta)}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def needs_recalc(usage: Usage | None, now: float, max_size: int = MAILDIRSIZE_MAX_SIZE,
                 max_age: float = MAILDIRSIZE_MAX_AGE, mtime: float | None = None) -> bool:
    """True when the cache must be rebuilt from a folder scan.

    IndiMail's rule (recalc_quota.c): the file is missing, larger than
    ``max_size`` or at least ``max_age`` seconds old (``mtime`` defaults to the
    file's).  It replaces Courier's 5120-byte limit; Courier's "over quota and
    older than 15 minutes" recheck is :func:`check_quota`'s ``recheck_age``.
    Negative totals or a corrupt file also force a rebuild.
    """
    if usage is None or usage.corrupt or usage.bytes < 0 or usage.count < 0:
        return True
    if usage.size_of_file > max_size:
        return True
    return now - (usage.mtime if mtime is None else mtime) >= max_age


def recalculate(maildir: str, quota: Quota | None, include_trash: bool = False) -> Usage:
    """Scan INBOX and the Maildir++ folders and write a fresh ``maildirsize``.

    Counts ``cur`` and ``new`` (not ``tmp``), skips ``.Trash`` and its
    subfolders unless ``include_trash``.  Messages flagged T (deleted, not yet
    expunged) are counted, since their expunge will subtract them.  If a
    directory changed during the scan it is repeated (a few times at most).
    ``quota=None`` writes IndiMail's no-limit header ``0S``.
    """
    with _recalc_lock(maildir):
        for _ in range(_SCAN_ATTEMPTS):
            before = _stamps(maildir, include_trash)
            size = count = 0
            for directory in _message_dirs(maildir, include_trash):
                dir_size, dir_count = _count_dir(directory)
                size += dir_size
                count += dir_count
            if _stamps(maildir, include_trash) == before:
                break
        data = f"{_header(quota)}\n{size} {count}\n".encode("ascii")
        mtime = _replace_maildirsize(maildir, data)
    return Usage(size, count, quota or Quota(0), 1, len(data), mtime)


def write_header(maildir: str, quota: Quota | None, include_trash: bool = False) -> Usage | None:
    """Set the quota in ``maildirsize`` (with current usage), or remove the file for no quota."""
    if quota is not None and not quota.unlimited:
        return recalculate(maildir, quota, include_trash)
    with _recalc_lock(maildir):
        try:
            os.unlink(os.path.join(maildir, MAILDIRSIZE))
        except FileNotFoundError:
            return None
        fsync_dir(maildir)
    return None


def check_quota(maildir: str, quota: Quota | None, message_size: int,
                overquota_mailsize: int = OVERQUOTA_MAILSIZE, *, now: float | None = None,
                include_trash: bool = False, max_size: int = MAILDIRSIZE_MAX_SIZE,
                max_age: float = MAILDIRSIZE_MAX_AGE, recheck_age: float = 0.0,
                fast: bool = False) -> QuotaCheck:
    """May a message of ``message_size`` bytes be delivered to ``maildir``?

    Over quota means usage + message > byte limit, or count + 1 > count limit.
    A message still over after a fresh recount (IndiMail always recounts;
    ``recheck_age=900`` gives Courier's 15-minute throttle) is refused unless
    it is at most ``overquota_mailsize`` bytes (admin notices get through).
    ``fast`` is IndiMail's FAST_QUOTA: trust an existing file, never rescan it.
    A ``maildirsize`` whose header differs from ``quota`` is rebuilt.  The
    caller appends the message's usage with :func:`add_usage` once delivered.
    """
    if quota is None or quota.unlimited:
        return QuotaCheck(True, False, False, "", quota, None)
    now = time.time() if now is None else now
    usage = read_usage(maildir)
    fresh = False
    if usage is None or not fast and (usage.quota != quota or needs_recalc(
            usage, now, max_size, max_age)):
        usage, fresh = recalculate(maildir, quota, include_trash), True
    reason = _over(usage, quota, message_size)
    stale = recheck_age <= 0 or now - usage.mtime >= recheck_age
    if reason and stale and not fresh and not fast:
        usage = recalculate(maildir, quota, include_trash)
        reason = _over(usage, quota, message_size)
    grace = bool(reason) and message_size <= overquota_mailsize
    return QuotaCheck(not reason or grace, bool(reason), grace, reason, quota, usage)


def _over(usage: Usage, quota: Quota, message_size: int) -> str:
    if quota.bytes and usage.bytes + message_size > quota.bytes:
        return "size"
    if quota.count and usage.count + 1 > quota.count:
        return "count"
    return ""


# -- scanning ----------------------------------------------------------------

def _message_dirs(maildir: str, include_trash: bool) -> list[str]:
    """``cur`` and ``new`` of INBOX and of every Maildir++ folder we count."""
    dirs = [os.path.join(maildir, "cur"), os.path.join(maildir, "new")]
    with os.scandir(maildir) as entries:
        names = sorted(e.name for e in entries if e.name.startswith(".") and e.is_dir())
    for name in names:
        if not include_trash and (name == ".Trash" or name.startswith(".Trash.")):
            continue
        folder = os.path.join(maildir, name)
        if os.path.isfile(os.path.join(folder, "maildirfolder")) or all(
                os.path.isdir(os.path.join(folder, sub)) for sub in ("cur", "new", "tmp")):
            dirs += [os.path.join(folder, "cur"), os.path.join(folder, "new")]
    return dirs


def _count_dir(directory: str) -> tuple[int, int]:
    size = count = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                named = _size_from_name(entry.name)
                if named is None:
                    try:
                        if not entry.is_file():
                            continue
                        named = entry.stat().st_size
                    except FileNotFoundError:  # expunged or moved meanwhile
                        continue
                size += named
                count += 1
    except FileNotFoundError:
        pass
    return size, count


def _size_from_name(name: str) -> int | None:
    """The ``,S=<n>`` size before the ``:`` info part, as Courier reads it."""
    base = name.split(":", 1)[0]
    at = base.rfind(",S=")
    if at < 0:
        return None
    match = re.match(r"[0-9]+", base[at + 3:])
    return int(match[0]) if match else None


def _stamps(maildir: str, include_trash: bool) -> list[tuple[str, int]]:
    """Modification times of the root and message directories (change detection)."""
    stamps = []
    for directory in [maildir] + _message_dirs(maildir, include_trash):
        try:
            stamps.append((directory, os.stat(directory).st_mtime_ns))
        except FileNotFoundError:
            stamps.append((directory, -1))
    return stamps


# -- writing -----------------------------------------------------------------

# fcntl locks belong to the process, so threads of one process also need a
# thread lock; one of a fixed set of stripes, chosen by path, keeps it bounded.
_THREAD_LOCKS = [threading.Lock() for _ in range(64)]


@contextmanager
def _recalc_lock(maildir: str) -> Iterator[None]:
    key = os.path.realpath(maildir)
    with _THREAD_LOCKS[hash(key) % len(_THREAD_LOCKS)]:
        fd = os.open(os.path.join(maildir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _give_to_owner(fd, maildir)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the fcntl lock


def _give_to_owner(fd: int, maildir: str) -> None:
    """When run as root (admin tools), leave files owned like the Maildir."""
    if os.geteuid() == 0:
        st = os.stat(maildir)
        os.fchown(fd, st.st_uid, st.st_gid)


def _replace_maildirsize(maildir: str, data: bytes) -> float:
    """fsutil.atomic_write, but the temp file goes in ``tmp/`` and gets the Maildir's owner.

    A crash leaves the temp file where Maildir cleaners remove it, not a
    dot-file in the root that could pass for a folder.  Returns the new mtime.
    """
    tmpdir = os.path.join(maildir, "tmp")
    if not os.path.isdir(tmpdir):
        tmpdir = maildir
    tmp = os.path.join(tmpdir, f"maildirsize.{unique_name()}")
    path = os.path.join(maildir, MAILDIRSIZE)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _give_to_owner(fd, maildir)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(maildir)
    return os.stat(path).st_mtime
