"""Receiving a message: durability order, group commit, spills, disk errors."""

from __future__ import annotations

import errno
import io
import os

import pytest

from indimail_tw import fsutil
from indimail_tw.errors import MailError
from indimail_tw.queue import Envelope
from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue import records
from indimail_tw.datafile import read_data
from indimail_tw.queue.records import decode_envelope
from indimail_tw.queue.store import read_message_file
from tests.queue.helpers import ManualRunner, files, make_queue, result_of

ENV = Envelope.simple("alice@example.com", "bob@remote.test")


@pytest.fixture
def trace(monkeypatch):
    """Record every write of a queue file, fsync, rename and directory fsync through
    fsutil, in order."""
    events: list[tuple[str, ...]] = []
    real_fsync_file, real_fsync_dir, real_rename = (fsutil.fsync_file, fsutil.fsync_dir,
                                                    fsutil.rename)
    real_noreplace, real_write_v = fsutil.rename_noreplace, fsutil.write_all_v

    def write_all_v(fd, buffers):
        events.append(("write", os.readlink(f"/proc/self/fd/{fd}")))
        real_write_v(fd, buffers)

    def rename_noreplace(src, dst):
        events.append(("rename", src, dst))
        real_noreplace(src, dst)

    def fsync_file(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync_file(fd)

    def fsync_dir(path):
        events.append(("fsync_dir", os.path.abspath(path)))
        real_fsync_dir(path)

    def rename(src, dst):
        events.append(("rename", src, dst))
        real_rename(src, dst)

    monkeypatch.setattr(fsutil, "fsync_file", fsync_file)
    monkeypatch.setattr(fsutil, "fsync_dir", fsync_dir)
    monkeypatch.setattr(fsutil, "rename", rename)
    monkeypatch.setattr(fsutil, "rename_noreplace", rename_noreplace)
    monkeypatch.setattr(fsutil, "write_all_v", write_all_v)
    return events


def test_enqueue_fires_only_after_data_envelope_commit_and_directory_are_durable(
        tmp_path, trace):
    run = ManualRunner()
    queue = make_queue(str(tmp_path / "queue1"), run=run)
    trace.clear()
    d = queue.enqueue(ENV, b"Subject: x\n\nhello\n")
    fired = []
    d.addCallback(lambda msg_id: (trace.append(("fired", msg_id)), fired.append(msg_id)))
    while not fired:
        assert run.step(), "the enqueue never finished"
    (msg_id,) = fired
    s = queue.store
    (name,) = [os.path.basename(e[1]) for e in trace if e[0] == "write"]
    tmp = os.path.join(s.tmp, name)
    assert trace == [
        ("write", tmp),                                          # data + envelope
        ("fsync", tmp),                                          # the one file
        ("rename", tmp, os.path.join(s.mess, msg_id)),           # commit
        ("fsync_dir", s.mess),                                   # commit durable
        ("fired", msg_id),
    ]
    assert read_data(s.mess_path(msg_id), 18) == b"Subject: x\n\nhello\n"
    assert files(queue, "info") == files(queue, "tmp") == []
    env, size = s.read_envelope(msg_id)
    assert size == 18 and env.sender == ENV.sender and env.received_at > 0


def test_concurrent_commits_share_directory_fsyncs(tmp_path, trace):
    run = ManualRunner()
    queue = make_queue(str(tmp_path / "queue1"), run=run)
    trace.clear()
    n = 20
    ids = []
    for i in range(n):
        queue.enqueue(ENV, b"message %d\n" % i).addCallback(ids.append)
    run.run_all()
    assert len(set(ids)) == n
    assert files(queue, "mess") == sorted(ids) and files(queue, "info") == []
    dir_syncs = [e for e in trace if e[0] == "fsync_dir"]
    assert queue.committer.batches < n
    assert len(dir_syncs) == queue.committer.batches < n
    assert len([e for e in trace if e[0] == "fsync"]) == n      # one file per message
    # the first batch took one message, the second all that became ready meanwhile
    assert queue.committer.batches == 2


def test_every_commit_in_a_batch_waits_for_the_batch(tmp_path):
    run = ManualRunner()
    queue = make_queue(str(tmp_path / "queue1"), run=run)
    done: list[str] = []
    for i in range(3):
        queue.enqueue(ENV, b"m%d\n" % i).addCallback(done.append)
    assert done == [] and len(run.jobs) == 1   # one job: the first message's batch
    run.step()                             # batch 1: the first message
    assert len(done) == 1 and len(run.jobs) == 1
    run.step()                             # batch 2: the other two together
    assert len(done) == 3 and queue.committer.batches == 2


def test_large_messages_spill_in_order_with_bounded_buffer(tmp_path):
    queue = make_queue(str(tmp_path / "queue1"), spill_limit=1000)
    w = queue.writer(ENV)
    chunks = [bytes([65 + i % 26]) * 300 for i in range(40)]
    for chunk in chunks:
        w.write(chunk)
        assert w._buffered < 1000                # spilled as soon as the limit is reached
    assert w.size == 12000
    assert os.path.getsize(os.path.join(queue.store.tmp, w._data.name)) > 10000
    msg_id = result_of(w.commit())
    assert_one_file(queue, msg_id, b"".join(chunks))


def test_one_spill_at_a_time_and_later_bytes_wait_for_it(tmp_path):
    run = ManualRunner()
    queue = make_queue(str(tmp_path / "queue1"), run=run, spill_limit=1000)
    w = queue.writer(ENV)
    chunks = [bytes([65 + i % 26]) * 300 for i in range(40)]
    for chunk in chunks[:4]:
        w.write(chunk)
    assert len(run.jobs) == 1                    # the first spill
    assert w.drained().called
    for chunk in chunks[4:]:
        w.write(chunk)
    drained = w.drained()
    assert len(run.jobs) == 1 and not drained.called
    run.step()                                   # first spill done: the next takes the rest
    assert len(run.jobs) == 1 and drained.called
    d = w.commit()
    run.run_all()
    msg_id = result_of(d)
    assert_one_file(queue, msg_id, b"".join(chunks))


def assert_one_file(queue, msg_id, data):
    """mess/ID is the message, then its envelope record and the trailer; readers of
    the message see exactly ``data``."""
    path = queue.store.mess_path(msg_id)
    with open(path, "rb") as f:
        whole = f.read()
    assert whole[:len(data)] == data
    record = whole[len(data):-records.TRAILER_SIZE]
    assert whole[-records.TRAILER_SIZE:] == records.encode_trailer(len(record))
    assert decode_envelope(record)[1] == len(data)
    assert queue.store.read_envelope(msg_id)[1] == len(data)
    assert read_data(path, len(data)) == data
    assert files(queue, "info") == [] and msg_id in files(queue, "mess")


def test_enqueue_accepts_a_file_object(tmp_path):
    queue = make_queue(str(tmp_path / "queue1"))
    data = os.urandom(700_000)
    msg_id = result_of(queue.enqueue(ENV, io.BytesIO(data)))
    assert_one_file(queue, msg_id, data)


def test_a_message_bigger_than_the_spill_limit_round_trips_exactly(tmp_path):
    queue = make_queue(str(tmp_path / "queue1"), spill_limit=4096)
    data = os.urandom(50_000) + b"\n"
    w = queue.writer(ENV)
    for i in range(0, len(data), 1000):
        w.write(data[i:i + 1000])
    msg_id = result_of(w.commit())
    assert_one_file(queue, msg_id, data)
    seen = []
    queue.close()
    from tests.queue.helpers import Agent

    again = make_queue(queue.store.path, remote=Agent(
        lambda m, r: seen.append(m.open().read()) or DeliveryResult.temporary("later")))
    assert seen == [data] and files(again, "tmp") == []


def test_abort_removes_the_partial_message(tmp_path):
    queue = make_queue(str(tmp_path / "queue1"), spill_limit=10)
    w = queue.writer(ENV)
    w.write(b"x" * 100)
    assert len(files(queue, "tmp")) == 1 and files(queue, "mess") == []
    w.abort()
    assert files(queue, "mess") == [] and files(queue, "tmp") == []
    assert queue.writers == 0


def assert_nothing_left(queue):
    for sub in ("mess", "tmp", "info", "state"):
        assert files(queue, sub) == [], sub


@pytest.fixture
def disk_full(monkeypatch):
    """os.write fails with ENOSPC once ``after`` calls have succeeded."""
    real_write = os.write
    real_writev = os.writev
    state = {"after": 0, "calls": 0}

    def write(fd, data, real=real_write):
        state["calls"] += 1
        if state["calls"] > state["after"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "writev", lambda fd, buffers: write(fd, buffers, real_writev))
    return state


@pytest.mark.parametrize("after", [0, 1])    # fail on the whole file, on its last part
def test_disk_full_gives_452_and_leaves_nothing(tmp_path, disk_full, after):
    queue = make_queue(str(tmp_path / "queue1"), spill_limit=4)
    disk_full["after"] = after
    w = queue.writer(ENV)
    w.write(b"hello" if after else b"hel")       # after=1: spilled, then the end fails
    w.write(b" world\n")
    with pytest.raises(MailError) as e:
        result_of(w.commit())
    assert e.value.smtp() == b"452 4.3.1 insufficient system storage\r\n"
    assert_nothing_left(queue)
    assert queue.writers == 0 and not queue.scheduler.messages


def test_a_message_failing_in_a_batch_fails_alone(tmp_path, monkeypatch):
    run = ManualRunner()
    queue = make_queue(str(tmp_path / "queue1"), run=run)
    results = []
    for i in range(4):
        queue.enqueue(ENV, b"m%d\n" % i).addBoth(results.append)
    run.step()                          # the first message's batch; three wait
    real_write, calls = os.writev, []

    def write(fd, data):                # the next batch: the 2nd message's file fails
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "writev", write)
    run.step()
    assert len(results) == 4 and queue.committer.batches == 2
    failed = [r for r in results if not isinstance(r, str)]
    assert len(failed) == 1 and failed[0].value.code == 452
    ids = [r for r in results if isinstance(r, str)]
    assert files(queue, "mess") == sorted(ids) and files(queue, "info") == []
    assert files(queue, "tmp") == [] and queue.writers == 0


