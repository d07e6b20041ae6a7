"""The per-folder Maildir index: UIDs, flags in file names, modseqs, concurrency, recovery."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from indimail_tw import fsutil
from indimail_tw.fsutil import make_maildir
from indimail_tw.maildir import index as index_module
from indimail_tw.maildir import quota
from indimail_tw.maildir.deliver import deliver
from indimail_tw.maildir.index import (
    INDEX_NAME, Changes, FolderIndex, MessageRecord, rfc822_size,
)

MESSAGE = b"Subject: test\n\nbody line\n"
SEEN = frozenset({"\\Seen"})
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def maildir(tmp_path):
    path = str(tmp_path / "Maildir")
    make_maildir(path)
    return path


@pytest.fixture
def message(tmp_path):
    path = tmp_path / "message"
    path.write_bytes(MESSAGE)
    return str(path)


@pytest.fixture
def opened():
    indexes = []

    def open_index(path, **kw):
        ix = FolderIndex.open(path, **kw)
        indexes.append(ix)
        return ix

    yield open_index
    for ix in indexes:
        ix.close()


def put(maildir, name, data=MESSAGE, sub="new", mtime=None):
    path = os.path.join(maildir, sub, name)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def age_dirs(maildir, seconds=3600):
    """Make new/ and cur/ look untouched for a while (defeats the 2-second rescan rule)."""
    for sub in ("new", "cur"):
        st = os.stat(os.path.join(maildir, sub))
        old = st.st_mtime - seconds
        os.utime(os.path.join(maildir, sub), (old, old))


def keys(ix):
    return {r.uid: r.key for r in ix.records()}


# -- UIDs --------------------------------------------------------------------------

def test_uids_follow_delivery_order_and_survive_reopen(maildir, opened):
    put(maildir, "300.B", mtime=1_000_003)
    put(maildir, "100.C", mtime=1_000_001)
    put(maildir, "200.A", mtime=1_000_002)
    put(maildir, "200.0", mtime=1_000_002)          # same mtime: by name
    ix = opened(maildir)
    assert [r.key for r in ix.records()] == ["100.C", "200.0", "200.A", "300.B"]
    assert [r.uid for r in ix.records()] == [1, 2, 3, 4]
    assert ix.uidnext == 5
    assert ix.records()[0].internaldate == 1_000_001
    again = opened(maildir)
    assert keys(again) == keys(ix)
    assert again.uidvalidity == ix.uidvalidity
    assert again.uidnext == 5


def test_new_files_stay_in_new(maildir, message, opened):
    deliver(maildir, message)
    ix = opened(maildir)
    ix.sync()
    assert len(os.listdir(os.path.join(maildir, "new"))) == 1
    assert os.listdir(os.path.join(maildir, "cur")) == []
    assert ix.read(1) == MESSAGE


def test_delivery_while_open_is_added(maildir, message, opened):
    deliver(maildir, message)
    ix = opened(maildir)
    done = deliver(maildir, message)
    assert ix.changed_since_last_sync()
    changes = ix.sync()
    assert [r.uid for r in changes.added] == [2]
    assert changes.added[0].path == done.path
    assert changes.removed == [] and changes.changed == []
    assert ix.uidnext == 3
    assert ix.sync() == Changes()
    assert [r.uid for r in ix.records()] == [1, 2]


def test_sizes_from_name_and_content(maildir, opened):
    put(maildir, "1.A,S=999", b"a\nb\r\nc\n", mtime=1)           # S= is trusted
    put(maildir, "2.B", b"a\nb\r\nc\n", mtime=2)
    put(maildir, "3.C,S=7,W=42", b"a\nb\r\nc\n", mtime=3)        # Dovecot's W=
    ix = opened(maildir)
    sizes = [(r.size, r.rfc822_size) for r in ix.records()]
    assert sizes == [(999, 9), (7, 9), (7, 42)]
    assert rfc822_size(b"a\nb\r\nc\n") == 9


def test_rfc822_size_across_read_chunks(maildir, opened, monkeypatch):
    data = b"x" * 262143 + b"\r\n" + b"y\n"
    put(maildir, "1.A", data)
    ix = opened(maildir)
    assert ix.record(1).rfc822_size == rfc822_size(data) == len(data) + 1


def test_unchanged_folder_is_not_listed(maildir, message, opened, monkeypatch):
    deliver(maildir, message)
    ix = opened(maildir)
    age_dirs(maildir)
    ix.sync()                                   # stores the old mtimes
    calls = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: calls.append(p) or real(p))
    assert ix.sync() == Changes()
    assert not ix.changed_since_last_sync()
    assert calls == []
    again = FolderIndex.open(maildir)           # a reopen reads no directory either
    again.close()
    assert calls == []


def test_recent_directory_mtime_forces_a_rescan(maildir, message, opened, monkeypatch):
    deliver(maildir, message)
    ix = opened(maildir)
    calls = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: calls.append(p) or real(p))
    ix.sync()
    assert calls                                # new/ changed < 2 s ago: looked again


# -- flags ----------------------------------------------------------------------------

def test_flags_live_in_the_file_name(maildir, message, opened):
    deliver(maildir, message)
    ix = opened(maildir)
    rec = ix.store_flags(1, frozenset({"\\Seen", "\\Flagged", "\\Answered", "\\Recent"}))
    assert rec.flags == {"\\Seen", "\\Flagged", "\\Answered"}
    assert os.listdir(os.path.join(maildir, "new")) == []
    (name,) = os.listdir(os.path.join(maildir, "cur"))
    assert name == rec.key + ":2,FRS"
    assert rec.path == os.path.join(maildir, "cur", name)
    assert ix.read(1) == MESSAGE
    assert ix.flags(1) == rec.flags
    assert ix.sync() == Changes()               # our own change is not reported again
    rec = ix.store_flags(1, frozenset({"\\draft", "$Forwarded", "\\deleted"}))
    assert os.path.basename(rec.path) == rec.key + ":2,DPT"
    assert rec.flags == {"\\Draft", "$Forwarded", "\\Deleted"}


def test_unknown_info_letters_are_kept(maildir, opened):
    put(maildir, "1.A:2,Sab", sub="cur")
    ix = opened(maildir)
    assert ix.record(1).flags == SEEN
    rec = ix.store_flags(1, frozenset({"\\Flagged"}))
    assert os.path.basename(rec.path) == "1.A:2,Fab"


def test_external_rename_is_a_change(maildir, message, opened):
    done = deliver(maildir, message)
    ix = opened(maildir)
    other = opened(maildir)
    key = os.path.basename(done.path)
    os.rename(done.path, os.path.join(maildir, "cur", key + ":2,ST"))
    changes = ix.sync()
    assert [(r.uid, r.flags) for r in changes.changed] == [(1, {"\\Seen", "\\Deleted"})]
    assert changes.changed[0].modseq > 1
    assert ix.read(1) == MESSAGE
    assert [r.uid for r in other.sync().changed] == [1]
    # a move without a flag change (new/ -> cur/ by a reader) is not a change
    deliver(maildir, message)
    ix.sync()
    (name,) = os.listdir(os.path.join(maildir, "new"))
    os.rename(os.path.join(maildir, "new", name), os.path.join(maildir, "cur", name + ":2,"))
    assert ix.sync() == Changes()
    assert ix.record(2).path.endswith("/cur/" + name + ":2,")


def test_store_by_one_session_is_seen_by_another(maildir, message, opened):
    deliver(maildir, message)
    one, two = opened(maildir), opened(maildir)
    rec = one.store_flags(1, frozenset({"\\Seen", "$Junk"}))
    changes = two.sync()
    assert changes.changed == [rec]
    assert two.flags(1) == {"\\Seen", "$Junk"}
    assert two.highestmodseq == rec.modseq


def test_keywords_persist(maildir, message, opened):
    deliver(maildir, message)
    ix = opened(maildir)
    before = os.listdir(os.path.join(maildir, "new"))
    rec = ix.store_flags(1, frozenset({"$Junk", "NonJunk"}))
    assert rec.flags == {"$Junk", "NonJunk"}
    assert os.listdir(os.path.join(maildir, "new")) == before   # keywords need no rename
    ix.close()
    again = opened(maildir)
    assert again.record(1).flags == {"$Junk", "NonJunk"}
    rec = again.store_flags(1, frozenset({"\\Seen", "$Junk"}))
    again.close()
    assert opened(maildir).record(1).flags == {"\\Seen", "$Junk"}


def test_same_flags_keep_the_modseq(maildir, message, opened):
    deliver(maildir, message)
    ix = opened(maildir)
    first = ix.store_flags(1, SEEN)
    assert ix.store_flags(1, SEEN).modseq == first.modseq


def test_unchanged_since(maildir, message, opened):
    deliver(maildir, message)
    deliver(maildir, message)
    ix = opened(maildir)
    base = ix.record(1).modseq
    assert ix.store_flags(1, SEEN, unchanged_since=base).flags == SEEN
    assert ix.store_flags(1, frozenset(), unchanged_since=base) is None
    assert ix.flags(1) == SEEN                       # refused: nothing changed
    now = ix.record(1).modseq
    assert now > base
    assert ix.store_flags(1, frozenset(), unchanged_since=now).flags == frozenset()
    assert ix.store_flags(99, SEEN) is None
    assert ix.highestmodseq >= ix.record(1).modseq


def test_flag_store_after_external_rename(maildir, message, opened):
    done = deliver(maildir, message)
    ix = opened(maildir)
    os.rename(done.path, os.path.join(maildir, "cur", os.path.basename(done.path) + ":2,F"))
    rec = ix.store_flags(1, frozenset({"\\Seen", "\\Flagged"}))
    assert rec is not None and rec.path.endswith(":2,FS")
    os.unlink(rec.path)
    assert ix.store_flags(1, SEEN) is None


def test_modseq_is_monotonic_across_objects(maildir, message, opened):
    deliver(maildir, message)
    one, two = opened(maildir), opened(maildir)
    seen = [one.highestmodseq]
    for i in range(6):
        ix = (one, two)[i % 2]
        seen.append(ix.store_flags(1, frozenset({f"$x{i}"})).modseq)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


# -- removal --------------------------------------------------------------------------

def test_vanished_file_is_removed(maildir, message, opened):
    first = deliver(maildir, message)
    deliver(maildir, message)
    ix = opened(maildir)
    modseq = ix.highestmodseq
    os.unlink(first.path)
    changes = ix.sync()
    assert changes.removed == [1]
    assert [r.uid for r in ix.records()] == [2]
    assert ix.vanished_since(modseq) == [1]
    with pytest.raises(FileNotFoundError):
        ix.read(1)


def test_expunge_and_vanished_since(maildir, message, opened):
    for _ in range(3):
        deliver(maildir, message)
    ix = opened(maildir)
    other = opened(maildir)
    before = ix.highestmodseq
    ix.store_flags(2, frozenset({"\\Deleted"}))
    ix.cache_put(2, "structure", b"blob")
    assert ix.expunge([2, 3, 42]) == [2, 3]
    assert sorted(os.listdir(os.path.join(maildir, "new"))) == [
        os.path.basename(ix.record(1).path)]
    assert os.listdir(os.path.join(maildir, "cur")) == []
    assert [r.uid for r in ix.records()] == [1]
    assert ix.sync() == Changes()                 # our own expunge is not reported again
    assert ix.vanished_since(before) == [2, 3]
    assert ix.vanished_since(ix.highestmodseq) == []
    assert ix.cache_get(2, "structure") is None
    # another session keeps its view (sequence numbers) until it syncs
    assert [r.uid for r in other.records()] == [1, 2, 3]
    assert other.record(3) is not None
    with pytest.raises(FileNotFoundError):
        other.read(3)
    assert other.sync().removed == [2, 3]
    assert [r.uid for r in other.records()] == [1]
    assert other.expunge([2]) == []


def test_expunge_of_externally_renamed_file(maildir, message, opened):
    done = deliver(maildir, message)
    ix = opened(maildir)
    os.rename(done.path, os.path.join(maildir, "cur", os.path.basename(done.path) + ":2,T"))
    assert ix.expunge([1]) == [1]
    assert os.listdir(os.path.join(maildir, "cur")) == []


def test_expunge_unsynced_does_no_fsync_and_leaves_the_quota_line_to_the_caller(
        maildir, message, opened, monkeypatch):
    quota.recalculate(maildir, quota.Quota(10_000_000))
    for _ in range(3):
        deliver(maildir, message)
    ix = opened(maildir)
    other = opened(maildir)
    ix.store_flags(2, frozenset({"\\Deleted"}))
    before = quota.read_usage(maildir)

    def no_fsync(*args):
        raise AssertionError("fsync in expunge_unsynced")

    monkeypatch.setattr(fsutil, "fsync_dir", no_fsync)
    monkeypatch.setattr(fsutil, "fsync_dirs", no_fsync)
    monkeypatch.setattr(fsutil, "fsync_file", no_fsync)
    monkeypatch.setattr(os, "fsync", no_fsync)
    monkeypatch.setattr(os, "fdatasync", no_fsync)
    removed, size = ix.expunge_unsynced([2, 3, 42])
    monkeypatch.undo()
    assert removed == [2, 3] and size == 2 * len(MESSAGE)
    assert [r.uid for r in ix.records()] == [1]
    assert ix.sync() == Changes()
    assert other.sync().removed == [2, 3]
    assert quota.read_usage(maildir) == before         # the caller's job:
    assert index_module.usage_file(maildir) == os.path.join(maildir, "maildirsize")
    index_module.record_usage(maildir, -size, -2)
    usage = quota.read_usage(maildir)
    assert (usage.bytes, usage.count) == (before.bytes - size, before.count - 2)
    assert index_module.usage_file(os.path.join(maildir, ".Trash")) is None


def test_expunged_uids_are_not_given_again_after_the_tombstones_are_lost(maildir, message,
                                                                        opened):
    """A crash may lose an unsynced expunge's commit: the message comes back under its
    old UID (same file), and later messages never get a UID already given."""
    for _ in range(2):
        deliver(maildir, message)
    ix = opened(maildir)
    db = os.path.join(maildir, INDEX_NAME)
    snapshot = sqlite3.connect(db)
    backup = sqlite3.connect(":memory:")
    snapshot.backup(backup)                          # the index as of before the expunge
    snapshot.close()
    path = ix.record(2).path
    with open(path, "rb") as f:
        saved = f.read()
    assert ix.expunge_unsynced([2])[0] == [2]
    ix.close()
    index_module.close_spares()
    # "crash": the unlink survived, the index commit did not
    for suffix in ("-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    restored = sqlite3.connect(db)
    backup.backup(restored)
    restored.close()
    fresh = opened(maildir)
    assert [r.uid for r in fresh.records()] == [1]        # 2 vanished, not renumbered
    new = fresh.append(b"Subject: new\n\nnew\n")
    assert new.uid == 3
    assert [r.uid for r in fresh.sync().added] == [3]
    # the other outcome: the file came back and the tombstone is durable
    with open(os.path.join(maildir, "cur", os.path.basename(path)), "wb") as f:
        f.write(saved)
    assert [r.uid for r in fresh.sync().added] == [4]


def test_append_of_a_file_another_scan_numbered_first_keeps_its_uid(maildir, opened,
                                                                     monkeypatch):
    ix = opened(maildir)
    other = opened(maildir)
    real = fsutil.fsync_dir

    def scan_between(path):                          # another process scans right after
        real(path)                                   # our rename into cur/
        other.sync()

    monkeypatch.setattr(fsutil, "fsync_dir", scan_between)
    record = ix.append(b"Subject: raced\n\nbody\n", frozenset({"$Work"}), 1_700_000_000.0)
    monkeypatch.undo()
    assert record.uid == 1 and "$Work" in record.flags
    assert other.sync().changed[0].flags == record.flags
    assert ix.append(b"Subject: next\n\nbody\n").uid == 3     # 2 was reserved: a gap
    ix.sync()
    assert sorted(r.uid for r in ix.records()) == [1, 3]


def test_the_wal_is_checkpointed_by_callers_not_inside_a_commit(maildir, message, opened,
                                                                  monkeypatch):
    """SQLite's automatic checkpoint (two fsyncs inside the COMMIT that crosses its
    mark) is off: a commit on the reactor thread must not fsync.  After
    CHECKPOINT_COMMITS commits checkpoint_due is set; checkpoint_wal (a thread's
    job) copies the WAL into the database and restarts it with one small commit."""
    monkeypatch.setattr(index_module, "CHECKPOINT_COMMITS", 20)
    deliver(maildir, message)
    ix = opened(maildir)
    assert ix._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    flags = [frozenset(), SEEN]
    n = 0
    while not ix.checkpoint_due:
        n += 1
        ix.store_flags(1, flags[n % 2])
        assert n <= 20
    probe = sqlite3.connect(os.path.join(maildir, INDEX_NAME))
    assert probe.execute("PRAGMA wal_checkpoint(NOOP)").fetchone()[1] >= 20
    assert ix.take_checkpoint_due() and not ix.take_checkpoint_due()
    index_module.checkpoint_wal(maildir)
    busy, frames, done = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, frames, done) == (0, 1, 1)      # restarted: only the restarting commit
    ix.store_flags(1, SEEN)
    assert ix.record(1).flags == SEEN
    probe.close()
    index_module.checkpoint_wal(os.path.join(maildir, ".Gone"))   # no index: nothing
    assert not os.path.exists(os.path.join(maildir, ".Gone"))
    # a durable operation (in a thread anyway) checkpoints by itself, first
    ix.checkpoint_due = True
    ix.append(b"Subject: x\n\nbody\n")
    assert not ix.checkpoint_due


# -- append and copy ----------------------------------------------------------------------

def test_append_with_internaldate(maildir, opened):
    ix = opened(maildir)
    data = b"Subject: a\r\n\r\nbody\r\n"
    rec = ix.append(data, frozenset({"\\Seen", "$Label1"}), internaldate=1_234_567_890)
    assert rec.uid == 1 and rec.flags == {"\\Seen", "$Label1"}
    assert rec.internaldate == 1_234_567_890
    assert rec.size == rec.rfc822_size == len(data)
    name = os.path.basename(rec.path)
    assert name == f"{rec.key}:2,S" and rec.key.endswith(f",S={len(data)},W={len(data)}")
    assert os.path.dirname(rec.path) == os.path.join(maildir, "cur")
    assert os.stat(rec.path).st_mtime == 1_234_567_890
    assert os.listdir(os.path.join(maildir, "tmp")) == []
    assert ix.records() == []                         # shows up at the next sync
    changes = ix.sync()
    assert changes.added == [rec]
    ix.close()
    again = opened(maildir)
    assert again.records() == [rec]
    assert again.read(1) == data


def test_copy_keeps_flags_keywords_and_date(maildir, message, opened):
    deliver(maildir, message)
    src = opened(maildir)
    src.store_flags(1, frozenset({"\\Flagged", "$Work"}))
    src.append(b"Subject: b\n\nx\n", SEEN, internaldate=1_000_000_000)
    src.sync()
    dst = opened(os.path.join(maildir, ".Archive"), create=True)
    dst.append(b"Subject: c\n\nx\n")
    pairs = src.copy_to([2, 1, 7], dst)
    assert pairs == [(1, 2), (2, 3)]
    added = dst.sync().added
    assert [r.uid for r in added] == [1, 2, 3]
    copies = {r.uid: r for r in added}
    originals = {r.uid: r for r in src.records()}
    for old, new in pairs:
        assert copies[new].flags == originals[old].flags
        assert copies[new].internaldate == originals[old].internaldate
        assert copies[new].size == originals[old].size
        assert copies[new].rfc822_size == originals[old].rfc822_size
        assert dst.read(new) == src.read(old)
        assert copies[new].key != originals[old].key
    assert os.path.basename(copies[2].path).endswith(":2,F")
    # the copy is a separate name: expunging the original keeps it
    src.expunge([1])
    assert dst.read(2) == MESSAGE


def test_copy_falls_back_to_a_copy(maildir, message, opened, monkeypatch):
    deliver(maildir, message)
    src = opened(maildir)
    dst = opened(os.path.join(maildir, ".Other"), create=True)

    def no_links(a, b):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    assert src.copy_to([1], dst) == [(1, 1)]
    rec = dst.sync().added[0]
    assert dst.read(1) == MESSAGE
    assert os.stat(rec.path).st_ino != os.stat(src.record(1).path).st_ino
    assert rec.internaldate == pytest.approx(src.record(1).internaldate)
    assert os.listdir(os.path.join(maildir, ".Other", "tmp")) == []


def test_maildirsize_follows_append_copy_expunge(maildir, opened):
    quota.recalculate(maildir, quota.Quota(10_000_000))
    ix = opened(maildir)
    trash = opened(os.path.join(maildir, ".Trash"), create=True)
    sent = opened(os.path.join(maildir, ".Sent"), create=True)
    a = ix.append(b"x" * 100)
    ix.append(b"y" * 50)
    ix.sync()
    assert (quota.read_usage(maildir).bytes, quota.read_usage(maildir).count) == (150, 2)
    ix.copy_to([a.uid], sent)
    ix.copy_to([a.uid], trash)                       # Trash is not counted
    assert (quota.read_usage(maildir).bytes, quota.read_usage(maildir).count) == (250, 3)
    ix.expunge([a.uid])
    usage = quota.read_usage(maildir)
    assert (usage.bytes, usage.count) == (150, 2)
    fresh = quota.recalculate(maildir, quota.Quota(10_000_000))
    assert (fresh.bytes, fresh.count) == (150, 2)


# -- recent ----------------------------------------------------------------------------------

def test_append_claims_recent_with_the_uid(maildir, message, opened, monkeypatch):
    ix = opened(maildir)
    other = opened(maildir)
    assert ix.claim_recent() == set() and other.claim_recent() == set()
    a = ix.append(b"Subject: a\n\nbody\n", claim_recent=True)
    ix.sync()
    other.sync()
    assert other.claim_recent() == set()              # ours, claimed with the UID
    writes = []
    real = FolderIndex._transaction
    monkeypatch.setattr(FolderIndex, "_transaction", lambda self, *a, **kw: (
        writes.append(kw), real(self, *a, **kw))[1])
    assert ix.claim_recent() == {a.uid}                # no write transaction for it
    assert writes == [] and ix.claim_recent() == set()
    monkeypatch.undo()
    # an older message nobody claimed yet: the mark stays, the next claim takes both
    deliver(maildir, message)
    other.sync()                                       # numbered, not claimed
    b = ix.append(b"Subject: b\n\nbody\n", claim_recent=True)
    ix.sync()
    assert ix.claim_recent() == {b.uid - 1, b.uid}
    other.sync()
    assert other.claim_recent() == set()
    # without claim_recent, append claims nothing
    c = ix.append(b"Subject: c\n\nbody\n")
    other.sync()
    assert other.claim_recent() == {c.uid}


def test_claim_recent_once_across_objects(maildir, message, opened):
    deliver(maildir, message)
    deliver(maildir, message)
    one = opened(maildir)
    two = opened(maildir)
    assert one.claim_recent() == {1, 2}
    assert two.claim_recent() == set()
    deliver(maildir, message)
    two.sync()                       # two sees uid 3 first
    assert two.claim_recent() == {3}
    one.sync()
    assert one.claim_recent() == set()
    deliver(maildir, message)
    one.sync()
    assert one.claim_recent() == {4}
    assert FolderIndex.open(maildir).claim_recent() == set()


def test_peek_recent_claims_nothing(maildir, message, opened):
    # EXAMINE's view: what is \Recent, without taking it from the next SELECT
    deliver(maildir, message)
    deliver(maildir, message)
    one = opened(maildir)
    assert one.peek_recent() == {1, 2}
    assert one.peek_recent() == {1, 2}
    assert opened(maildir).claim_recent() == {1, 2}
    assert one.peek_recent() == set()


def test_claim_recent_leaves_unsynced_messages(maildir, message, opened):
    deliver(maildir, message)
    one = opened(maildir)
    deliver(maildir, message)
    opened(maildir)                  # another process numbers uid 2
    assert one.claim_recent() == {1}
    one.sync()
    assert one.claim_recent() == {2}


# -- cache ----------------------------------------------------------------------------------------

def test_cache(maildir, message, opened):
    deliver(maildir, message)
    ix = opened(maildir)
    assert ix.cache_get(1, "structure") is None
    ix.cache_put(1, "structure", b"\x00abc")
    ix.cache_put(1, "envelope", b"env")
    assert opened(maildir).cache_get(1, "structure") == b"\x00abc"
    ix.cache_put(1, "structure", b"new")
    assert ix.cache_get(1, "structure") == b"new"
    ix.cache_put(5, "structure", b"none")           # no such message: not stored
    assert ix.cache_get(5, "structure") is None
    assert ix.cache_get_many([1, 5, 1], "structure") == {1: b"new"}


# -- recovery -------------------------------------------------------------------------------------

def test_deleted_index_is_rebuilt_with_a_new_uidvalidity(maildir, message, opened):
    deliver(maildir, message)
    deliver(maildir, message)
    ix = opened(maildir)
    old = ix.uidvalidity
    ix.store_flags(2, frozenset({"$Kw"}))
    other = opened(maildir)
    ix.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(os.path.join(maildir, INDEX_NAME + suffix)):
            os.unlink(os.path.join(maildir, INDEX_NAME + suffix))
    again = opened(maildir)
    assert again.uidvalidity > old
    assert [r.uid for r in again.records()] == [1, 2]
    assert again.flags(2) == frozenset()             # keywords were in the index only
    changes = other.sync()                           # an open session notices
    assert changes.uidvalidity_changed
    assert changes.removed == [1, 2] and [r.uid for r in changes.added] == [1, 2]
    assert other.uidvalidity == again.uidvalidity


def test_corrupt_index_is_set_aside(maildir, message, opened):
    deliver(maildir, message)
    ix = opened(maildir)
    old = ix.uidvalidity
    ix.close()
    index_module.close_spares()                 # as another process would find it
    for suffix in ("-wal", "-shm"):
        if os.path.exists(os.path.join(maildir, INDEX_NAME + suffix)):
            os.unlink(os.path.join(maildir, INDEX_NAME + suffix))
    with open(os.path.join(maildir, INDEX_NAME), "wb") as f:
        f.write(b"this is not a database" * 100)
    again = opened(maildir)
    assert again.uidvalidity > old
    assert [r.uid for r in again.records()] == [1]
    aside = [n for n in os.listdir(maildir) if n.startswith(INDEX_NAME + ".corrupt-")]
    assert aside


def test_corruption_found_during_sync(maildir, message, opened, monkeypatch):
    deliver(maildir, message)
    ix = opened(maildir)
    old = ix.uidvalidity
    real = ix._refresh
    calls = []

    def broken(*args):
        if not calls:
            calls.append(1)
            error = sqlite3.DatabaseError("database disk image is malformed")
            error.sqlite_errorcode = 11
            raise error
        return real(*args)

    monkeypatch.setattr(ix, "_refresh", broken)
    changes = ix.sync()
    assert changes.uidvalidity_changed and ix.uidvalidity > old
    assert [r.uid for r in ix.records()] == [1]


def test_newer_index_version_is_refused(maildir, message):
    FolderIndex.open(maildir).close()
    conn = sqlite3.connect(os.path.join(maildir, INDEX_NAME))
    conn.execute("UPDATE meta SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(index_module.IndexVersionError):
        FolderIndex.open(maildir)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        FolderIndex.open(str(tmp_path / "nope"))
    ix = FolderIndex.open(str(tmp_path / "made"), create=True)
    assert ix.records() == [] and ix.uidnext == 1
    ix.close()


# -- concurrency ---------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from indimail_tw.maildir.deliver import deliver
    from indimail_tw.maildir.index import FolderIndex
    maildir, message, count = sys.argv[2], sys.argv[3], int(sys.argv[4])
    ix = FolderIndex.open(maildir)
    seen = {r.uid: r.key for r in ix.records()}
    for i in range(count):
        deliver(maildir, message)
        changes = ix.sync()
        for r in changes.added:
            assert r.uid not in seen, r.uid
            seen[r.uid] = r.key
        if i % 5 == 0:
            ix.store_flags(min(seen), frozenset({"\\\\Seen"}))
        assert not changes.removed
    ix.close()
    print(json.dumps(seen))
""")


