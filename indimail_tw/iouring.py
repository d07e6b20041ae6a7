"""A minimal io_uring runner (Linux 5.6+, x86_64) through ctypes: a batch of
requests goes to the kernel in one ``io_uring_enter`` that also waits for all of
them, so the calling thread gives up the interpreter lock once per batch instead
of once per system call.

This module knows nothing about mail: :mod:`indimail_tw.fsutil` decides which
files are written, fsynced and renamed (and is the only caller).

A request is an :class:`Op`; :meth:`Ring.run` returns each one's result (the
system call's return value, or ``-errno``) in the order given.  Requests may be
chained (``flags=LINK``: the next one starts only once this one has succeeded;
if it fails, the rest of the chain completes with ``-ECANCELED``; ``HARDLINK``:
the next one starts whatever became of this one).

The rings are shared memory (``mmap``) laid out by the kernel; the offsets of
their fields come from ``io_uring_setup`` (``struct io_uring_params``).
x86_64 only: its stores are not reordered with each other, so filling a
submission entry and then moving the ring's tail needs no barrier.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import struct
import sys
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

from twisted.logger import Logger

_log = Logger(namespace="indimail_tw.iouring")

# opcodes (enum io_uring_op)
FSYNC, OPENAT, CLOSE, WRITE, RENAMEAT, FTRUNCATE = 3, 18, 19, 23, 35, 55
# sqe flags
LINK, HARDLINK = 4, 8
AT_FDCWD = -100

_SETUP, _ENTER, _REGISTER = 425, 426, 427          # x86_64 system call numbers
_OFF_SQ_RING, _OFF_CQ_RING, _OFF_SQES = 0, 0x8000000, 0x10000000
_ENTER_GETEVENTS, _FEAT_SINGLE_MMAP, _REGISTER_PROBE, _OP_SUPPORTED = 1, 1, 8, 1
_SQE = struct.Struct("=BBHiQQIIQ24x")   # opcode flags ioprio fd off addr len op_flags user_data
_CQE = struct.Struct("=QiI")            # user_data res flags
_U32 = struct.Struct("=I")


class Op(NamedTuple):
    """One request: the fields of ``struct io_uring_sqe`` that the ops above use."""

    opcode: int
    fd: int = 0
    off: int = 0          # file offset, or the second path (RENAMEAT), or a length
    addr: int = 0         # a buffer or the (first) path
    len: int = 0          # bytes, or the mode (OPENAT), or the second dir fd (RENAMEAT)
    op_flags: int = 0     # open flags, rename flags, fsync flags
    flags: int = 0        # LINK, HARDLINK


def one_by_one(ops: Sequence[Op]) -> list[Op]:
    """``ops`` as one chain, each request run after the one before it whatever became
    of it (HARDLINK): one kernel worker for all of them.  (What must wait for other
    requests is submitted once they have completed: IOSQE_IO_DRAIN was seen to leave
    requests behind a long linked chain pending for good.)"""
    return [op._replace(flags=op.flags | HARDLINK) for op in ops[:-1]] + list(ops[-1:])


class RingBroken(Exception):
    """``io_uring_enter`` failed: which of the batch's requests ran is not known."""


#: What the requests of a broken ring point to (paths, data): kept for good, since
#: the kernel may still read them.
ORPHANS: list[Any] = []


def available() -> bool:
    """Whether this platform can use :class:`Ring` at all (a kernel or sandbox may
    still refuse to make one)."""
    return sys.platform.startswith("linux") and platform.machine() == "x86_64"


def _cast_address(data: bytes) -> int:
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def _bytes_offset() -> int | None:
    """Where CPython keeps a bytes object's buffer, from the object's address (its
    ``id``): a fixed offset, checked here against ctypes; None if it does not hold."""
    if sys.implementation.name != "cpython":
        return None
    offset = bytes.__basicsize__ - 1
    probes = [b"probe", b"x" * 100, bytes(range(256))]
    if all(id(p) + offset == _cast_address(p) for p in probes):
        return offset
    return None


_OFFSET = _bytes_offset()


def address(data: bytes) -> int:
    """The address of a bytes object's buffer (valid while the object lives; CPython
    keeps a NUL after the last byte, so a path's bytes are a C string)."""
    if _OFFSET is not None and type(data) is bytes:
        return id(data) + _OFFSET
    return _cast_address(data)


