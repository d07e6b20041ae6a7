"""One queue directory on disk.  Every method blocks: call them in a thread.

Layout of a queue (``queue/queueN``)::

    lock         flock()ed by the process that owns the queue
    mess/ID      message data, created in place; uncommitted until info/ID exists
    tmp/NAME     envelope being written; anything here at startup is garbage
    info/ID      envelope file: its appearance (rename from tmp/) commits the message
    state/ID     per-recipient state log (append-only)
    corrupt/     damaged committed files, moved aside by recovery (never deleted)
    spare/       files of finished messages kept to be reused (see below)

Commit of a batch (one job, :meth:`QueueStore.commit`): each message's data and
envelope are written and fsynced, then ``mess/`` is fsynced once, every
``tmp/NAME`` renamed to ``info/ID`` and ``info/`` fsynced once.  A message whose
data came from a file object is prepared by a job of its own first.

Removal of a delivered message (``retire`` in :meth:`QueueStore.apply`):
``info/ID`` is unlinked (the message is gone); its data and state log are
unlinked only after the next fsync of ``info/``, which the next commit batch
makes anyway (or a ``sync`` op the queue sends when none comes soon).  So
``mess/ID`` never disappears while ``info/ID`` could come back after a crash,
and removals cost no directory fsync of their own under load.

Spare files: a removed message's files are not unlinked but renamed into
``spare/`` (up to :data:`SPARE_LIMIT` files of at most :data:`SPARE_MAX_SIZE`
bytes), and new data, envelope and state files are spare files renamed into
place and truncated.  Under steady load the queue then neither allocates nor
frees inodes.  That matters: ext4 without a journal refuses to reuse an inode
freed in the last ``dirty_expire_centisecs`` and scans past every such inode
for each file it creates, so a queue that creates and unlinks files at a
thousand a second spent most of its time in that scan.  What ``spare/``
holds is never read: recovery keeps what it finds there as the pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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

    id: str | None = None
    fd: int | None = None
    size: int = 0
    old_size: int = -1      # bytes the (reused) file held before; -1: not known


@dataclass
class Prepared:
    """A message whose data and envelope are durable, waiting for its commit."""

    id: str
    envelope: Envelope
    size: int
    tmp: str                # the envelope's name in tmp/
    data: bytes | None = None   # the whole message, when it was received in memory


@dataclass
class Pending:
    """A message received in memory (maybe partly spilled): the commit job writes the
    rest of its data and its envelope, then commits it."""

    data: DataFile
    chunk: bytes            # the bytes not yet written to the data file
    envelope: Envelope
    size: int
    tmp: str                # the name its envelope gets in tmp/


@dataclass
class StoredMessage:
    """A committed message as recovery found it."""

    id: str
    envelope: Envelope
    size: int
    states: list[RecipientState]
    bad_state_lines: int = 0


@dataclass
class Recovered:
    messages: list[StoredMessage] = field(default_factory=list)
    removed: int = 0                       # uncommitted leftovers cleaned up
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    bad_state_lines: int = 0


_random = random.Random()          # ids need uniqueness (O_EXCL checks it), not secrecy
_names = itertools.count(1)


def new_id() -> str:
    """A queue id: seconds (hex, so ids sort by age) and 40 random bits."""
    return f"{int(time.time()):08x}{_random.getrandbits(40):010x}"


def new_tmp_name() -> str:
    """A name for tmp/, unique in this process (tmp/ is emptied at every start)."""
    return f"{os.getpid()}.{next(_names)}"


class QueueStore:
    """The files of one queue."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.mess, self.tmp, self.info, self.state, self.corrupt, self.spare_dir = (
            os.path.join(self.path, sub) for sub in SUBDIRS)
        self.spares = Spares(self.spare_dir)
        self._lock_fd: int | None = None
        self._removals: list[str] = []         # see apply(); commit and journal jobs
        self._removals_lock = threading.Lock()  # may run at once
        #: Messages committed by this process that have no state log yet: their
        #: removal need not try to unlink one (a set is thread-safe for add/discard).
        self._no_state: set[str] = set()
        #: Sizes of the data and envelope files of messages committed by this process
        #: (their removal then needs no stat, and the reuse of the files no ftruncate).
        self._file_sizes: dict[str, tuple[int, int]] = {}

    def mess_path(self, msg_id: str) -> str:
        return os.path.join(self.mess, msg_id)

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
        """Append to the message's data file, creating it on first use."""
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

    def finish(self, data: DataFile, chunk: bytes, source: Any = None) -> None:
        """Append the last bytes (``chunk``, then all of ``source`` if given), fsync and
        close the data file (created if nothing was spilled)."""
        try:
            self._fill(data, chunk, source)
            fsutil.fsync_file(data.fd)
            os.close(data.fd)
            data.fd = None
        except BaseException:
            self.discard(data)
            raise

    def _fill(self, data: DataFile, chunk: bytes, source: Any = None) -> None:
        """Append the last bytes and cut off what a reused file held beyond them."""
        self.append(data, chunk)
        if source is not None:
            self.append_from(data, source)
        if data.old_size < 0 or data.old_size > data.size:
            os.ftruncate(data.fd, data.size)

    def write_envelope(self, name: str, envelope: Envelope, size: int) -> None:
        """Write and fsync ``tmp/NAME``: the envelope of a message of ``size`` bytes."""
        fd, _ = self._open_envelope(name, envelope, size)
        try:
            try:
                fsutil.fsync_file(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink(os.path.join(self.tmp, name))
            raise

    def _open_envelope(self, name: str, envelope: Envelope, size: int) -> tuple[int, int]:
        """Write ``tmp/NAME`` (not fsynced) and return its open fd and its size; on an
        error the file is removed and the error raised."""
        path = os.path.join(self.tmp, name)
        fd, old_size = self.spares.reuse(path)
        try:
            record = records.encode_envelope(envelope, size)
            fsutil.write_all(fd, record)
            if old_size < 0 or old_size > len(record):
                os.ftruncate(fd, len(record))
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            _unlink(path)
            raise
        return fd, len(record)

    def prepare(self, data: DataFile, chunk: bytes, envelope: Envelope, name: str,
                source: Any = None) -> Prepared:
        """:meth:`finish`, then :meth:`write_envelope`, one after the other (when the size
        is known only once ``source`` has been copied)."""
        self.finish(data, chunk, source)
        try:
            self.write_envelope(name, envelope, data.size)
        except BaseException:
            self.discard(data)
            raise
        return Prepared(data.id, envelope, data.size, name)

    def discard(self, data: DataFile, name: str | None = None) -> None:
        """Throw away an uncommitted message (safe to call more than once)."""
        if data.id is not None:
            self._file_sizes.pop(data.id, None)
        if data.fd is not None:
            with contextlib.suppress(OSError):
                os.close(data.fd)
            data.fd = None
        for path in (os.path.join(self.tmp, name) if name else None,
                     self.mess_path(data.id) if data.id else None):
            if path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _create(self, data: DataFile) -> None:
        while True:
            msg_id = new_id()
            try:
                data.fd, data.old_size = self.spares.reuse(self.mess_path(msg_id))
            except FileExistsError:
                continue
            data.id = msg_id
            return

    def commit(self, batch: Sequence[Prepared | Pending]) -> list[Prepared | BaseException]:
        """Commit a batch: prepare the Pending ones (data and envelope written and
        fsynced), then fsync mess/, rename tmp/ -> info/, fsync info/.

        Returns one entry per message: its Prepared when committed, else the error
        (its files are removed again).
        """
        results: list[Prepared | BaseException] = self._prepare_all(batch)
        ready = [p for p in results if isinstance(p, Prepared)]
        if not ready:
            return results
        try:
            fsutil.fsync_dir(self.mess)      # data entries durable before any marker
        except OSError as e:
            for p in ready:
                self._forget(p)
            return [e if isinstance(p, Prepared) else p for p in results]
        for i, p in enumerate(results):
            if not isinstance(p, Prepared):
                continue
            try:
                self._no_state.add(p.id)
                fsutil.rename(os.path.join(self.tmp, p.tmp), os.path.join(self.info, p.id))
            except OSError as e:
                self._no_state.discard(p.id)
                results[i] = e
                self._forget(p)
        removals = self._take_removals()        # this fsync makes them durable too
        try:
            fsutil.fsync_dir(self.info)
        except OSError as e:
            self._give_back(removals)
            for i, p in enumerate(results):
                if isinstance(p, Prepared):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.info, p.id))
                    self._forget(p)
                    results[i] = e
            return results
        self._finish_removals(removals)
        return results

    def _prepare_all(self, batch: Sequence[Prepared | Pending]) -> list[Prepared | BaseException]:
        """Write and fsync every Pending message's data and envelope: all files are
        written first and then fsynced together (:func:`fsutil.fsync_all`), so the disk sees the
        batch's flushes at once instead of one after the other."""
        written: list[tuple[Pending, int] | Prepared | BaseException] = []
        for p in batch:
            written.append(self._write_pending(p) if isinstance(p, Pending) else p)
        fds = [fd for w in written if isinstance(w, tuple) for fd in (w[0].data.fd, w[1])]
        errors = dict(zip(fds, fsutil.fsync_all(fds), strict=True))
        results: list[Prepared | BaseException] = []
        for w in written:
            if not isinstance(w, tuple):
                results.append(w)
                continue
            p, env_fd = w
            data_fd, p.data.fd = p.data.fd, None
            error = errors[data_fd] or errors[env_fd]
            for fd in (data_fd, env_fd):
                try:
                    os.close(fd)
                except OSError as e:
                    error = error or e
            if error is not None:
                self.discard(p.data, p.tmp)
                results.append(error)
            else:
                whole = p.chunk if len(p.chunk) == p.size else None
                results.append(Prepared(p.data.id, p.envelope, p.size, p.tmp, whole))
        return results

    def _write_pending(self, p: Pending) -> tuple[Pending, int] | BaseException:
        """Write a Pending message's data and envelope, not fsynced: the message and
        the envelope's open fd, or the error (then its files are gone)."""
        try:
            self._fill(p.data, p.chunk)
            fd, envelope_size = self._open_envelope(p.tmp, p.envelope, p.size)
        except Exception as e:  # noqa: BLE001 -- one message's error, not the batch's
            self.discard(p.data)
            return e
        self._file_sizes[p.data.id] = (p.data.size, envelope_size)
        return p, fd

    def _forget(self, p: Prepared) -> None:
        """Remove an uncommitted message's files; errors here must not hide the cause."""
        self.discard(DataFile(p.id), p.tmp)

    # -- bookkeeping after commit -------------------------------------------------------------

    def apply(self, ops: Sequence[tuple[str, str, bytes]]) -> list[OSError | None]:
        """Apply a batch of ``("state", id, line)``, ``("remove", id, b"")``,
        ``("retire", id, b"")`` and ``("sync", "", b"")`` ops.

        State lines are appended (no fsync: see :mod:`states`); lines of a message
        removed in the same batch are skipped.  Both removals take out ``info/ID``
        first (the message is gone) and its data and state log only after
        ``info/`` has been fsynced.  ``remove`` does that fsync at the end of the
        batch; ``retire`` (the server's, for delivered messages) leaves it to the
        next commit batch, which fsyncs ``info/`` anyway, or to a ``sync`` op.
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
        for msg_id in gone:
            try:
                # held: reused only once the fsync of info/ has made this removal
                # durable (:meth:`_finish_removals`); reused earlier, a crash could
                # bring info/ID back holding another message's envelope
                sizes = self._file_sizes.get(msg_id)
                self.spares.give(os.path.join(self.info, msg_id), msg_id + ".i", held=True,
                                 size=sizes[1] if sizes is not None else None)
            except OSError as e:
                errors[msg_id] = e
        with self._removals_lock:
            self._removals.extend(msg_id for msg_id in gone if msg_id not in errors)
        if any(op in ("sync", "remove") for op, _, _ in ops):
            self.sync_removals()
        return [errors.get(msg_id) for _, msg_id, _ in ops]

    def sync_removals(self) -> None:
        """Make the removals so far durable (fsync ``info/``) and finish them."""
        taken = self._take_removals()
        if not taken:
            return
        try:
            fsutil.fsync_dir(self.info)
        except BaseException:
            self._give_back(taken)
            raise
        self._finish_removals(taken)

    @property
    def pending_removals(self) -> int:
        """Removed messages whose data and state log wait for an fsync of ``info/``."""
        return len(self._removals)

    def _take_removals(self) -> list[str]:
        with self._removals_lock:
            taken, self._removals = self._removals, []
        return taken

    def _give_back(self, taken: list[str]) -> None:
        with self._removals_lock:
            self._removals[:0] = taken

    def _finish_removals(self, taken: list[str]) -> None:
        """``info/ID`` of each is durably gone: its data and state log can go too."""
        no_state = self._no_state
        give = self.spares.give
        sizes = self._file_sizes
        for msg_id in taken:
            self.spares.release(msg_id + ".i")
            known = sizes.pop(msg_id, None)
            with contextlib.suppress(OSError):      # harmless leftovers for recovery
                give(self.mess_path(msg_id), msg_id + ".m", sized=True,
                     size=known[0] if known is not None else None)
                if msg_id in no_state:
                    no_state.discard(msg_id)
                else:
                    give(os.path.join(self.state, msg_id), msg_id + ".s")

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
        with open(os.path.join(self.info, msg_id), "rb") as f:
            return records.decode_envelope(f.read())

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
        """A committed message; CorruptRecord or OSError if it cannot be used."""
        envelope, size = self.read_envelope(msg_id)
        try:
            actual = os.stat(self.mess_path(msg_id)).st_size
        except FileNotFoundError:
            raise records.CorruptRecord("message data file is missing") from None
        if actual != size:
            raise records.CorruptRecord(f"message data is {actual} bytes, envelope says {size}")
        states, bad = self.read_states(msg_id, envelope)
        return StoredMessage(msg_id, envelope, size, states, bad)

    # -- recovery -----------------------------------------------------------------------------

    def recover(self) -> Recovered:
        """Clean up after a crash and return the committed messages.

        Uncommitted files (tmp/ entries, data or state without info/) are removed;
        committed messages that cannot be read are moved to corrupt/.
        """
        report = Recovered()
        self.spares.load()
        for name in os.listdir(self.tmp):
            _unlink(os.path.join(self.tmp, name))
            report.removed += 1
        committed = set()
        for msg_id in sorted(os.listdir(self.info)):
            try:
                message = self.load(msg_id)
            except (records.CorruptRecord, OSError) as e:
                self.move_aside(msg_id)
                report.corrupt.append((msg_id, str(e)))
                continue
            report.bad_state_lines += message.bad_state_lines
            committed.add(msg_id)
            report.messages.append(message)
        for directory in (self.mess, self.state):
            for name in os.listdir(directory):
                if name not in committed:
                    _unlink(os.path.join(directory, name))
                    report.removed += 1
        if report.removed:
            fsutil.fsync_dirs([self.tmp, self.mess, self.state])
        return report

    def move_aside(self, msg_id: str) -> None:
        """Move a message's files into corrupt/ as ID.info, ID.mess, ID.state.

        The data and state go first and the envelope last: a crash in between
        leaves ``info/ID`` without its data, which the next recovery moves
        aside too, so nothing is ever left for recovery to delete.
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
        ``info/ID``, is what counts).  Returns the number of names unlinked."""
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
                self._forget(name)
        if not room:
            _unlink(path)
            return
        try:
            fsutil.rename(path, os.path.join(self.path, name))
        except FileNotFoundError:
            self._forget(name)
        except BaseException:
            self._forget(name)
            raise

    def release(self, name: str) -> None:
        """A held file (:meth:`give`) may be reused from now on."""
        with self._lock:
            if name in self._held:
                self._held.discard(name)
                self._names.append(name)

    def _forget(self, name: str) -> None:
        with self._lock:
            self._held.discard(name)
            self._sizes.pop(name, None)
            with contextlib.suppress(ValueError):
                self._names.remove(name)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
