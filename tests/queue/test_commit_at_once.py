"""Committing from the reactor through io_uring (QueueStore.commit_on / apply_on):
the same outcomes as the threaded commit, and the same failures."""

from __future__ import annotations

import errno
import os

import pytest
from twisted.internet import defer

from indimail_tw import fsutil, iouring
from indimail_tw.errors import MailError
from indimail_tw.queue import Envelope
from indimail_tw.queue import store as store_module
from indimail_tw.queue.store import DataFile, Pending, QueueStore, new_tmp_name
from tests.queue.helpers import files, make_queue
from tests.test_iouring import ReadersClock, pump

ENV = Envelope.simple("alice@example.com", "bob@remote.test", received_at=1.0)


class Runner:
    """Runs calls at once, like a thread would, and names each one."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, f, *args):
        self.calls.append(getattr(f, "__name__", "?"))
        return defer.maybeDeferred(f, *args)


@pytest.fixture
def ring():
    if fsutil._uring() is None:
        pytest.skip("no io_uring here")
    ring = iouring.ReactorRing(ReadersClock())
    yield ring
    ring.close()


@pytest.fixture
def store(tmp_path):
    store = QueueStore(str(tmp_path / "queue1"))
    store.open()
    store.recover()
    yield store
    store.close()


def _pending(body: bytes) -> Pending:
    return Pending(DataFile(), body, ENV, len(body), new_tmp_name())


def _commit(store, ring, run, *bodies: bytes) -> list:
    return pump(ring, store.commit_on(ring, run, [_pending(b) for b in bodies]))


def test_messages_received_in_memory_are_committed_without_a_thread(store, ring):
    run = Runner()
    results = _commit(store, ring, run, b"one\n", b"two\n", b"three\n")
    assert run.calls == []
    assert sorted(os.listdir(store.mess)) == sorted(p.id for p in results)
    for p, body in zip(results, (b"one\n", b"two\n", b"three\n"), strict=True):
        envelope, size = store.read_envelope(p.id)
        assert size == len(body) and p.data == body and envelope.sender == ENV.sender
        assert os.path.getsize(store.mess_path(p.id)) == p.file_size
    assert os.listdir(store.tmp) == []


def test_a_retired_file_is_reused_once_a_commit_made_its_removal_durable(store, ring):
    run = Runner()
    (first,) = _commit(store, ring, run, b"first message\n")
    inode = os.stat(store.mess_path(first.id)).st_ino
    assert pump(ring, store.apply_on(ring, run, [("retire", first.id, b"")])) == [None]
    assert run.calls == [] and store.pending_removals == 1
    assert os.listdir(store.spare_dir) == [first.id + ".m"]
    (second,) = _commit(store, ring, run, b"second\n")   # its fsync of mess/ ...
    assert os.stat(store.mess_path(second.id)).st_ino != inode
    assert store.pending_removals == 0                  # ... finished the removal
    (third,) = _commit(store, ring, run, b"3\n")         # shorter: cut to size
    assert os.stat(store.mess_path(third.id)).st_ino == inode
    assert store.load(third.id).size == 2
    assert os.path.getsize(store.mess_path(third.id)) == third.file_size


def test_each_retire_of_a_batch_happens_whatever_became_of_the_one_before(store, ring):
    run = Runner()
    first, second, third = _commit(store, ring, run, b"1\n", b"2\n", b"3\n")
    os.unlink(store.mess_path(second.id))          # gone behind our back: not an error
    ops = [("retire", p.id, b"") for p in (first, second, third)]
    assert pump(ring, store.apply_on(ring, run, ops)) == [None, None, None]
    assert run.calls == [] and os.listdir(store.mess) == []
    assert sorted(os.listdir(store.spare_dir)) == sorted([first.id + ".m", third.id + ".m"])
    _commit(store, ring, run, b"4\n")               # makes the removals durable
    assert store.pending_removals == 0 and len(store.spares) == 2


def test_other_journal_ops_go_to_a_thread(store, ring):
    run = Runner()
    (p,) = _commit(store, ring, run, b"x\n")
    ops = [("state", p.id, b"S line\n"), ("retire", p.id, b"")]
    assert pump(ring, store.apply_on(ring, run, ops)) == [None, None]
    assert run.calls == ["apply"]
    assert os.listdir(store.mess) == []


def test_a_spilled_message_is_committed_in_a_thread(store, ring):
    run = Runner()
    spilled = _pending(b"rest\n")
    store.append(spilled.data, b"head ")
    in_memory = _pending(b"whole\n")
    results = pump(ring, store.commit_on(ring, run, [spilled, in_memory]))
    assert run.calls == ["commit"]
    assert [store.load(p.id).size for p in results] == [10, 6]


def test_an_id_taken_meanwhile_is_committed_under_another(store, ring, monkeypatch):
    taken = "0000000000000000ab"
    with open(store.mess_path(taken), "wb") as f:
        f.write(b"another message")
    ids = iter([taken])
    real = store_module.new_id
    monkeypatch.setattr(store_module, "new_id", lambda: next(ids, None) or real())
    run = Runner()
    (p,) = _commit(store, ring, run, b"mine\n")
    assert p.id != taken and run.calls == ["_settle", "commit"]   # clean up, commit
    with open(store.mess_path(taken), "rb") as f:
        assert f.read() == b"another message"
    assert sorted(os.listdir(store.mess)) == sorted([taken, p.id])
    assert os.listdir(store.tmp) == [] and os.listdir(store.spare_dir) == []


class FaultyRing:
    """A ReactorRing whose batches can be altered before or after the kernel runs them."""

    def __init__(self, ring, before=None, after=None) -> None:
        self.ring, self.before, self.after = ring, before, after
        self.ftruncate = ring.ftruncate

    def submit(self, ops):
        ops = self.before(ops) if self.before else ops
        d = self.ring.submit(ops)
        return d.addCallback(lambda results: self.after(ops, results)) if self.after else d


def test_a_failed_directory_fsync_unwinds_the_batch(store, ring):
    (old,) = _commit(store, ring, Runner(), b"old\n")
    pump(ring, store.apply_on(ring, Runner(), [("retire", old.id, b"")]))

    def dir_fsync_fails(ops, results):
        if ops[0].opcode == iouring.FSYNC and ops[-1].opcode == iouring.CLOSE:   # the last step
            results[0] = -errno.EIO
        return results

    faulty = FaultyRing(ring, after=dir_fsync_fails)
    results = pump(ring, store.commit_on(faulty, Runner(), [_pending(b"a\n"), _pending(b"b\n")]))
    assert [r.errno for r in results] == [errno.EIO, errno.EIO]
    assert os.listdir(store.mess) == []
    assert store.pending_removals == 1              # not finished: given back


def test_a_broken_ring_leaves_the_batch_to_a_thread(store, ring):
    def broken(ops, results):
        if ops[0].opcode == iouring.WRITE:          # after the kernel renamed them
            raise iouring.RingBroken("enter failed")
        return results

    run = Runner()
    results = pump(ring, store.commit_on(FaultyRing(ring, after=broken), run,
                                         [_pending(b"a\n"), _pending(b"b\n")]))
    assert run.calls == ["<lambda>", "commit"]      # clean up, then commit
    assert sorted(os.listdir(store.mess)) == sorted(p.id for p in results)
    assert os.listdir(store.tmp) == []


def test_a_message_failing_in_the_ring_and_again_in_a_thread_fails_alone(tmp_path, ring,
                                                                        monkeypatch):
    def break_second_write(ops):
        writes = [i for i, op in enumerate(ops) if op.opcode == iouring.WRITE]
        if len(writes) > 1:
            ops = list(ops)
            ops[writes[1]] = ops[writes[1]]._replace(fd=-1)
        return ops

    real_writev = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, buffers: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    queue = make_queue(str(tmp_path / "queue1"), ring=FaultyRing(ring, before=break_second_write))
    results = [queue.enqueue(ENV, b"m%d\n" % i) for i in range(3)]
    outcomes = []
    for d in results:
        got: list = []
        d.addBoth(got.append)
        while not got:
            pump(ring, ring.idle())
        outcomes.append(got[0])
    monkeypatch.setattr(os, "writev", real_writev)
    failed = [o for o in outcomes if not isinstance(o, str)]
    assert len(failed) == 1 and failed[0].check(MailError) and failed[0].value.code == 452
    assert files(queue, "mess") == sorted(o for o in outcomes if isinstance(o, str))
    assert files(queue, "tmp") == [] and queue.writers == 0