class Ring:
    """One io_uring instance, used by one thread at a time."""

    ENTRIES = 256

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.syscall = libc.syscall         # gives up the interpreter lock while it waits
        self.syscall.restype = ctypes.c_long
        params = ctypes.create_string_buffer(120)
        fd = self.syscall(_SETUP, ctypes.c_uint(self.ENTRIES), params)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd
        self.maps: list[Any] = []
        try:
            raw = params.raw
            sq_entries, cq_entries, _, _, _, features = struct.unpack_from("=6I", raw, 0)
            sq_head, sq_tail, sq_mask, _, _, _, sq_array = struct.unpack_from("=7I", raw, 40)
            cq_head, cq_tail, cq_mask, _, _, cqes = struct.unpack_from("=6I", raw, 80)
            shared = mmap.MAP_SHARED
            rw = mmap.PROT_READ | mmap.PROT_WRITE
            sq_size, cq_size = sq_array + sq_entries * 4, cqes + cq_entries * 16
            if features & _FEAT_SINGLE_MMAP:
                self.sq = self.cq = mmap.mmap(fd, max(sq_size, cq_size), shared, rw,
                                              offset=_OFF_SQ_RING)
                self.maps.append(self.sq)
            else:
                self.sq = mmap.mmap(fd, sq_size, shared, rw, offset=_OFF_SQ_RING)
                self.maps.append(self.sq)
                self.cq = mmap.mmap(fd, cq_size, shared, rw, offset=_OFF_CQ_RING)
                self.maps.append(self.cq)
            self.sqes = mmap.mmap(fd, sq_entries * _SQE.size, shared, rw, offset=_OFF_SQES)
            self.maps.append(self.sqes)
        except BaseException:
            self.close()
            raise
        self.entries = min(sq_entries, cq_entries)
        self.sq_head, self.sq_tail, self.sq_array = sq_head, sq_tail, sq_array
        self.sq_mask = _U32.unpack_from(self.sq, sq_mask)[0]
        self.cq_head, self.cq_tail, self.cqes = cq_head, cq_tail, cqes
        self.cq_mask = _U32.unpack_from(self.cq, cq_mask)[0]

    def run(self, ops: Sequence[Op]) -> list[int]:
        """Submit ``ops`` (at most :attr:`entries`) and wait until all have completed;
        each one's result, in order.  RingBroken if the kernel refused the batch."""
        n = len(ops)
        if n > self.entries:
            raise ValueError(f"{n} requests for a ring of {self.entries}")
        self.push(ops, range(n))
        out = [0] * n
        done, to_submit = 0, n
        while done < n:
            got = self.enter(to_submit, n - done)
            if got < 0:
                if got == -errno.EINTR:
                    continue
                raise RingBroken(os.strerror(-got))
            to_submit = max(0, to_submit - got)
            for token, result in self.reap():
                out[token] = result
                done += 1
        return out

    def push(self, ops: Sequence[Op], tokens: Sequence[int]) -> None:
        """Put ``ops`` in the submission ring (each completion carries its token);
        :meth:`enter` submits them.  The caller keeps their number within
        :attr:`entries`, counting those submitted but not yet completed."""
        sq, sqes, pack = self.sq, self.sqes, _SQE.pack_into
        tail = _U32.unpack_from(sq, self.sq_tail)[0]
        mask, array = self.sq_mask, self.sq_array
        for i, (op, token) in enumerate(zip(ops, tokens, strict=True)):
            slot = (tail + i) & mask
            pack(sqes, slot * _SQE.size, op.opcode, op.flags, 0, op.fd, op.off, op.addr,
                 op.len, op.op_flags, token)
            _U32.pack_into(sq, array + 4 * slot, slot)
        _U32.pack_into(sq, self.sq_tail, (tail + len(ops)) & 0xFFFFFFFF)   # published

    def enter(self, to_submit: int, wait_for: int = 0) -> int:
        """io_uring_enter: submit up to ``to_submit`` requests, then wait until
        ``wait_for`` completions are there; how many were submitted, or -errno."""
        got = self.syscall(_ENTER, self.fd, to_submit, wait_for,
                           _ENTER_GETEVENTS if wait_for else 0, None, 0)
        return got if got >= 0 else -ctypes.get_errno()

    def reap(self) -> list[tuple[int, int]]:
        """The completions there now: (token, result) each."""
        cq = self.cq
        head = _U32.unpack_from(cq, self.cq_head)[0]
        end = _U32.unpack_from(cq, self.cq_tail)[0]
        out = []
        while head != end:
            token, result, _ = _CQE.unpack_from(cq, self.cqes + _CQE.size * (head & self.cq_mask))
            out.append((token, result))
            head = (head + 1) & 0xFFFFFFFF
        _U32.pack_into(cq, self.cq_head, head)
        return out

    def supports(self, opcode: int) -> bool:
        """Whether this kernel knows ``opcode`` (IORING_REGISTER_PROBE)."""
        probe = ctypes.create_string_buffer(16 + 8 * 256)
        if self.syscall(_REGISTER, self.fd, _REGISTER_PROBE, probe, 256) < 0:
            return False
        last_op = probe.raw[0]
        if opcode > last_op:
            return False
        return bool(struct.unpack_from("=H", probe.raw, 16 + 8 * opcode + 2)[0] & _OP_SUPPORTED)

    def close(self) -> None:
        for m in self.maps:
            with contextlib.suppress(Exception):
                m.close()
        self.maps = []
        with contextlib.suppress(OSError):
            os.close(self.fd)


