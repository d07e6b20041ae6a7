"""Program deliveries: exit codes, qmail-local's environment, reports, the timeout."""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from indimail_tw.delivery.program import (
    MAX_REPORT, PERMANENT_CODES, classify, message_stdin, qmail_environment, run_program,
)
from tests.delivery.support import BODY, SENDER, DeliverySite


class ClassifyTests(unittest.TestCase):
    def test_exit_codes(self):
        self.assertTrue(classify(0, "").result.is_ok)
        outcome = classify(99, "")
        self.assertTrue(outcome.result.is_ok and outcome.stop)
        for code in (100, 64, 65, 70, 76, 77, 78, 112):
            self.assertTrue(classify(code, "").result.is_permanent, code)
        for code in (1, 2, 75, 111, 113, 255):
            self.assertTrue(classify(code, "").result.is_temporary, code)
        self.assertEqual(PERMANENT_CODES, {64, 65, 70, 76, 77, 78, 100, 112})
        self.assertTrue(classify(None, "", signal=9).result.is_temporary)
        self.assertTrue(classify(0, "", timed_out=True).result.is_temporary)

    def test_report_text_and_status(self):
        result = classify(100, "  Sorry, no mailbox here by that name. (#5.1.1)\n").result
        self.assertEqual(result.text, "Sorry, no mailbox here by that name. (#5.1.1)")
        self.assertEqual(result.enhanced, "5.1.1")
        self.assertEqual(classify(111, "").result.enhanced, "4.3.0")

    def test_environment_values(self):
        env = qmail_environment(
            sender="s@x.test", newsender="s@x.test", local="mail.example.co.uk-a-b-c-d",
            host="mail.example.co.uk", ext="a-b-c-d", user="a", home="/h", default="a-b-c-d",
            dtline=b"Delivered-To: x\n", rpline=b"Return-Path: <s@x.test>\n", when=0,
            messid="42", base={"PATH": "/bin", "DEFAULT": "stale"})
        self.assertEqual((env["HOST2"], env["HOST3"], env["HOST4"]),
                         ("mail.example.co", "mail.example", "mail"))
        self.assertEqual((env["EXT2"], env["EXT3"], env["EXT4"]), ("b-c-d", "c-d", "d"))
        self.assertEqual(env["RECIPIENT"], "mail.example.co.uk-a-b-c-d@mail.example.co.uk")
        self.assertTrue(env["UFLINE"].startswith("From s@x.test "))
        self.assertEqual(env["PATH"], "/bin")
        no_default = qmail_environment(
            sender="", newsender="", local="l", host="h", ext="", user="u", home="/",
            default=None, dtline=b"", rpline=b"", base={"DEFAULT": "stale"})
        self.assertNotIn("DEFAULT", no_default)
        self.assertEqual((no_default["HOST2"], no_default["EXT2"]), ("h", ""))
        self.assertTrue(no_default["UFLINE"].startswith("From MAILER-DAEMON "))


