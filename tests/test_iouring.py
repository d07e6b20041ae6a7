"""The io_uring runner: one ring used from a thread (Ring.run) and one driven by the
reactor (ReactorRing), against the real kernel and against a scripted ring."""

from __future__ import annotations

import errno
import os
import select

import pytest
from twisted.internet.task import Clock

from indimail_tw import iouring
from indimail_tw.iouring import (
    AT_FDCWD, FSYNC, LINK, OPENAT, WRITE, Op, ReactorRing, Ring, RingBroken, address)


class ReadersClock(Clock):
    """A Clock that also keeps the readers added to it (ReactorRing's eventfd)."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list = []

    def addReader(self, reader) -> None:  # noqa: N802
        self.readers.append(reader)

    def removeReader(self, reader) -> None:  # noqa: N802
        self.readers.remove(reader)


def pump(ring: ReactorRing, d, timeout: float = 10.0):
    """Run the reactor's side of ``ring`` (wait for its eventfd, read it) until ``d``
    has fired; its result (a failure is raised)."""
    out: list = []
    d.addBoth(out.append)
    while not out:
        ready, _, _ = select.select([ring.fileno()], [], [], timeout)
        assert ready, "no completion within the timeout"
        ring.doRead()
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


@pytest.fixture
def real_ring():
    if not iouring.available():
        pytest.skip("no io_uring on this platform")
    try:
        ring = Ring()
    except OSError as e:
        pytest.skip(f"the kernel refuses io_uring here: {e}")
    yield ring
    ring.close()


def _open_new(path: bytes) -> list[Op]:
    return [Op(OPENAT, AT_FDCWD, 0, address(path), 0o600,
               os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC)]


def test_run_returns_each_requests_result_in_order(tmp_path, real_ring):
    path, missing = os.fsencode(tmp_path / "f"), os.fsencode(tmp_path / "no" / "f")
    fds = real_ring.run(_open_new(path) + _open_new(missing))
    assert fds[0] >= 0 and fds[1] == -errno.ENOENT
    data = b"hello"
    results = real_ring.run([Op(WRITE, fds[0], 0, address(data), len(data), flags=LINK),
                             Op(FSYNC, fds[0])])
    os.close(fds[0])
    assert results == [5, 0]
    assert (tmp_path / "f").read_bytes() == b"hello"


def test_a_failed_request_cancels_the_rest_of_its_chain(tmp_path, real_ring):
    data = b"x"
    results = real_ring.run([Op(WRITE, 9999, 0, address(data), 1, flags=LINK), Op(FSYNC, 9999),
                             Op(FSYNC, 9998)])
    assert results == [-errno.EBADF, -errno.ECANCELED, -errno.EBADF]


def test_more_requests_than_the_ring_holds_are_refused(real_ring):
    with pytest.raises(ValueError):
        real_ring.run([Op(FSYNC, 0)] * (real_ring.entries + 1))


def test_supports_knows_the_kernels_opcodes(real_ring):
    assert real_ring.supports(FSYNC) and real_ring.supports(OPENAT)
    assert not real_ring.supports(250)


def test_reactor_ring_fires_each_batch_with_its_results(tmp_path, real_ring):
    reactor = ReadersClock()
    ring = ReactorRing(reactor, real_ring)
    assert reactor.readers == []             # watched from the first submission on
    paths = [os.fsencode(tmp_path / name) for name in ("a", "b")]
    first = ring.submit(_open_new(paths[0]))
    assert reactor.readers == [ring]
    second = ring.submit(_open_new(paths[1]) + [Op(FSYNC, 9999)])
    (fd_a,) = pump(ring, first)
    fd_b, bad = pump(ring, second)
    assert fd_a >= 0 and fd_b >= 0 and bad == -errno.EBADF
    os.close(fd_a)
    os.close(fd_b)
    assert pump(ring, ring.idle()) is None
    ring.close()
    assert reactor.readers == []


class ScriptedRing:
    """Stands in for a Ring: remembers what was pushed, completes on demand."""

    def __init__(self, entries: int = 4) -> None:
        self.entries = entries
        self.fd = -1
        self.pushed: list[tuple[int, Op]] = []
        self.taken = 0
        self.answers: list[int] = []        # what the next enter() calls return
        self.done: list[tuple[int, int]] = []
        self.closed = False

    def supports(self, opcode: int) -> bool:
        return True

    def syscall(self, *args) -> int:         # IORING_REGISTER_EVENTFD
        return 0

    def push(self, ops, tokens) -> None:
        self.pushed += list(zip(tokens, ops, strict=True))

    def enter(self, to_submit: int, wait_for: int = 0) -> int:
        got = self.answers.pop(0) if self.answers else to_submit
        if got > 0:
            self.taken += got
        return got

    def complete(self, count: int, result: int = 0) -> None:
        done = [token for token, _ in self.pushed[:count]]
        self.pushed = self.pushed[count:]
        self.done += [(token, result) for token in done]

    def reap(self):
        done, self.done = self.done, []
        return done

    def close(self) -> None:
        self.closed = True


def _fired(d) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_batches_beyond_the_rings_room_wait_their_turn():
    scripted = ScriptedRing(entries=4)
    ring = ReactorRing(ReadersClock(), scripted)
    first = _fired(ring.submit([Op(FSYNC, 1)] * 3))
    second = _fired(ring.submit([Op(FSYNC, 2)] * 2))     # 3 + 2 > 4: waits
    assert len(scripted.pushed) == 3 and scripted.taken == 3
    scripted.complete(3, 7)
    ring.doRead()
    assert first == [[7, 7, 7]] and second == []
    assert [op.fd for _, op in scripted.pushed] == [2, 2]
    scripted.complete(2, 0)
    ring.doRead()
    assert second == [[0, 0]]
    ring.close()
    assert scripted.closed


def test_a_partly_taken_submission_is_entered_again_later():
    reactor = ReadersClock()
    scripted = ScriptedRing()
    scripted.answers = [1, -errno.EAGAIN]
    ring = ReactorRing(reactor, scripted)
    ring.submit([Op(FSYNC, 1)] * 3)
    assert scripted.taken == 1
    reactor.advance(0.001)                 # EAGAIN: again
    assert scripted.taken == 1
    reactor.advance(0.001)
    assert scripted.taken == 3


def test_a_refused_enter_fails_every_batch_and_every_later_one():
    scripted = ScriptedRing()
    ring = ReactorRing(ReadersClock(), scripted)
    first = _fired(ring.submit([Op(FSYNC, 1)]))
    scripted.answers = [-errno.EINVAL]
    second = _fired(ring.submit([Op(FSYNC, 2)]))
    assert first[0].check(RingBroken) and second[0].check(RingBroken)
    assert _fired(ring.submit([Op(FSYNC, 3)]))[0].check(RingBroken)
    assert _fired(ring.idle()) == [None]


def test_idle_fires_once_every_batch_has_completed():
    scripted = ScriptedRing()
    ring = ReactorRing(ReadersClock(), scripted)
    ring.submit([Op(FSYNC, 1)])
    idle = _fired(ring.idle())
    assert idle == []
    scripted.complete(1)
    ring.doRead()
    assert idle == [None]


def test_an_empty_or_oversized_batch_is_refused():
    ring = ReactorRing(ReadersClock(), ScriptedRing(entries=2))
    assert _fired(ring.submit([]))[0].check(ValueError)
    assert _fired(ring.submit([Op(FSYNC, 1)] * 3))[0].check(ValueError)


def test_no_reactor_ring_where_io_uring_is_not_wanted(monkeypatch):
    monkeypatch.setenv("INDIMAIL_NO_URING", "1")
    assert iouring.reactor_ring(ReadersClock()) is None


def test_address_is_where_the_bytes_are():
    for data in (b"", b"path\0", bytes(range(256)) * 10):
        assert address(data) == iouring._cast_address(data)


def test_one_by_one_makes_a_hard_linked_chain():
    ops = iouring.one_by_one([Op(FSYNC, 1), Op(FSYNC, 2), Op(FSYNC, 3)])
    assert [op.flags for op in ops] == [iouring.HARDLINK, iouring.HARDLINK, 0]
    assert iouring.one_by_one([]) == []


def test_a_batch_the_kernel_never_completes_breaks_the_ring_after_a_while():
    reactor = ReadersClock()
    scripted = ScriptedRing()
    ring = ReactorRing(reactor, scripted)
    done = _fired(ring.submit([Op(FSYNC, 1)]))
    reactor.advance(ring.stall / 2)
    late = _fired(ring.submit([Op(FSYNC, 2)]))
    scripted.complete(1)                      # the first completes, the second never
    ring.doRead()
    assert done == [[0]] and late == []
    reactor.advance(ring.stall / 2)           # the first would be late now: it is done
    assert late == [] and ring.broken is None
    reactor.advance(ring.stall / 2)
    assert late[0].check(RingBroken) and ring.broken is not None
    assert _fired(ring.submit([Op(FSYNC, 3)]))[0].check(RingBroken)
    assert reactor.getDelayedCalls() == []


def test_batches_that_complete_leave_no_watchdog_behind():
    reactor = ReadersClock()
    scripted = ScriptedRing()
    ring = ReactorRing(reactor, scripted)
    ring.submit([Op(FSYNC, 1)])
    scripted.complete(1)
    ring.doRead()
    reactor.advance(ring.stall)
    assert ring.broken is None and reactor.getDelayedCalls() == []
