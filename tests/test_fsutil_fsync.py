"""fsync_all: several files fsynced at once through io_uring, POSIX AIO or a thread
pool, with one result per file; io_uring's fallbacks and forks."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

import pytest

from indimail_tw import fsutil, iouring
from tests.test_fsutil_names import _in_forked_child


@pytest.fixture(params=["uring", "aio", "threads"])
def backend(request, monkeypatch):
    """fsync_all restricted to one way of doing it (skipped where it is missing)."""
    if request.param == "uring":
        if fsutil._uring() is None:
            pytest.skip("no io_uring here")
        monkeypatch.setattr(fsutil, "_aio_state", None)
    else:
        monkeypatch.setattr(fsutil, "_uring_state", None)
        if request.param == "aio" and fsutil._aio() is None:
            pytest.skip("no glibc AIO here")
        if request.param == "threads":
            monkeypatch.setattr(fsutil, "_aio_state", None)
    return request.param


@contextlib.contextmanager
def _files(tmp_path, count: int, bad: tuple[int, ...] = ()) -> Iterator[list[int]]:
    """``count`` written files, open; those at the indexes in ``bad`` closed at once
    (their fds invalid); the others closed at the end."""
    fds = []
    for i in range(count):
        fd = os.open(str(tmp_path / f"f{i}"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"data")
        fds.append(fd)
    for i in bad:
        os.close(fds[i])
    try:
        yield fds
    finally:
        for i, fd in enumerate(fds):
            if i not in bad:
                os.close(fd)


def test_fsync_all_reports_each_fds_error(tmp_path, backend):
    # (the fixture made a ring: it cannot take the bad fd's number)
    with _files(tmp_path, 5, bad=(2,)) as fds:
        results = fsutil.fsync_all(fds)
        assert [r is None for r in results] == [True, True, False, True, True]
        assert results[2].errno == errno.EBADF


def test_more_files_than_a_ring_holds(tmp_path, backend):
    with _files(tmp_path, 150, bad=(3, 70, 149)) as fds:
        results = fsutil.fsync_all(fds)
        assert len(results) == 150
        assert [i for i, r in enumerate(results) if r is not None] == [3, 70, 149]
        assert all(results[i].errno == errno.EBADF for i in (3, 70, 149))
        assert fsutil.fsync_all(fds[:3]) == [None, None, None]     # a ring is reused


@pytest.mark.parametrize("error", [iouring.RingBroken(), ValueError("a bug")])
def test_a_broken_ring_is_dropped_and_the_files_fsynced_one_by_one(tmp_path, monkeypatch,
                                                                  error):
    rings = fsutil._uring()
    if rings is None:
        pytest.skip("no io_uring here")
    ring = rings.take()
    rings.give(ring)
    closed = []
    monkeypatch.setattr(ring, "run", lambda ops: (_ for _ in ()).throw(error))
    monkeypatch.setattr(ring, "close", lambda: closed.append(ring))
    synced = []
    monkeypatch.setattr(fsutil, "_fsync_one", lambda fd: synced.append(fd))
    with _files(tmp_path, 3) as fds:
        assert fsutil._uring_fsync_all(rings, fds) == [None, None, None]
    assert synced == fds
    assert closed == [ring]
    assert ring not in rings._free


def test_no_new_ring_means_another_way(tmp_path, monkeypatch):
    """A ring that cannot be made now (a memory limit, too many open files): the
    batch goes through AIO or the thread pool instead."""
    rings = fsutil._uring()
    if rings is None:
        pytest.skip("no io_uring here")
    monkeypatch.setattr(rings, "_free", [])
    monkeypatch.setattr(rings, "_make", lambda: (_ for _ in ()).throw(
        OSError(errno.ENOMEM, "Cannot allocate memory")))
    assert fsutil._uring_fsync_all(rings, [0, 1]) is None
    with _files(tmp_path, 3) as fds:
        assert fsutil.fsync_all(fds) == [None, None, None]


def test_without_io_uring_aio_or_threads_do_it(tmp_path, monkeypatch):
    def refused(self):
        raise OSError(errno.EPERM, "io_uring_setup: Operation not permitted")

    with monkeypatch.context() as patched:     # a kernel or sandbox that refuses it
        patched.setattr(iouring.Ring, "__init__", refused)
        patched.setattr(fsutil, "_uring_state", fsutil._URING_UNSET)
        assert fsutil._uring() is None
    monkeypatch.setenv("INDIMAIL_NO_URING", "1")  # the admin's choice
    monkeypatch.setattr(fsutil, "_uring_state", fsutil._URING_UNSET)
    assert fsutil._uring() is None
    with _files(tmp_path, 3) as fds:
        assert fsutil.fsync_all(fds) == [None, None, None]


def test_a_forked_child_makes_its_own_rings(tmp_path):
    rings = fsutil._uring()
    if rings is None:
        pytest.skip("no io_uring here")
    rings.give(rings.take())
    with _files(tmp_path, 2) as fds:
        def child() -> str:
            fresh = not fsutil._uring()._free
            return f"{fresh} {fsutil.fsync_all(fds)}"

        _, said = _in_forked_child(child)
    assert said == "True [None, None]"


def test_fsync_dirs_at_once_raises_the_first_error(tmp_path):
    fsutil.fsync_dirs_at_once([str(tmp_path), str(tmp_path)])
    with pytest.raises(FileNotFoundError):
        fsutil.fsync_dirs_at_once([str(tmp_path), str(tmp_path / "missing")])
