"""The tcpto table: remote hosts that failed recently and are skipped for a while.

IndiMail's rules (tcpto.c): a failure to connect, a connection that dies
before the greeting, a 4xx greeting or a timeout counts against the host's IP;
failures within ``max_tolerance`` seconds (default 120, env ``MAX_TOLERANCE``)
of the last counted one count once; after two counted failures the IP is
skipped for ``penalty`` seconds (default 3600, env ``MIN_PENALTY``) after the
last; a successful connection clears it.  smtproutes can set both per route
(``domain:relay:port:penalty:max_tolerance``; penalty 0 turns the table off).

The table lives in the queue base directory as the text file ``tcpto``, one
``ip errors last-failure-unix-time`` line per host, so several server
processes share it and the CLIs read it: ``qmail-tcpto`` prints it,
``qmail-tcpok`` clears it (:func:`main_tcpto`, :func:`main_tcpok`).  Changes
are read-modify-written under ``tcpto.lock`` (flock) and replaced atomically.

:class:`TcpTo` is the server's in-memory view; file work runs in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import getopt
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from indimail_tw import fsutil
from indimail_tw.config.control import ControlDir

log = Logger()

DEFAULT_PENALTY = 3600
DEFAULT_TOLERANCE = 120
MAX_ERRORS = 10
FILENAME = "tcpto"

Stamp = tuple[int, int, int]


@dataclass(frozen=True)
class Entry:
    errors: int
    last: float


Table = dict[str, Entry]


# -- the rules (pure) --------------------------------------------------------------------------

def after_failure(entry: Entry | None, now: float, max_tolerance: int) -> Entry | None:
    """The entry after a failure; None when the failure does not count (too soon)."""
    if entry is not None and entry.errors and now < entry.last + max_tolerance:
        return None
    errors = min((entry.errors if entry else 0) + 1, MAX_ERRORS)
    return Entry(errors, now)


def is_dead(entry: Entry | None, now: float, penalty: int) -> bool:
    return entry is not None and entry.errors >= 2 and now - entry.last < penalty


# -- the file (blocking) -----------------------------------------------------------------------

def table_path(queue_base: str) -> str:
    return os.path.join(queue_base, FILENAME)


def _stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_table(path: str) -> Table:
    """The table in ``path`` (missing: empty; malformed lines are skipped)."""
    table: Table = {}
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[1].isdigit():
                    with contextlib.suppress(ValueError):
                        table[parts[0]] = Entry(int(parts[1]), float(parts[2]))
    except FileNotFoundError:
        pass
    return table


def _format(table: Table) -> bytes:
    return "".join(f"{ip} {e.errors} {int(e.last)}\n"
                   for ip, e in sorted(table.items()) if e.errors).encode("ascii")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_file(path: str, changes: Mapping[str, Entry | None]) -> tuple[Stamp | None, Table]:
    """Apply ``changes`` (None removes) to the file; return its new stamp and contents."""
    with _locked(path):
        table = read_table(path)
        for ip, entry in changes.items():
            if entry is None or not entry.errors:
                table.pop(ip, None)
            else:
                table[ip] = entry
        fsutil.atomic_write(path, _format(table))
        return _stamp(path), table


def read_if_changed(path: str, known: Stamp | None) -> tuple[Stamp | None, Table] | None:
    """The file's stamp and table when it differs from ``known``, else None."""
    stamp = _stamp(path)
    if stamp == known:
        return None
    return stamp, read_table(path)


# -- the server's view -----------------------------------------------------------------------------

