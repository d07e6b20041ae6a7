"""qmail-flush: SIGALRM to a real child process, and every way of not sending it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from indimail_tw.queuetools import flush
from tests.queuetools.helpers import call, one_line, run

SERVER = textwrap.dedent("""
    import os, signal, sys
    if len(sys.argv) > 1:                       # own a queue, as the server does
        from indimail_tw.queue.store import QueueStore
        store = QueueStore(sys.argv[1])
        store.open()
    def alarm(signum, frame):
        print("flushed", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGALRM, alarm)
    print("ready", flush=True)
    while True:
        signal.pause()
""")
NO_HANDLER = "import sys; print('ready', flush=True); sys.stdin.read()"


@pytest.fixture
def child():
    started = []

    def start(code: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline() == "ready\n"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout):
            pipe.close()


def flushed(proc: subprocess.Popen) -> bool:
    out, _ = proc.communicate(timeout=30)
    return out == "flushed\n" and proc.returncode == 0


def test_pid_sends_sigalrm(child, capsys):
    proc = child(SERVER)
    r = call(flush.main, capsys, "--pid", str(proc.pid))
    assert r.status == 0 and r.out == f"sent SIGALRM to process {proc.pid}\n"
    assert flushed(proc)


def test_pidfile_as_twistd_writes_it(child, tmp_path):
    proc = child(SERVER)
    pidfile = tmp_path / "twistd.pid"
    pidfile.write_text(str(proc.pid))
    r = run("flush", "--pidfile", str(pidfile))     # as a console script would
    assert r.status == 0, r.err
    assert flushed(proc)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux /proc/locks")
def test_every_queue_owner_is_found(child, root, capsys):
    procs = [child(SERVER, os.path.join(root, "queue", f"queue{n}")) for n in (1, 2)]
    os.makedirs(os.path.join(root, "queue", "queue3"))            # nobody owns it
    r = call(flush.main, capsys, "--root", root)
    assert r.status == 0 and r.err == ""
    assert sorted(r.out.splitlines()) == sorted(f"sent SIGALRM to process {p.pid}"
                                                for p in procs)
    assert all(flushed(proc) for proc in procs)


def test_no_server_holds_the_queues(root, capsys):
    os.makedirs(os.path.join(root, "queue", "queue1"))
    r = call(flush.main, capsys, "--root", root)
    assert r.status == 1 and "no running server holds the queues" in one_line(r.err)


def test_a_process_without_a_handler_is_not_killed(child, capsys):
    proc = child(NO_HANDLER)
    r = call(flush.main, capsys, "--pid", str(proc.pid))
    assert r.status == 1
    assert "does not handle SIGALRM: it would be killed" in one_line(r.err)
    assert proc.poll() is None                         # still alive
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0                  # it ended on its own: no signal


def test_force_sends_anyway(child, capsys):
    proc = child(NO_HANDLER)
    assert call(flush.main, capsys, "--pid", str(proc.pid), "--force").status == 0
    assert proc.wait(timeout=30) == -signal.SIGALRM    # killed by it


def gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_missing_process_and_stale_pid_file(tmp_path, capsys):
    pid = gone_pid()
    r = call(flush.main, capsys, "--pid", str(pid))
    assert r.status == 1 and one_line(r.err) == f"qmail-flush: no process {pid}"
    pidfile = tmp_path / "twistd.pid"
    pidfile.write_text(f"{pid}\n")
    r = call(flush.main, capsys, "--pidfile", str(pidfile))
    assert r.status == 1
    assert one_line(r.err) == f"qmail-flush: no process {pid} (stale pid file {pidfile}?)"


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["--pid", "abc"], 100, "--pid: not a process id: 'abc'"),
    (["--pid", "0"], 100, "not a process id"),
    (["--pid", "1", "--pidfile", "x"], 100, "--pid and --pidfile exclude each other"),
    (["--pidfile", "/nonexistent/twistd.pid"], 1, "no pid file (is the server running?)"),
    (["--bogus"], 100, "option --bogus not recognized"),
])
def test_bad_input(capsys, argv, status, message):
    r = call(flush.main, capsys, *argv)
    assert r.status == status and message in one_line(r.err)


def test_garbage_pid_file(tmp_path, capsys):
    pidfile = tmp_path / "twistd.pid"
    pidfile.write_bytes(b"\xff\xfe garbage")
    r = call(flush.main, capsys, "--pidfile", str(pidfile))
    assert r.status == 100 and "not a process id" in one_line(r.err)