class ProgramDeliveryTests(DeliverySite, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.alice = self.add_user("alice")

    def dot_qmail(self, text: str) -> None:
        self.write(os.path.join(self.alice.dir, ".qmail"), text)

    @defer.inlineCallbacks
    def test_environment_stdin_and_directory(self):
        out = os.path.join(self.root, "env.out")
        self.dot_qmail(f"|(env; echo CWD=$(pwd); echo STDIN; cat) > {out}\n")
        message = self.message()
        result = yield self.deliver("alice@example.com", message)
        self.assertTrue(result.is_ok, result)
        with open(out, "rb") as f:
            data = f.read()
        text, _, stdin = data.partition(b"STDIN\n")
        self.assertEqual(stdin, BODY)
        env = dict(line.split("=", 1) for line in text.decode().splitlines()
                   if "=" in line and line.split("=", 1)[0].isupper())
        expected = {
            "SENDER": SENDER, "NEWSENDER": SENDER, "USER": "alice", "HOME": self.alice.dir,
            "HOST": "example.com", "HOST2": "example", "HOST3": "example", "HOST4": "example",
            "LOCAL": "example.com-alice", "EXT": "alice", "EXT2": "", "EXT3": "", "EXT4": "",
            "DEFAULT": "alice", "RECIPIENT": "example.com-alice@example.com",
            "MESSID": message.id, "CWD": self.alice.dir,
        }
        for key, value in expected.items():
            self.assertEqual(env.get(key), value, key)
        # DTLINE/RPLINE/UFLINE end in a newline, so env prints them over two lines
        self.assertIn(b"DTLINE=Delivered-To: example.com-alice@example.com\n", data)
        self.assertIn(b"RPLINE=Return-Path: <sender@remote.test>\n", data)
        self.assertIn(b"UFLINE=From sender@remote.test ", data)

    @defer.inlineCallbacks
    def test_stdin_is_exactly_the_message_seekable_and_not_the_queue_file(self):
        """The queue file goes on with the envelope: the program gets a copy of the
        message alone (an anonymous file), which it can read, rewind and read again."""
        out = os.path.join(self.root, "stdin.out")
        script = os.path.join(self.root, "rewind.py")
        self.write(script, (
            "import os, sys\n"
            "first = sys.stdin.buffer.read()\n"
            "os.lseek(0, 0, os.SEEK_SET)\n"
            "second = b''\n"
            "while chunk := os.read(0, 65536):\n"
            "    second += chunk\n"
            "st = os.fstat(0)\n"
            f"with open({out!r}, 'wb') as f:\n"
            "    f.write(b'%d %d %d\\n' % (st.st_ino, st.st_nlink, st.st_size)"
            " + first + b'|' + second)\n"))
        self.dot_qmail(f"|{sys.executable} {script}\n")
        for body in (BODY, BODY + b"x" * 300_000 + b"\n"):     # small and large
            message = self.message(body)
            with open(message.path, "rb") as f:
                self.assertGreater(len(f.read()), len(body))   # the envelope follows
            result = yield self.deliver("alice@example.com", message)
            self.assertTrue(result.is_ok, result)
            with open(out, "rb") as f:
                head, _, rest = f.read().partition(b"\n")
            self.assertEqual(rest, body + b"|" + body)
            ino, nlink, size = map(int, head.split())
            self.assertNotEqual(ino, os.stat(message.path).st_ino)
            self.assertEqual((nlink, size), (0, len(body)))

    def test_message_stdin_from_a_file_and_from_memory(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(BODY + b"ENVELOPE RECORD")
        for fd in (message_stdin(path, len(BODY)), message_stdin(path, 0, BODY),
                   message_stdin(path, len(BODY), tmpdir=self.root)):
            try:
                self.assertEqual(os.lseek(fd, 0, os.SEEK_CUR), 0)
                self.assertEqual(os.read(fd, 1 << 20), BODY)
            finally:
                os.close(fd)

    def test_message_stdin_without_memfd_is_an_unlinked_temp_file(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(BODY + b"ENVELOPE RECORD")
        self.patch(os, "memfd_create", lambda *a: (_ for _ in ()).throw(OSError(38, "no")))
        fd = message_stdin(path, len(BODY), tmpdir=self.root)
        try:
            self.assertEqual(os.fstat(fd).st_nlink, 0)
            self.assertEqual(os.read(fd, 1 << 20), BODY)
        finally:
            os.close(fd)

    @defer.inlineCallbacks
    def test_output_is_the_report_and_is_bounded(self):
        self.dot_qmail("|echo 'mailbox disabled (#5.2.1)' >&2; exit 100\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_permanent)
        self.assertEqual((result.text, result.enhanced), ("mailbox disabled (#5.2.1)", "5.2.1"))
        self.dot_qmail("|head -c 200000 /dev/zero | tr '\\0' x; exit 75\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_temporary)
        self.assertLessEqual(len(result.text), MAX_REPORT)

    @defer.inlineCallbacks
    def test_exit_codes_through_the_agent(self):
        for code, kind in ((0, "ok"), (99, "ok"), (100, "permanent"), (64, "permanent"),
                           (112, "permanent"), (111, "temporary"), (1, "temporary")):
            self.dot_qmail(f"|exit {code}\n")
            result = yield self.deliver("alice@example.com")
            self.assertEqual(result.status, kind, code)

    @defer.inlineCallbacks
    def test_killed_program_is_temporary(self):
        self.dot_qmail("|kill -9 $$\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_temporary)
        self.assertIn("crashed", result.text)


class _Spawner:
    """The real reactor, remembering the protocol of the process it starts."""

    def __init__(self):
        self.protocol = None

    def spawnProcess(self, proto, *args, **kw):  # noqa: N802
        self.protocol = proto
        return reactor.spawnProcess(proto, *args, **kw)


class TimeoutTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_timeout_kills_and_defers(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(BODY)
        clock, spawner = Clock(), _Spawner()
        ended = defer.Deferred()
        d = run_program(spawner, "exec sleep 600", path, {"PATH": os.defpath}, "/",
                        timeout=30, clock=clock)
        real_ended = spawner.protocol.processEnded

        def process_ended(reason):
            real_ended(reason)
            ended.callback(None)

        spawner.protocol.processEnded = process_ended
        self.assertNoResult(d)
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(1)
        outcome = self.successResultOf(d)
        self.assertTrue(outcome.result.is_temporary)
        self.assertIn("Timeout", outcome.result.text)
        yield ended  # the killed child is reaped before the test ends

    def test_missing_message_file_is_temporary(self):
        d = run_program(reactor, "true", "/nonexistent/message", {}, "/")
        self.assertTrue(self.successResultOf(d).result.is_temporary)