def test_two_processes_agree_on_uids(maildir, message, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), ROOT, maildir, message, "40"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results.append({int(uid): key for uid, key in json.loads(out).items()})
    ix = FolderIndex.open(maildir)
    final = keys(ix)
    ix.close()
    assert len(final) == 120 and sorted(final) == list(range(1, 121))
    assert len(set(final.values())) == 120
    on_disk = {n.split(":")[0] for sub in ("new", "cur")
               for n in os.listdir(os.path.join(maildir, sub))}
    assert set(final.values()) == on_disk
    for seen in results:
        assert all(final[uid] == key for uid, key in seen.items())


def test_hundred_messages(maildir, message, opened):
    for _ in range(100):
        deliver(maildir, message)
    ix = opened(maildir)
    records = ix.records()
    assert [r.uid for r in records] == list(range(1, 101))
    assert all(isinstance(r, MessageRecord) and r.size == len(MESSAGE) for r in records)
    assert len(ix) == 100 and list(ix.uids()) == list(range(1, 101))
    assert ix.claim_recent() == set(range(1, 101))
    for uid in range(1, 101, 2):
        ix.store_flags(uid, SEEN)
    assert ix.expunge(list(range(1, 101, 3))) == list(range(1, 101, 3))
    again = opened(maildir)
    assert [r.uid for r in again.records()] == [r.uid for r in ix.records()]
    assert all(again.flags(r.uid) == r.flags for r in ix.records())
    assert ix.records(range(50, 60)) == [r for r in ix.records() if 50 <= r.uid < 60]
    assert ix.records(list(range(1, 101))) == ix.records()