class RingPool:
    """Rings kept for reuse, one per concurrent caller; a forked child starts afresh
    (the rings are its parent's: it never touches them)."""

    def __init__(self, make: Any = Ring) -> None:
        self._make = make
        self._free: list[Ring] = []
        self._lock = threading.Lock()

    def take(self) -> Ring:
        with self._lock:
            if self._free:
                return self._free.pop()
        return self._make()

    def give(self, ring: Ring) -> None:
        with self._lock:
            self._free.append(ring)

    def forget(self) -> None:
        self._free = []
        self._lock = threading.Lock()


def load_pool() -> RingPool | None:
    """A pool whose first ring has been made (the kernel allows them), or None."""
    if not available():
        return None
    pool = RingPool()
    try:
        pool.give(pool.take())
    except (OSError, AttributeError, ImportError, ValueError):
        return None
    os.register_at_fork(after_in_child=pool.forget)
    return pool


_REGISTER_EVENTFD = 4
_TOKEN_BITS = 10                   # a token is (batch << 10) | index in the batch


class ReactorRing:
    """A :class:`Ring` driven by the reactor, so that nothing waits for it.

    :meth:`submit` puts a batch of requests in the ring and returns a Deferred
    that fires with their results; the kernel runs them (blocking ones in its
    own workers) and signals each completion on an eventfd that the reactor
    watches.  The reactor thread only fills submission entries and reads
    completions: it never blocks, and no thread of ours wakes up for the batch.

    At most :attr:`Ring.entries` requests are in the kernel at once (the
    completion ring holds twice as many, so it cannot overflow); batches beyond
    that wait their turn in order.  If ``io_uring_enter`` fails, or a batch has
    not completed after :attr:`stall` seconds, every batch in the ring fails
    with RingBroken (which of their requests ran is not known) and so does
    every later one: the caller then does its work another way.
    """

    #: Seconds after which a batch the kernel has not completed counts as lost.
    stall = 120.0

    def __init__(self, reactor: Any, ring: Ring | None = None) -> None:
        self.reactor = reactor
        self.ring = ring if ring is not None else Ring()
        self.ftruncate = self.ring.supports(FTRUNCATE)
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        efd = ctypes.c_int(self._efd)
        if self.ring.syscall(_REGISTER, self.ring.fd, _REGISTER_EVENTFD, ctypes.byref(efd),
                             1) < 0:
            err = ctypes.get_errno()
            os.close(self._efd)
            if ring is None:
                self.ring.close()
            raise OSError(err, os.strerror(err))
        self._batches: dict[int, tuple[list[int], list[int], Any]] = {}  # results, left, d
        self._waiting: list[tuple[list[Op], Any]] = []
        self._next = 0
        self._in_kernel = 0                # requests pushed and not yet completed
        self._unsubmitted = 0              # pushed, not yet taken by io_uring_enter
        self._retry: Any = None
        self._pushed: dict[int, float] = {}  # batch -> when it went to the kernel
        self._watch: Any = None
        self.broken: RingBroken | None = None
        self._idle: list[Any] = []
        self._watched = False              # the reactor watches the eventfd (from the
                                           # first submission on)

    # -- the reactor's side (IReadDescriptor) -------------------------------------------

    def fileno(self) -> int:
        return self._efd

    def logPrefix(self) -> str:  # noqa: N802
        return "io_uring"

    def doRead(self) -> None:  # noqa: N802
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        self._reap()

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        pass

    # -- requests --------------------------------------------------------------------------

    def submit(self, ops: Sequence[Op]) -> Any:
        """Deferred[list of results] once every request in ``ops`` has completed."""
        from twisted.internet import defer

        if self.broken is not None:
            return defer.fail(self.broken)
        if not ops or len(ops) > self.ring.entries:
            return defer.fail(ValueError(f"{len(ops)} requests for a ring of "
                                         f"{self.ring.entries}"))
        if not self._watched:
            self.reactor.addReader(self)
            self._watched = True
        d: Any = defer.Deferred()
        self._waiting.append((list(ops), d))
        self._push()
        return d

    def idle(self) -> Any:
        """Fires once no request is in the kernel or waiting."""
        from twisted.internet import defer

        if not self._batches and not self._waiting:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    def close(self) -> None:
        """Stop watching the ring and free it (call once :meth:`idle` has fired)."""
        if self._watched:
            self.reactor.removeReader(self)
            self._watched = False
        for timer in (self._retry, self._watch):
            if timer is not None and timer.active():
                timer.cancel()
        self.ring.close()
        with contextlib.suppress(OSError):
            os.close(self._efd)

    def _push(self) -> None:
        entries = self.ring.entries
        while self._waiting and self._in_kernel + len(self._waiting[0][0]) <= entries:
            ops, d = self._waiting.pop(0)
            batch = self._next
            self._next += 1
            self._batches[batch] = ([0] * len(ops), [len(ops)], d)
            self._pushed[batch] = self.reactor.seconds()
            if self._watch is None:
                self._watch = self.reactor.callLater(self.stall, self._check)
            base = batch << _TOKEN_BITS
            self.ring.push(ops, range(base, base + len(ops)))
            self._in_kernel += len(ops)
            self._unsubmitted += len(ops)
        self._enter()

    def _enter(self) -> None:
        self._retry = None
        if not self._unsubmitted:
            return
        got = self.ring.enter(self._unsubmitted)
        if got >= 0:
            self._unsubmitted -= got
            if not self._unsubmitted:
                return
        elif got not in (-errno.EINTR, -errno.EAGAIN, -errno.EBUSY):
            self._fail(RingBroken(os.strerror(-got)))
            return
        # the kernel took only part of them (short of memory): again soon
        self._retry = self.reactor.callLater(0.001, self._enter)

    def _reap(self) -> None:
        finished = []
        for token, result in self.ring.reap():
            entry = self._batches.get(token >> _TOKEN_BITS)
            if entry is None:
                continue
            results, left, d = entry
            results[token & ((1 << _TOKEN_BITS) - 1)] = result
            self._in_kernel -= 1
            left[0] -= 1
            if not left[0]:
                del self._batches[token >> _TOKEN_BITS]
                del self._pushed[token >> _TOKEN_BITS]
                finished.append((d, results))
        if finished:
            self._push()
        for d, results in finished:
            d.callback(results)
        self._check_idle()

    def _check(self) -> None:
        """The watchdog: a batch older than :attr:`stall` breaks the ring."""
        self._watch = None
        if not self._pushed or self.broken is not None:
            return
        oldest = min(self._pushed.values())
        late = self.reactor.seconds() - oldest
        if late >= self.stall:
            _log.error("io_uring: requests submitted {late:.0f} s ago have not completed; "
                       "using threads from now on", late=late)
            self._fail(RingBroken(f"requests did not complete in {late:.0f} s"))
            return
        self._watch = self.reactor.callLater(oldest + self.stall - self.reactor.seconds(),
                                             self._check)

    def _fail(self, error: RingBroken) -> None:
        self.broken = error
        self._pushed.clear()
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        failed = [d for _, _, d in self._batches.values()] + [d for _, d in self._waiting]
        self._batches.clear()
        self._waiting.clear()
        for d in failed:
            d.errback(error)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._idle and not self._batches and not self._waiting:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)


def reactor_ring(reactor: Any) -> ReactorRing | None:
    """A :class:`ReactorRing`, or None where io_uring cannot be had (the caller then
    uses threads)."""
    if not available() or os.environ.get("INDIMAIL_NO_URING"):
        return None
    try:
        return ReactorRing(reactor)
    except (OSError, AttributeError, ValueError):
        return None