def test_disk_full_while_spilling_is_reported_at_commit(tmp_path, disk_full):
    queue = make_queue(str(tmp_path / "queue1"), spill_limit=10)
    disk_full["after"] = 1
    w = queue.writer(ENV)
    w.write(b"a" * 20)            # first spill works
    w.write(b"b" * 20)            # second fails; later writes are dropped quietly
    w.write(b"c" * 20)
    with pytest.raises(MailError) as e:
        result_of(w.commit())
    assert e.value.code == 452
    assert_nothing_left(queue)


def test_unwritable_queue_gives_451_and_leaves_nothing(tmp_path):
    queue = make_queue(str(tmp_path / "queue1"))
    mess = queue.store.mess
    os.rmdir(mess)
    with open(mess, "w"):         # a file where the directory should be: ENOTDIR
        pass
    with pytest.raises(MailError) as e:
        result_of(queue.enqueue(ENV, b"hello\n"))
    assert e.value.code == 451 and e.value.enhanced == "4.3.0"
    assert files(queue, "tmp") == [] and files(queue, "info") == []


def test_failed_commit_step_unwinds_the_batch(tmp_path, monkeypatch):
    queue = make_queue(str(tmp_path / "queue1"))
    real = fsutil.fsync_dir

    def fsync_dir(path):
        if path == queue.store.mess:
            raise OSError(errno.EIO, "I/O error")
        real(path)

    monkeypatch.setattr(fsutil, "fsync_dir", fsync_dir)
    with pytest.raises(MailError) as e:
        result_of(queue.enqueue(ENV, b"hello\n"))
    assert e.value.code == 451
    assert_nothing_left(queue)


