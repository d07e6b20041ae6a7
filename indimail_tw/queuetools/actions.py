"""What qmail-rm does to a committed message.  The caller holds the queue's lock.

Each action keeps the queue's crash rules (see :mod:`indimail_tw.queue`): the
message leaves the queue at the moment ``mess/ID`` (an old format-1 message:
``info/ID``) disappears, and anything it leaves behind is what recovery cleans
up anyway.

Yank layout (the same names recovery uses in ``corrupt/``), for messages of
both queue formats::

    YANKDIR/queueN/ID.info     the envelope (records ending in END + crc)
    YANKDIR/queueN/ID.mess     the message exactly as received
    YANKDIR/queueN/ID.state    the recipient state log, if the message had one

A format-2 queue file holds the message and its envelope in one file: yank
copies the message bytes to ``ID.mess`` and the envelope record to ``ID.info``;
a format-1 message's two files are linked (or copied) as they are.

To put a yanked message back: stop the server, move ``ID.mess`` to
``queueN/mess/ID`` and ``ID.state`` to ``queueN/state/ID``, then ``ID.info`` to
``queueN/info/ID`` last (its arrival commits the message, which the queue then
reads as an old-format message), and start the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import os
from collections.abc import Iterator
from typing import Any

from indimail_tw import fsutil
from indimail_tw.datafile import open_data
from indimail_tw.queue import records
from indimail_tw.queue.states import PENDING
from indimail_tw.queue.store import QueueStore, new_tmp_name, read_message_record

_NO_LINK = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK)
_COPY = 1 << 20


def yank(store: QueueStore, msg_id: str, yank_dir: str) -> list[str]:
    """Move a message into ``yank_dir``; returns the files made there.

    The files are first made in ``yank_dir`` (linked, or written and fsynced)
    and that directory is fsynced; only then is the message removed from the
    queue.  A crash in between leaves the message in the queue and a copy in the
    yank dir; running qmail-rm again finishes the job.
    """
    fsutil.make_dirs(yank_dir, 0o750)
    made = []
    mess = store.mess_path(msg_id)
    state = os.path.join(store.state, msg_id)

    def target(suffix: str) -> str:
        return os.path.join(yank_dir, f"{msg_id}.{suffix}")

    old = store.check_format(msg_id) == 1
    if old:
        _link_or_copy(mess, target("mess"))
    else:
        _, size, record, _ = read_message_record(mess)
        _write_or_same(target("mess"), lambda: _chunks(mess, size))
    made.append(target("mess"))
    if os.path.lexists(state):               # else no delivery attempt recorded yet
        _link_or_copy(state, target("state"))
        made.append(target("state"))
    if old:
        _link_or_copy(os.path.join(store.info, msg_id), target("info"))
    else:
        _write_or_same(target("info"), lambda: [record])
    made.append(target("info"))
    fsutil.fsync_dir(yank_dir)
    delete(store, msg_id)
    return made


def delete(store: QueueStore, msg_id: str) -> None:
    """Remove a message as the queue does when it is finished: ``mess/ID`` first
    (format 1: ``info/ID``), the directory fsynced, then the rest."""
    store.check_format(msg_id)
    (error,) = store.apply([("remove", msg_id, b"")])
    if error is not None:
        raise error


def backdate(store: QueueStore, msg_id: str, seconds: int) -> float:
    """Move a message ``seconds`` into the past; returns its new arrival time.

    The envelope is rewritten with the queue's own record writer: a whole new
    message file (message, new envelope, trailer) is written into ``tmp/``,
    fsynced, renamed over ``mess/ID`` and ``mess/`` fsynced (format 1: a new
    envelope file renamed over ``info/ID``, ``info/`` fsynced), so a crash leaves
    the old or the new envelope, never a torn one.  Pending recipients get a
    state line moving their next attempt back by as much, so the next scheduler
    pass tries them at once; that attempt runs after ``queuelifetime`` and is
    the last one: a temporary failure then bounces, as in qmail.
    """
    old = store.check_format(msg_id) == 1
    envelope, size = store.read_envelope(msg_id)
    states, _ = store.read_states(msg_id, envelope)
    older = dataclasses.replace(envelope, received_at=envelope.received_at - seconds)
    record = records.encode_envelope(older, size)
    temp = os.path.join(store.tmp, new_tmp_name())
    if old:
        fsutil.write_new_file(temp, [record])
        directory, final = store.info, os.path.join(store.info, msg_id)
    else:
        mess = store.mess_path(msg_id)
        fsutil.write_new_file(temp, itertools.chain(
            _chunks(mess, size), [record, records.encode_trailer(len(record))]))
        directory, final = store.mess, mess
    try:
        fsutil.rename(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsutil.fsync_dir(directory)
    ops = list(_earlier(msg_id, states, seconds))
    for error in store.apply(ops) if ops else ():
        if error is not None:
            raise error
    return older.received_at


def _chunks(path: str, size: int) -> Iterator[bytes]:
    """The message bytes of a queue file (never the envelope after them)."""
    with open_data(path, size) as f:
        while chunk := f.read(_COPY):
            yield chunk


def _write_or_same(target: str, chunks: Any) -> None:
    """Write a new file (fsynced) from ``chunks()``; a file already there (made by an
    earlier, interrupted run) is fine if it holds the same bytes."""
    try:
        fsutil.write_new_file(target, chunks(), 0o600)
    except FileExistsError:
        with open(target, "rb") as f:
            same = all(f.read(len(chunk)) == chunk for chunk in chunks()) and not f.read(1)
        if not same:
            raise FileExistsError(errno.EEXIST, "the yank dir already holds a different file",
                                  target) from None


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