def test_run_uses_the_reactor_pool(maildir):
    from twisted.internet import defer

    class Reactor:
        def getThreadPool(self):
            return "pool"

    calls = []

    def fake(reactor, pool, fn, *args, **kwargs):
        calls.append((pool, fn, args))
        return defer.succeed(fn(*args, **kwargs))

    import twisted.internet.threads as threads
    original = threads.deferToThreadPool
    threads.deferToThreadPool = fake
    try:
        d = index_module.run(Reactor(), FolderIndex.open, maildir)
    finally:
        threads.deferToThreadPool = original
    results = []
    d.addCallback(results.append)
    assert calls[0][0] == "pool" and results[0].uidnext == 1
    results[0].close()


def test_fsutil_write_new_file_dated(tmp_path):
    path = str(tmp_path / "f")
    assert fsutil.write_new_file_dated(path, [b"ab", b"c"], 1_000_000) == 3
    assert os.stat(path).st_mtime == 1_000_000
    with pytest.raises(FileExistsError):
        fsutil.write_new_file_dated(path, [b"x"])


def test_store_many_is_one_transaction(maildir, message, opened):
    for _ in range(3):
        deliver(maildir, message)
    ix = opened(maildir)
    other = opened(maildir)
    base = ix.highestmodseq
    results = ix.store_many([(1, SEEN), (3, frozenset({"$A"})), (9, SEEN)])
    assert results[2] is None
    assert results[0].modseq == results[1].modseq == base + 1 == ix.highestmodseq
    skipped, done = ix.store_many([(1, SEEN), (2, SEEN)], unchanged_since=base)
    assert skipped is None and done.modseq == base + 2     # 1 changed since base
    assert ix.flags(2) == SEEN
    refused = ix.store_many([(1, frozenset()), (2, frozenset())], unchanged_since=base)
    assert refused == [None, None]
    assert sorted(r.uid for r in other.sync().changed) == [1, 2, 3]