def test_writes_wait_for_recovery(tmp_path):
    run = ManualRunner()
    queue = make_queue(str(tmp_path / "queue1"), run=run, start=False, spill_limit=1)
    w = queue.writer(ENV)
    w.write(b"early")
    assert run.jobs == []              # nothing touches the disk before recovery
    queue.start()
    d = w.commit()
    run.run_all()
    assert result_of(d) in files(queue, "mess")


def test_received_at_is_set_by_the_queue(tmp_path):
    queue = make_queue(str(tmp_path / "queue1"))
    msg_id = result_of(queue.enqueue(ENV, b"x\n"))
    assert queue.store.read_envelope(msg_id)[0].received_at == queue.clock.seconds()
    assert ENV.received_at == 0.0                 # the caller's envelope is not changed


def test_the_message_file_ends_with_its_envelope(tmp_path):
    queue = make_queue(str(tmp_path / "queue1"))
    msg_id = result_of(queue.enqueue(ENV, b"x\n"))
    env, size, total = read_message_file(queue.store.mess_path(msg_id))
    assert total == os.path.getsize(queue.store.mess_path(msg_id))
    assert (env.sender, [r.address for r in env.recipients], size) == (
        "alice@example.com", ["bob@remote.test"], 2)


def test_a_removal_is_finished_by_the_next_commits_directory_fsync(tmp_path, trace,
                                                                    monkeypatch):
    from tests.queue.helpers import Agent

    real_release = None

    queue = make_queue(str(tmp_path / "queue1"), local=Agent())
    s = queue.store
    real_release = s.spares.release
    monkeypatch.setattr(s.spares, "release",
                        lambda name: (trace.append(("release", name)), real_release(name)))
    first = result_of(queue.enqueue(Envelope.simple("s@x", "a@local.test"), b"one\n"))
    assert files(queue, "mess") == [] and files(queue, "spare") == [first + ".m"]  # delivered
    assert s.pending_removals == 1 and s.spares._held == {first + ".m"}
    trace.clear()
    second = result_of(queue.enqueue(ENV, b"two\n"))      # remote: stays queued
    assert trace.index(("release", first + ".m")) > trace.index(("fsync_dir", s.mess))
    assert files(queue, "mess") == [second] and s.pending_removals == 0
    assert s.spares._held == set()


