"""The vdelivermail program as qmail-local runs it: arguments, environment, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial import unittest

from indimail_tw.delivery.vdelivermail import Invocation, parse_args
from indimail_tw.storage.engine import SQLiteEngine
from tests.delivery.support import BODY, SENDER, DeliverySite

DT = b"Delivered-To: example.com-alice@example.com\n"


class ParseArgsTests(unittest.TestCase):
    def test_forms(self):
        env = {"EXT": "Joe", "HOST": "example.com", "SENDER": "s@x.test"}
        self.assertEqual(parse_args(["", "bounce-no-mailbox"], env),
                         Invocation("Joe", "example.com", "s@x.test", "bounce-no-mailbox"))
        self.assertEqual(parse_args(["", "delete"], {**env, "EXT": ""}).user, "postmaster")
        self.assertEqual(parse_args(["", "x"], {"EXT": "a"}), (100, "vdelivermail: No SENDER "
                                                                    "environment variable"))
        self.assertEqual(parse_args(["", "x"], {"SENDER": ""})[0], 100)
        local = ["--", "indimail", "/home", "example.com-joe", "-", "joe", "example.com",
                 "s@x.test", "./Maildir/", "qqeh"]
        self.assertEqual(parse_args(local, {}),
                         Invocation("joe", "example.com", "s@x.test", None, "qqeh"))
        self.assertEqual(parse_args(["only-one"], env)[0], 111)


class VdelivermailTests(DeliverySite, unittest.TestCase):
    def make_engine(self, tables=None):
        engine = SQLiteEngine(self.paths.sqlite_file, tables)
        self.addCleanup(engine.close)
        return engine

    def setUp(self):
        super().setUp()
        self.alice = self.add_user("alice")

    def run_it(self, *args: str, body: bytes = BODY, **env: str | None):
        environ = {"PATH": os.environ.get("PATH", "/bin:/usr/bin"), "INDIMAIL_ROOT": self.root,
                   "HOST": "example.com", "SENDER": SENDER}
        environ.update(env)
        environ = {k: v for k, v in environ.items() if v is not None}
        return subprocess.run([sys.executable, "-m", "indimail_tw.delivery.vdelivermail",
                               *args], input=body, env=environ, capture_output=True,
                              timeout=120)

    def test_delivers_and_exits_0(self):
        done = self.run_it("", "bounce-no-mailbox", EXT="alice")
        self.assertEqual(done.returncode, 0, done.stderr)
        (data,) = self.new_files(self.alice.maildir)
        self.assertEqual(data, b"Return-Path: <sender@remote.test>\n" + DT + BODY)

    def test_uses_qmail_locals_lines(self):
        done = self.run_it("", "bounce-no-mailbox", EXT="alice",
                           DTLINE="Delivered-To: example.com-alice@example.com\n",
                           RPLINE="Return-Path: <other@remote.test>\n")
        self.assertEqual(done.returncode, 0, done.stderr)
        (data,) = self.new_files(self.alice.maildir)
        self.assertTrue(data.startswith(b"Return-Path: <other@remote.test>\n" + DT))

    def test_unknown_user_exits_100_with_the_report_on_stderr(self):
        done = self.run_it("", "bounce-no-mailbox", EXT="nobody")
        self.assertEqual(done.returncode, 100)
        self.assertEqual(done.stderr.decode().strip(),
                         "no account nobody@example.com here by that name. indimail (#5.1.5)")
        self.assertEqual(self.run_it("", "bounce-no-mailbox", EXT="nobody",
                                     DISCARD_BOUNCE="1").returncode, 0)

    def test_catch_all_comes_from_the_command_line(self):
        self.assertEqual(self.run_it("", "delete", EXT="nobody").returncode, 0)
        target = os.path.join(self.root, "catch")
        self.assertEqual(self.run_it("", target, EXT="nobody").returncode, 0)
        self.assertEqual(len(self.new_files(os.path.join(target, "Maildir"))), 1)

    def test_loop_exits_100(self):
        done = self.run_it("", "bounce-no-mailbox", EXT="alice", body=DT + BODY)
        self.assertEqual(done.returncode, 100)
        self.assertIn(b"(#5.4.6)", done.stderr)

    def test_misuse(self):
        done = self.run_it("", "bounce-no-mailbox", EXT="alice", SENDER=None)
        self.assertEqual(done.returncode, 100)
        self.assertIn(b"No SENDER", done.stderr)
        self.assertEqual(self.run_it("", "bounce-no-mailbox", SENDER=None).returncode, 100)
        self.assertEqual(self.run_it("one-argument", EXT="alice").returncode, 111)
        self.assertEqual(self.new_files(self.alice.maildir), [])

    def test_null_sender_and_default_user(self):
        self.add_user("postmaster")
        done = self.run_it("", "bounce-no-mailbox", EXT="", SENDER="")
        self.assertEqual(done.returncode, 0, done.stderr)
        (data,) = self.new_files(os.path.join(self.paths.mail, "example.com", "postmaster",
                                              "Maildir"))
        self.assertTrue(data.startswith(b"Return-Path: <>\n"))

    def test_database_down_exits_111(self):
        self.control("host.mysql", "127.0.0.1:indimail:secret:1")
        done = self.run_it("", "bounce-no-mailbox", EXT="alice")
        self.assertEqual(done.returncode, 111, done.stderr)
        self.assertEqual(self.new_files(self.alice.maildir), [])

    def test_forwards_through_qmail_queue(self):
        out = os.path.join(self.root, "qq")
        script = self.write(os.path.join(self.root, "qmail-queue"),
                            f'#!/bin/sh\ncat > {out}.msg\ncat <&1 > {out}.env\n', 0o755)
        self.add_alias("sales", "&boss@remote.test")
        done = self.run_it("", "bounce-no-mailbox", EXT="sales", QMAILQUEUE=script)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(out + ".msg", "rb") as f:
            self.assertEqual(f.read(), b"Delivered-To: example.com-sales@example.com\n" + BODY)
        with open(out + ".env", "rb") as f:
            self.assertEqual(f.read(), b"Fsender@remote.test\0Tboss@remote.test\0\0")
        failing = self.write(os.path.join(self.root, "qq-fail"), "#!/bin/sh\nexit 31\n", 0o755)
        done = self.run_it("", "bounce-no-mailbox", EXT="sales", QMAILQUEUE=failing)
        self.assertEqual(done.returncode, 100)
        failing = self.write(os.path.join(self.root, "qq-temp"), "#!/bin/sh\nexit 71\n", 0o755)
        done = self.run_it("", "bounce-no-mailbox", EXT="sales", QMAILQUEUE=failing)
        self.assertEqual(done.returncode, 111)
