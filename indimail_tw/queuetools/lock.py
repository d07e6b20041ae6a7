"""Queue ownership: the ``lock`` file a server holds, taken the same way.

The server takes an exclusive, non-blocking ``flock`` on ``queueN/lock`` when it
opens a queue and holds it while it runs (:meth:`QueueStore.open`).  A tool
that changes a queue takes the same lock first, so it never works on a queue a
server is using, and a server cannot open the queue while the tool holds it.
Tools that only read never take the lock: even a brief shared lock could make a
server that is starting at that moment fail to open its queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence

from indimail_tw.errors import AdminError
from indimail_tw.queuetools.common import FAILED, QueueDir

PROC_LOCKS = "/proc/locks"
NOBODY, UNKNOWN = 0, -1          # what :func:`holder` returns besides a pid


class QueuesBusy(Exception):
    """Some queues are locked by another process (a running server)."""

    def __init__(self, queues: Sequence[QueueDir]) -> None:
        super().__init__(", ".join(q.name for q in queues))
        self.queues = list(queues)


def _open_lock(queue: QueueDir) -> int:
    path = os.path.join(queue.path, "lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise AdminError(f"{path}: cannot open the queue's lock: {e.strerror}", FAILED
                         ) from None
    if os.geteuid() == 0:
        # a lock file we create must stay usable by the server's own user
        st = os.stat(queue.path)
        with contextlib.suppress(OSError):
            os.fchown(fd, st.st_uid, st.st_gid)
    return fd


@contextlib.contextmanager
def hold(queues: Sequence[QueueDir]) -> Iterator[None]:
    """Hold the lock of every queue, or none: raises :class:`QueuesBusy` naming the
    queues another process holds (AdminError if a lock file cannot be opened)."""
    fds: list[int] = []
    busy: list[QueueDir] = []
    try:
        for queue in queues:
            fd = _open_lock(queue)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy.append(queue)
        if busy:
            raise QueuesBusy(busy)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def holder(queue: QueueDir, proc_locks: str = PROC_LOCKS) -> int:
    """Who holds the queue's lock, found without touching it (Linux ``/proc/locks``).

    The holder's pid; :data:`NOBODY`; or :data:`UNKNOWN` when this cannot be
    known (no ``/proc/locks``, or a holder in another pid namespace).
    """
    try:
        st = os.stat(os.path.join(queue.path, "lock"))
    except FileNotFoundError:
        return NOBODY
    except OSError:
        return UNKNOWN
    try:
        with open(proc_locks, encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return UNKNOWN
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":        # "->": a waiter, not a holder
            continue
        try:
            major, minor, inode = fields[5].split(":")
            same = (int(inode) == st.st_ino and int(major, 16) == os.major(st.st_dev)
                    and int(minor, 16) == os.minor(st.st_dev))
            pid = int(fields[4])
        except ValueError:
            continue
        if same and fields[1] == "FLOCK":
            return pid if pid > 0 else UNKNOWN
    return NOBODY
