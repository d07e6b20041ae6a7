"""One installation as the admin tools see it, and the undo log that keeps an
operation all-or-nothing.

:class:`Site` joins the resolved :class:`~indimail_tw.paths.Paths`, the
environment, the control directory and the user database, and reads the
per-domain files (``domains/<domain>/.base_path`` ...).  :class:`Undo` records
how to revert each filesystem or control-file change an operation makes; if
the operation (or its database commit) fails, the steps run in reverse, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, TypeVar
from collections.abc import Callable, Mapping

from indimail_tw import fsutil
from indimail_tw.config.control import ControlDir
from indimail_tw.errors import AdminError, ConfigError
from indimail_tw.paths import Paths
from indimail_tw.storage.engine import (
    SCHEMA_VERSION, Engine, SQLiteEngine, Txn, check_version, open_engine,
)

T = TypeVar("T")

FAILED = 1  # exit status of an operation that could not be done (IndiMail's 1)
DEFAULT_USERS_PER_LEVEL = 100
_tomb_counter = itertools.count()


def fs_error(action: str, path: str, error: OSError) -> AdminError:
    """An OSError as one admin-readable line (never a StoreUnavailable)."""
    return AdminError(f"{action} {path}: {error.strerror or error}", FAILED)


@dataclass
class Site:
    """Paths, environment, control directory and database of one installation."""

    paths: Paths
    environ: Mapping[str, str]
    control: ControlDir
    _engine: Engine | None = field(default=None, repr=False)

    @classmethod
    def resolve(cls, root: str | None = None, environ: Mapping[str, str] | None = None,
                control: str | None = None) -> Site:
        env = dict(os.environ if environ is None else environ)
        paths = Paths.resolve(root, env, control)
        return cls(paths, env, ControlDir(paths.control, env))

    # -- the database --------------------------------------------------------------

    def engine(self, *, create: bool = False) -> Engine:
        """The user database; without ``create`` a missing SQLite file is an error."""
        if self._engine is None:
            engine = open_engine(self.paths, self.environ, create=create)
            if isinstance(engine, SQLiteEngine) and not create \
                    and not os.path.exists(engine.path):
                raise AdminError(f"no user database at {engine.path} "
                                 "(add a domain with vadddomain first)", FAILED)
            self._engine = engine
        return self._engine

    def prepare(self, *, create: bool = False) -> None:
        """Create missing tables (own transaction: MySQL commits DDL implicitly).

        Skipped when the schema table already says this version, so day-to-day
        tools issue no DDL against a production database.
        """
        engine = self.engine(create=create)
        if not engine.run_sync(_schema_is_current):
            engine.run_sync(engine.prepare)

    def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run transaction function ``fn(txn, *args)`` after preparing the schema."""
        self.prepare()
        return self.engine().run_sync(fn, *args)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(txn, *args)``, refusing a newer schema, creating nothing."""
        engine = self.engine()

        def checked(txn: Txn, *a: Any) -> T:
            engine.check(txn)
            return fn(txn, *a)

        return engine.run_sync(checked, *args)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # -- domains ---------------------------------------------------------------------

    def domain_dir(self, domain: str) -> str:
        return self.paths.domain_dir(domain)

    def domain_exists(self, domain: str) -> bool:
        """A virtual domain (real or alias) has its directory (or symlink) in domains/."""
        return os.path.isdir(self.domain_dir(domain))

    def symlink_target(self, domain: str) -> str | None:
        """The real domain an alias-domain symlink points to, else None."""
        path = self.domain_dir(domain)
        if not os.path.islink(path):
            return None
        return os.path.basename(os.path.normpath(os.readlink(path)))

    def domain_file(self, domain: str, name: str) -> str | None:
        """First line of ``domains/<domain>/<name>`` (stripped), None if missing or empty."""
        path = os.path.join(self.domain_dir(domain), name)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.readline().strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise fs_error("cannot read", path, e) from e
        return text or None

    def domain_lines(self, domain: str, name: str) -> list[str]:
        path = os.path.join(self.domain_dir(domain), name)
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return [ln.strip() for ln in f if ln.strip()]
        except FileNotFoundError:
            return []
        except OSError as e:
            raise fs_error("cannot read", path, e) from e

    def base_path(self, domain: str, explicit: str | None = None) -> str:
        """Where homes go: ``-B`` > the domain's ``.base_path`` > BASE_PATH (paths.mail)."""
        return explicit or self.domain_file(domain, ".base_path") or self.paths.mail

    def users_per_level(self, domain: str, explicit: int | None = None) -> int:
        if explicit:
            return explicit
        text = self.domain_file(domain, ".users_per_level")
        if text is None:
            return DEFAULT_USERS_PER_LEVEL
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{self.domain_dir(domain)}/.users_per_level: not a number: "
                              f"{text!r}") from None
        return value if value > 0 else DEFAULT_USERS_PER_LEVEL

    def default_domain(self) -> str | None:
        """The domain of a bare user name: DEFAULT_DOMAIN, then control/defaultdomain."""
        return self.environ.get("DEFAULT_DOMAIN") or self.control.value("defaultdomain")

    def list_domains(self) -> list[str]:
        """Every virtual domain: directories in domains/ plus virtualdomains keys
        that have a directory."""
        names: set[str] = set()
        try:
            with os.scandir(self.paths.domains) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") and entry.is_dir():
                        names.add(entry.name)
        except FileNotFoundError:
            pass
        for line in self.control.lines("virtualdomains"):
            key = line.partition(":")[0].strip().lower()
            if key and not key.startswith(".") and "@" not in key \
                    and self.domain_exists(key):
                names.add(key)
        return sorted(names)


