"""The one place that creates, writes, fsyncs and renames files we must not lose.

Pattern (qmail's): write to a temporary name in the same directory, check every
write, fsync the file, rename it into place, fsync the directory.  These are
blocking calls: server code runs them in a thread, never on the reactor thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from collections.abc import Iterable
import contextlib

_counter = 0


def unique_name() -> str:
    """A Maildir-style unique name: time.Mpid_counter.host."""
    global _counter
    _counter += 1
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{sec}.M{usec}P{os.getpid()}Q{_counter}.{host}"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}.{_next()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(directory)


def _next() -> int:
    global _counter
    _counter += 1
    return _counter


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def make_dirs(path: str, mode: int = 0o700) -> list[str]:
    """Create ``path`` and missing parents; return the directories created, outermost first.

    Each new directory's parent is fsynced so the new entry survives a crash.
    """
    created: list[str] = []
    missing = []
    head = os.path.abspath(path)
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue
        created.append(directory)
        fsync_dir(os.path.dirname(directory))
    return created


def make_maildir(path: str, mode: int = 0o700) -> list[str]:
    """Create a Maildir (``cur``, ``new``, ``tmp``); return the directories created."""
    created = make_dirs(path, mode)
    for sub in ("cur", "new", "tmp"):
        created += make_dirs(os.path.join(path, sub), mode)
    return created


def remove_tree(path: str) -> None:
    """Remove a directory tree; a missing tree is not an error."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(parent):
        fsync_dir(parent)


def remove_dirs(paths: Iterable[str]) -> None:
    """Undo :func:`make_dirs`: remove the listed directories, innermost first."""
    for directory in reversed(list(paths)):
        try:
            shutil.rmtree(directory)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


def symlink(target: str, path: str) -> None:
    os.symlink(target, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