def test_rescan_inside_store_keeps_modseq_monotonic(maildir, message, opened):
    first = deliver(maildir, message)
    deliver(maildir, message)
    ix = opened(maildir)
    os.rename(first.path, os.path.join(maildir, "cur", os.path.basename(first.path) + ":2,F"))
    os.unlink(ix.record(2).path)
    before = ix.highestmodseq
    gone, stored = ix.store_many([(2, SEEN), (1, SEEN)])   # 2 vanished, 1 was renamed
    assert gone is None
    assert stored.flags == SEEN and stored.path.endswith(":2,S")
    assert stored.modseq == before + 1
    assert ix.vanished_since(before) == [2]
    changes = ix.sync()
    assert changes.removed == [2] and changes.changed == []
    later = ix.store_flags(1, frozenset({"$Later"}))
    assert later.modseq > stored.modseq > before
    conn = sqlite3.connect(os.path.join(maildir, INDEX_NAME))
    top = conn.execute("SELECT highestmodseq FROM meta").fetchone()[0]
    biggest = conn.execute("SELECT max(modseq) FROM messages").fetchone()[0]
    gone = conn.execute("SELECT max(modseq) FROM expunged").fetchone()[0]
    conn.close()
    assert top == later.modseq >= max(biggest, gone)


def test_many_new_files_are_measured_before_the_lock(maildir, opened, monkeypatch):
    monkeypatch.setattr(index_module, "_PREMEASURE", 1)
    for i in range(5):
        put(maildir, f"{i}.X", b"a\n" * (i + 1), mtime=1000 + i)
    ix = opened(maildir)
    assert [(r.key, r.size, r.rfc822_size) for r in ix.records()] == [
        (f"{i}.X", 2 * (i + 1), 3 * (i + 1)) for i in range(5)]


