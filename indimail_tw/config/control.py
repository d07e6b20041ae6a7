"""Reading and editing one control directory, the way qmail/IndiMail do.

File shapes (``control.c`` in indimail-mta):

* one-value files: the first line is the value (:meth:`ControlDir.value`);
* list files: one entry per line, trailing blanks stripped, blank lines and lines
  whose first character is ``#`` skipped (:meth:`ControlDir.lines`); leading blanks
  are kept, so ``" # x"`` is an entry, as in qmail;
* compiled lists: ``NAME.cdb`` built from the text file ``NAME`` by ``qmail-cdb`` /
  ``qmail-newmrh``: every entry lower-cased is a key with an empty value
  (:meth:`ControlDir.make_cdb`, :meth:`ControlDir.cdb_has`).

A name that is an absolute path is used as it is (qmail does the same), so an
environment variable may point a list at a file outside the directory.

Editors (``add_line`` ...) are for the admin CLIs.  They hold an exclusive
``flock`` on the directory while they read, change and atomically replace a file
(:func:`indimail_tw.fsutil.atomic_write`), so two CLIs never lose each other's
change; comments, blank lines and the order of other lines are kept.  All methods
block: server code calls them from a thread, never on the reactor thread.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

import cdbx

from indimail_tw import fsutil
from indimail_tw.errors import ConfigError

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # control files are bytes; keep odd bytes round-trippable
BLANKS = " \t\r\n\v\f"  # what qmail strips from the end of a line (ASCII only)


class Stamp(NamedTuple):
    """What identifies one version of a file: an atomic replace changes the inode."""

    inode: int
    mtime_ns: int
    size: int


def decode(data: bytes) -> str:
    return data.decode(_ENCODING, _ERRORS)


def encode(text: str) -> bytes:
    return text.encode(_ENCODING, _ERRORS)


def is_entry(line: str) -> bool:
    """Whether a trailing-stripped line is a list entry (not blank, not a comment)."""
    return bool(line) and not line.startswith("#")


class ControlDir:
    """One control directory (``CONTROLDIR``) plus the environment that overrides it.

    ``environ`` is kept for :class:`~indimail_tw.config.settings.Settings`; the
    reading methods here never consult it.
    """

    def __init__(self, path: str, environ: Mapping[str, str] | None = None) -> None:
        self.path = os.path.abspath(path)
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self._cdb_cache: dict[str, tuple[Stamp, cdbx.CDB]] = {}

    def __repr__(self) -> str:
        return f"ControlDir({self.path!r})"

    # -- locations ---------------------------------------------------------------

    def file(self, name: str) -> str:
        """The path of control file ``name`` (an absolute name is returned as it is).

        A relative name may reach into a subdirectory (``certs/tlsclients``) but
        never out of the control directory.
        """
        if "\0" in name:
            raise ValueError(f"not a control file name: {name!r}")
        if os.path.isabs(name):
            return name
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"not a control file name: {name!r}")
        return os.path.join(self.path, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.file(name))

    def stamp(self, name: str) -> Stamp | None:
        """Identity of the current version of ``name``; ``None`` when it is missing."""
        return stamp_of(self.file(name))

    def mtime(self, name: str) -> float | None:
        """Modification time of ``name`` in seconds; ``None`` when it is missing."""
        st = self.stamp(name)
        return None if st is None else st.mtime_ns / 1e9

    # -- reading -----------------------------------------------------------------

    def raw_lines(self, name: str) -> list[str] | None:
        """Every line of ``name`` with its trailing whitespace stripped, or ``None``.

        ``None`` means the file does not exist; any other failure to read it is a
        :class:`ConfigError` naming the path.
        """
        return read_lines(self.file(name))

    def value(self, name: str, default: str | None = None) -> str | None:
        """The first line, whitespace stripped; ``default`` if missing or empty."""
        lines = self.raw_lines(name)
        if not lines:
            return default
        text = lines[0].strip(BLANKS)
        return text if text else default

    def entries(self, name: str) -> tuple[tuple[int, str], ...]:
        """``(line number, entry)`` for every entry of list file ``name``."""
        return numbered_entries(self.raw_lines(name) or [])

    def lines(self, name: str) -> tuple[str, ...]:
        """The entries of list file ``name``; a missing file is an empty list."""
        return tuple(text for _, text in self.entries(name))

    # -- compiled lists ------------------------------------------------------------

    def open_cdb(self, name: str) -> cdbx.CDB | None:
        """Open ``name.cdb`` (a fresh handle the caller owns), or ``None`` if missing."""
        return open_cdb(self.file(name) + ".cdb")

    def cdb_has(self, name: str, key: str | bytes) -> bool:
        """Whether ``name.cdb`` holds ``key`` (looked up exactly as given).

        :meth:`make_cdb` lower-cases keys as qmail-cdb does, so callers look up
        lower-cased keys.  The open handle is reused until the file is replaced.
        """
        path = self.file(name) + ".cdb"
        st = stamp_of(path)
        if st is None:
            self._cdb_cache.pop(path, None)
            return False
        cached = self._cdb_cache.get(path)
        if cached is None or cached[0] != st:
            db = open_cdb(path)
            if db is None:
                return False
            self._cdb_cache[path] = cached = (st, db)
        return cdb_lookup(cached[1], key, path)

    def make_cdb(self, name: str) -> int:
        """Compile text list ``name`` into ``name.cdb`` atomically (qmail-newmrh).

        Keys are the entries lower-cased, values empty.  Returns the number of keys.
        """
        source = self.file(name)
        with self._locked():
            lines = read_lines(source)
            if lines is None:
                raise ConfigError(f"{source}: cannot compile: file does not exist")
            keys = list(dict.fromkeys(text.lower() for _, text in numbered_entries(lines)))
            with tempfile.TemporaryFile() as scratch:
                maker = cdbx.CDB.make(scratch)
                for key in keys:
                    maker.add(encode(key), b"")
                maker.commit().close()
                scratch.seek(0)
                data = scratch.read()
            fsutil.atomic_write(source + ".cdb", data, _mode_of(source + ".cdb"))
        return len(keys)

    # -- editing -----------------------------------------------------------------

    def add_line(self, name: str, line: str) -> bool:
        """Append ``line`` unless an identical line is present; return whether changed.

        Creates the file when it is missing.
        """
        line = _check_line(line)
        if not line:
            raise ValueError("cannot add an empty line")

        def edit(lines: list[str]) -> list[str] | None:
            return None if line in lines else [*lines, line]

        return self._edit(name, edit)

    def remove_line(self, name: str, line: str) -> bool:
        """Remove every line identical to ``line``; return whether anything changed."""
        line = _check_line(line)
        return self.remove_matching(name, lambda entry: entry == line) > 0

    def remove_matching(self, name: str, predicate: Callable[[str], bool]) -> int:
        """Remove the entries for which ``predicate`` is true; return how many.

        Comments and blank lines are never offered to ``predicate``.
        """
        removed = 0

        def edit(lines: list[str]) -> list[str] | None:
            nonlocal removed
            kept = [text for text in lines if not (is_entry(text) and predicate(text))]
            removed = len(lines) - len(kept)
            return kept if removed else None

        if not self.exists(name):
            return 0
        self._edit(name, edit)
        return removed

    def write_value(self, name: str, value: str) -> None:
        """Replace one-value file ``name`` with ``value`` as its only line."""
        value = _check_line(value)
        path = self.file(name)
        with self._locked():
            fsutil.atomic_write(path, encode(value + "\n"), _mode_of(path))

    def _edit(self, name: str, edit: Callable[[list[str]], list[str] | None]) -> bool:
        path = self.file(name)
        with self._locked():
            lines = read_lines(path) or []
            new = edit(lines)
            if new is None:
                return False
            data = "".join(text + "\n" for text in new)
            fsutil.atomic_write(path, encode(data), _mode_of(path))
        return True

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise editors of this directory (flock on the directory itself)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


# -- helpers shared with settings.py ---------------------------------------------


def stamp_of(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot stat: {e.strerror}") from e
    return Stamp(st.st_ino, st.st_mtime_ns, st.st_size)


def read_lines(path: str) -> list[str] | None:
    """Lines of ``path`` with trailing whitespace stripped; ``None`` when missing."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError as e:
        raise ConfigError(f"{path}: is a directory, not a control file") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    lines = decode(data).split("\n")
    if not data or data.endswith(b"\n"):
        lines.pop()  # the empty piece after the last newline is not a line
    return [text.rstrip(BLANKS) for text in lines]


