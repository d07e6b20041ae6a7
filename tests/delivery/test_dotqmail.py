"""dot-qmail: every line type in a user's ``.qmail``, safety rules, domain ``.qmail-ext``."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from indimail_tw.delivery import dotqmail as dq
from tests.delivery.support import BODY, SENDER, DeliverySite

RP = b"Return-Path: <sender@remote.test>\n"
DT = b"Delivered-To: example.com-alice@example.com\n"


class ParseTests(unittest.TestCase):
    def test_line_types(self):
        home = "/home/alice"
        cases = {
            "# comment": (dq.COMMENT, "# comment"),
            "|/usr/bin/prog arg": (dq.PROGRAM, "/usr/bin/prog arg"),
            "| prog": (dq.PROGRAM, "prog"),
            "&bob@example.org": (dq.FORWARD, "bob@example.org"),
            "bob@example.org  ": (dq.FORWARD, "bob@example.org"),
            "9lives@example.org": (dq.FORWARD, "9lives@example.org"),
            "/var/mail/Maildir/": (dq.MAILDIR, "/var/mail/Maildir/"),
            "./Maildir/": (dq.MAILDIR, "/home/alice/./Maildir/"),
            "/var/mail/alice": (dq.MBOX, "/var/mail/alice"),
            "./mbox": (dq.MBOX, "/home/alice/./mbox"),
        }
        for line, (kind, target) in cases.items():
            ins = dq.parse_line(line, home)
            self.assertEqual((ins.kind, ins.target), (kind, target), line)
        self.assertIsNone(dq.parse_line("   \n", home))

    def test_bad_lines(self):
        self.assertRaises(dq.DotQmailError, dq.parse_line, "&", None)
        self.assertRaises(dq.DotQmailError, dq.parse_line, "&a b@c", None)
        self.assertRaises(dq.DotQmailError, dq.parse_line, "./Maildir/", None)

    def test_extension_candidates(self):
        self.assertEqual(dq.ext_candidates("list-owner"),
                         [("list-owner", None), ("list-default", "owner"),
                          ("default", "list-owner")])
        self.assertEqual(dq.ext_candidates("A.b"), [("a:b", None), ("default", "A.b")])


class DotQmailTests(DeliverySite, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.alice = self.add_user("alice")

    def dot_qmail(self, text: str, mode: int = 0o644) -> str:
        return self.write(os.path.join(self.alice.dir, ".qmail"), text, mode)

    @defer.inlineCallbacks
    def test_every_line_type(self):
        out = os.path.join(self.root, "prog.out")
        mbox = os.path.join(self.root, "mbox")
        self.dot_qmail("# my delivery instructions\n"
                       "\n"
                       "./Maildir/\n"
                       f"{mbox}\n"
                       "&bob@remote.test\n"
                       "carol@remote.test\n"
                       f"|cat > {out}\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok, result)
        self.assertEqual(result.text, "did 2+2+1")
        (data,) = self.new_files(self.alice.maildir)
        self.assertEqual(data, RP + DT + BODY)
        with open(mbox, "rb") as f:
            entry = f.read()
        self.assertTrue(entry.startswith(b"From sender@remote.test "), entry)
        self.assertTrue(entry.endswith(RP + DT + BODY + b"\n"), entry)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), BODY)  # a program gets the message as queued
        ((envelope, copy),) = self.queue.messages
        self.assertEqual([r.address for r in envelope.recipients],
                         ["bob@remote.test", "carol@remote.test"])
        self.assertEqual(envelope.sender, SENDER)
        self.assertEqual(copy, DT + BODY)

    @defer.inlineCallbacks
    def test_mbox_quotes_from_lines(self):
        mbox = os.path.join(self.root, "mbox")
        self.dot_qmail(f"{mbox}\n")
        body = b"Subject: x\n\nFrom here\n>From there\nno newline"
        yield self.deliver("alice@example.com", self.message(body))
        with open(mbox, "rb") as f:
            entry = f.read()
        self.assertTrue(entry.endswith(b"\n\n>From here\n>>From there\nno newline\n\n"), entry)

    @defer.inlineCallbacks
    def test_empty_dot_qmail_discards(self):
        self.dot_qmail("")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok)
        self.assertEqual(self.new_files(self.alice.maildir), [])
        self.dot_qmail("# only a comment\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok)
        self.assertEqual(self.new_files(self.alice.maildir), [])

    @defer.inlineCallbacks
    def test_exit_99_stops_but_earlier_forwards_go_out(self):
        self.dot_qmail("&bob@remote.test\n|exit 99\n./Maildir/\n&carol@remote.test\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok, result)
        self.assertEqual(self.new_files(self.alice.maildir), [])
        ((envelope, _),) = self.queue.messages
        self.assertEqual([r.address for r in envelope.recipients], ["bob@remote.test"])

    @defer.inlineCallbacks
    def test_failing_program_stops_everything(self):
        self.dot_qmail("&bob@remote.test\n|echo 'no such list (#5.1.1)'; exit 100\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.text, "no such list (#5.1.1)")
        self.assertEqual(result.enhanced, "5.1.1")
        self.assertEqual(self.queue.messages, [])
        self.dot_qmail("|exit 111\n./Maildir/\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_temporary)
        self.assertEqual(self.new_files(self.alice.maildir), [])

    @defer.inlineCallbacks
    def test_line_naming_the_user_itself_is_skipped(self):
        self.dot_qmail("alice@example.com\n./Maildir/\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok)
        self.assertEqual(self.queue.messages, [])
        self.assertEqual(len(self.new_files(self.alice.maildir)), 1)

    @defer.inlineCallbacks
    def test_writable_dot_qmail_defers(self):
        self.dot_qmail("./Maildir/\n", 0o666)
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_temporary)
        self.assertEqual(result.text, "Uh-oh: .qmail file is writable. (#4.7.0)")

    @defer.inlineCallbacks
    def test_sticky_home_defers(self):
        self.dot_qmail("./Maildir/\n")
        os.chmod(self.alice.dir, 0o1700)
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_temporary)
        self.assertIn("editing his .qmail file", result.text)

    @defer.inlineCallbacks
    def test_executable_dot_qmail_may_only_forward(self):
        self.dot_qmail("./Maildir/\n", 0o755)
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_temporary)
        self.assertIn("has x bit set", result.text)
        self.dot_qmail("&bob@remote.test\n", 0o755)
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok)

    @defer.inlineCallbacks
    def test_valias_wins_over_dot_qmail(self):
        self.dot_qmail("./Maildir/\n")
        self.add_alias("alice", "&bob@remote.test")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok)
        self.assertEqual(self.new_files(self.alice.maildir), [])
        self.assertEqual(len(self.queue.messages), 1)

    @defer.inlineCallbacks
    def test_bad_valias_line_defers(self):
        self.add_alias("sales", "./relative/")  # no home to be relative to
        result = yield self.deliver("sales@example.com")
        self.assertTrue(result.is_temporary)
        self.add_alias("alice", "./Maildir/")  # a user's lines are relative to the home
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok)
        self.assertEqual(len(self.new_files(self.alice.maildir)), 1)

    @defer.inlineCallbacks
    def test_domain_qmail_ext_files_come_first(self):
        out = os.path.join(self.root, "list.out")
        domain_dir = os.path.join(self.paths.domains, "example.com")
        self.write(os.path.join(domain_dir, ".qmail-list-default"),
                   f'|echo "$DEFAULT $EXT $LOCAL" > {out}\n')
        result = yield self.deliver("list-subscribe@example.com")
        self.assertTrue(result.is_ok, result)
        with open(out) as f:
            self.assertEqual(f.read(), "subscribe list-subscribe example.com-list-subscribe\n")
        self.write(os.path.join(domain_dir, ".qmail-alice"), "&bob@remote.test\n")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok)
        self.assertEqual(self.new_files(self.alice.maildir), [])
        self.assertEqual(len(self.queue.messages), 1)

    @defer.inlineCallbacks
    def test_list_owner_becomes_the_sender_of_forwards(self):
        out = os.path.join(self.root, "newsender.out")
        domain_dir = os.path.join(self.paths.domains, "example.com")
        self.write(os.path.join(domain_dir, ".qmail-team"),
                   f'|echo "$NEWSENDER" > {out}\n&a@remote.test\n')
        self.write(os.path.join(domain_dir, ".qmail-team-owner"), "&boss@remote.test\n")
        result = yield self.deliver("team@example.com")
        self.assertTrue(result.is_ok, result)
        ((envelope, _),) = self.queue.messages
        self.assertEqual(envelope.sender, "example.com-team-owner@example.com")
        with open(out) as f:
            self.assertEqual(f.read(), "example.com-team-owner@example.com\n")
        result = yield self.deliver("team@example.com", self.message(BODY, ""))
        self.assertEqual(self.queue.messages[1][0].sender, "")  # bounces keep their sender
