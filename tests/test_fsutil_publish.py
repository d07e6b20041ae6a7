"""publish_files_on: a batch of new files written, fsynced and renamed into place,
and their directory fsynced, through io_uring driven by the reactor."""

from __future__ import annotations

import errno
import os

import pytest

from indimail_tw import fsutil, iouring
from indimail_tw.fsutil import NewFile
from tests.test_iouring import ReadersClock, pump


@pytest.fixture
def ring():
    ring = iouring.reactor_ring(ReadersClock())
    if ring is None:
        pytest.skip("no io_uring here")
    yield ring
    ring.close()


@pytest.fixture
def dirs(tmp_path):
    for sub in ("tmp", "mess", "spare"):
        (tmp_path / sub).mkdir()
    return tmp_path


def publish(ring, files, directory):
    return pump(ring, fsutil.publish_files_on(ring, files, directory))


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_new_and_reused_files_get_their_content_and_final_names(dirs, ring):
    spare = dirs / "spare" / "s1"
    spare.write_bytes(b"x" * 5000)             # longer than what replaces it: cut
    same = dirs / "spare" / "s2"
    same.write_bytes(b"y" * 3)                 # shorter: overwritten whole
    files = [NewFile(str(dirs / "tmp" / "a"), b"new file", str(dirs / "mess" / "A"),
                     create=True),
             NewFile(str(spare), b"reused", str(dirs / "mess" / "B"), cut=True),
             NewFile(str(same), b"longer than 3", str(dirs / "mess" / "C"))]
    before = _open_fds()
    assert publish(ring, files, str(dirs / "mess")) == ([None, None, None], None)
    assert _open_fds() == before                # every file closed
    assert sorted(os.listdir(dirs / "mess")) == ["A", "B", "C"]
    assert [(dirs / "mess" / n).read_bytes() for n in "ABC"] == [
        b"new file", b"reused", b"longer than 3"]
    assert os.listdir(dirs / "tmp") == os.listdir(dirs / "spare") == []


def test_without_ftruncate_a_reused_file_is_truncated_when_opened(dirs, ring, monkeypatch):
    monkeypatch.setattr(ring, "ftruncate", False)
    spare = dirs / "spare" / "s1"
    spare.write_bytes(b"x" * 5000)
    files = [NewFile(str(spare), b"short", str(dirs / "mess" / "A"), cut=True)]
    assert publish(ring, files, str(dirs / "mess")) == ([None], None)
    assert (dirs / "mess" / "A").read_bytes() == b"short"


def test_each_file_fails_alone_and_stays_where_it_was(dirs, ring):
    (dirs / "mess" / "taken").write_bytes(b"another message")
    files = [NewFile(str(dirs / "tmp" / "a"), b"a", str(dirs / "mess" / "A"), create=True),
             NewFile(str(dirs / "spare" / "gone"), b"b", str(dirs / "mess" / "B")),
             NewFile(str(dirs / "tmp" / "c"), b"c", str(dirs / "mess" / "taken"), create=True)]
    before = _open_fds()
    errors, dir_error = publish(ring, files, str(dirs / "mess"))
    assert dir_error is None and _open_fds() == before
    assert errors[0] is None
    assert errors[1].errno == errno.ENOENT
    assert errors[2].errno == errno.EEXIST      # never over an existing file
    assert (dirs / "mess" / "taken").read_bytes() == b"another message"
    assert (dirs / "tmp" / "c").exists()         # left for the caller
    assert sorted(os.listdir(dirs / "mess")) == ["A", "taken"]


def test_a_missing_directory_is_the_batchs_error(dirs, ring):
    files = [NewFile(str(dirs / "tmp" / "a"), b"a", str(dirs / "mess" / "A"), create=True)]
    errors, dir_error = publish(ring, files, str(dirs / "nowhere"))
    assert errors == [None] and dir_error.errno == errno.ENOENT


def test_a_ring_failing_midway_fails_and_unpublish_takes_back_what_was_renamed(dirs, ring):
    """The ring fails after the kernel has run the batch: no file counts as
    published, and those renamed are taken out of their final names."""
    real_submit, calls = ring.submit, []

    def submit(ops):
        calls.append(ops)
        if len(calls) < 2:
            return real_submit(ops)
        return real_submit(ops).addCallback(
            lambda _: (_ for _ in ()).throw(iouring.RingBroken("enter failed")))

    ring.submit = submit
    files = [NewFile(str(dirs / "tmp" / n), n.encode(), str(dirs / "mess" / n.upper()),
                     create=True) for n in "ab"]
    with pytest.raises(iouring.RingBroken) as e:
        publish(ring, files, str(dirs / "mess"))
    assert sorted(os.listdir(dirs / "mess")) == ["A", "B"]
    errors = fsutil.unpublish(files, e.value)
    assert [error.errno for error in errors] == [errno.EIO, errno.EIO]
    assert os.listdir(dirs / "mess") == []


