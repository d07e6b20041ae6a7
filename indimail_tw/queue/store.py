"""One queue directory on disk.  Every method blocks (call them in a thread), except
:meth:`QueueStore.commit_on` and :meth:`QueueStore.apply_on`, which the reactor
calls: they hand the disk work to io_uring (:mod:`indimail_tw.iouring`), whose
requests run in the kernel's own workers, and never wait for it.

Layout of a queue (``queue/queueN``)::

    lock         flock()ed by the process that owns the queue
    mess/ID      a committed message: its existence commits it (format 2, below)
    tmp/NAME     a message being written; anything here at startup is garbage
    info/ID      the envelope of an old format-1 message (see below); no new ones
    state/ID     per-recipient state log (append-only)
    corrupt/     damaged committed files, moved aside by recovery (never deleted)
    spare/       files of finished messages kept to be reused (see below)

A message is ONE file (format 2): the message bytes exactly as received (offset
0 .. size-1), then its envelope record (:func:`records.encode_envelope`, with its
own size field and checksummed end line), then a fixed-length trailer giving the
record's length (:func:`records.encode_trailer`).  Readers of the message read
only bytes [0, size) (:func:`indimail_tw.queue.message.open_data`); recovery
reads the envelope from the end (:func:`read_message_file`).

Writing: the file is created as ``tmp/NAME`` (a spare file, see below); data of
a large message is spilled into it while it is received; at the end the
envelope record and trailer are appended and a reused file that was longer is
cut.  Commit of a batch (one job, :meth:`QueueStore.commit`): every message's
file is written and all of them are fsynced at once (:func:`fsutil.fsync_all`),
each ``tmp/NAME`` is renamed to ``mess/ID`` (a new id; never over an existing
file), and ``mess/`` is fsynced once: only then are the batch's messages
committed.  Per message that is one file, one fsync and one rename; per batch
one directory fsync.  A message whose data came from a file object is written
and fsynced by a job of its own first.  Where io_uring can be had, messages
received in memory are committed by :meth:`QueueStore.commit_on` instead: the
same steps as io_uring requests submitted by the reactor (a spare file is
written where it is and renamed from ``spare/`` straight to ``mess/ID``), so
that no thread and no hand-over of the interpreter lock is involved.

Removal of a delivered message (``retire`` in :meth:`QueueStore.apply`):
``mess/ID`` is moved into ``spare/`` (the message is gone) but held: not reused
before the next fsync of ``mess/`` has made the removal durable (a reused file
could otherwise come back after a crash as ``mess/ID`` holding another
message).  That fsync is the next commit batch's (or a ``sync`` op the queue
sends when none comes soon); after it the state log goes too.  So removals
cost no directory fsync of their own under load.

Format 1 (written by older versions, still read, delivered and removed): the
data in ``mess/ID`` (the whole file) and the envelope record in ``info/ID``,
whose existence committed the message.  Recovery tells them apart by
``info/ID``.  Such a message is removed ``info/ID`` first; its data and state
log go only after the next fsync of ``info/`` (a ``sync`` op).

Spare files: a removed message's files are not unlinked but renamed into
``spare/`` (up to :data:`SPARE_LIMIT` files of at most :data:`SPARE_MAX_SIZE`
bytes), and new message and state files are spare files renamed into place
(message files are overwritten in place and cut to size, state files
truncated).  Under steady load the queue then neither allocates nor frees
inodes.  That matters: ext4 without a journal refuses to reuse an inode freed
in the last ``dirty_expire_centisecs`` and scans past every such inode for
each file it creates, so a queue that creates and unlinks files at a thousand
a second spent most of its time in that scan.  What ``spare/`` holds is never
read: recovery keeps what it finds there as the pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import itertools
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.python.failure import Failure

from indimail_tw import fsutil
from indimail_tw.queue import records
from indimail_tw.queue.envelope import Envelope
from indimail_tw.queue.states import RecipientState

SUBDIRS = ("mess", "tmp", "info", "state", "corrupt", "spare")

#: Files kept in spare/ at most, and the largest data file kept there (bytes).
SPARE_LIMIT = 2048
SPARE_MAX_SIZE = 64 * 1024


class QueueLocked(OSError):
    """Another process owns this queue."""


@dataclass
class DataFile:
    """A message being written: filled in by the thread that creates the file."""

    name: str | None = None  # its name in tmp/ (chosen when the file is created)
    fd: int | None = None
    size: int = 0           # message bytes written so far
    old_size: int = -1      # bytes the (reused) file held before; -1: not known


@dataclass
class Prepared:
    """A message written and fsynced as ``tmp/NAME``, waiting for its commit; once
    committed (returned by :meth:`QueueStore.commit`) ``id`` is its queue id."""

    id: str                 # "" until committed
    envelope: Envelope
    size: int               # message bytes (the file also holds the envelope)
    tmp: str                # its name in tmp/ before the commit
    data: bytes | None = None   # the whole message, when it was received in memory
    file_size: int = 0      # the whole file: message, envelope record and trailer


@dataclass
class Pending:
    """A message received in memory (maybe partly spilled): the commit job writes the
    rest of its data and its envelope, then commits it."""

    data: DataFile
    chunk: bytes            # the bytes not yet written to the file
    envelope: Envelope
    size: int
    tmp: str                # its name in tmp/, unless the data file has one already


@dataclass
class StoredMessage:
    """A committed message as recovery found it."""

    id: str
    envelope: Envelope
    size: int
    states: list[RecipientState]
    bad_state_lines: int = 0
    file_size: int = 0      # of mess/ID
    format: int = 2         # 1: envelope in info/ID


@dataclass
class Recovered:
    messages: list[StoredMessage] = field(default_factory=list)
    removed: int = 0                       # uncommitted leftovers cleaned up
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    bad_state_lines: int = 0


_random = random.Random()          # ids need uniqueness (checked on rename), not secrecy
_names = itertools.count(1)


def new_id() -> str:
    """A queue id: seconds (hex, so ids sort by age) and 40 random bits."""
    return f"{int(time.time()):08x}{_random.getrandbits(40):010x}"


def new_tmp_name() -> str:
    """A name for tmp/, unique in this process (tmp/ is emptied at every start)."""
    return f"{fsutil.process_id()}.{next(_names)}"


def read_message_file(path: str) -> tuple[Envelope, int, int]:
    """The envelope of the format-2 message file at ``path``: (envelope, message
    size, file size).  CorruptRecord when the trailer or the record is damaged or
    the sizes do not add up; OSError (FileNotFoundError) if it cannot be read."""
    envelope, size, _, total = read_message_record(path)
    return envelope, size, total


def read_message_record(path: str) -> tuple[Envelope, int, bytes, int]:
    """:func:`read_message_file`, and the envelope record as stored: (envelope,
    message size, record, file size)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        total = os.fstat(fd).st_size
        if total < records.TRAILER_SIZE:
            raise records.CorruptRecord(f"message file of {total} bytes has no trailer")
        length = records.decode_trailer(_pread(fd, records.TRAILER_SIZE,
                                               total - records.TRAILER_SIZE))
        if length > total - records.TRAILER_SIZE:
            raise records.CorruptRecord(f"trailer names a record of {length} bytes "
                                        f"in a file of {total}")
        record = _pread(fd, length, total - records.TRAILER_SIZE - length)
    finally:
        os.close(fd)
    envelope, size = records.decode_envelope(record)
    if size + length + records.TRAILER_SIZE != total:
        raise records.CorruptRecord(f"message file is {total} bytes, envelope says "
                                    f"{size} + {length} + {records.TRAILER_SIZE}")
    return envelope, size, record, total