class TcpTo:
    """The table in memory, persisted and re-read in a thread (``run``)."""

    def __init__(self, path: str, clock: Any, run: Callable[..., defer.Deferred]) -> None:
        self.path = path
        self.clock = clock
        self.run = run
        self.table: Table = {}
        self._stamp: Stamp | None = None
        self._pending: dict[str, Entry | None] = {}     # not yet written
        self._writing: dict[str, Entry | None] = {}     # being written
        self._busy = False

    def dead(self, ip: str, penalty: int = DEFAULT_PENALTY) -> bool:
        return penalty > 0 and is_dead(self.table.get(ip), self.clock.seconds(), penalty)

    def failed(self, ip: str, max_tolerance: int = DEFAULT_TOLERANCE) -> None:
        entry = after_failure(self.table.get(ip), self.clock.seconds(), max_tolerance)
        if entry is not None:
            self._change(ip, entry)

    def succeeded(self, ip: str) -> None:
        if ip in self.table:
            self._change(ip, None)

    def _change(self, ip: str, entry: Entry | None) -> None:
        if entry is None:
            self.table.pop(ip, None)
        else:
            self.table[ip] = entry
        self._pending[ip] = entry
        self.flush()

    def flush(self) -> defer.Deferred:
        """Write pending changes (one write at a time; more are batched behind it)."""
        if self._busy or not self._pending:
            return defer.succeed(None)
        self._busy = True
        self._writing, self._pending = self._pending, {}
        d = self.run(update_file, self.path, dict(self._writing))
        d.addCallbacks(self._written, self._write_failed)
        return d

    def _written(self, result: tuple[Stamp | None, Table]) -> None:
        self._busy = False
        self._stamp = result[0]
        self._apply(result[1])
        self._writing = {}
        self.flush()

    def _write_failed(self, failure: Any) -> None:
        self._busy = False
        log.error("cannot write {path}: {error}", path=self.path,
                  error=failure.getErrorMessage())
        self._writing = {}

    def refresh(self) -> defer.Deferred:
        """Take in changes made by others (qmail-tcpok, other processes)."""
        if self._busy:
            return defer.succeed(None)
        d = self.run(read_if_changed, self.path, self._stamp)
        return d.addCallbacks(self.take, lambda f: log.error(
            "cannot read {path}: {error}", path=self.path, error=f.getErrorMessage()))

    def read(self) -> tuple[Stamp | None, Table] | None | Exception:
        """Blocking, for a thread that reads other files anyway: what :meth:`take`
        wants (the file if it changed), or the error."""
        try:
            return read_if_changed(self.path, self._stamp)
        except Exception as e:  # noqa: BLE001 -- reported on the reactor by take()
            return e

    def take(self, result: tuple[Stamp | None, Table] | None | Exception) -> None:
        """On the reactor: apply what :meth:`read` (or :meth:`refresh`) found."""
        if isinstance(result, Exception):
            log.error("cannot read {path}: {error}", path=self.path, error=result)
        elif result is not None and not self._busy:
            self._stamp = result[0]
            self._apply(result[1])

    def _apply(self, disk: Table) -> None:
        """The file's table plus our changes not written yet."""
        table = dict(disk)
        for ip, entry in {**self._writing, **self._pending}.items():
            if entry is None:
                table.pop(ip, None)
            else:
                table[ip] = entry
        self.table = table


# -- qmail-tcpto and qmail-tcpok -----------------------------------------------------------------

_USAGE = "usage: {prog} [--root DIR] [--control-dir DIR] [--queue-base DIR]\n"


def _path_from(prog: str, argv: Sequence[str] | None) -> str | None:
    from indimail_tw.paths import Paths

    try:
        opts, rest = getopt.gnu_getopt(list(sys.argv[1:] if argv is None else argv), "h",
                                       ["root=", "control-dir=", "queue-base=", "help"])
    except getopt.GetoptError as e:
        sys.stderr.write(f"{prog}: {e}\n" + _USAGE.format(prog=prog))
        return None
    values = dict(opts)
    if "--help" in values or "-h" in values or rest:
        (sys.stdout if not rest else sys.stderr).write(_USAGE.format(prog=prog))
        return None
    base = values.get("--queue-base") or os.environ.get("QUEUE_BASE")
    if not base:
        paths = Paths.resolve(values.get("--root"), os.environ, values.get("--control-dir"))
        base = ControlDir(paths.control).value("queue_base") or paths.queue
    return table_path(base)


def main_tcpto(argv: Sequence[str] | None = None) -> int:
    """qmail-tcpto: print the hosts that timed out recently."""
    path = _path_from("qmail-tcpto", argv)
    if path is None:
        return 100
    try:
        table = read_table(path)
    except OSError as e:
        sys.stderr.write(f"qmail-tcpto: cannot read {path}: {e.strerror or e}\n")
        return 111
    now = time.time()
    for ip, entry in sorted(table.items()):
        ago = int(now - entry.last)
        when = f"{ago} seconds ago" if ago >= 0 else f"{-ago} seconds in the future"
        dead = " (skipped)" if is_dead(entry, now, DEFAULT_PENALTY) else ""
        sys.stdout.write(f"{ip} timed out {when}; # recent timeouts: {entry.errors}{dead}\n")
    return 0


def main_tcpok(argv: Sequence[str] | None = None) -> int:
    """qmail-tcpok: clear the table, so every host is tried again."""
    path = _path_from("qmail-tcpok", argv)
    if path is None:
        return 100
    try:
        with _locked(path):
            if os.path.exists(path):
                fsutil.atomic_write(path, b"")
    except OSError as e:
        sys.stderr.write(f"qmail-tcpok: cannot clear {path}: {e.strerror or e}\n")
        return 111
    return 0