def test_a_removal_without_commits_is_finished_within_a_second(tmp_path):
    from indimail_tw.queue.queue import REMOVAL_SYNC
    from tests.queue.helpers import Agent

    queue = make_queue(str(tmp_path / "queue1"), local=Agent())
    msg_id = result_of(queue.enqueue(Envelope.simple("s@x", "a@local.test"), b"one\n"))
    assert files(queue, "mess") == [] and queue.store.pending_removals == 1
    assert queue.store.spares._held == {msg_id + ".m"}
    queue.clock.advance(REMOVAL_SYNC)
    assert queue.store.pending_removals == 0 and queue.store.spares._held == set()
    assert not queue.clock.getDelayedCalls()


def test_stopping_finishes_removals(tmp_path):
    from tests.queue.helpers import Agent

    queue = make_queue(str(tmp_path / "queue1"), local=Agent())
    result_of(queue.enqueue(Envelope.simple("s@x", "a@local.test"), b"one\n"))
    result_of(queue.stop())
    assert files(queue, "mess") == [] and not queue.clock.getDelayedCalls()


def test_the_tools_remove_at_once(tmp_path):
    queue = make_queue(str(tmp_path / "queue1"))
    msg_id = result_of(queue.enqueue(ENV, b"x\n"))
    assert queue.store.apply([("remove", msg_id, b"")]) == [None]
    assert files(queue, "info") == files(queue, "mess") == []


def test_removal_unlinks_a_state_log_only_where_one_may_exist(tmp_path, monkeypatch):
    import os

    from indimail_tw.queue import records
    from indimail_tw.queue.envelope import Envelope, Recipient
    from indimail_tw.queue.states import RecipientState
    from indimail_tw.queue.store import DataFile, Pending, QueueStore, new_tmp_name

    store = QueueStore(str(tmp_path / "queue1"))
    store.open()
    envelope = Envelope.simple("a@b.test", "c@d.test", received_at=1.0)
    quiet, logged = (store.commit([Pending(DataFile(), b"x\n", envelope, 2, new_tmp_name())])[0]
                     for _ in range(2))
    line = records.encode_state(RecipientState(0, Recipient("c@d.test"), attempts=1).fields())
    assert store.apply([("state", logged.id, line)]) == [None]
    unlinked = []                          # unlinked, or moved into spare/
    real_unlink, real_rename = os.unlink, os.rename
    monkeypatch.setattr(os, "unlink", lambda path: (unlinked.append(path), real_unlink(path)))
    monkeypatch.setattr(os, "rename", lambda src, dst: (unlinked.append(src),
                                                        real_rename(src, dst)))
    store.apply([("remove", quiet.id, b""), ("remove", logged.id, b"")])
    assert os.path.join(store.state, quiet.id) not in unlinked
    assert os.path.join(store.state, logged.id) in unlinked
    assert os.listdir(store.state) == [] and os.listdir(store.mess) == []
    assert os.listdir(store.info) == []
    store.close()