def test_status_counts_and_recent_count(maildir, message, opened):
    for _ in range(4):
        deliver(maildir, message)
    ix = opened(maildir)
    ix.store_flags(1, SEEN)
    ix.store_flags(2, frozenset({"\\Seen", "\\Deleted"}))
    ix.store_flags(3, frozenset({"\\Deleted", "$K"}))
    assert ix.status_counts() == {"MESSAGES": 4, "UNSEEN": 2, "DELETED": 2,
                                  "SIZE": 4 * rfc822_size(MESSAGE)}
    assert ix.recent_count() == 4
    other = opened(maildir)
    assert other.claim_recent() == {1, 2, 3, 4}
    assert ix.recent_count() == 0
    deliver(maildir, message)
    ix.sync()
    assert ix.recent_count() == 1
    assert ix.status_counts()["MESSAGES"] == 5


def test_first_scan_reads_no_message_and_sizes_come_when_needed(maildir, opened,
                                                                 monkeypatch):
    put(maildir, "1.A,S=7", b"a\nb\r\nc\n", mtime=1)
    put(maildir, "2.B,S=7,W=9", b"a\nb\r\nc\n", mtime=2)
    put(maildir, "3.C", b"x\n", mtime=3)
    reads = []
    real = index_module.file_rfc822_size
    monkeypatch.setattr(index_module, "file_rfc822_size",
                        lambda path: reads.append(os.path.basename(path)) or real(path))
    ix = opened(maildir)
    assert reads == []                          # W= or computed later
    assert ix.status_counts(size=False) == {"MESSAGES": 3, "UNSEEN": 3, "DELETED": 0}
    assert reads == []
    assert [r.rfc822_size for r in ix.records([1, 2])] == [9, 9]
    assert reads == ["1.A,S=7"]
    assert ix.status_counts()["SIZE"] == 9 + 9 + 3
    assert reads == ["1.A,S=7", "3.C"]
    again = opened(maildir)                     # remembered in the index
    assert [r.rfc822_size for r in again.records()] == [9, 9, 3]
    assert reads == ["1.A,S=7", "3.C"]


