"""--workers: processes sharing the listening sockets, each owning every Nth queue."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest

from indimail_tw import service as srv
from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.ops_user import add_user
from indimail_tw.admin.site import Site
from indimail_tw.tap import Options, makeService

TWISTD = os.path.join(sys.prefix, "bin", "twistd")


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:  # noqa: N802
        self.signals.append(name)


class ProcessReactor(Clock):
    """A Clock that records spawnProcess calls."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple] = []

    def spawnProcess(self, proto, executable, args, env=None, childFDs=None):  # noqa: N802
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((proto, executable, args, childFDs, process))
        return process


class FakeListener:
    def __init__(self, fds: list[int]) -> None:
        self.sockets = [type("S", (), {"fileno": lambda self, fd=fd: fd})() for fd in fds]


def supervisor(count: int = 3):
    reactor = ProcessReactor()
    listeners = [("smtp", FakeListener([10, 11, 12])), ("submission", FakeListener([20, 21, 22]))]
    sup = srv.WorkerSupervisor(reactor, ["python", "-c", "run", "indimail", "--workers",
                                         str(count)], count, listeners, env={})
    return reactor, sup


def ended(reactor, index: int) -> None:
    proto = [s[0] for s in reactor.spawned if s[0].index == index][-1]
    proto.processEnded(Failure(RuntimeError("killed")))


class SupervisorTests(unittest.TestCase):
    def test_starts_workers_with_their_sockets(self):
        reactor, sup = supervisor()
        sup.startService()
        assert [s[2][-4:] for s in reactor.spawned] == [
            ["--worker-index", "1", "--listen-fds", "3,4"],
            ["--worker-index", "2", "--listen-fds", "3,4"]]
        assert reactor.spawned[1][3] == {0: "w", 1: "r", 2: "r", 3: 12, 4: 22}

    def test_a_dead_worker_is_started_again_later_and_later(self):
        reactor, sup = supervisor(2)
        sup.startService()
        delays = []
        for _ in range(3):
            ended(reactor, 1)
            assert 1 not in sup.processes
            call = reactor.getDelayedCalls()[0]
            delays.append(call.getTime() - reactor.seconds())
            reactor.advance(delays[-1])
            assert 1 in sup.processes
        assert delays == [1.0, 2.0, 5.0]
        reactor.advance(srv.STABLE_AFTER)          # ran long enough: a fresh start
        ended(reactor, 1)
        assert reactor.getDelayedCalls()[0].getTime() - reactor.seconds() == 1.0

    def test_signals_are_passed_on(self):
        reactor, sup = supervisor()
        sup.startService()
        sup.signal("HUP")
        assert [p.signals for p in sup.processes.values()] == [["HUP"], ["HUP"]]

    def test_stop_terms_then_kills_and_waits_for_every_worker(self):
        reactor, sup = supervisor()
        sup.startService()
        ended(reactor, 2)                          # one is down, its restart pending
        d = sup.stopService()
        (kill,) = reactor.getDelayedCalls()        # the restart was called off
        assert kill.getTime() == reactor.seconds() + srv.WORKER_STOP_GRACE
        assert sup.processes[1].signals == ["TERM"]
        reactor.advance(srv.WORKER_STOP_GRACE)
        assert sup.processes[1].signals == ["TERM", "KILL"]
        assert not d.called
        ended(reactor, 1)
        assert d.called and not reactor.getDelayedCalls()
        assert len(reactor.spawned) == 2           # nothing was started again