def test_finished_messages_files_are_reused_from_spare(tmp_path):
    """A removed message's files go to spare/ and the next message's files come from
    there: the queue neither frees nor allocates inodes under steady load."""
    from indimail_tw.queue.envelope import Envelope
    from indimail_tw.queue.store import DataFile, Pending, QueueStore, new_tmp_name

    store = QueueStore(str(tmp_path / "queue1"))
    store.open()
    store.recover()
    envelope = Envelope.simple("a@b.test", "c@d.test", received_at=1.0)
    first = store.commit([Pending(DataFile(), b"first message\n" * 100, envelope, 1400,
                                  new_tmp_name())])[0]
    inode = os.stat(store.mess_path(first.id)).st_ino
    store.apply([("remove", first.id, b"")])
    assert sorted(os.listdir(store.spare_dir)) == [first.id + ".m"]
    second = store.commit([Pending(DataFile(), b"2\n", envelope, 2, new_tmp_name())])[0]
    assert os.listdir(store.spare_dir) == []
    assert os.stat(store.mess_path(second.id)).st_ino == inode
    with open(store.mess_path(second.id), "rb") as f:
        whole = f.read()                           # cut: nothing of the old one
    assert whole.startswith(b"2\n") and whole.endswith(records.encode_trailer(
        len(whole) - 2 - records.TRAILER_SIZE))
    assert len(whole) == second.file_size
    assert store.load(second.id).size == 2
    store.close()


def test_reused_files_of_known_size_are_cut_only_when_longer(tmp_path, monkeypatch):
    """The sizes of the files this process committed are remembered: their removal
    needs no stat, and a reuse cuts the file only when the old content is longer
    (a longer or equal new content overwrites all of it)."""
    from indimail_tw.queue.envelope import Envelope
    from indimail_tw.queue.store import DataFile, Pending, QueueStore, new_tmp_name

    store = QueueStore(str(tmp_path / "queue1"))
    store.open()
    store.recover()
    envelope = Envelope.simple("a@b.test", "c@d.test", received_at=1.0)
    cuts, stats = [], []
    real_ftruncate, real_stat = os.ftruncate, os.stat
    monkeypatch.setattr(os, "ftruncate", lambda fd, n: (cuts.append(n), real_ftruncate(fd, n)))

    def commit(body: bytes):
        return store.commit([Pending(DataFile(), body, envelope, len(body),
                                     new_tmp_name())])[0]

    def remove(message):
        monkeypatch.setattr(os, "stat", lambda path, *a, **kw: (stats.append(path),
                                                                real_stat(path, *a, **kw))[1])
        store.apply([("remove", message.id, b"")])
        monkeypatch.setattr(os, "stat", real_stat)

    first = commit(b"1234\n")
    cuts.clear()
    remove(first)
    assert not [path for path in stats if store.mess in path]     # no stat of the data
    second = commit(b"123456789\n")            # longer: overwrites all, no cut
    assert cuts == []
    assert read_data(store.mess_path(second.id), 10) == b"123456789\n"
    assert store.load(second.id).size == 10
    remove(second)
    third = commit(b"12\n")                    # shorter: cut to its size, once
    assert cuts == [third.file_size] == [os.path.getsize(store.mess_path(third.id))]
    assert read_data(store.mess_path(third.id), 3) == b"12\n"
    assert store.load(third.id).size == 3
    store.close()


def test_spare_pool_is_bounded_and_skips_big_files(tmp_path):
    from indimail_tw.queue.envelope import Envelope
    from indimail_tw.queue.store import DataFile, Pending, QueueStore, new_tmp_name

    store = QueueStore(str(tmp_path / "queue1"))
    store.open()
    store.recover()
    store.spares.limit, store.spares.max_size = 3, 400
    envelope = Envelope.simple("a@b.test", "c@d.test", received_at=1.0)
    *small, big = (store.commit([Pending(DataFile(), body, envelope, len(body),
                                         new_tmp_name())])[0]
                   for body in (b"s\n", b"t\n", b"u\n", b"v\n", b"b" * 400))
    store.apply([("remove", m.id, b"") for m in [big, *small]])
    assert big.id + ".m" not in os.listdir(store.spare_dir)      # too big: unlinked
    assert len(os.listdir(store.spare_dir)) == 3 == len(store.spares)
    store.spares.limit = 1
    assert store.spares.load() == 2 and len(os.listdir(store.spare_dir)) == 1
    store.close()


def test_recovery_takes_spare_files_as_the_pool(tmp_path):
    from indimail_tw.queue.store import QueueStore

    store = QueueStore(str(tmp_path / "queue1"))
    store.open()
    for name in ("x.m", "y.i"):
        with open(os.path.join(store.spare_dir, name), "wb") as f:
            f.write(b"old")
    report = store.recover()
    assert report.messages == [] and len(store.spares) == 2
    store.close()


