"""Crash-safe Maildir delivery: names, fsync order, clean failure, sticky and missing dirs."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat

import pytest

from indimail_tw import fsutil
from indimail_tw.fsutil import make_maildir
from indimail_tw.maildir.index import rfc822_size
from indimail_tw.maildir.deliver import (
    FOLDER_MARKER, MaildirDeliveryError, deliver, folder_path, prepare,
)

MESSAGE = b"Subject: test\n\nbody line\n"
HEADER = b"Return-Path: <a@b.test>\nDelivered-To: example.com-x@example.com\n"
NAME = re.compile(r"^\d+\.M\d+P\d+Q\d+\.[^/]+,S=(\d+),W=(\d+)$")


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


def listing(maildir, sub):
    return sorted(os.listdir(os.path.join(maildir, sub)))


def test_delivers_into_new_with_size_in_name(maildir, message):
    done = deliver(maildir, message, HEADER)
    (name,) = listing(maildir, "new")
    match = NAME.match(name)
    assert match, name
    assert int(match[1]) == len(HEADER) + len(MESSAGE) == done.size
    assert int(match[2]) == rfc822_size(HEADER + MESSAGE)      # CRLF line ends
    assert done.path == os.path.join(maildir, "new", name)
    with open(done.path, "rb") as f:
        assert f.read() == HEADER + MESSAGE
    assert listing(maildir, "tmp") == []
    assert stat.S_IMODE(os.stat(done.path).st_mode) == 0o600


def test_two_deliveries_get_two_names(maildir, message):
    first = deliver(maildir, message)
    second = deliver(maildir, message)
    assert first.path != second.path
    assert len(listing(maildir, "new")) == 2


def test_fsync_order_data_then_link_then_directory(maildir, message, monkeypatch):
    events = []
    real_fsync_file, real_fsync_dir, real_link = fsutil.fsync_file, fsutil.fsync_dir, os.link

    def fsync_file(fd):
        events.append(("fsync", os.fstat(fd).st_size))
        real_fsync_file(fd)

    def fsync_dir(path):
        events.append(("fsync_dir", os.path.basename(path)))
        real_fsync_dir(path)

    def link(src, dst):
        events.append(("link", os.path.basename(os.path.dirname(src)),
                       os.path.basename(os.path.dirname(dst))))
        real_link(src, dst)

    monkeypatch.setattr(fsutil, "fsync_file", fsync_file)
    monkeypatch.setattr(fsutil, "fsync_dir", fsync_dir)
    monkeypatch.setattr(os, "link", link)
    deliver(maildir, message, HEADER)
    assert events == [("fsync", len(HEADER) + len(MESSAGE)), ("link", "tmp", "new"),
                      ("fsync_dir", "new")]
    assert listing(maildir, "tmp") == []


@pytest.mark.parametrize("code, enhanced", [(errno.ENOSPC, "4.3.1"), (errno.EDQUOT, "4.2.2"),
                                            (errno.EIO, "4.3.0")])
def test_write_failure_is_temporary_and_leaves_nothing(maildir, message, monkeypatch, code,
                                                       enhanced):
    real = fsutil.write_all
    calls = []

    def write_all(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(code, os.strerror(code))
        real(fd, data)

    monkeypatch.setattr(fsutil, "write_all", write_all)
    with pytest.raises(MaildirDeliveryError) as info:
        deliver(maildir, message, HEADER)
    assert info.value.temporary
    assert info.value.enhanced == enhanced
    assert listing(maildir, "tmp") == [] and listing(maildir, "new") == []


def test_fsync_failure_removes_the_temporary_file(maildir, message, monkeypatch):
    def fail(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsutil, "fsync_file", fail)
    with pytest.raises(MaildirDeliveryError):
        deliver(maildir, message)
    assert listing(maildir, "tmp") == [] and listing(maildir, "new") == []


def test_link_failure_removes_the_temporary_file(maildir, message, monkeypatch):
    def fail(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "link", fail)
    with pytest.raises(MaildirDeliveryError):
        deliver(maildir, message)
    assert listing(maildir, "tmp") == [] and listing(maildir, "new") == []


def test_name_taken_in_new_picks_another(maildir, message, monkeypatch):
    real = os.link
    seen = []

    def link(src, dst):
        seen.append(dst)
        if len(seen) == 1:
            raise FileExistsError(errno.EEXIST, "exists", dst)
        real(src, dst)

    monkeypatch.setattr(os, "link", link)
    done = deliver(maildir, message)
    assert done.path == seen[1] != seen[0]
    assert listing(maildir, "tmp") == []
    assert NAME.match(os.path.basename(done.path))


def test_without_hard_links_it_renames(maildir, message, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    done = deliver(maildir, message)
    assert os.path.exists(done.path)
    assert listing(maildir, "tmp") == []


def test_unreadable_message_is_temporary(maildir, tmp_path):
    with pytest.raises(MaildirDeliveryError) as info:
        deliver(maildir, str(tmp_path / "missing"), HEADER)
    assert info.value.temporary
    assert listing(maildir, "tmp") == [] and listing(maildir, "new") == []


def test_sticky_maildir_is_refused(maildir, message):
    os.chmod(maildir, 0o1700)
    with pytest.raises(MaildirDeliveryError) as info:
        deliver(maildir, message)
    assert "sticky" in info.value.text and info.value.temporary
    assert listing(maildir, "tmp") == [] and listing(maildir, "new") == []


def test_missing_maildir_is_temporary(tmp_path, message):
    with pytest.raises(MaildirDeliveryError) as info:
        deliver(str(tmp_path / "nowhere"), message)
    assert info.value.temporary and "(#4.2.1)" in info.value.text


def test_prepare_creates_inbox_without_marker_and_folders_with_one(tmp_path):
    root = str(tmp_path / "home" / "Maildir")
    assert prepare(root) == root
    assert sorted(os.listdir(root)) == ["cur", "new", "tmp"]
    folder = prepare(root, "Lists")
    assert folder == os.path.join(root, ".Lists")
    assert os.path.exists(os.path.join(folder, FOLDER_MARKER))
    assert not os.path.exists(os.path.join(root, FOLDER_MARKER))
    assert prepare(root + "/", ".Lists") == folder


def test_folder_names_cannot_escape(tmp_path):
    with pytest.raises(MaildirDeliveryError):
        folder_path(str(tmp_path), "a/../../b")


def test_append_locked_truncates_a_failed_append(tmp_path, monkeypatch):
    path = str(tmp_path / "mbox")
    fsutil.append_locked(path, [b"first\n"])

    def chunks():
        yield b"half of a message\n"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        fsutil.append_locked(path, chunks())
    with open(path, "rb") as f:
        assert f.read() == b"first\n"


def test_append_locked_gives_up_on_a_held_lock(tmp_path):
    path = str(tmp_path / "mbox")
    with open(path, "wb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with pytest.raises(TimeoutError):
            fsutil.append_locked(path, [b"x\n"], lock_timeout=0)
    assert os.path.getsize(path) == 0


def test_shared_syncs_fsync_each_new_directory_once_then_remove_tmp(tmp_path, message,
                                                                     monkeypatch):
    from indimail_tw.maildir.deliver import shared_syncs

    monkeypatch.setattr(fsutil, "_uring_state", None)     # links (io_uring renames: below)

    boxes = [str(tmp_path / name / "Maildir") for name in ("a", "b")]
    for box in boxes:
        make_maildir(box)
    events = []
    real_fsync_dir, real_unlink = fsutil.fsync_dir, os.unlink
    real_at_once = fsutil.fsync_dirs_at_once
    monkeypatch.setattr(fsutil, "fsync_dir", lambda path: (
        events.append(("fsync_dir", path)), real_fsync_dir(path)))
    monkeypatch.setattr(fsutil, "fsync_dirs_at_once", lambda paths: (
        events.extend(("fsync_dir", path) for path in paths), real_at_once(paths)))
    monkeypatch.setattr(os, "unlink", lambda path: (
        events.append(("unlink", os.path.basename(os.path.dirname(path)))), real_unlink(path)))
    with shared_syncs():
        for box in boxes + boxes:
            deliver(box, message, HEADER, MESSAGE)
        assert events == []                  # nothing synced or removed inside the block
        assert [len(listing(box, "tmp")) for box in boxes] == [2, 2]
    assert events[:2] == [("fsync_dir", os.path.join(box, "new")) for box in boxes]
    assert events[2:] == [("unlink", "tmp")] * 4
    for box in boxes:
        assert listing(box, "tmp") == [] and len(listing(box, "new")) == 2
        for name in listing(box, "new"):
            with open(os.path.join(box, "new", name), "rb") as f:
                assert f.read() == HEADER + MESSAGE


def test_shared_syncs_failure_keeps_the_tmp_names(maildir, message, monkeypatch):
    from indimail_tw.maildir.deliver import shared_syncs

    def broken(path):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsutil, "_uring_state", None)     # links (io_uring renames: below)
    with pytest.raises(OSError), shared_syncs():
        deliver(maildir, message)
        monkeypatch.setattr(fsutil, "fsync_dir", broken)
    assert len(listing(maildir, "tmp")) == 1     # the data stays until new/ is durable


def test_shared_syncs_through_io_uring_rename_into_new(tmp_path, message, monkeypatch):
    """Where io_uring can be had, a batch's files are fsynced, renamed into new/ and
    each new/ fsynced in three system calls: no link, no unlink, no fsync of our own."""
    from indimail_tw.maildir.deliver import shared_syncs

    if fsutil._uring() is None:
        pytest.skip("no io_uring here")
    boxes = [str(tmp_path / name / "Maildir") for name in ("a", "b")]
    for box in boxes:
        make_maildir(box)
    events = []
    for name in ("fsync_dir", "fsync_dirs_at_once", "link_unsynced"):
        monkeypatch.setattr(fsutil, name, lambda *a, name=name: events.append(name))
    monkeypatch.setattr(os, "unlink", lambda path: events.append("unlink"))
    with shared_syncs():
        results = [deliver(box, message, HEADER, MESSAGE) for box in boxes + boxes]
    assert events == []
    for box in boxes:
        assert listing(box, "tmp") == [] and len(listing(box, "new")) == 2
    for result in results:
        with open(result.path, "rb") as f:
            assert f.read() == HEADER + MESSAGE


def test_shared_syncs_through_io_uring_a_failed_directory_fsync_fails_the_batch(
        maildir, message, monkeypatch):
    from indimail_tw.maildir.deliver import shared_syncs

    if fsutil._uring() is None:
        pytest.skip("no io_uring here")
    real = fsutil.publish_written

    def dir_fsync_fails(files):
        errors, _ = real(files)
        return errors, OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsutil, "publish_written", dir_fsync_fails)
    with pytest.raises(OSError), shared_syncs():   # not reported: delivered again
        deliver(maildir, message, HEADER)
    assert listing(maildir, "tmp") == []


def test_shared_syncs_fsync_every_file_before_any_link(tmp_path, message, monkeypatch):
    """Inside the block a delivery is only written; at its end every file is
    fsynced (all at once) before the first is linked into new/."""
    from indimail_tw.maildir.deliver import shared_syncs

    boxes = [str(tmp_path / name / "Maildir") for name in ("a", "b", "c")]
    for box in boxes:
        make_maildir(box)
    events = []
    real_fsync, real_link = fsutil.fsync_file, os.link
    monkeypatch.setattr(fsutil, "fsync_file", lambda fd: (events.append("fsync"),
                                                          real_fsync(fd)))
    monkeypatch.setattr(os, "link", lambda a, b: (events.append("link"), real_link(a, b)))
    with shared_syncs():
        results = [deliver(box, message, HEADER) for box in boxes]
        assert events == [] and all(listing(box, "new") == [] for box in boxes)
    # the three files, their links, then the three new/ directories (at once)
    assert events == ["fsync"] * 3 + ["link"] * 3 + ["fsync"] * 3
    for box, result in zip(boxes, results, strict=True):
        assert listing(box, "new") == [os.path.basename(result.path)]
        assert listing(box, "tmp") == []
        with open(result.path, "rb") as f:
            assert f.read() == HEADER + MESSAGE


def test_shared_syncs_a_failed_fsync_publishes_nothing(tmp_path, message, monkeypatch):
    from indimail_tw.maildir.deliver import shared_syncs

    boxes = [str(tmp_path / name / "Maildir") for name in ("a", "b")]
    for box in boxes:
        make_maildir(box)
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsutil, "fsync_file", fsync)
    with pytest.raises(OSError), shared_syncs():
        for box in boxes:
            deliver(box, message, HEADER)
    for box in boxes:                 # the batch failed as a whole: it will be repeated
        assert listing(box, "new") == [] and listing(box, "tmp") == []


def test_shared_syncs_an_error_inside_the_block_publishes_nothing(maildir, message):
    from indimail_tw.maildir.deliver import shared_syncs

    with pytest.raises(RuntimeError), shared_syncs():
        deliver(maildir, message, HEADER)
        raise RuntimeError("the job failed")
    assert listing(maildir, "new") == [] and listing(maildir, "tmp") == []


def test_shared_syncs_a_taken_name_gets_another_unique_name(maildir, message):
    """Inside shared_syncs the name in new/ is not looked up first: should it be taken
    when the batch links its files, the message goes in under a new unique name."""
    from indimail_tw.maildir.deliver import shared_syncs

    with shared_syncs():
        first = deliver(maildir, message, HEADER)
        taken = os.path.join(maildir, "new", os.path.basename(first.path))
        with open(taken, "wb") as f:
            f.write(b"someone else's message")
        deliver(maildir, message, HEADER, data=MESSAGE)
    names = listing(maildir, "new")
    assert len(names) == 3 and listing(maildir, "tmp") == []
    with open(taken, "rb") as f:
        assert f.read() == b"someone else's message"            # untouched
    others = [n for n in names if n != os.path.basename(taken)]
    for name in others:
        assert NAME.match(name)
        with open(os.path.join(maildir, "new", name), "rb") as f:
            assert f.read() == HEADER + MESSAGE                 # header and body, once
