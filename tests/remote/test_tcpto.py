"""The tcpto table: IndiMail's counting rules, the shared file, qmail-tcpto / qmail-tcpok."""

from __future__ import annotations

import os

from twisted.internet import defer, task

from indimail_tw.remote import tcpto
from indimail_tw.remote.tcpto import Entry, TcpTo, after_failure, is_dead


def sync(f, *args):
    return defer.maybeDeferred(f, *args)


def test_failures_within_the_tolerance_count_once():
    e = after_failure(None, 1000, 120)
    assert e == Entry(1, 1000)
    assert after_failure(e, 1100, 120) is None              # too soon: not counted
    e2 = after_failure(e, 1120, 120)
    assert e2 == Entry(2, 1120)


def test_dead_after_two_counted_failures_for_the_penalty():
    assert not is_dead(Entry(1, 1000), 1001, 3600)
    assert is_dead(Entry(2, 1000), 1001, 3600)
    assert not is_dead(Entry(2, 1000), 4600, 3600)
    assert not is_dead(None, 0, 3600)


def test_errors_are_capped():
    e = Entry(10, 0)
    assert after_failure(e, 500, 120).errors == 10


def test_server_view_persists_and_clears(tmp_path):
    clock = task.Clock()
    clock.advance(10_000)
    path = str(tmp_path / "tcpto")
    t = TcpTo(path, clock, sync)
    t.failed("192.0.2.1", 120)
    assert not t.dead("192.0.2.1")
    clock.advance(121)
    t.failed("192.0.2.1", 120)
    assert t.dead("192.0.2.1") and not t.dead("192.0.2.1", penalty=0)
    assert tcpto.read_table(path) == {"192.0.2.1": Entry(2, 10_121)}
    t.succeeded("192.0.2.1")
    assert not t.dead("192.0.2.1") and tcpto.read_table(path) == {}


def test_tcpok_clears_a_running_servers_table(tmp_path, capsys):
    clock = task.Clock()
    clock.advance(10_000)
    path = str(tmp_path / "tcpto")
    t = TcpTo(path, clock, sync)
    for _ in range(2):
        t.failed("192.0.2.1", 0)
        clock.advance(1)
    assert t.dead("192.0.2.1")
    assert tcpto.main_tcpto(["--queue-base", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("192.0.2.1 timed out ") and "# recent timeouts: 2" in out
    assert tcpto.main_tcpok(["--queue-base", str(tmp_path)]) == 0
    t.refresh()
    assert not t.dead("192.0.2.1")
    assert tcpto.main_tcpto(["--queue-base", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


def test_two_processes_share_the_file(tmp_path):
    clock = task.Clock()
    path = str(tmp_path / "tcpto")
    one, two = TcpTo(path, clock, sync), TcpTo(path, clock, sync)
    one.failed("192.0.2.1", 0)
    two.failed("192.0.2.2", 0)
    one.refresh()
    assert set(one.table) == {"192.0.2.1", "192.0.2.2"}


def test_cli_finds_the_queue_base_from_the_root(tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    os.makedirs(root / "control")
    monkeypatch.delenv("QUEUE_BASE", raising=False)
    for name in ("CONTROLDIR", "SYSCONFDIR", "QUEUEDIR"):
        monkeypatch.delenv(name, raising=False)
    tcpto.update_file(str(root / "queue" / "tcpto"), {"192.0.2.4": Entry(3, 1)})
    assert tcpto.main_tcpto(["--root", str(root)]) == 0
    assert "192.0.2.4" in capsys.readouterr().out
    (root / "control" / "queue_base").write_text(str(tmp_path / "elsewhere") + "\n")
    assert tcpto.main_tcpto(["--root", str(root)]) == 0
    assert capsys.readouterr().out == ""


def test_cli_usage(capsys):
    assert tcpto.main_tcpto(["--bogus"]) == 100
    assert tcpto.main_tcpok(["extra"]) == 100
    assert tcpto.main_tcpto(["--help"]) == 100