def test_not_through_io_uring_when_it_cannot_or_must_not(dirs, ring, monkeypatch):
    one = [NewFile(str(dirs / "tmp" / "a"), b"a", str(dirs / "mess" / "A"), create=True)]
    assert fsutil.publish_files_on(ring, [], str(dirs / "mess")) is None
    too_many = one * (fsutil.PUBLISH_MAX + 1)
    assert fsutil.publish_files_on(ring, too_many, str(dirs / "mess")) is None
    monkeypatch.setattr(fsutil, "fsync_file", lambda fd: os.fsync(fd))  # fault injection
    assert fsutil.publish_files_on(ring, one, str(dirs / "mess")) is None  # sees each fsync
    assert os.listdir(dirs / "tmp") == []


# -- publish_written: files already written and open (a Maildir delivery batch) ------------

def _written(dirs, name: str, final_dir: str = "new") -> fsutil.Written:
    path = str(dirs / "tmp" / name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, name.encode())
    return fsutil.Written(fd, path, str(dirs / final_dir / name.upper()), str(dirs / final_dir))


@pytest.fixture
def boxes(dirs):
    if fsutil._uring() is None:
        pytest.skip("no io_uring here")
    (dirs / "new").mkdir()
    (dirs / "new2").mkdir()
    return dirs


def test_written_files_are_renamed_into_place_and_closed(boxes):
    before = _open_fds()
    files = [_written(boxes, "a"), _written(boxes, "b", "new2"), _written(boxes, "c")]
    assert _open_fds() != before
    assert fsutil.publish_written(files) == ([None, None, None], None)
    assert _open_fds() == before
    assert sorted(os.listdir(boxes / "new")) == ["A", "C"]
    assert os.listdir(boxes / "new2") == ["B"] and os.listdir(boxes / "tmp") == []
    assert (boxes / "new2" / "B").read_bytes() == b"b"


def test_a_written_file_whose_name_is_taken_stays_in_tmp(boxes):
    (boxes / "new" / "A").write_bytes(b"someone else's")
    before = _open_fds()
    files = [_written(boxes, "a"), _written(boxes, "b")]
    errors, dir_error = fsutil.publish_written(files)
    assert dir_error is None and errors[0].errno == errno.EEXIST and errors[1] is None
    assert _open_fds() == before
    assert (boxes / "new" / "A").read_bytes() == b"someone else's"
    assert os.listdir(boxes / "tmp") == ["a"]


def test_a_directory_that_cannot_be_fsynced_is_reported(boxes):
    files = [_written(boxes, "a"), _written(boxes, "b")]
    files[1] = files[1]._replace(directory=str(boxes / "gone"))
    errors, dir_error = fsutil.publish_written(files)
    assert errors == [None, None] and dir_error.errno == errno.ENOENT


def test_written_files_without_io_uring_are_left_to_the_caller(boxes, monkeypatch):
    files = [_written(boxes, "a")]
    monkeypatch.setattr(fsutil, "_uring_state", None)
    assert fsutil.publish_written(files) is None
    os.fstat(files[0].fd)                            # still open
    os.close(files[0].fd)


def test_a_ring_failing_under_written_files_publishes_none_of_them(boxes, monkeypatch):
    rings = fsutil._uring()
    ring = rings.take()
    real_run, calls, closed = ring.run, [], []

    def run(ops):
        calls.append(ops)
        results = real_run(ops)
        if len(calls) == 3:                          # after the closes
            raise iouring.RingBroken("enter failed")
        return results

    monkeypatch.setattr(ring, "run", run)
    monkeypatch.setattr(ring, "close", lambda: closed.append(ring))
    monkeypatch.setattr(rings, "_free", [ring])
    before = _open_fds()
    files = [_written(boxes, "a"), _written(boxes, "b")]
    errors, dir_error = fsutil.publish_written(files)
    assert [e.errno for e in errors] == [errno.EIO, errno.EIO] and dir_error is None
    assert os.listdir(boxes / "new") == [] and _open_fds() == before
    assert closed == [ring] and ring not in rings._free
