"""Local delivery in a helper process: the wire, the server's side (LocalSpawn, with a
fake process) and the helper's side (Channel) in memory, then the real helper."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time

from twisted.internet import defer, error, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, eventAsJSON, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from indimail_tw.delivery import lhelper, wire
from indimail_tw.delivery.lspawn import (
    LOG_FD, LOST, RESTART_DELAYS, STOP_GRACE, LocalSpawn, helper_command, helper_environ,
)
from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.errors import MailError
from indimail_tw.queue.envelope import Envelope, Recipient
from indimail_tw.queue.message import QueuedMessage
from tests.delivery.support import FakeQueue


def envelope(**kw) -> Envelope:
    return Envelope("s\udcffnder@remote.test", [Recipient("a@example.com", ("SUCCESS",),
                                                          "rfc822;a@example.com")], **kw)


class WireTests(unittest.TestCase):
    def test_envelope_round_trip_keeps_every_field(self):
        original = envelope(ret="HDRS", envid="x y", body="8BITMIME", smtputf8=True,
                            protocol="ESMTPSA", remote_ip="127.0.0.1", helo="h",
                            auth_user="u@example.com", received_at=12.5,
                            extra={"qqeh": "X-A: 1\n"})
        text = wire.line({"e": wire.envelope_out(original)})
        self.assertTrue(text.endswith(b"\n"))
        self.assertEqual(text.count(b"\n"), 1)
        back = wire.envelope_in(wire.decode(text.decode())["e"])
        self.assertEqual(back, original)

    def test_envelope_without_recipients_and_defaults_left_out(self):
        out = wire.envelope_out(envelope(), recipients=False)
        self.assertEqual(out, {"sender": "s\udcffnder@remote.test"})
        self.assertEqual(wire.envelope_in(out).recipients, [])

    def test_result_round_trip(self):
        result = DeliveryResult.permanent("no\nway", "5.1.1")
        record = wire.decode(wire.result_out(7, result).decode())
        self.assertEqual(record["n"], 7)
        self.assertEqual(wire.result_in(record), result)


# -- the server's side, with a fake helper process ------------------------------------------


class FakeProcess:
    def __init__(self, proto, argv, env, child_fds, pid):
        self.proto, self.argv, self.env, self.child_fds, self.pid = (
            proto, argv, env, child_fds, pid)
        self.written = b""
        self.stdin_closed = False
        self.signals: list[str] = []
        proto.makeConnection(self)

    def write(self, data):
        self.written += data

    def closeStdin(self):  # noqa: N802
        self.stdin_closed = True

    def signalProcess(self, name):  # noqa: N802
        self.signals.append(name)

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.written.splitlines()]

    def answer(self, record: dict) -> None:
        self.proto.childDataReceived(1, wire.line(record))

    def exit(self, code: int = 0) -> None:
        reason = error.ProcessDone(None) if code == 0 else error.ProcessTerminated(code)
        self.proto.processEnded(Failure(reason))


class FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, proto, executable, args, env=None, childFDs=None):  # noqa: N802
        process = FakeProcess(proto, args, env, childFDs, 1000 + len(self.processes))
        self.processes.append(process)
        return process

    def getThreadPool(self):  # noqa: N802 -- enqueue_copy opens the file "in a thread"
        return _NowPool()


class _NowPool:
    def callInThreadWithCallback(self, on_result, f, *args, **kw):  # noqa: N802
        try:
            result = f(*args, **kw)
        except BaseException:  # noqa: BLE001
            on_result(False, Failure())
        else:
            on_result(True, result)


class _NowReactor(FakeReactor):
    def callFromThread(self, f, *args, **kw):  # noqa: N802
        f(*args, **kw)


def queued(path: str = "/nonexistent/mess/1", size: int = 5) -> QueuedMessage:
    return QueuedMessage("m1", envelope(), path, size, "queue1")


class LocalSpawnTests(unittest.TestCase):
    def setUp(self):
        self.reactor = _NowReactor()
        self.queue = FakeQueue()
        self.spawn = LocalSpawn(self.reactor, ["python", "-m", "helper"], {"A": "1"},
                                lambda: self.queue)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def started(self) -> FakeProcess:
        self.spawn.start()
        return self.reactor.processes[-1]

    def test_helper_command(self):
        argv = helper_command("/r", "/r/control")
        self.assertEqual(argv, [sys.executable, "-m", "indimail_tw.delivery.lhelper",
                                "--root", "/r", "--control-dir", "/r/control"])
        self.assertEqual(helper_command("/r", "/c", nice=7)[-2:], ["--nice", "7"])
        self.assertEqual(helper_command("/r", "/c", parent=42)[-2:], ["--parent", "42"])

    def test_delivery_is_a_request_and_its_answer(self):
        process = self.started()
        self.assertEqual(process.argv, ["python", "-m", "helper"])
        self.assertEqual(process.env, {"A": "1"})
        self.assertEqual(process.child_fds, {0: "w", 1: "r", 2: "r", LOG_FD: "r"})
        results = []
        self.spawn.deliver(queued(), Recipient("a@example.com", ("NEVER",))).addCallback(
            results.append)
        (request,) = process.requests()
        self.assertEqual(request["m"], "m1")
        self.assertEqual(request["p"], "/nonexistent/mess/1")
        self.assertEqual((request["z"], request["q"]), (5, "queue1"))
        self.assertEqual(request["r"], ["a@example.com", ["NEVER"], None])
        self.assertEqual(wire.envelope_in(request["e"]).sender, "s\udcffnder@remote.test")
        self.assertEqual(results, [])
        process.answer({"n": request["n"], "s": "ok", "t": "delivered", "x": "2.0.0"})
        self.assertEqual(results, [DeliveryResult.ok("delivered")])

    def test_answers_in_any_order_and_in_pieces(self):
        process = self.started()
        results = {}
        for name in ("a", "b"):
            d = self.spawn.deliver(queued(), Recipient(f"{name}@example.com"))
            d.addCallback(lambda r, name=name: results.__setitem__(name, r))
        first, second = process.requests()
        data = (wire.result_out(second["n"], DeliveryResult.temporary("later", "4.2.2"))
                + wire.result_out(first["n"], DeliveryResult.ok()))
        for i in range(len(data)):                      # one byte at a time
            process.proto.childDataReceived(1, data[i:i + 1])
        self.assertEqual(results, {"a": DeliveryResult.ok(),
                                   "b": DeliveryResult.temporary("later", "4.2.2")})

    def test_requests_made_before_the_helper_runs_are_sent_when_it_does(self):
        results = []
        self.spawn.deliver(queued(), Recipient("a@example.com")).addCallback(results.append)
        self.assertEqual(self.reactor.processes, [])
        process = self.started()
        (request,) = process.requests()
        process.answer({"n": request["n"], "s": "ok", "t": "done", "x": "2.0.0"})
        self.assertEqual(results, [DeliveryResult.ok("done")])

    def test_a_helper_that_dies_fails_its_deliveries_temporarily_and_starts_again(self):
        process = self.started()
        results = []
        self.spawn.deliver(queued(), Recipient("a@example.com")).addCallback(results.append)
        process.exit(1)
        self.assertEqual(results, [LOST])
        self.assertTrue(LOST.is_temporary)
        self.assertEqual(len(self.reactor.processes), 1)
        # meanwhile a request waits for the next helper
        self.spawn.deliver(queued(), Recipient("b@example.com")).addCallback(results.append)
        self.reactor.advance(RESTART_DELAYS[0])
        (process2,) = self.reactor.processes[1:]
        (request,) = process2.requests()
        self.assertEqual(request["r"][0], "b@example.com")
        process2.answer({"n": request["n"], "s": "ok", "t": "done", "x": "2.0.0"})
        self.assertEqual(results[1], DeliveryResult.ok("done"))
        errors = [e for e in self.events if e.get("log_level").name == "error"]
        self.assertTrue(any("helper exited" in e["log_format"] for e in errors))

    def test_restart_delay_grows_while_the_helper_keeps_dying(self):
        self.started().exit(1)
        for delay in RESTART_DELAYS[:3]:
            self.reactor.advance(delay - 0.01)
            count = len(self.reactor.processes)
            self.reactor.advance(0.01)
            self.assertEqual(len(self.reactor.processes), count + 1)
            self.reactor.processes[-1].exit(1)

    def test_bad_answers_are_logged_and_a_bad_status_is_temporary(self):
        process = self.started()
        results = []
        self.spawn.deliver(queued(), Recipient("a@example.com")).addCallback(results.append)
        (request,) = process.requests()
        process.proto.childDataReceived(1, b"not json\n[1]\n{\"n\": 999}\n{}\n")
        self.assertEqual(results, [])
        process.answer({"n": request["n"], "s": "maybe", "t": "?", "x": ""})
        self.assertTrue(results[0].is_temporary)
        bad = [e for e in self.events if "bad answer" in (e.get("log_format") or "")]
        self.assertEqual(len(bad), 5)

    def test_an_endless_answer_kills_the_helper(self):
        process = self.started()
        self.patch(type(process.proto), "MAX_LINE", 10)
        process.proto.childDataReceived(1, b"x" * 11)
        self.assertEqual(process.signals, ["KILL"])

    def test_forward_is_queued_by_the_server(self):
        process = self.started()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"Subject: hi\n\nbody\nENVELOPE RECORD")
        forward = Envelope("s@remote.test", [Recipient("x@remote.test")], protocol="LOCAL")
        process.answer({"f": 1, "e": wire.envelope_out(forward), "dt": "Delivered-To: a\n",
                        "p": path, "z": 18})
        (queued_envelope, data) = self.queue.messages[0]
        self.assertEqual(queued_envelope, forward)
        self.assertEqual(data, b"Delivered-To: a\nSubject: hi\n\nbody\n")
        self.assertEqual(process.requests(), [{"fr": 1, "id": "q1"}])

    def test_forward_failures_are_answered(self):
        process = self.started()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"x")
        record = {"f": 1, "e": wire.envelope_out(envelope()), "dt": "", "p": path, "z": 1}
        self.queue.fail = MailError(552, "5.3.4", "too big")
        process.answer(record)
        self.queue.fail = MailError(451, "4.3.0", "disk full")
        process.answer({**record, "f": 2})
        process.answer({**record, "f": 3, "p": "/nonexistent/file"})
        one, two, three = process.requests()
        self.assertEqual(one, {"fr": 1, "t": "too big", "x": "5.3.4", "perm": True})
        self.assertEqual(two, {"fr": 2, "t": "disk full", "x": "4.3.0", "perm": False})
        self.assertEqual(three["perm"], False)
        self.assertIn("No such file", three["t"])

    def test_log_events_and_stderr_of_the_helper_are_logged(self):
        process = self.started()
        event = {"log_format": "from the helper {x}", "x": 1, "log_namespace": "h",
                 "log_level": LogLevel.warn, "log_time": 1.0}
        text = b"\x1e" + eventAsJSON(event).encode() + b"\n"
        process.proto.childDataReceived(LOG_FD, text[:7])
        process.proto.childDataReceived(LOG_FD, text[7:-1])
        self.assertNotIn("from the helper {x}", [e.get("log_format") for e in self.events])
        process.proto.childDataReceived(LOG_FD, b"\n\x1enot an event\n")
        process.proto.childDataReceived(2, b"Traceback: boom\n")
        formats = [e.get("log_format") for e in self.events]
        self.assertIn("from the helper {x}", formats)
        self.assertIn("not an event", [e.get("text") for e in self.events])
        stderr = [e for e in self.events if e.get("line") == "Traceback: boom"]
        self.assertEqual(len(stderr), 1)

    def test_reload_passes_sighup_on(self):
        process = self.started()
        self.spawn.reload()
        self.assertEqual(process.signals, ["HUP"])

    def test_stop_closes_stdin_and_waits_for_the_helper(self):
        process = self.started()
        stopped = []
        self.spawn.stop().addCallback(stopped.append)
        self.assertTrue(process.stdin_closed)
        self.assertEqual(stopped, [])
        process.exit(0)
        self.assertEqual(stopped, [None])
        self.reactor.advance(STOP_GRACE * 2)
        self.assertEqual(len(self.reactor.processes), 1)    # not started again

    def test_stop_kills_a_helper_that_does_not_end(self):
        process = self.started()
        self.spawn.stop()
        self.reactor.advance(STOP_GRACE)
        self.assertEqual(process.signals, ["KILL"])

    def test_stop_answers_requests_that_were_never_sent(self):
        results = []
        self.spawn.deliver(queued(), Recipient("a@example.com")).addCallback(results.append)
        self.assertIsNone(self.successResultOf(self.spawn.stop()))
        self.assertEqual(results, [LOST])
        self.spawn.start()
        self.assertEqual(self.reactor.processes[-1].written, b"")

    def test_the_helper_imports_the_servers_code(self):
        import indimail_tw

        here = os.path.dirname(os.path.dirname(os.path.abspath(indimail_tw.__file__)))
        env = helper_environ({"PYTHONPATH": f"/x{os.pathsep}{here}", "A": "1"})
        self.assertEqual(env, {"PYTHONPATH": f"{here}{os.pathsep}/x", "A": "1"})
        self.assertEqual(helper_environ({})["PYTHONPATH"], here)

    def test_stop_cancels_a_pending_restart(self):
        self.started().exit(1)
        self.assertIsNone(self.successResultOf(self.spawn.stop()))
        self.reactor.advance(max(RESTART_DELAYS))
        self.assertEqual(len(self.reactor.processes), 1)


# -- the helper's side ------------------------------------------------------------------------


class FakeAgent:
    def __init__(self):
        self.calls: list[tuple] = []

    def deliver(self, message, recipient):
        d = defer.Deferred()
        self.calls.append((message, recipient, d))
        return d


class StoppingReactor:
    running = True

    def __init__(self):
        self.stopped = 0

    def stop(self):
        self.stopped += 1


class ChannelTests(unittest.TestCase):
    def setUp(self):
        self.reactor = StoppingReactor()
        self.channel = lhelper.Channel(self.reactor)
        self.channel.agent = self.agent = FakeAgent()
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def request(self, n: int, address: str = "a@example.com") -> bytes:
        return wire.line({"n": n, "m": "m1", "p": "/q/mess/m1", "z": 9, "q": "queue2",
                          "e": wire.envelope_out(envelope(ret="FULL"), recipients=False),
                          "r": [address, ["FAILURE"], "rfc822;x@y"]})

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.transport.value().splitlines()]

    def test_each_request_is_one_delivery_and_one_answer(self):
        self.channel.dataReceived(self.request(1) + self.request(2, "b@example.com")[:10])
        (message, recipient, d), = self.agent.calls
        self.assertEqual((message.id, message.path, message.size, message.queue),
                         ("m1", "/q/mess/m1", 9, "queue2"))
        self.assertEqual(message.envelope.ret, "FULL")
        self.assertEqual(recipient, Recipient("a@example.com", ("FAILURE",), "rfc822;x@y"))
        self.assertEqual(message.envelope.recipients, [recipient])
        d.callback(DeliveryResult.permanent("no mailbox", "5.1.1"))
        self.assertEqual(self.lines(), [{"n": 1, "s": "permanent", "t": "no mailbox",
                                         "x": "5.1.1"}])
        self.channel.dataReceived(self.request(2, "b@example.com")[10:])
        self.assertEqual(self.agent.calls[1][1].address, "b@example.com")

    def test_forward_goes_to_the_server_and_waits_for_its_answer(self):
        got = []
        d = self.channel.enqueue_copy(envelope(), b"Delivered-To: a\n", "/q/mess/m1", 9)
        d.addCallbacks(got.append, got.append)
        (record,) = self.lines()
        self.assertEqual(record["dt"], "Delivered-To: a\n")
        self.assertEqual((record["p"], record["z"]), ("/q/mess/m1", 9))
        self.assertEqual(wire.envelope_in(record["e"]), envelope())
        self.channel.dataReceived(wire.line({"fr": record["f"], "id": "1234"}))
        self.assertEqual(got, ["1234"])
        d = self.channel.enqueue_copy(envelope(), b"", "/q/mess/m1", 9)
        d.addErrback(lambda f: got.append(f.value))
        self.channel.dataReceived(wire.line({"fr": 2, "t": "too big", "x": "5.3.4",
                                             "perm": True}))
        self.assertIsInstance(got[1], MailError)
        self.assertEqual((got[1].text, got[1].enhanced, got[1].temporary),
                         ("too big", "5.3.4", False))

    def test_end_of_stdin_stops_once_deliveries_are_answered(self):
        self.channel.dataReceived(self.request(1))
        self.channel.readConnectionLost()
        self.assertEqual(self.reactor.stopped, 0)
        self.agent.calls[0][2].callback(DeliveryResult.ok())
        self.assertEqual(self.reactor.stopped, 1)
        self.assertEqual(len(self.lines()), 1)            # the answer still went out

    def test_requests_read_after_the_server_died_are_dropped(self):
        self.channel.parent = os.getppid() + 1          # not our parent: it died
        self.channel.dataReceived(self.request(1))
        self.assertEqual(self.agent.calls, [])
        self.channel.parent = os.getppid()
        self.channel.dataReceived(self.request(2))
        self.assertEqual(len(self.agent.calls), 1)

    def test_lost_connection_fails_waiting_forwards(self):
        got = []
        self.channel.enqueue_copy(envelope(), b"", "/p", 1).addErrback(got.append)
        self.channel.connectionLost(None)
        self.assertTrue(got[0].value.temporary)
        self.assertEqual(self.reactor.stopped, 1)


# -- the real helper process ------------------------------------------------------------------


class RealHelperTests(unittest.TestCase):
    """LocalSpawn with the real helper on a real installation (SQLite)."""

    timeout = 60

    def setUp(self):
        from indimail_tw.admin.ops_domain import add_domain
        from indimail_tw.admin.ops_user import add_user
        from indimail_tw.admin.site import Site
        from indimail_tw.storage.store import REPOS

        self.root = tempfile.mkdtemp(prefix="itw-lspawn-")
        self.addCleanup(shutil.rmtree, self.root, True)
        site = Site.resolve(self.root, {})
        site.paths.ensure()
        site.control.write_value("me", "mx.example.com")
        add_domain(site, "example.com", "pm-secret")
        add_user(site, "alice@example.com", "pw")
        site.write(REPOS.aliases.add, "fwd", "example.com", "&x@remote.test")
        self.maildir = site.read(REPOS.users.get, "alice", "example.com").maildir
        self.paths = site.paths
        site.close()
        self.queue = FakeQueue()
        self.spawn = LocalSpawn(reactor, helper_command(self.paths.root, self.paths.control),
                                helper_environ(os.environ), lambda: self.queue)
        self.addCleanup(self.spawn.stop)

    def message(self, body: bytes = b"Subject: hi\n\nhello\n") -> QueuedMessage:
        path = os.path.join(self.root, "message")
        with open(path, "wb") as f:
            f.write(body + b"TRAILING ENVELOPE BYTES")
        return QueuedMessage("m1", Envelope("s@remote.test", []), path, len(body), "queue1")

    def new(self) -> list[str]:
        return os.listdir(os.path.join(self.maildir, "new"))

    @defer.inlineCallbacks
    def test_delivers_forwards_and_survives_its_helper_being_killed(self):
        self.spawn.start()
        result = yield self.spawn.deliver(self.message(), Recipient("alice@example.com"))
        self.assertTrue(result.is_ok, result)
        (name,) = self.new()
        with open(os.path.join(self.maildir, "new", name), "rb") as f:
            self.assertTrue(f.read().endswith(b"\nSubject: hi\n\nhello\n"))

        result = yield self.spawn.deliver(self.message(), Recipient("nobody@example.com"))
        self.assertTrue(result.is_permanent, result)
        self.assertIn("5.1.1", result.enhanced)

        result = yield self.spawn.deliver(self.message(), Recipient("fwd@example.com"))
        self.assertTrue(result.is_ok, result)
        (forward, data), = self.queue.messages
        self.assertEqual(forward.recipients[0].address, "x@remote.test")
        self.assertTrue(data.startswith(b"Delivered-To: "))
        self.assertTrue(data.endswith(b"\nSubject: hi\n\nhello\n"))

        # SIGKILL: the next delivery waits for the new helper and works
        first = self.spawn.process.pid
        os.kill(first, signal.SIGKILL)
        while self.spawn.process is not None and self.spawn.process.pid == first:
            yield deferLater(0.01)
        result = yield self.spawn.deliver(self.message(), Recipient("alice@example.com"))
        self.assertTrue(result.is_ok, result)
        self.assertNotEqual(self.spawn.process.pid, first)
        self.assertEqual(len(self.new()), 2)
        yield self.spawn.stop()
        self.assertIsNone(self.spawn.process)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_sigterm_does_not_stop_the_helper_nor_stay_ignored_in_programs(self):
        from indimail_tw.storage.store import REPOS
        from indimail_tw.admin.site import Site

        out = os.path.join(self.root, "sigign")
        site = Site.resolve(self.root, {})
        site.write(REPOS.aliases.add, "prog", "example.com",
                   f"| grep SigIgn /proc/self/status > {out}")
        site.close()
        self.spawn.start()
        result = yield self.spawn.deliver(self.message(), Recipient("alice@example.com"))
        self.assertTrue(result.is_ok, result)
        pid = self.spawn.process.pid
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        result = yield self.spawn.deliver(self.message(), Recipient("prog@example.com"))
        self.assertTrue(result.is_ok, result)
        self.assertEqual(self.spawn.process.pid, pid)
        with open(out) as f:
            ignored = int(f.read().split()[1], 16)
        self.assertFalse(ignored & (1 << (signal.SIGTERM - 1)), hex(ignored))
        self.assertFalse(ignored & (1 << (signal.SIGINT - 1)), hex(ignored))

    @defer.inlineCallbacks
    def test_the_helpers_log_events_reach_the_servers_log(self):
        from indimail_tw.admin.site import Site
        from indimail_tw.storage.store import REPOS

        site = Site.resolve(self.root, {})
        site.write(REPOS.aliases.add, "badline", "example.com", "./Maildir/")
        site.close()
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.spawn.start()
        result = yield self.spawn.deliver(self.message(), Recipient("badline@example.com"))
        self.assertTrue(result.is_temporary, result)
        warned = []
        for _ in range(100):          # the helper writes its events every FLUSH_DELAY
            warned = [e for e in events if e.get("rcpt") == "badline@example.com"]
            if warned:
                break
            yield deferLater(0.05)
        (event,) = warned
        self.assertEqual(event["log_format"], "bad {origin} line for {rcpt}: {error}")
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("home directory", event["error"])

    def test_the_helper_dies_with_the_server(self):
        """Killed with its parent (--parent), even while its stdin stays open: the
        deliveries it was making are the dead server's successor's to make again."""
        import subprocess

        from tests.test_crash_smtp import helpers_of

        code = ("import os, subprocess, sys, time\n"
                "os.dup2(os.open(os.devnull, os.O_WRONLY), 3)\n"      # its log fd
                "subprocess.Popen(sys.argv[1:] + ['--parent', str(os.getpid())],"
                " pass_fds=(3,))\n"
                "time.sleep(60)\n")
        read, write = os.pipe()               # the helper's stdin, kept open here
        self.addCleanup(os.close, write)
        server = subprocess.Popen(
            [sys.executable, "-c", code, *helper_command(self.paths.root, self.paths.control)],
            stdin=read, env=helper_environ(os.environ))
        os.close(read)
        self.addCleanup(lambda: server.poll() is None and server.kill())
        deadline = time.monotonic() + 30
        while not helpers_of(self.root) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)                       # started, and still running
        self.assertEqual(len(helpers_of(self.root)), 1)
        server.kill()
        server.wait()
        while helpers_of(self.root) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(helpers_of(self.root), [])

    @defer.inlineCallbacks
    def test_the_helper_runs_nicer_when_asked(self):
        self.spawn.command = helper_command(self.paths.root, self.paths.control, nice=7)
        self.spawn.start()
        result = yield self.spawn.deliver(self.message(), Recipient("alice@example.com"))
        self.assertTrue(result.is_ok, result)
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        self.assertEqual(os.getpriority(os.PRIO_PROCESS, self.spawn.process.pid),
                         min(19, mine + 7))

    @defer.inlineCallbacks
    def test_sighup_reloads_the_helpers_settings(self):
        self.spawn.start()
        result = yield self.spawn.deliver(self.message(), Recipient("alice@example.com"))
        self.assertTrue(result.is_ok, result)
        with open(os.path.join(self.paths.control, "blackholedsender"), "w") as f:
            f.write("s@remote.test\n")
        self.spawn.reload()
        for _ in range(100):             # the signal arrives asynchronously
            result = yield self.spawn.deliver(self.message(), Recipient("alice@example.com"))
            if "BlackHoled" in result.text:
                break
            yield deferLater(0.05)
        self.assertIn("BlackHoled", result.text)

    @defer.inlineCallbacks
    def test_a_helper_that_cannot_start_says_why(self):
        with open(os.path.join(self.paths.control, "databytes"), "w") as f:
            f.write("garbage\n")
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.spawn.start()
        result = yield self.spawn.deliver(self.message(), Recipient("alice@example.com"))
        self.assertEqual(result, LOST)
        lines = [e.get("line", "") for e in events]
        self.assertTrue(any("lhelper: cannot start" in line for line in lines), lines)
        yield self.spawn.stop()
        self.flushLoggedErrors()


def deferLater(seconds: float) -> defer.Deferred:  # noqa: N802
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