def _pread(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            raise records.CorruptRecord("message file shorter than it was")
        data += more
    return data


class QueueStore:
    """The files of one queue."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.mess, self.tmp, self.info, self.state, self.corrupt, self.spare_dir = (
            os.path.join(self.path, sub) for sub in SUBDIRS)
        self.spares = Spares(self.spare_dir)
        self._lock_fd: int | None = None
        self._removals: list[str] = []         # see apply(); commit and journal jobs
        self._removals1: list[str] = []        # the same for format-1 messages
        self._removals_lock = threading.Lock()  # may run at once
        #: Messages committed by this process that have no state log yet: their
        #: removal need not try to unlink one (a set is thread-safe for add/discard).
        self._no_state: set[str] = set()
        #: Sizes of the files of format-2 messages (their removal then needs no
        #: stat, and the reuse of the file no ftruncate).
        self._file_sizes: dict[str, int] = {}
        #: Old-format messages (envelope in info/ID) found by recovery.
        self._format1: set[str] = set()

    def mess_path(self, msg_id: str) -> str:
        return os.path.join(self.mess, msg_id)

    def check_format(self, msg_id: str) -> int:
        """1 if the committed message has its envelope in ``info/ID`` (format 1), else
        2; remembered for its removal (for the tools, whose store has not run
        recovery)."""
        if os.path.lexists(os.path.join(self.info, msg_id)):
            self._format1.add(msg_id)
            return 1
        return 2

    # -- ownership ------------------------------------------------------------------------

    def open(self) -> None:
        """Create missing directories and take the queue's lock."""
        for sub in SUBDIRS:
            fsutil.make_dirs(os.path.join(self.path, sub), 0o750)
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise QueueLocked(e.errno, f"queue {self.path} is in use by another process") from e
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writing a message ----------------------------------------------------------------

    def append(self, data: DataFile, chunk: bytes) -> None:
        """Append to the message's file in tmp/, creating it on first use."""
        try:
            if data.fd is None:
                self._create(data)
            fsutil.write_all(data.fd, chunk)
            data.size += len(chunk)
        except BaseException:
            self.discard(data)
            raise

    def append_from(self, data: DataFile, source: Any, blocksize: int = 256 * 1024) -> None:
        """Append everything a readable binary file object holds."""
        while True:
            chunk = source.read(blocksize)
            if not chunk:
                return
            self.append(data, chunk)

    def _complete(self, data: DataFile, chunk: bytes, envelope: Envelope,
                  source: Any = None) -> int:
        """Write the last bytes (``chunk``, then all of ``source``), the envelope record
        and the trailer, and cut off what a reused file held beyond them (not
        fsynced; the file stays open).  Returns the file's size.  On an error the
        file is removed and the error raised."""
        try:
            if source is not None:
                self.append(data, chunk)
                chunk = b""
                self.append_from(data, source)
            if data.fd is None:
                self._create(data)
            size = data.size + len(chunk)
            record = records.encode_envelope(envelope, size)
            fsutil.write_all_v(data.fd, [chunk, record, records.encode_trailer(len(record))])
            data.size = size
            total = size + len(record) + records.TRAILER_SIZE
            if data.old_size < 0 or data.old_size > total:
                os.ftruncate(data.fd, total)
        except BaseException:
            self.discard(data)
            raise
        return total

    def prepare(self, data: DataFile, chunk: bytes, envelope: Envelope, name: str | None = None,
                source: Any = None) -> Prepared:
        """Write the rest of a message (``chunk``, then all of ``source``) and its
        envelope, fsync and close its file: a Prepared for :meth:`commit` (when the
        size is known only once ``source`` has been copied)."""
        if data.name is None:
            data.name = name
        total = self._complete(data, chunk, envelope, source)
        try:
            fd, data.fd = data.fd, None
            try:
                fsutil.fsync_file(fd)
            finally:
                os.close(fd)
        except BaseException:
            self.discard(data)
            raise
        return Prepared("", envelope, data.size, data.name or "", None, total)

    def discard(self, data: DataFile, name: str | None = None) -> None:
        """Throw away an uncommitted message (safe to call more than once)."""
        if data.fd is not None:
            with contextlib.suppress(OSError):
                os.close(data.fd)
            data.fd = None
        name = data.name or name
        if name:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.tmp, name))

    def _create(self, data: DataFile) -> None:
        if data.name is None:
            data.name = new_tmp_name()
        data.fd, data.old_size = self.spares.reuse(os.path.join(self.tmp, data.name))

    def commit(self, batch: Sequence[Prepared | Pending]) -> list[Prepared | BaseException]:
        """Commit a batch: write the Pending ones, fsync all their files at once,
        rename each ``tmp/NAME`` to ``mess/ID``, fsync ``mess/`` once.

        Returns one entry per message: its Prepared (with its id) when committed,
        else the error (its file is removed again).  (:meth:`commit_on` does the
        same from the reactor, through io_uring.)
        """
        results: list[Prepared | BaseException] = self._prepare_all(batch)
        moved: list[int] = []
        for i, p in enumerate(results):
            if not isinstance(p, Prepared):
                continue
            try:
                results[i] = self._move_in(p)
                moved.append(i)
            except OSError as e:
                _unlink(os.path.join(self.tmp, p.tmp))
                results[i] = e
        if not moved:
            return results
        removals = self._take_removals()        # this fsync makes them durable too
        try:
            fsutil.fsync_dir(self.mess)
        except OSError as e:
            self._give_back(removals)
            for i in moved:
                p = results[i]
                assert isinstance(p, Prepared)
                _unlink(self.mess_path(p.id))
                self._no_state.discard(p.id)
                self._file_sizes.pop(p.id, None)
                results[i] = e
            return results
        self._finish_removals(removals)
        return results

    def commit_on(self, ring: Any, run: Any,
                  batch: Sequence[Prepared | Pending]) -> Any:
        """:meth:`commit` from the reactor thread, as a Deferred.

        The messages received in memory (nothing spilled) go through io_uring's
        ``ring`` (:func:`fsutil.publish_files_on`): each is written into a spare
        file (or a new one in ``tmp/``), fsynced and renamed to ``mess/ID``, then
        ``mess/`` is fsynced; the reactor never waits and no thread is involved.
        The others, and any message that met an error there, are committed by
        :meth:`commit` through ``run`` (in a thread), which reports the error if
        it persists; so is whatever a failure leaves to clean up.
        """
        from twisted.internet import defer

        whole = [i for i, p in enumerate(batch)
                 if isinstance(p, Pending) and p.data.fd is None][:fsutil.PUBLISH_MAX]
        results: list[Any] = [None] * len(batch)
        plan = self._plan([batch[i] for i in whole]) if whole else None
        published = fsutil.publish_files_on(ring, plan[0], self.mess) if plan else None

        def settle(outcome: Any) -> Any:
            if isinstance(outcome, Failure):      # the ring broke: state not known
                return run(lambda: self._settle(
                    plan, (fsutil.unpublish(plan[0], outcome.value), None)))
            if outcome is None or self._settle_blocks(plan, outcome):
                return run(self._settle, plan, outcome)
            return self._settle(plan, outcome)

        def rest(outcomes: list[Any]) -> Any:
            for i, outcome in zip(whole, outcomes, strict=True):
                results[i] = outcome
            left = [i for i in range(len(batch)) if results[i] is None]
            if not left:
                return results
            d = run(self.commit, [batch[i] for i in left])

            def merge(more: list[Any]) -> list[Any]:
                for i, outcome in zip(left, more, strict=True):
                    results[i] = outcome
                return results
            return d.addCallback(merge)

        if published is None:
            d = settle(None) if plan else defer.succeed([])
        else:
            d = published.addBoth(settle)
        return d.addCallback(rest)

    def _plan(self, batch: Sequence[Pending]) -> tuple[list[fsutil.NewFile], list[Prepared],
                                                       list[str]]:
        """The files :func:`fsutil.publish_files_on` writes for ``batch`` (each into a
        spare file, or a new one in ``tmp/``), the Prepared each becomes, and the
        removals the fsync of ``mess/`` will make durable."""
        files, prepared = [], []
        for p in batch:
            if p.data.name is None:
                p.data.name = p.tmp
            size = p.data.size + len(p.chunk)
            record = records.encode_envelope(p.envelope, size)
            data = b"".join((p.chunk, record, records.encode_trailer(len(record))))
            msg_id = new_id()
            spare = self.spares.pick()
            if spare is None:
                files.append(fsutil.NewFile(os.path.join(self.tmp, p.data.name), data,
                                            self.mess_path(msg_id), create=True))
            else:
                path, old_size = spare
                files.append(fsutil.NewFile(path, data, self.mess_path(msg_id),
                                            cut=old_size < 0 or old_size > len(data)))
            prepared.append(Prepared(msg_id, p.envelope, size, p.data.name,
                                     p.chunk if len(p.chunk) == size else None, len(data)))
        return files, prepared, self._take_removals()

    def _settle_blocks(self, plan: Any, outcome: Any) -> bool:
        """Whether :meth:`_settle` has files to unlink or rename (then it runs in a
        thread): after an error, or for removals whose state log goes too."""
        errors, dir_error = outcome
        return (dir_error is not None or any(e is not None for e in errors)
                or any(msg_id not in self._no_state for msg_id in plan[2]))

    def _settle(self, plan: Any, outcome: Any) -> list[Prepared | BaseException | None]:
        """The results of a planned batch (:meth:`_plan`) once io_uring is done
        (``outcome``: :func:`fsutil.publish_files_on`'s result, None if it could not
        be done): a Prepared per committed message, None per message to commit
        the usual way, the error per message that cannot be committed."""
        files, prepared, removals = plan
        if outcome is None:
            self._give_back(removals)
            for f in files:
                if not f.create:
                    self.spares.put_back(f.path)
            return [None] * len(files)
        errors, dir_error = outcome
        if dir_error is None:
            self._finish_removals(removals)
        else:
            self._give_back(removals)
        out: list[Prepared | BaseException | None] = []
        for f, p, error in zip(files, prepared, errors, strict=True):
            if error is not None:
                _unlink(f.path)                 # what it holds is unknown: written again
                out.append(None)
            elif dir_error is not None:
                _unlink(f.final)
                out.append(dir_error)
            else:
                self._no_state.add(p.id)
                self._file_sizes[p.id] = p.file_size
                out.append(p)
        return out

    def _move_in(self, p: Prepared) -> Prepared:
        """Rename ``tmp/NAME`` to ``mess/ID`` under a new id (durable only after the
        fsync of ``mess/``)."""
        source = os.path.join(self.tmp, p.tmp)
        while True:
            msg_id = new_id()
            try:
                fsutil.rename_noreplace(source, self.mess_path(msg_id))
            except FileExistsError:
                continue
            break
        self._no_state.add(msg_id)
        self._file_sizes[msg_id] = p.file_size
        return dataclasses.replace(p, id=msg_id)

    def _prepare_all(self, batch: Sequence[Prepared | Pending]) -> list[Prepared | BaseException]:
        """Write and fsync every Pending message's file: all files are written first
        and then fsynced together (:func:`fsutil.fsync_all`), so the disk sees the
        batch's flushes at once instead of one after the other."""
        written: list[tuple[Pending, int] | Prepared | BaseException] = []
        for p in batch:
            written.append(self._write_pending(p) if isinstance(p, Pending) else p)
        fds = [w[0].data.fd for w in written if isinstance(w, tuple)]
        errors = dict(zip(fds, fsutil.fsync_all(fds), strict=True))
        results: list[Prepared | BaseException] = []
        for w in written:
            if not isinstance(w, tuple):
                results.append(w)
                continue
            p, total = w
            fd, p.data.fd = p.data.fd, None
            error = errors[fd]
            try:
                os.close(fd)
            except OSError as e:
                error = error or e
            if error is not None:
                self.discard(p.data)
                results.append(error)
            else:
                whole = p.chunk if len(p.chunk) == p.data.size else None
                results.append(Prepared("", p.envelope, p.data.size, p.data.name or "",
                                        whole, total))
        return results

    def _write_pending(self, p: Pending) -> tuple[Pending, int] | BaseException:
        """Write a Pending message's file, not fsynced: the message and the file's
        size, or the error (then its file is gone)."""
        if p.data.name is None:
            p.data.name = p.tmp
        try:
            total = self._complete(p.data, p.chunk, p.envelope)
        except Exception as e:  # noqa: BLE001 -- one message's error, not the batch's
            return e
        return p, total

    # -- bookkeeping after commit -------------------------------------------------------------

    def apply(self, ops: Sequence[tuple[str, str, bytes]]) -> list[OSError | None]:
        """Apply a batch of ``("state", id, line)``, ``("remove", id, b"")``,
        ``("retire", id, b"")`` and ``("sync", "", b"")`` ops.

        State lines are appended (no fsync: see :mod:`states`); lines of a message
        removed in the same batch are skipped.  Both removals take out ``mess/ID``
        (into spare/, held) first: the message is gone; its state log goes only
        after ``mess/`` has been fsynced.  ``remove`` does that fsync at the end of
        the batch; ``retire`` (the server's, for delivered messages) leaves it to
        the next commit batch, which fsyncs ``mess/`` anyway, or to a ``sync`` op.
        A format-1 message loses ``info/ID`` first, its data and state log after
        an fsync of ``info/`` (a ``sync`` or ``remove`` op).
        Returns one entry per op: None, or the error that op met.
        """
        gone = {msg_id for op, msg_id, _ in ops if op in ("remove", "retire")}
        lines: dict[str, list[bytes]] = {}
        for op, msg_id, line in ops:
            if op == "state" and msg_id not in gone:
                lines.setdefault(msg_id, []).append(line)
        errors: dict[str, OSError] = {}
        for msg_id, chunks in lines.items():
            try:
                self._append_state(msg_id, b"".join(chunks))
            except OSError as e:
                errors[msg_id] = e
        old = []
        for msg_id in gone:
            try:
                # held: reused only once the fsync of mess/ (info/) has made this
                # removal durable (:meth:`_finish_removals`); reused earlier, a crash
                # could bring mess/ID back holding another message
                if msg_id in self._format1:
                    self.spares.give(os.path.join(self.info, msg_id), msg_id + ".i",
                                     held=True)
                    old.append(msg_id)
                else:
                    self.spares.give(self.mess_path(msg_id), msg_id + ".m", sized=True,
                                     held=True, size=self._file_sizes.get(msg_id))
            except OSError as e:
                errors[msg_id] = e
        with self._removals_lock:
            self._removals.extend(msg_id for msg_id in gone
                                  if msg_id not in errors and msg_id not in self._format1)
            self._removals1.extend(msg_id for msg_id in old if msg_id not in errors)
        if any(op in ("sync", "remove") for op, _, _ in ops):
            self.sync_removals()
        return [errors.get(msg_id) for _, msg_id, _ in ops]

    def apply_on(self, ring: Any, run: Any, ops: Sequence[tuple[str, str, bytes]]) -> Any:
        """:meth:`apply` from the reactor thread, as a Deferred: a batch that only
        retires messages this process committed (the usual one: each delivered
        message's file moves into ``spare/``) goes through io_uring's ``ring``, one
        rename each; any other batch is applied by ``run`` (in a thread)."""
        from indimail_tw.iouring import AT_FDCWD, HARDLINK, ORPHANS, RENAMEAT, Op, address

        sizes, spares = self._file_sizes, self.spares
        if not ops or any(op != "retire" or sizes.get(msg_id, spares.max_size + 1)
                          > spares.max_size or msg_id in self._format1
                          for op, msg_id, _ in ops):
            return run(self.apply, ops)
        ids = list(dict.fromkeys(msg_id for _, msg_id, _ in ops))
        names = [msg_id + ".m" for msg_id in ids]
        if not spares.reserve(names, [sizes[msg_id] for msg_id in ids]):
            return run(self.apply, ops)       # the pool is full: apply() unlinks them
        paths = [os.fsencode(p) for msg_id, name in zip(ids, names, strict=True)
                 for p in (self.mess_path(msg_id), os.path.join(self.spare_dir, name))]
        # one after the other, each whatever became of the one before (a hard-linked
        # chain): one kernel worker for the batch instead of one per message
        last = len(ids) - 1
        d = ring.submit([Op(RENAMEAT, AT_FDCWD, address(paths[2 * k + 1]), address(paths[2 * k]),
                            AT_FDCWD & 0xFFFFFFFF, flags=HARDLINK if k < last else 0)
                         for k in range(len(ids))])

        def done(results: Any) -> list[OSError | None]:
            if isinstance(results, Failure):  # the ring broke: which ran is not known
                ORPHANS.append(paths)         # (the kernel may still read them)
                results = [-errno.EIO] * len(ids)
            errors: dict[str, OSError] = {}
            moved = []
            for msg_id, name, result in zip(ids, names, results, strict=True):
                if result == 0 or result == -errno.ENOENT:
                    moved.append(msg_id)      # (gone already: as apply() does)
                    if result:
                        spares.forget(name)
                else:
                    spares.forget(name)
                    errors[msg_id] = OSError(-result, os.strerror(-result),
                                             self.mess_path(msg_id))
            with self._removals_lock:
                self._removals.extend(msg_id for msg_id in moved if msg_id not in errors)
            return [errors.get(msg_id) for _, msg_id, _ in ops]

        return d.addBoth(done)

    def sync_removals(self) -> None:
        """Make the removals so far durable (fsync ``mess/``, and ``info/`` for
        format-1 messages) and finish them."""
        taken, old = self._take_removals(), self._take_removals1()
        try:
            if taken:
                fsutil.fsync_dir(self.mess)
            if old:
                fsutil.fsync_dir(self.info)
        except BaseException:
            self._give_back(taken, old)
            raise
        self._finish_removals(taken)
        self._finish_removals1(old)

    @property
    def pending_removals(self) -> int:
        """Removed messages whose removal waits for a directory fsync."""
        return len(self._removals) + len(self._removals1)

    def _take_removals(self) -> list[str]:
        with self._removals_lock:
            taken, self._removals = self._removals, []
        return taken

    def _take_removals1(self) -> list[str]:
        with self._removals_lock:
            taken, self._removals1 = self._removals1, []
        return taken

    def _give_back(self, taken: list[str], old: Sequence[str] = ()) -> None:
        with self._removals_lock:
            self._removals[:0] = taken
            self._removals1[:0] = old

    def _finish_removals(self, taken: list[str]) -> None:
        """``mess/ID`` of each is durably gone: its file may be reused, its state log
        can go too."""
        no_state = self._no_state
        give = self.spares.give
        release = self.spares.release
        sizes = self._file_sizes
        for msg_id in taken:
            release(msg_id + ".m")
            sizes.pop(msg_id, None)
            if msg_id in no_state:
                no_state.discard(msg_id)
            else:
                with contextlib.suppress(OSError):      # harmless leftovers for recovery
                    give(os.path.join(self.state, msg_id), msg_id + ".s")

    def _finish_removals1(self, old: list[str]) -> None:
        """``info/ID`` of each format-1 message is durably gone: its data and state
        log can go too."""
        for msg_id in old:
            self.spares.release(msg_id + ".i")
            self._format1.discard(msg_id)
            with contextlib.suppress(OSError):      # harmless leftovers for recovery
                self.spares.give(self.mess_path(msg_id), msg_id + ".m", sized=True)
                self.spares.give(os.path.join(self.state, msg_id), msg_id + ".s")

    def _append_state(self, msg_id: str, data: bytes) -> None:
        self._no_state.discard(msg_id)
        path = os.path.join(self.state, msg_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            os.close(self.spares.create(path))
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            fsutil.write_all(fd, data)
        finally:
            os.close(fd)

    # -- reading --------------------------------------------------------------------------

    def read_envelope(self, msg_id: str) -> tuple[Envelope, int]:
        """A committed message's envelope and size (either format)."""
        envelope, size, _ = self._envelope_of(msg_id)
        return envelope, size

    def _envelope_of(self, msg_id: str) -> tuple[Envelope, int, int | None]:
        """(envelope, message size, file size): from ``info/ID`` for a format-1
        message (its file size then None: not looked at), else from the end of
        ``mess/ID``."""
        try:
            with open(os.path.join(self.info, msg_id), "rb") as f:
                info = f.read()
        except FileNotFoundError:
            return read_message_file(self.mess_path(msg_id))
        envelope, size = records.decode_envelope(info)
        return envelope, size, None

    def read_states(self, msg_id: str, envelope: Envelope) -> tuple[list[RecipientState], int]:
        """Recipient states from the log (pending when absent); and rejected lines."""
        birth = envelope.received_at
        states = [RecipientState(i, r, next_at=birth) for i, r in enumerate(envelope.recipients)]
        try:
            with open(os.path.join(self.state, msg_id), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return states, 0
        lines, bad = records.decode_states(data)
        for fields in lines:
            index = fields.get("i")
            if not isinstance(index, int) or not 0 <= index < len(states):
                raise records.CorruptRecord(f"state line for unknown recipient {index!r}")
            try:
                states[index].apply(fields)
            except (ValueError, TypeError) as e:
                raise records.CorruptRecord(f"bad state line: {e}") from e
        return states, bad

    def load(self, msg_id: str) -> StoredMessage:
        """A committed message (either format); CorruptRecord or OSError if it cannot
        be used (FileNotFoundError: it is not in the queue)."""
        envelope, size, total = self._envelope_of(msg_id)
        fmt = 2
        if total is None:
            try:
                total = os.stat(self.mess_path(msg_id)).st_size
            except FileNotFoundError:
                raise records.CorruptRecord("message data file is missing") from None
            if total != size:
                raise records.CorruptRecord(
                    f"message data is {total} bytes, envelope says {size}")
            fmt = 1
        states, bad = self.read_states(msg_id, envelope)
        return StoredMessage(msg_id, envelope, size, states, bad, total, fmt)

    # -- recovery -----------------------------------------------------------------------------

    def recover(self) -> Recovered:
        """Clean up after a crash and return the committed messages.

        Uncommitted files (tmp/ entries, state logs without a message) are removed;
        committed messages that cannot be read are moved to corrupt/, and so are
        ``info/`` files of format 1 without their data.
        """
        report = Recovered()
        self.spares.load()
        for name in os.listdir(self.tmp):
            _unlink(os.path.join(self.tmp, name))
            report.removed += 1
        infos = set(os.listdir(self.info))
        committed = set()
        for msg_id in sorted(os.listdir(self.mess)):
            try:
                message = self.load(msg_id)
            except (records.CorruptRecord, OSError) as e:
                self.move_aside(msg_id)
                report.corrupt.append((msg_id, str(e)))
                continue
            report.bad_state_lines += message.bad_state_lines
            committed.add(msg_id)
            if message.format == 1:
                self._format1.add(msg_id)
            else:
                self._file_sizes[msg_id] = message.file_size
            report.messages.append(message)
        for msg_id in sorted(infos - committed):
            if os.path.lexists(os.path.join(self.info, msg_id)):   # not moved aside above
                self.move_aside(msg_id)
                report.corrupt.append((msg_id, "message data file is missing"))
        for name in os.listdir(self.state):
            if name not in committed:
                _unlink(os.path.join(self.state, name))
                report.removed += 1
        if report.removed:
            fsutil.fsync_dirs([self.tmp, self.state])
        return report

    def move_aside(self, msg_id: str) -> None:
        """Move a message's files into corrupt/ as ID.mess, ID.state (and ID.info
        for format 1).

        The data and state go first and a format-1 envelope last: a crash in
        between leaves ``info/ID`` without its data, which the next recovery
        moves aside too, so nothing is ever left for recovery to delete.
        """
        for directory, suffix in ((self.mess, "mess"), (self.state, "state")):
            src = os.path.join(directory, msg_id)
            if os.path.lexists(src):
                fsutil.rename(src, os.path.join(self.corrupt, f"{msg_id}.{suffix}"))
        fsutil.fsync_dirs([self.corrupt, self.mess, self.state])
        src = os.path.join(self.info, msg_id)
        if os.path.lexists(src):
            fsutil.rename(src, os.path.join(self.corrupt, f"{msg_id}.info"))
            fsutil.fsync_dirs([self.corrupt, self.info])


class Spares:
    """The pool of spare files in ``spare/`` (see the module's docstring).

    Thread-safe: commit and journal jobs may use it at once.
    """

    def __init__(self, path: str, limit: int | None = None,
                 max_size: int | None = None) -> None:
        self.path = path
        self.limit = SPARE_LIMIT if limit is None else limit
        self.max_size = SPARE_MAX_SIZE if max_size is None else max_size
        self._names: list[str] = []
        self._held: set[str] = set()        # in spare/, not to be reused yet (give(held=))
        self._sizes: dict[str, int] = {}    # size of a spare file, where it is known
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._names) + len(self._held)

    def load(self) -> int:
        """Take what ``spare/`` holds as the pool (at start); unlink what is over the
        limit, and every name whose file has another name too (a crash in the middle
        of the rename that moved it here: the other name, e.g. a committed
        ``mess/ID``, is what counts).  Returns the number of names unlinked."""
        keep: list[str] = []
        dropped = 0
        for name in sorted(os.listdir(self.path)):
            path = os.path.join(self.path, name)
            try:
                shared = os.lstat(path).st_nlink != 1
            except FileNotFoundError:
                continue
            if shared or len(keep) >= self.limit:
                _unlink(path)
                dropped += 1
            else:
                keep.append(name)
        with self._lock:
            self._names, self._held, self._sizes = keep, set(), {}
        return dropped

    def create(self, path: str) -> int:
        """A new, empty file at ``path`` (FileExistsError if there is one), open for
        writing: a spare file moved there and truncated, or else a new file."""
        return self._take(path, os.O_TRUNC)[0]

    def reuse(self, path: str) -> tuple[int, int]:
        """:meth:`create` without truncating: the fd and how many bytes the file holds
        (0 for a new file, -1 when not known).  The caller overwrites them and cuts
        the file to its own size when that is smaller, or the old size is not
        known, before the fsync.  Overwriting blocks in place is cheaper than
        freeing them on open and allocating them again on write (most messages
        fit the blocks of the last one)."""
        return self._take(path, 0)

    def _take(self, path: str, flags: int) -> tuple[int, int]:
        while True:
            with self._lock:
                name = self._names.pop() if self._names else None
                size = self._sizes.pop(name, -1) if name is not None else 0
            if name is None:
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 0
            try:
                fsutil.rename_noreplace(os.path.join(self.path, name), path)
            except FileNotFoundError:
                continue                  # gone behind our back: take another
            except BaseException:
                with self._lock:
                    self._names.append(name)
                raise
            try:
                return os.open(path, os.O_WRONLY | flags), (0 if flags & os.O_TRUNC else size)
            except BaseException:
                _unlink(path)
                raise

    def give(self, path: str, name: str, sized: bool = False, held: bool = False,
             size: int | None = None) -> None:
        """Remove ``path``: into the pool as ``name`` while there is room (and, with
        ``sized``, the file is small enough), else unlinked.  FileNotFoundError is
        not an error.  With ``held`` the file is not reused before :meth:`release`.
        ``size``, when the caller knows it, is the file's size (no ``stat``; the
        next :meth:`reuse` may then skip its ``ftruncate``)."""
        with self._lock:
            room = len(self._names) + len(self._held) < self.limit
            if room:                          # reserved; taken back on failure
                if held:
                    self._held.add(name)
                else:
                    self._names.append(name)
                if size is not None:
                    self._sizes[name] = size
        if room and sized:
            try:
                room = (size if size is not None else os.stat(path).st_size) <= self.max_size
            except FileNotFoundError:
                room = False
            if not room:
                self.forget(name)
        if not room:
            _unlink(path)
            return
        try:
            fsutil.rename(path, os.path.join(self.path, name))
        except FileNotFoundError:
            self.forget(name)
        except BaseException:
            self.forget(name)
            raise

    def pick(self) -> tuple[str, int] | None:
        """A spare file to be overwritten where it is (and then renamed away), taken
        out of the pool: its path and size (-1 when not known); None if there is
        none.  :meth:`put_back` returns it unused."""
        with self._lock:
            if not self._names:
                return None
            name = self._names.pop()
            return os.path.join(self.path, name), self._sizes.pop(name, -1)

    def put_back(self, path: str) -> None:
        """A file from :meth:`pick`, unused and unchanged."""
        with self._lock:
            self._names.append(os.path.basename(path))

    def release(self, name: str) -> None:
        """A held file (:meth:`give`) may be reused from now on."""
        with self._lock:
            if name in self._held:
                self._held.discard(name)
                self._names.append(name)

    def reserve(self, names: Sequence[str], sizes: Sequence[int]) -> bool:
        """Make room for files about to be renamed into the pool as ``names`` (of the
        given sizes), held as :meth:`give` with ``held`` holds them; False (and
        nothing reserved) when the pool has not room for all.  :meth:`forget`
        takes back a name whose file did not come."""
        with self._lock:
            if len(self._names) + len(self._held) + len(names) > self.limit:
                return False
            self._held.update(names)
            self._sizes.update(zip(names, sizes, strict=True))
        return True

    def forget(self, name: str) -> None:
        """Take back a name whose file did not come (:meth:`give`, :meth:`reserve`)."""
        with self._lock:
            self._held.discard(name)
            self._sizes.pop(name, None)
            with contextlib.suppress(ValueError):
                self._names.remove(name)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