def numbered_entries(lines: list[str]) -> tuple[tuple[int, str], ...]:
    return tuple((number, text) for number, text in enumerate(lines, 1) if is_entry(text))


_CDB_HEADER = 2048  # 256 (position, length) pairs of 4 bytes each


def open_cdb(path: str) -> cdbx.CDB | None:
    """Open a cdb file, refusing one too short to hold the header."""
    try:
        db = cdbx.CDB(path)
    except FileNotFoundError:
        return None
    except OSError as e:  # cdbx says "Format Error" (no errno) for a damaged file
        raise ConfigError(f"{path}: cannot read cdb: {e.strerror or e}") from e
    if os.fstat(db.fileno()).st_size < _CDB_HEADER:
        db.close()
        raise ConfigError(f"{path}: not a cdb file (shorter than its header)")
    return db


def cdb_lookup(db: cdbx.CDB, key: str | bytes, path: str = "cdb") -> bool:
    try:
        return (encode(key) if isinstance(key, str) else key) in db
    except OSError as e:  # a damaged table found only when a lookup reaches it
        raise ConfigError(f"{path}: cannot read cdb: {e.strerror or e}") from e


def _check_line(line: str) -> str:
    if "\n" in line or "\r" in line or "\0" in line:
        raise ValueError(f"a control file line cannot hold a line break or NUL: {line!r}")
    return line.rstrip(BLANKS)


def _mode_of(path: str) -> int:
    """Keep the permissions of a file we replace; new files get 0644 (qmail's umask 033)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o644
