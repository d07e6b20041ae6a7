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


def test_a_forked_child_uses_its_own_pid():
    fsutil.unique_name()                   # the parent has looked its pid up
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                           # pragma: no cover -- the child
        os.close(read)
        os.write(write, fsutil.unique_name().encode())
        os._exit(0)
    os.close(write)
    name = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert NAME.match(name).group(3) == str(pid)