def test_a_batch_fsyncs_all_its_files_before_the_commit_step(tmp_path, monkeypatch):
    """The files of a batch are written first, then fsynced together; one message
    whose fsync fails fails alone (its files removed), the others commit."""
    from indimail_tw.queue.envelope import Envelope
    from indimail_tw.queue.store import DataFile, Pending, QueueStore, new_tmp_name

    store = QueueStore(str(tmp_path / "queue1"))
    store.open()
    store.recover()
    events = []
    real_fsync, real_dir = fsutil.fsync_file, fsutil.fsync_dir
    bad = {}

    def fsync_file(fd):
        events.append("file")
        if os.readlink(f"/proc/self/fd/{fd}") == bad.get("path"):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    def fsync_dir(path):
        events.append(("dir", path))
        real_dir(path)

    real_create = store._create

    def create(data):
        real_create(data)
        if len(bad) == 0 and "second" in created:
            bad["path"] = os.path.join(store.tmp, data.name)
        created.append("second" if created else "first")

    created: list[str] = []
    monkeypatch.setattr(fsutil, "fsync_file", fsync_file)
    monkeypatch.setattr(fsutil, "fsync_dir", fsync_dir)
    monkeypatch.setattr(store, "_create", create)
    envelope = Envelope.simple("a@b.test", "c@d.test", received_at=1.0)
    batch = [Pending(DataFile(), b"m%d\n" % i, envelope, 3, new_tmp_name()) for i in range(3)]
    results = store.commit(batch)
    assert events == ["file"] * 3 + [("dir", store.mess)]   # 3 files, then one dir
    committed = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(committed) == 2 and len(failed) == 1 and failed[0].errno == errno.EIO
    assert isinstance(results[2], BaseException)
    assert os.listdir(store.info) == []
    assert sorted(os.listdir(store.mess)) == sorted(r.id for r in committed)
    assert os.listdir(store.tmp) == []
    store.close()


def test_a_removed_message_file_is_reused_only_after_its_removal_is_durable(tmp_path):
    """mess/ID goes to spare/ at once, but its file may hold another message only
    after the fsync of mess/ that makes the removal durable: reused earlier, a
    crash could bring mess/ID back holding that other message."""
    from indimail_tw.queue.envelope import Envelope
    from indimail_tw.queue.store import DataFile, Pending, QueueStore, new_tmp_name

    store = QueueStore(str(tmp_path / "queue1"))
    store.open()
    store.recover()
    envelope = Envelope.simple("a@b.test", "c@d.test", received_at=1.0)

    def commit(body):
        return store.commit([Pending(DataFile(), body, envelope, len(body),
                                     new_tmp_name())])[0]

    first = commit(b"first\n")
    first_file = os.stat(store.mess_path(first.id)).st_ino
    store.apply([("retire", first.id, b"")])          # no fsync of mess/ yet
    assert first.id + ".m" in os.listdir(store.spare_dir)
    second = commit(b"second\n")                     # its commit fsyncs mess/
    assert os.stat(store.mess_path(second.id)).st_ino != first_file
    third = commit(b"third\n")                       # now the file may be reused
    assert os.stat(store.mess_path(third.id)).st_ino == first_file
    assert store.load(third.id).envelope.sender == "a@b.test"
    store.close()


def test_recovery_drops_spare_names_of_files_still_named_elsewhere(tmp_path):
    """A crash in the middle of the rename into spare/ can leave both names: the
    committed mess/ID counts, the spare/ name is dropped (never reused)."""
    from indimail_tw.queue.envelope import Envelope
    from indimail_tw.queue.store import DataFile, Pending, QueueStore, new_tmp_name

    store = QueueStore(str(tmp_path / "queue1"))
    store.open()
    store.recover()
    envelope = Envelope.simple("a@b.test", "c@d.test", received_at=1.0)
    kept = store.commit([Pending(DataFile(), b"x\n", envelope, 2, new_tmp_name())])[0]
    os.link(store.mess_path(kept.id), os.path.join(store.spare_dir, kept.id + ".m"))
    with open(os.path.join(store.spare_dir, "free.m"), "wb") as f:
        f.write(b"old")
    store.close()
    again = QueueStore(str(tmp_path / "queue1"))
    again.open()
    report = again.recover()
    assert [m.id for m in report.messages] == [kept.id]
    assert os.listdir(again.spare_dir) == ["free.m"] and len(again.spares) == 1
    again.close()
