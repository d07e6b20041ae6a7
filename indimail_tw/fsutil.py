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
import threading
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple
import contextlib

_counter = 0
_host: tuple[int, str] | None = None     # (pid, host name as used in unique names)


def _unique_host() -> tuple[int, str]:
    """This process's id and the host name, looked up once per process (as qmail does;
    a forked child looks them up again)."""
    global _host
    if _host is None:
        name = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        _host = (os.getpid(), name)
    return _host


def process_id() -> int:
    """``os.getpid()``, asked once per process (a forked child asks again): file
    names made for every message carry it."""
    return _unique_host()[0]


def _forget_host() -> None:
    global _host
    _host = None


os.register_at_fork(after_in_child=_forget_host)


def unique_name() -> str:
    """A Maildir-style unique name: time.Mpid_counter.host."""
    global _counter
    _counter += 1
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    pid, host = _unique_host()
    return f"{sec}.M{usec}P{pid}Q{_counter}.{host}"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(paths: Iterable[str]) -> None:
    """fsync each distinct directory once (group commit: one per batch, not per file)."""
    for path in dict.fromkeys(paths):
        fsync_dir(path)


def rename(src: str, dst: str) -> None:
    """Rename one file; durable only after the destination directory is fsynced."""
    os.rename(src, dst)


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, FileExistsError if ``dst`` exists (renameat2 with
    RENAME_NOREPLACE; where that is missing, a hard link and an unlink).  Durable
    only after both directories are fsynced."""
    global _renameat2
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                      _RENAME_NOREPLACE) == 0:
            return
        import ctypes

        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), src, None, dst)   # EEXIST: FileExistsError
        _renameat2 = None                 # the file system or kernel cannot: fall back
    os.link(src, dst)
    _unlink_quietly(src)


def _load_renameat2() -> Any:
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, ImportError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_all_v(fd: int, buffers: Sequence[bytes]) -> None:
    """Write the buffers one after the other (one writev(2) in the usual case)."""
    views = [memoryview(b) for b in buffers if b]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{process_id()}.{_next()}")
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


# -- delivery primitives (Maildir and mbox) ------------------------------------------

def fsync_file(fd: int) -> None:
    """fsync one open file (a separate name so tests can watch the order of syncs)."""
    os.fsync(fd)


_FSYNC_FILE = fsync_file

#: Threads of the pool :func:`fsync_all` uses where the C library has no POSIX AIO.
FSYNC_THREADS = 8
_fsync_pool: Any = None
_fsync_pool_lock = threading.Lock()


def fsync_all(fds: Sequence[int]) -> list[OSError | None]:
    """fsync every fd, several at once; one entry per fd: None or its error.

    For a batch of written files (a queue commit batch, a batch of Maildir
    deliveries): the fsyncs run at the same time, so the block layer can merge
    their cache flushes instead of serving them one by one.  On Linux they are
    io_uring requests (:mod:`indimail_tw.iouring`): one system call submits all of them and
    waits for all of them, so the caller gives up the interpreter lock once and
    no thread of ours wakes up per file.  Where io_uring is not available (an
    old kernel, a sandbox that forbids it, ``INDIMAIL_NO_URING``) they are POSIX
    AIO requests (``aio_fsync``), served by the C library's own threads (the
    caller still waits once, but each request wakes or starts one of them).
    Elsewhere a small pool of Python threads does the same.
    """
    if len(fds) <= 1:
        return [_fsync_one(fd) for fd in fds]
    if fsync_file is not _FSYNC_FILE:       # replaced (fault injection in tests):
        return _fsync_in_pool(fds)           # every call goes through it
    rings = _uring()
    if rings is not None:
        done = _uring_fsync_all(rings, fds)
        if done is not None:
            return done
    aio = _aio()
    if aio is not None:
        return aio.fsync_all(fds)
    return _fsync_in_pool(fds)


def _fsync_in_pool(fds: Sequence[int]) -> list[OSError | None]:
    global _fsync_pool
    if _fsync_pool is None:
        with _fsync_pool_lock:
            if _fsync_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                _fsync_pool = ThreadPoolExecutor(FSYNC_THREADS,
                                                 thread_name_prefix="indimail-fsync")
    return list(_fsync_pool.map(_fsync_one, fds))


def fsync_dirs_at_once(paths: Iterable[str]) -> None:
    """:func:`fsync_dirs`, the directories fsynced at the same time (:func:`fsync_all`);
    the first error is raised once all are done."""
    fds: list[int] = []
    try:
        for path in dict.fromkeys(paths):
            fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
        errors = fsync_all(fds)
    finally:
        for fd in fds:
            os.close(fd)
    for error in errors:
        if error is not None:
            raise error


def _fsync_one(fd: int) -> OSError | None:
    try:
        fsync_file(fd)
    except OSError as e:
        return e
    return None


_URING_UNSET: Any = object()
_uring_state: Any = _URING_UNSET


def _uring() -> Any:
    global _uring_state
    if _uring_state is _URING_UNSET:
        _uring_state = _load_uring()
    return _uring_state


def _load_uring() -> Any:
    """The pool of io_uring rings, or None where they cannot be used (or are not wanted)."""
    if os.environ.get("INDIMAIL_NO_URING"):
        return None
    from indimail_tw import iouring

    return iouring.load_pool()


def _uring_fsync_all(rings: Any, fds: Sequence[int]) -> list[OSError | None] | None:
    """:func:`fsync_all` through io_uring: one result per fd, or None if no ring
    could be had (the caller then uses another way)."""
    from indimail_tw.iouring import FSYNC, Op

    try:
        ring = rings.take()
    except Exception:  # noqa: BLE001 -- no ring now (a limit, a sandbox): another way
        return None
    out: list[OSError | None] = []
    try:
        for start in range(0, len(fds), ring.entries):
            results = ring.run([Op(FSYNC, fd) for fd in fds[start:start + ring.entries]])
            out += [_os_error(-r) if r < 0 else None for r in results]
    except Exception:  # noqa: BLE001 -- RingBroken, or a bug: never the batch's failure
        ring.close()                # not reused: what it holds is unknown
        # the fds of the part that failed: fsync them here, one by one
        return out + [_fsync_one(fd) for fd in fds[len(out):]]
    rings.give(ring)
    return out


class NewFile(NamedTuple):
    """One file of :func:`publish_files_on`."""

    path: str             # written there: a new file (``create``) or an existing one
    data: bytes           # the file's whole content
    final: str            # then renamed to this name (never over an existing file)
    create: bool = False
    cut: bool = False     # the existing file may be longer than ``data``: cut it


#: Files one :func:`publish_files_on` call takes at most (six requests each fit a ring).
PUBLISH_MAX = 40


def publish_files_on(ring: Any, files: Sequence[NewFile], directory: str) -> Any:
    """Write, fsync and rename a batch of new files, then fsync ``directory`` (where
    every ``final`` name is), all through io_uring's ``ring`` (an
    :class:`iouring.ReactorRing`); the reactor never waits.

    Each file is opened (created with O_EXCL, or an existing file overwritten from
    its start), written, cut to size if asked, fsynced and renamed to ``final``
    (RENAME_NOREPLACE), in that order, each step only after the one before
    succeeded; once all files are done, ``directory`` is fsynced and the files
    closed (three submissions in all).  Returns None where it cannot be done that way (more than
    :data:`PUBLISH_MAX` files): the caller then does it its own way.  Otherwise
    a Deferred firing with one entry per file, None when it has its final name,
    else the error that stopped it (the file is then still at ``path``, closed,
    its content unknown); and the error of the directory fsync, None when every
    renamed file is durable.  It fails when the ring failed: which steps ran is
    then not known (:func:`unpublish`, in a thread, cleans up).
    """
    if not _can_publish(files):
        return None
    from twisted.internet import defer

    steps = publish_steps(files, directory, ring.ftruncate)

    @defer.inlineCallbacks
    def drive() -> Any:
        from indimail_tw.iouring import ORPHANS

        ops = next(steps)
        while True:
            try:
                results = yield ring.submit(ops)
            except BaseException:
                ORPHANS.append(steps)         # it holds what the requests point to
                raise
            try:
                ops = steps.send(results)
            except StopIteration as end:
                return end.value

    return drive()


def _can_publish(files: Sequence[NewFile]) -> bool:
    # (fsync_file replaced: fault injection in tests, which must see every fsync)
    return bool(files) and len(files) <= PUBLISH_MAX and fsync_file is _FSYNC_FILE


def publish_steps(files: Sequence[NewFile], directory: str, can_cut: bool) -> Any:
    """The requests of :func:`publish_files_on` as a generator: it yields lists of
    :class:`iouring.Op`, is sent each list's results, and returns the outcome."""
    from indimail_tw.iouring import (
        AT_FDCWD, CLOSE, FSYNC, FTRUNCATE, LINK, OPENAT, RENAMEAT, WRITE, Op, address,
        one_by_one)

    keep: list[bytes] = []               # what the kernel reads: alive until the end

    def c_string(path: str) -> int:
        keep.append(os.fsencode(path))
        return address(keep[-1])

    base = os.O_WRONLY | os.O_CLOEXEC
    opens = [Op(OPENAT, AT_FDCWD, 0, c_string(f.path), 0o600,
                base | (os.O_CREAT | os.O_EXCL if f.create else
                        os.O_TRUNC if f.cut and not can_cut else 0))
             for f in files]
    opens.append(Op(OPENAT, AT_FDCWD, 0, c_string(directory), 0,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    fds = yield opens
    dir_fd = fds.pop()
    ops: list[Any] = []
    steps: list[tuple[int, int]] = []     # (file, its first request) per chain
    for i, (f, fd) in enumerate(zip(files, fds, strict=True)):
        if fd < 0:
            continue
        steps.append((i, len(ops)))
        keep.append(f.data)
        ops.append(Op(WRITE, fd, 0, address(f.data), len(f.data), flags=LINK))
        if f.cut and can_cut:
            ops.append(Op(FTRUNCATE, fd, len(f.data), flags=LINK))
        ops += [Op(FSYNC, fd, flags=LINK),
                Op(RENAMEAT, AT_FDCWD, c_string(f.final), c_string(f.path),
                   AT_FDCWD & 0xFFFFFFFF, _RENAME_NOREPLACE)]
    done = (yield ops) if ops else []
    # once every chain is done: the directory's fsync, then the closes
    tail = [Op(FSYNC, dir_fd)] if dir_fd >= 0 else []
    tail += [Op(CLOSE, fd) for fd in fds if fd >= 0]
    if dir_fd >= 0:
        tail.append(Op(CLOSE, dir_fd))
    if tail:
        done += (yield one_by_one(tail))
    errors: list[OSError | None] = [_os_error(-fd, f.path) if fd < 0 else None
                                    for f, fd in zip(files, fds, strict=True)]
    for k, (i, first) in enumerate(steps):
        last = steps[k + 1][1] if k + 1 < len(steps) else len(ops)
        chain = done[first:last]
        failed = [r for r in chain if r < 0 and r != -errno.ECANCELED]
        if failed:
            errors[i] = _os_error(-failed[0], files[i].path)
        elif chain[0] != len(files[i].data) or any(r < 0 for r in chain):
            errors[i] = OSError(errno.EIO, "short write", files[i].path)  # ends the chain
    if dir_fd < 0:
        dir_error: OSError | None = _os_error(-dir_fd, directory)
    elif tail and done[len(ops)] < 0:
        dir_error = _os_error(-done[len(ops)], directory)
    else:
        dir_error = None
    return errors, dir_error


def unpublish(files: Sequence[NewFile | Written], error: Exception) -> list[OSError | None]:
    """After a ring failed in the middle of :func:`publish_files_on` or
    :func:`publish_written`: which steps ran is not known, so no file counts as
    published; one that was renamed already (its ``path`` is gone) is taken back
    out of its final name."""
    out: list[OSError | None] = []
    for f in files:
        if not os.path.lexists(f.path):
            _unlink_quietly(f.final)
        out.append(OSError(errno.EIO, f"io_uring failed: {error!r}", f.path))
    return out


class Written(NamedTuple):
    """One file of :func:`publish_written`: written, open, not yet fsynced."""

    fd: int
    path: str             # its name now (in a ``tmp/``)
    final: str            # the name it gets (never replacing a file)
    directory: str        # where ``final`` is


def publish_written(files: Sequence[Written]) -> tuple[list[OSError | None],
                                                       OSError | None] | None:
    """fsync each written file and rename it to its final name (RENAME_NOREPLACE),
    then fsync each directory once, and close the files: through io_uring, from
    this thread, in three system calls for the batch.

    For a caller that reports the files delivered only once this has returned
    without an error, and delivers again otherwise: a renamed file is durable
    only after its directory's fsync.  Returns None where io_uring cannot do it
    (the files are untouched, still open: the caller does it its own way).
    Otherwise one entry per file: None when it has its final name, else the
    error that stopped it (it is then still at ``path``, fsynced if the error
    came from the rename, closed); and the first error of a directory fsync.
    """
    if not files or fsync_file is not _FSYNC_FILE:       # (fault injection: every fsync)
        return None
    directories = list(dict.fromkeys(f.directory for f in files))
    if 3 * len(files) + 2 * len(directories) > _URING_PUBLISH_OPS:
        return None
    rings = _uring()
    if rings is None:
        return None
    from indimail_tw.iouring import (
        AT_FDCWD, CLOSE, FSYNC, LINK, OPENAT, ORPHANS, RENAMEAT, Op, address, one_by_one)

    try:
        ring = rings.take()
    except Exception:  # noqa: BLE001 -- no ring now (a limit, a sandbox): another way
        return None
    keep = [os.fsencode(d) for d in directories]
    try:
        dir_fds = ring.run([Op(OPENAT, AT_FDCWD, 0, address(d), 0,
                               os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for d in keep])
        ops = []
        for f in files:
            keep += [os.fsencode(f.final), os.fsencode(f.path)]
            ops += [Op(FSYNC, f.fd, flags=LINK),
                    Op(RENAMEAT, AT_FDCWD, address(keep[-2]), address(keep[-1]),
                       AT_FDCWD & 0xFFFFFFFF, _RENAME_NOREPLACE)]
        done = ring.run(ops)
        # then each directory's fsync, then every close, one after the other
        tail = [Op(FSYNC, fd) for fd in dir_fds if fd >= 0]
        tail += [Op(CLOSE, f.fd) for f in files] + [Op(CLOSE, fd) for fd in dir_fds if fd >= 0]
        done += ring.run(one_by_one(tail))
    except Exception as e:  # noqa: BLE001 -- RingBroken, or a bug
        ring.close()                      # not reused: what it holds is unknown
        ORPHANS.append(keep)              # the kernel may still read these
        # The fds are not closed here: if the ring closed them, their numbers may be
        # another thread's now
        return unpublish(files, e), None
    rings.give(ring)
    errors: list[OSError | None] = []
    for k, f in enumerate(files):
        synced, renamed = done[2 * k], done[2 * k + 1]
        bad = synced if synced < 0 else renamed if renamed < 0 else 0
        errors.append(_os_error(-bad, f.path) if bad else None)
    opened = [(fd, d) for fd, d in zip(dir_fds, directories, strict=True) if fd >= 0]
    synced_dirs = zip(done[len(ops):len(ops) + len(opened)], opened, strict=True)
    dir_error = next((_os_error(-fd, d) for fd, d in zip(dir_fds, directories, strict=True)
                      if fd < 0), None) or next(
        (_os_error(-r, d) for r, (_, d) in synced_dirs if r < 0), None)
    return errors, dir_error


#: A bound on the requests of one :func:`publish_written` call (its chains, and then its
#: fsyncs and closes, each fit a ring of 256).
_URING_PUBLISH_OPS = 250


def _os_error(err: int, *names: str) -> OSError:
    return OSError(err, os.strerror(err), *names)


_AIO_UNSET: Any = object()
_aio_state: Any = _AIO_UNSET


def _aio() -> Any:
    global _aio_state
    if _aio_state is _AIO_UNSET:
        _aio_state = _load_aio()
    return _aio_state


def _load_aio() -> Any:
    """The glibc AIO binding, or None where it cannot be used safely."""
    import platform
    import sys

    if (not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "aarch64")
            or platform.libc_ver()[0] != "glibc" or os.environ.get("INDIMAIL_NO_AIO")):
        return None
    try:
        return _GlibcAio()
    except (OSError, AttributeError, ImportError):
        return None


class _GlibcAio:
    """``aio_fsync`` through ctypes (glibc on 64-bit Linux, whose ``struct aiocb``
    layout is fixed: the fd at offset 0, ``aio_sigevent.sigev_notify`` at 44,
    168 bytes in all).  Only ``aio_fildes`` and ``sigev_notify`` are set; status
    and result are read through ``aio_error``/``aio_return``, never the struct."""

    SIZE, FD_OFFSET, NOTIFY_OFFSET, SIGEV_NONE = 168, 0, 44, 1

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        self.ctypes = ctypes
        try:
            quick = ctypes.PyDLL(None, use_errno=True)       # calls that never wait:
            status = quick.aio_error                          # the lock stays held
        except AttributeError:                                  # glibc < 2.34: in librt
            name = ctypes.util.find_library("rt") or "librt.so.1"
            quick = ctypes.PyDLL(name, use_errno=True)
            status = quick.aio_error
        # aio_fsync wakes or starts one of the C library's threads (tens of
        # microseconds), aio_suspend waits: both give up the interpreter lock
        slow = ctypes.CDLL(quick._name, use_errno=True)
        submit, result, suspend = slow.aio_fsync, quick.aio_return, slow.aio_suspend
        submit.argtypes = (ctypes.c_int, ctypes.c_void_p)
        submit.restype = ctypes.c_int
        status.argtypes = (ctypes.c_void_p,)
        status.restype = ctypes.c_int
        result.argtypes = (ctypes.c_void_p,)
        result.restype = ctypes.c_ssize_t
        suspend.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
        suspend.restype = ctypes.c_int
        self.submit, self.status, self.result, self.suspend = submit, status, result, suspend

    def fsync_all(self, fds: Sequence[int]) -> list[OSError | None]:
        ctypes = self.ctypes
        n = len(fds)
        blocks = (ctypes.c_char * (self.SIZE * n))()
        base = ctypes.addressof(blocks)
        fd_at = ctypes.c_int.from_address
        out: list[OSError | None] = [None] * n
        queued: list[int] = []
        for i, fd in enumerate(fds):
            fd_at(base + i * self.SIZE + self.FD_OFFSET).value = fd
            fd_at(base + i * self.SIZE + self.NOTIFY_OFFSET).value = self.SIGEV_NONE
            if self.submit(os.O_SYNC, base + i * self.SIZE) == 0:
                queued.append(i)
            else:                                  # not queued (EAGAIN, ...): do it here
                out[i] = _fsync_one(fd)
        waiting = (ctypes.c_void_p * max(1, len(queued)))()
        einprogress = errno.EINPROGRESS
        try:
            while queued:
                for k, i in enumerate(queued):
                    waiting[k] = base + i * self.SIZE
                if self.suspend(waiting, len(queued), None) != 0:
                    err = ctypes.get_errno()
                    if err not in (errno.EINTR, errno.EAGAIN):
                        raise OSError(err, os.strerror(err))
                still = []
                for i in queued:
                    block = base + i * self.SIZE
                    err = self.status(block)
                    if err == einprogress:
                        still.append(i)
                        continue
                    self.result(block)
                    if err != 0:
                        out[i] = OSError(err, os.strerror(err))
                queued = still
        finally:
            if queued:             # never free control blocks the C library still uses
                _AIO_ORPHANS.append(blocks)
        return out


#: Control blocks of requests abandoned by an exception while waiting (kept alive:
#: the C library writes into them when the request ends).
_AIO_ORPHANS: list[Any] = []


def write_new_file(path: str, chunks: Iterable[bytes], mode: int = 0o600) -> int:
    """Create ``path`` (never an existing one), write ``chunks``, fsync it; return the size.

    On any failure (including one raised by the ``chunks`` iterator) the partial
    file is removed and the error re-raised.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    written = 0
    try:
        try:
            for chunk in chunks:
                write_all(fd, chunk)
                written += len(chunk)
            fsync_file(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(path)
        raise
    return written


def link_into(tmp_path: str, final_path: str) -> None:
    """Publish a written, fsynced file: link it to ``final_path``, fsync that
    directory, then remove ``tmp_path``.

    Never replaces an existing ``final_path`` (``FileExistsError``; ``tmp_path``
    is left for the caller to retry or remove).  Where hard links are not
    supported (EXDEV, EPERM, ENOTSUP) the file is renamed instead, after
    checking that the target does not exist.
    """
    linked = link_unsynced(tmp_path, final_path)
    fsync_dir(os.path.dirname(os.path.abspath(final_path)))
    if linked:
        _unlink_quietly(tmp_path)


def link_unsynced(tmp_path: str, final_path: str) -> bool:
    """The first step of :func:`link_into` for a batch: give the written, fsynced file
    ``tmp_path`` the name ``final_path`` (a hard link, or a rename where links are
    not supported) and return whether ``tmp_path`` still exists.

    The new name is durable only after its directory is fsynced, and ``tmp_path``
    must stay until then (the caller fsyncs each directory once for the batch and
    then removes the temporary names: :func:`finish_links`).
    """
    try:
        os.link(tmp_path, final_path)
        return True
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        if os.path.lexists(final_path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), final_path) from e
        os.rename(tmp_path, final_path)
        return False


def finish_links(directories: Iterable[str], tmp_paths: Iterable[str]) -> None:
    """After :func:`link_unsynced` calls: fsync each directory once, then remove the
    temporary names (only then: until the new names are durable they hold the data).
    Several directories are fsynced at the same time (:func:`fsync_dirs_at_once`)."""
    directories = list(dict.fromkeys(directories))
    if len(directories) > 1:
        fsync_dirs_at_once(directories)
    else:
        fsync_dirs(directories)
    for path in tmp_paths:
        _unlink_quietly(path)


def append_locked(path: str, chunks: Iterable[bytes], lock_timeout: float = 30.0,
                  mode: int = 0o600) -> int:
    """Append ``chunks`` to ``path`` (created if missing) under an exclusive flock.

    qmail's mbox rule: on any failure the file is truncated back to its
    previous end, so a reader never sees half a message.  The lock is polled
    for ``lock_timeout`` seconds; then ``TimeoutError``.  Returns the bytes
    appended.
    """
    import fcntl

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{path} has been locked for {lock_timeout:g} seconds"
                                       ) from None
                time.sleep(0.05)
        start = os.lseek(fd, 0, os.SEEK_END)
        written = 0
        try:
            for chunk in chunks:
                write_all(fd, chunk)
                written += len(chunk)
            fsync_file(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        return written
    finally:
        os.close(fd)  # releases the lock


# -- Maildir index primitives (APPEND, COPY) ------------------------------------------

def write_new_file_dated(path: str, chunks: Iterable[bytes], mtime: float | None = None,
                         mode: int = 0o600) -> int:
    """:func:`write_new_file`, but the file's mtime (IMAP INTERNALDATE) is set to
    ``mtime`` before the fsync, so the date is as durable as the data."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    written = 0
    try:
        try:
            for chunk in chunks:
                write_all(fd, chunk)
                written += len(chunk)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            fsync_file(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(path)
        raise
    return written


def link_or_copy(src: str, dst: str, tmp_dir: str, mtime: float | None = None) -> bool:
    """Give the durable file ``src`` a second name ``dst`` (never replacing one).

    A hard link where the file system allows it (True); otherwise (another
    file system, no hard links) a copy written under a unique name in
    ``tmp_dir``, fsynced with ``mtime``, then renamed to ``dst`` (False).
    Either way ``dst`` is durable only after its directory is fsynced; the
    caller does that once for a batch.
    """
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
    tmp = os.path.join(tmp_dir, unique_name())
    with open(src, "rb") as f:
        write_new_file_dated(tmp, iter(lambda: f.read(65536), b""), mtime)
    try:
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
        os.rename(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return False


def remove_file(path: str) -> None:
    """Unlink one message file; durable only after its directory is fsynced."""
    os.unlink(path)