def test_copy_and_append_names_carry_the_rfc822_size(maildir, opened):
    ix = opened(maildir)
    rec = ix.append(b"a\nb\n")
    assert rec.key.endswith(",S=4,W=6") and rec.rfc822_size == 6
    dst = opened(os.path.join(maildir, ".Box"), create=True)
    ix.copy_to([rec.uid], dst)
    (copy,) = dst.sync().added
    assert copy.key.endswith(",S=4,W=6") and copy.rfc822_size == 6


def test_mtime_window_depends_on_timestamp_granularity():
    second = 1_700_000_000 * 10**9
    assert not index_module._settled(second, second + 500_000_000)     # coarse: 2 s
    assert index_module._settled(second, second + 2_000_000_000)
    fine = second + 123_456_789
    assert not index_module._settled(fine, fine + 50_000_000)
    assert index_module._settled(fine, fine + 100_000_000)


def test_delivery_right_after_our_own_changes_is_found(maildir, message, opened):
    deliver(maildir, message)
    ix = opened(maildir)
    ix.sync()
    ix.append(b"Subject: own\n\nx\n")
    ix.store_flags(1, SEEN)
    assert [r.uid for r in ix.sync().added] == [2]
    deliver(maildir, message)                   # same mtime window: found by listing
    assert [r.uid for r in ix.sync().added] == [3]
    ix.expunge([2])
    deliver(maildir, message)
    assert [r.uid for r in ix.sync().added] == [4]
    assert [r.uid for r in ix.records()] == [1, 3, 4]


