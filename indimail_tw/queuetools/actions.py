"""What qmail-rm does to a committed message.  The caller holds the queue's lock.

Each action keeps the queue's crash rules (see :mod:`indimail_tw.queue`): the
message leaves the queue at the moment ``info/ID`` disappears, and anything it
leaves behind is what recovery cleans up anyway.

Yank layout (the same names recovery uses in ``corrupt/``)::

    YANKDIR/queueN/ID.info     the envelope (records ending in END + crc)
    YANKDIR/queueN/ID.mess     the message exactly as received
    YANKDIR/queueN/ID.state    the recipient state log, if the message had one

To put a yanked message back: stop the server, move ``ID.mess`` to
``queueN/mess/ID`` and ``ID.state`` to ``queueN/state/ID``, then ``ID.info`` to
``queueN/info/ID`` last (its arrival commits the message), and start the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from collections.abc import Iterator

from indimail_tw import fsutil
from indimail_tw.queue import records
from indimail_tw.queue.states import PENDING
from indimail_tw.queue.store import QueueStore, new_tmp_name

_NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK)
_FILES = (("mess", "mess"), ("state", "state"), ("info", "info"))


def yank(store: QueueStore, msg_id: str, yank_dir: str) -> list[str]:
    """Move a message into ``yank_dir``; returns the files made there.

    The three files are first linked (or copied) into ``yank_dir`` and that
    directory is fsynced; only then is the message removed from the queue.  A
    crash in between leaves the message in the queue and a copy in the yank
    dir; running qmail-rm again finishes the job.
    """
    fsutil.make_dirs(yank_dir, 0o750)
    made = []
    for sub, suffix in _FILES:
        source = os.path.join(store.path, sub, msg_id)
        target = os.path.join(yank_dir, f"{msg_id}.{suffix}")
        if sub == "state" and not os.path.lexists(source):
            continue                         # no delivery attempt recorded yet
        _link_or_copy(source, target)
        made.append(target)
    fsutil.fsync_dir(yank_dir)
    delete(store, msg_id)
    return made


def delete(store: QueueStore, msg_id: str) -> None:
    """Remove a message as the queue does when it is finished: ``info/ID`` first
    (then ``info/`` fsynced), then its data and state log."""
    (error,) = store.apply([("remove", msg_id, b"")])
    if error is not None:
        raise error


def backdate(store: QueueStore, msg_id: str, seconds: int) -> float:
    """Move a message ``seconds`` into the past; returns its new arrival time.

    The envelope is rewritten with the queue's own record writer into ``tmp/``
    (fsynced), renamed over ``info/ID`` and ``info/`` fsynced, so a crash leaves
    the old or the new envelope, never a torn one.  Pending recipients get a
    state line moving their next attempt back by as much, so the next scheduler
    pass tries them at once; that attempt runs after ``queuelifetime`` and is
    the last one: a temporary failure then bounces, as in qmail.
    """
    envelope, size = store.read_envelope(msg_id)
    states, _ = store.read_states(msg_id, envelope)
    older = dataclasses.replace(envelope, received_at=envelope.received_at - seconds)
    name = new_tmp_name()
    store.write_envelope(name, older, size)
    temp = os.path.join(store.tmp, name)
    try:
        fsutil.rename(temp, os.path.join(store.info, msg_id))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsutil.fsync_dir(store.info)
    ops = list(_earlier(msg_id, states, seconds))
    for error in store.apply(ops) if ops else ():
        if error is not None:
            raise error
    return older.received_at


def _earlier(msg_id: str, states: list, seconds: int) -> Iterator[tuple[str, str, bytes]]:
    for state in states:
        if state.status == PENDING:
            state.next_at -= seconds
            yield ("state", msg_id, records.encode_state(state.fields()))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except FileExistsError:
        if os.path.samefile(source, target):     # linked by an earlier, interrupted run
            return
        raise FileExistsError(errno.EEXIST, "the yank dir already holds a different file",
                              target) from None
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        with open(source, "rb") as f:            # another file system: copy, fsynced
            fsutil.write_new_file(target, iter(lambda: f.read(1 << 20), b""), 0o600)
