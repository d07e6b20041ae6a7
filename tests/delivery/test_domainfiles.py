"""The cached view of a domain's directory: read once, read again after a change."""

from __future__ import annotations

import os

import pytest

from indimail_tw.delivery import domainfiles
from indimail_tw.delivery.catchall import qmail_default_line
from indimail_tw.delivery.domainfiles import MISSING, DomainFiles


@pytest.fixture
def domains(tmp_path):
    directory = tmp_path / "domains" / "example.com"
    directory.mkdir(parents=True)
    (directory / ".qmail-default").write_text(qmail_default_line("bounce-no-mailbox"))
    return str(tmp_path / "domains")


class Now:
    """A clock for DomainFiles that a test moves on (from the real time)."""

    def __init__(self) -> None:
        import time
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def later(self, seconds: float = domainfiles.RECHECK) -> None:
        self.t += seconds


def age(path: str, seconds: float = 10) -> None:
    """Set the modification time back (as an old file or directory has it)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


@pytest.fixture
def reads(monkeypatch):
    """Counts directory listings and file reads."""
    counts = {"listdir": 0, "open": 0}
    real_listdir, real_open = os.listdir, open

    def listdir(path):
        counts["listdir"] += 1
        return real_listdir(path)

    def counting_open(*a, **kw):
        counts["open"] += 1
        return real_open(*a, **kw)

    monkeypatch.setattr(domainfiles.os, "listdir", listdir)
    monkeypatch.setattr(domainfiles, "open", counting_open, raising=False)
    return counts


def test_reads_once_while_nothing_changes(domains, reads, monkeypatch):
    directory = os.path.join(domains, "example.com")
    age(os.path.join(directory, ".qmail-default"))
    age(directory)
    now = Now()
    files = DomainFiles(domains, now=now)
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(domainfiles.os, "stat", lambda p: (stats.append(p), real_stat(p))[1])
    for _ in range(3):
        for _ in range(3):
            found = files.get("example.com")
            assert found.exists and found.names == {".qmail-default"}
            assert found.catchall.kind == "bounce"
        now.later()
    assert reads == {"listdir": 1, "open": 1}
    assert len(stats) == 3 * 2          # the directory and the file, once per recheck time


def test_new_files_and_edits_in_place_are_seen_after_the_recheck_time(domains, reads):
    directory = os.path.join(domains, "example.com")
    default = os.path.join(directory, ".qmail-default")
    age(default)
    age(directory)
    now = Now()
    files = DomainFiles(domains, now=now)
    assert files.get("example.com").catchall.kind == "bounce"
    with open(os.path.join(directory, ".qmail-list"), "w") as f:
        f.write("&a@example.net\n")
    assert ".qmail-list" not in files.get("example.com").names      # not checked again yet
    now.later()
    assert ".qmail-list" in files.get("example.com").names          # the directory changed
    with open(default, "w") as f:                                   # the same name
        f.write(qmail_default_line("delete"))
    now.later()
    assert files.get("example.com").catchall.kind == "delete"
    os.unlink(default)
    now.later()
    assert files.get("example.com").catchall is None


def test_a_change_within_the_clock_tick_is_not_missed(domains):
    directory = os.path.join(domains, "example.com")
    default = os.path.join(directory, ".qmail-default")
    now = Now()
    files = DomainFiles(domains, now=now)
    assert files.get("example.com").catchall.kind == "bounce"       # read just after a change
    st = os.stat(default)
    with open(default, "w") as f:                                   # same size, same times
        f.write(qmail_default_line("deletx"))
    os.utime(default, ns=(st.st_atime_ns, st.st_mtime_ns))
    now.later(0.5 + domainfiles.RECHECK)
    assert files.get("example.com").catchall.handler == "deletx"


def test_missing_and_unsafe_names(domains, tmp_path):
    files = DomainFiles(domains)
    assert files.get("nowhere.test") is MISSING
    assert files.get("") is MISSING and files.get("../x") is MISSING
    assert files.get(".hidden") is MISSING
    (tmp_path / "domains" / "file.test").write_text("not a directory")
    assert files.get("file.test") is MISSING
    os.unlink(os.path.join(domains, "example.com", ".qmail-default"))
    found = files.get("example.com")
    assert found.exists and found.catchall is None
    os.makedirs(os.path.join(domains, "new.test"))
    assert files.get("new.test").exists                    # not remembered as missing


def test_a_missing_dot_qmail_is_remembered_until_the_home_changes(tmp_path):
    from indimail_tw.delivery.domainfiles import HomeQmail
    from indimail_tw.delivery.dotqmail import DotQmailError

    home = str(tmp_path / "alice")
    os.mkdir(home)
    age(home)
    now = Now()
    homes = HomeQmail(now=now)
    assert homes.read(home) is None
    qmail = os.path.join(home, ".qmail")
    with open(qmail, "w") as f:
        f.write("&bob@example.net\n")
    assert homes.read(home) is None                 # within the recheck time
    now.later()
    assert homes.read(home).lines[0] == "&bob@example.net"      # the home changed
    with open(qmail, "w") as f:                     # an existing .qmail: read each time
        f.write("./Maildir/\n")
    assert homes.read(home).lines[0] == "./Maildir/"
    os.unlink(qmail)
    os.chmod(home, 0o1700)
    now.later()
    with pytest.raises(DotQmailError) as e:
        homes.read(home)
    assert "sticky" in e.value.text
    os.chmod(home, 0o700)
    assert homes.read(home) is None and homes.read("") is None
    assert homes.read(str(tmp_path / "nobody")) is None    # no home: nothing to read
