"""Maildir unique names: time.MusecPpidQcounter.host, unique across forks."""

from __future__ import annotations

import os
import re

from indimail_tw import fsutil

NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.(.+)$")


def test_names_carry_pid_and_a_growing_counter():
    a, b = fsutil.unique_name(), fsutil.unique_name()
    ma, mb = NAME.match(a), NAME.match(b)
    assert ma and mb and a != b
    assert int(ma.group(3)) == int(mb.group(3)) == os.getpid()
    assert int(mb.group(4)) == int(ma.group(4)) + 1
    assert "/" not in ma.group(5) and ":" not in ma.group(5)


def _in_forked_child(make_name) -> tuple[int, str]:
    """(the child's pid, the name ``make_name()`` gave in a forked child)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                           # pragma: no cover -- the child
        os.close(read)
        os.write(write, make_name().encode())
        os._exit(0)
    os.close(write)
    name = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(pid, 0)
    return pid, name


def test_a_forked_child_uses_its_own_pid():
    fsutil.unique_name()                   # the parent has looked its pid up
    pid, name = _in_forked_child(fsutil.unique_name)
    assert NAME.match(name).group(3) == str(pid)


def test_rename_noreplace_never_replaces(tmp_path):
    import pytest

    from indimail_tw import fsutil

    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"a")
    dst.write_bytes(b"b")
    with pytest.raises(FileExistsError):
        fsutil.rename_noreplace(str(src), str(dst))
    assert src.read_bytes() == b"a" and dst.read_bytes() == b"b"
    dst.unlink()
    fsutil.rename_noreplace(str(src), str(dst))
    assert not src.exists() and dst.read_bytes() == b"a"


def test_rename_noreplace_without_renameat2_links_and_unlinks(tmp_path, monkeypatch):
    import pytest

    from indimail_tw import fsutil

    monkeypatch.setattr(fsutil, "_renameat2", None)
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"a")
    dst.write_bytes(b"b")
    with pytest.raises(FileExistsError):
        fsutil.rename_noreplace(str(src), str(dst))
    dst.unlink()
    fsutil.rename_noreplace(str(src), str(dst))
    assert not src.exists() and dst.read_bytes() == b"a"


def test_queue_tmp_names_carry_the_pid_of_the_process_that_made_them():
    """The pid is looked up once per process, and again in a forked child."""
    from indimail_tw.queue.store import new_tmp_name

    a, b = new_tmp_name(), new_tmp_name()
    assert a != b and a.split(".")[0] == b.split(".")[0] == str(os.getpid())
    pid, name = _in_forked_child(new_tmp_name)
    assert name.split(".")[0] == str(pid)