def test_a_closed_index_is_reused_by_the_next_open(maildir, message, opened):
    index_module.close_spares()
    deliver(maildir, message)
    deliver(maildir, message)
    first = FolderIndex.open(maildir)
    conn = first._conn
    first.close()
    assert first._conn is None and len(first) == 0
    deliver(maildir, message)                   # changes while it is a spare
    other = opened(maildir)                     # (the spare: now in use)
    assert other._conn is conn
    other.store_flags(1, SEEN)
    other.expunge([2])
    fresh = FolderIndex(maildir)                # not from the pool, for comparison
    fresh._connect()
    fresh._load_view()
    again = opened(maildir)                     # a new connection: none spare
    assert again._conn is not conn
    other.close()
    reused = opened(maildir)
    assert reused._conn is conn
    assert list(reused.uids()) == list(fresh.uids()) == [1, 3]
    assert reused.flags(1) == SEEN and reused.highestmodseq == fresh.highestmodseq
    fresh._disconnect()
    index_module.close_spares()


def test_a_scan_is_durable_only_when_it_gives_out_uids(maildir, message, opened,
                                                        monkeypatch):
    ix = opened(maildir)
    synced = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(os.readlink(
        f"/proc/self/fd/{fd}")))
    deliver(maildir, message)
    assert [r.uid for r in ix.sync().added] == [1]
    assert synced == [os.path.join(maildir, INDEX_NAME + "-wal")]
    age_dirs(maildir)                           # only the stored mtimes change
    ix.sync()
    assert len(synced) == 1


def test_a_big_view_is_loaded_from_its_snapshot_plus_later_changes(maildir, message,
                                                                    monkeypatch):
    monkeypatch.setattr(index_module, "SNAPSHOT_MIN", 3)
    index_module.close_spares()
    for i in range(5):
        put(maildir, f"{i}.X", mtime=1000 + i)
    first = FolderIndex.open(maildir)           # row by row, then saves the snapshot
    first.store_flags(2, frozenset({"\\Seen", "$Work"}))
    first.expunge([4])
    deliver(maildir, message)
    first._disconnect()
    rows = []
    real = FolderIndex._refresh
    monkeypatch.setattr(FolderIndex, "_refresh",
                        lambda self, *a: rows.append(1) or real(self, *a))
    again = FolderIndex.open(maildir)           # snapshot + the changes since
    assert rows
    reference = FolderIndex(maildir)
    reference._connect()
    monkeypatch.setattr(index_module, "SNAPSHOT_MIN", 10**9)
    reference._load_snapshot = lambda mtimes: False     # row by row
    reference._load_view()
    assert list(again.uids()) == list(reference.uids()) == [1, 2, 3, 5, 6]
    assert [again.flags(u) for u in again.uids()] == [reference.flags(u)
                                                      for u in reference.uids()]
    assert [again.modseq(u) for u in again.uids()] == [reference.modseq(u)
                                                       for u in reference.uids()]
    assert (again.uidnext, again.highestmodseq) == (reference.uidnext,
                                                    reference.highestmodseq)
    assert again.flag_summary() == (0, {"$Work"})
    again.store_flags(1, SEEN)
    assert again.flag_summary() == (2, {"$Work"})
    again._disconnect()
    reference._disconnect()