def _schema_is_current(txn: Txn) -> bool:
    try:
        row = txn.query_one("SELECT version FROM indimail_tw_schema WHERE id = 1")
    except Exception:  # noqa: BLE001 - no schema table yet: prepare() will say more
        return False
    if row is None:
        return False
    check_version(row[0])  # SchemaTooNew for a database written by newer code
    return int(row[0]) == SCHEMA_VERSION


class Undo:
    """Reversal steps of an operation, run newest first if it fails."""

    def __init__(self) -> None:
        self._steps: list[tuple[Callable[..., Any], tuple]] = []
        self._after: list[tuple[Callable[..., Any], tuple]] = []

    def push(self, fn: Callable[..., Any], *args: Any) -> None:
        self._steps.append((fn, args))

    def on_success(self, fn: Callable[..., Any], *args: Any) -> None:
        """A step to run once the operation has committed (e.g. remove a tombstone)."""
        self._after.append((fn, args))

    def created(self, dirs: list[str], tree: str | None = None) -> None:
        """Directories made by ``fsutil.make_dirs``; ``tree`` is removed whole.

        Parents above ``tree`` are removed only while empty, so a directory another
        process filled meanwhile (a bucket dir shared with a concurrent vadduser)
        is never taken away.
        """
        if dirs:
            self.push(_remove_created, list(dirs), tree)

    def rollback(self) -> list[str]:
        """Run the undo steps, newest first; return what could not be undone."""
        problems = []
        while self._steps:
            fn, args = self._steps.pop()
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - keep undoing the rest
                problems.append(f"{getattr(fn, '__name__', fn)}: {e}")
        self._after.clear()
        return problems

    def commit(self) -> None:
        self._steps.clear()
        while self._after:
            fn, args = self._after.pop(0)
            with contextlib.suppress(OSError):  # a leftover tombstone is harmless
                fn(*args)

    def run(self, operation: Callable[[], T]) -> T:
        """Run ``operation``; roll back on any failure, else finish the commit steps."""
        try:
            result = operation()
        except AdminError as e:
            problems = self.rollback()
            if problems:
                raise AdminError(f"{e}; undo incomplete: {'; '.join(problems)}",
                                 e.status) from e
            raise
        except BaseException:
            self.rollback()
            raise
        self.commit()
        return result


def _remove_created(dirs: list[str], tree: str | None) -> None:
    if tree is not None and tree in dirs:
        fsutil.remove_tree(tree)
    for directory in reversed(dirs):
        if tree is not None and (directory == tree or directory.startswith(tree + os.sep)):
            continue
        try:
            os.rmdir(directory)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise


def make_dirs(path: str, undo: Undo, mode: int = 0o700, *, tree: bool = True) -> list[str]:
    """fsutil.make_dirs with undo and an admin-readable error."""
    try:
        created = fsutil.make_dirs(path, mode)
    except OSError as e:
        raise fs_error("cannot create directory", path, e) from e
    undo.created(created, path if tree else None)
    return created


def write_file(path: str, data: str, undo: Undo | None, mode: int = 0o644) -> None:
    """Atomically replace ``path``; undo restores the previous content (or removes it)."""
    try:
        with open(path, "rb") as f:
            previous: bytes | None = f.read()
    except FileNotFoundError:
        previous = None
    except OSError as e:
        raise fs_error("cannot read", path, e) from e
    try:
        fsutil.atomic_write(path, data.encode("utf-8", "surrogateescape"), mode)
    except OSError as e:
        raise fs_error("cannot write", path, e) from e
    if undo is not None:
        undo.push(_restore_file, path, previous, mode)


def _restore_file(path: str, previous: bytes | None, mode: int) -> None:
    if previous is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        fsutil.atomic_write(path, previous, mode)


def remove_file(path: str, undo: Undo | None) -> bool:
    try:
        with open(path, "rb") as f:
            previous = f.read()
        mode = os.stat(path).st_mode & 0o7777
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise fs_error("cannot remove", path, e) from e
    fsutil.fsync_dir(os.path.dirname(path))
    if undo is not None:
        undo.push(_restore_file, path, previous, mode)
    return True


def bury(path: str, undo: Undo) -> str | None:
    """Move ``path`` (a directory or symlink) aside for deletion at commit.

    The rename is reversible until the database change commits, so a failed
    delete leaves the tree where it was; after the commit the tombstone is
    removed.  Returns the tombstone, or None when ``path`` does not exist.
    (This is a rename of a tree about to be deleted, not of mail being stored,
    so it does not go through fsutil's write path; the directory is fsynced.)
    """
    if not os.path.lexists(path):
        return None
    parent, name = os.path.split(os.path.normpath(path))
    tomb = os.path.join(parent, f".{name}.deleted.{os.getpid()}.{next(_tomb_counter)}")
    try:
        os.rename(path, tomb)
        fsutil.fsync_dir(parent)
    except OSError as e:
        raise fs_error("cannot remove", path, e) from e
    undo.push(_unbury, tomb, path)
    undo.on_success(_remove_any, tomb)
    return tomb


def _unbury(tomb: str, path: str) -> None:
    os.rename(tomb, path)
    fsutil.fsync_dir(os.path.dirname(path))


def _remove_any(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)
    fsutil.fsync_dir(os.path.dirname(path))


def snapshot(path: str, undo: Undo) -> None:
    """Remember ``path``'s content now, so undo puts it back (or removes a new file)."""
    try:
        with open(path, "rb") as f:
            previous: bytes | None = f.read()
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        previous, mode = None, 0o600
    except OSError as e:
        raise fs_error("cannot read", path, e) from e
    undo.push(_restore_file, path, previous, mode)