class OptionsTests(unittest.TestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if k not in ("CONTROLDIR", "QUEUE_COUNT", "QUEUE_START",
                                                "INDIMAIL_ROOT")})

    def service(self, *args):
        options = Options()
        options.parseOptions(["--root", self.root, "--smtp", "tcp:0:interface=127.0.0.1",
                              *args])
        root = makeService(options)
        self.addCleanup(root.context.engine.close)
        return root

    def test_bad_values(self):
        for args in (["--workers", "0"], ["--workers", "2", "--worker-index", "2"],
                     ["--listen-fds", "3,x"]):
            self.assertRaises(usage.UsageError, Options().parseOptions, args)

    def test_more_workers_than_queues_is_refused(self):
        os.environ["QUEUE_COUNT"] = "2"
        error = self.assertRaises(SystemExit, self.service, "--workers", "3")
        assert "QUEUE_COUNT is 2" in str(error)

    def test_the_parent_shares_its_sockets_and_supervises(self):
        root = self.service("--workers", "3", "--io-threads", "1")
        assert [q.name for q in root.context.queue.queues] == ["queue1", "queue4",
                                                               "queue7", "queue10"]
        (listener,) = [s for s in root if isinstance(s, srv.SharedListener)]
        assert listener.count == 3 and listener.description.startswith("tcp:0")
        sup = root.workers
        assert sup is root.getServiceNamed("workers") and sup.count == 3
        command = sup.argv(2)
        assert command[command.index("indimail") + 1:] == [
            "--root", self.root, "--smtp", "tcp:0:interface=127.0.0.1", "--workers", "3",
            "--io-threads", "1", "--worker-index", "2", "--listen-fds", "3"]
        assert command[command.index("--logger") + 1] == srv.WORKER_LOGGER

    def test_a_worker_takes_every_nth_queue_and_its_inherited_socket(self):
        root = self.service("--workers", "3", "--worker-index", "1", "--listen-fds", "5")
        assert [q.name for q in root.context.queue.queues] == ["queue2", "queue5", "queue8"]
        (listener,) = [s for s in root if isinstance(s, srv.AdoptedListener)]
        assert listener.fd == 5
        assert [s for s in root if isinstance(s, srv.ParentWatch)]
        assert root.workers is None

    def test_only_tcp_listeners_are_shared(self):
        for description in ("unix:/tmp/x.sock", "ssl:0:privateKey=key.pem"):
            options = Options()
            options.parseOptions(["--root", self.root, "--smtp", description,
                                  "--workers", "2"])
            error = self.assertRaises(SystemExit, makeService, options)
            assert "cannot start the --smtp listener" in str(error), error

    def test_shared_sockets_use_one_port(self):
        from twisted.internet import reactor
        sockets = srv._reuse_port_sockets("tcp:0:interface=127.0.0.1", 3, reactor)
        try:
            ports = {s.getsockname() for s in sockets}
            assert len(ports) == 1
            assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
        finally:
            for s in sockets:
                s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealWorkersTests(unittest.TestCase):
    """A real 'twistd indimail --workers 2': both processes take mail; a dead worker
    comes back; stopping the parent stops the workers."""

    timeout = 120

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        site = Site.resolve(self.root, {})
        site.paths.ensure()
        site.control.write_value("me", "mx.example.com")
        add_domain(site, "example.com", "pm-secret")
        add_user(site, "alice@example.com", "pw")
        site.close()
        self.port = free_port()
        env = {k: v for k, v in os.environ.items()
               if k not in ("CONTROLDIR", "QUEUE_COUNT", "QUEUE_START", "INDIMAIL_ROOT")}
        env["QUEUE_COUNT"] = "4"
        self.log = os.path.join(self.root, "twistd.log")
        self.server = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", self.log, "indimail", "--root",
             self.root, "--smtp", f"tcp:{self.port}:interface=127.0.0.1", "--workers", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self.kill)
        self.wait_for(lambda: self.worker_pid() and self.log_has("queue4: 0 messages"))

    def kill(self):
        if self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        pid = self.worker_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)

    def worker_pid(self) -> int | None:
        out = subprocess.run(["pgrep", "-f", "--", f"--root {self.root} .*--worker-index 1"],
                             capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None

    def log_has(self, text: str) -> bool:
        try:
            with open(self.log) as f:
                return text in f.read()
        except FileNotFoundError:
            return False

    def wait_for(self, condition, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                with open(self.log) as f:
                    self.fail("timed out; log:\n" + f.read()[-3000:])
            time.sleep(0.1)

    def send(self, connections: int) -> None:
        for n in range(connections):
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
                smtp.sendmail("s@remote.test", ["alice@example.com"],
                              f"Subject: {n}\r\n\r\nhello\r\n")

    def delivered(self) -> int:
        home = [d for d, _, f in os.walk(os.path.join(self.root, "mail"))
                if d.endswith(os.path.join("alice", "Maildir", "new"))]
        return len(os.listdir(home[0])) if home else 0

    def owners(self) -> set[str]:
        with open(self.log) as f:
            text = f.read()
        return {q for q in ("queue1", "queue2", "queue3", "queue4") if f"{q}: new msg" in text}

    @defer.inlineCallbacks
    def test_both_processes_take_mail_and_a_worker_comes_back(self):
        yield None
        self.send(24)
        self.wait_for(lambda: self.delivered() == 24)
        # log lines reach the file up to 0.2 s after the event (buffered observer)
        both = lambda: bool(self.owners() & {"queue1", "queue3"}  # noqa: E731
                            and self.owners() & {"queue2", "queue4"})
        self.wait_for(both)
        first = self.worker_pid()
        os.kill(first, signal.SIGKILL)
        self.wait_for(lambda: self.worker_pid() not in (None, first)
                      and self.log_has("worker 1: started, pid " + str(self.worker_pid())))
        self.send(12)
        self.wait_for(lambda: self.delivered() == 36)
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(60)
        self.wait_for(lambda: self.worker_pid() is None, 30)
        assert self.log_has("worker 1: stopped")


def test_restart_delays_grow_while_a_process_dies_young():
    from indimail_tw.backoff import Backoff

    backoff = Backoff((1.0, 2.0, 5.0), stable_after=60.0)
    assert [backoff.next_delay(0.5) for _ in range(5)] == [1.0, 2.0, 5.0, 5.0, 5.0]
    assert backoff.next_delay(61.0) == 1.0          # ran long enough: from the start
    assert backoff.next_delay(1.0) == 1.0
    assert backoff.next_delay(1.0) == 2.0