def test_inside_the_window_only_the_changed_directory_is_listed(maildir, message, opened,
                                                                monkeypatch):
    monkeypatch.setattr(index_module.FolderWatch, "start", lambda path: None)  # no inotify
    deliver(maildir, message)
    ix = opened(maildir)
    age_dirs(maildir)
    ix.sync()                                   # stores both (old) mtimes
    ix.append(b"Subject: own\n\nx\n")           # cur/ changes now
    ix.sync()
    calls = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: calls.append(os.path.basename(p)) or real(p))
    assert ix.sync() == Changes()
    assert calls == ["cur"]
    deliver(maildir, message)                   # new/ changes too: both listed, found
    assert [r.uid for r in ix.sync().added] == [3]
    assert "new" in calls


def test_own_changes_need_no_listing_with_a_watch(maildir, message, opened, monkeypatch):
    deliver(maildir, message)
    deliver(maildir, message)
    ix = opened(maildir)
    ix.store_flags(1, SEEN)                     # the first change of its own: a full scan
    ix.sync()
    if ix._watch is None:
        pytest.skip("no inotify here")
    calls = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: calls.append(os.path.basename(p)) or real(p))
    ix.store_flags(2, SEEN)                     # new/ -> cur/
    ix.store_flags(1, frozenset({"\\Flagged"}))
    assert ix.sync() == Changes()
    assert calls == []
    rec = ix.append(b"Subject: own\n\nx\n")
    assert [r.uid for r in ix.sync().added] == [rec.uid]
    assert calls == []
    assert ix.expunge([1]) == [1]
    assert ix.sync() == Changes()
    assert calls == []
    # another process's changes in the same instant are seen at once
    deliver(maildir, message)
    assert [r.uid for r in ix.sync().added] == [rec.uid + 1]
    assert "new" in calls
    calls.clear()
    assert ix.sync() == Changes() and calls == []
    other = FolderIndex.open(maildir)
    other.store_flags(2, frozenset({"\\Answered"}))     # a rename by another connection
    other.expunge([rec.uid])
    other._disconnect()
    changes = ix.sync()
    assert [r.uid for r in changes.changed] == [2] and changes.removed == [rec.uid]
    os.rename(f"{maildir}/new/" + os.listdir(f"{maildir}/new")[0],
              f"{maildir}/cur/" + os.listdir(f"{maildir}/new")[0] + ":2,S")   # no index
    assert [r.uid for r in ix.sync().changed] == [rec.uid + 1]


def test_a_watch_that_lost_events_or_its_directory_makes_the_index_list(maildir, message,
                                                                       opened, monkeypatch):
    deliver(maildir, message)
    ix = opened(maildir)
    ix.store_flags(1, SEEN)
    ix.sync()
    if ix._watch is None:
        pytest.skip("no inotify here")
    known = ix._known
    assert ix._watch.quiet(known)
    ix._watch._lost = True
    assert not ix._watch.quiet(known)
    assert ix._watch.quiet(known)               # lost events: False once
    ix._watch._dead = True
    assert not ix._watch.quiet(known) and not ix._watch.quiet(known)
    ix._disconnect()
    assert ix._watch is None


def test_uids_with_a_flag(maildir, message, opened):
    for _ in range(6):
        deliver(maildir, message)
    ix = opened(maildir)
    ix.store_flags(5, frozenset({"\\Deleted"}))
    ix.store_flags(2, frozenset({"\\Deleted", "\\Seen"}))
    ix.store_flags(3, SEEN)
    ix.store_flags(6, frozenset({"\\Deleted"}))
    assert ix.uids_with("\\Deleted") == [2, 5, 6]
    assert ix.uids_with("\\Seen") == [2, 3]
    assert ix.uids_with("$Nothing") == []


def test_close_while_another_thread_is_inside_a_call(maildir, message, monkeypatch):
    import threading

    index_module.close_spares()
    deliver(maildir, message)
    ix = FolderIndex.open(maildir)
    inside, release = threading.Event(), threading.Event()
    real = ix._path_of

    def slow(uid):
        inside.set()
        release.wait(10)
        return real(uid)

    monkeypatch.setattr(ix, "_path_of", slow)
    result = []
    worker = threading.Thread(target=lambda: result.append(ix.read(1)))
    worker.start()
    assert inside.wait(10)
    ix.close()                                  # the worker is inside read(): later
    assert ix._conn is not None and not index_module._spares
    release.set()
    worker.join(10)
    assert result == [MESSAGE]
    assert ix._conn is None and len(index_module._spares) == 1
    with pytest.raises(ValueError):             # later calls find it closed
        ix.expunge([1])
    index_module.close_spares()


def test_first_item_finds_only_aligned_items():
    from array import array

    from indimail_tw.maildir.index import _first_item

    items = array("I", [1280, 0, 7, 5, 7])      # 1280 = 00 05 00 00: a misaligned "5"
    raw = items.tobytes()
    for value in (0, 5, 7, 1280, 9):
        expected = items.index(value) if value in items else -1
        assert _first_item(raw, value.to_bytes(4, sys.byteorder), 4) == expected
