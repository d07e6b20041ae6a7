"""Maildir++ quota in local delivery: limits, grace, holdoverquota, the BOUNCE_MAIL lock."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from indimail_tw.auth.flags import Flags
from indimail_tw.maildir.quota import read_usage
from indimail_tw.storage.repos import UserQuota
from tests.delivery.support import BODY, DeliverySite

HEADER_SIZE = len(b"Return-Path: <sender@remote.test>\n"
                  b"Delivered-To: example.com-alice@example.com\n")


class QuotaTestsMixin(DeliverySite):
    def existing(self, maildir: str, size: int, name: str = "1.M1P1Q1.host") -> None:
        with open(os.path.join(maildir, "cur", f"{name},S={size}:2,S"), "wb") as f:
            f.write(b"x" * size)

    def big(self, size: int = 2000) -> bytes:
        return BODY + b"x" * (size - len(BODY))

    def userquota(self, name: str = "alice") -> int | None:
        return self.engine.run_sync(UserQuota().get, name, "example.com")

    @defer.inlineCallbacks
    def test_delivery_is_counted_in_maildirsize(self):
        alice = self.add_user("alice", quota="100000")
        result = yield self.deliver("alice@example.com")
        self.assertDelivered(result, alice.maildir)
        usage = read_usage(alice.maildir)
        self.assertEqual((usage.bytes, usage.count), (HEADER_SIZE + len(BODY), 1))
        self.assertEqual(usage.quota.bytes, 100000)

    @defer.inlineCallbacks
    def test_over_quota_bounces_and_locks_the_account(self):
        alice = self.add_user("alice", quota="5000")
        self.existing(alice.maildir, 4900)
        result = yield self.deliver("alice@example.com", self.message(self.big()))
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.text, f"alice@example.com has insufficient quota. "
                                      f"{HEADER_SIZE + 2000}/4900:1/0:5000. indimail (#5.1.4)")
        self.assertEqual(result.enhanced, "5.2.2")
        self.assertEqual(self.new_files(alice.maildir), [])
        self.assertTrue(self.get_user("alice").gid & Flags.BOUNCE_MAIL)
        self.assertEqual(self.userquota(), 4900)

    @defer.inlineCallbacks
    def test_count_limit(self):
        alice = self.add_user("alice", quota="100000,1")
        self.existing(alice.maildir, 10)
        result = yield self.deliver("alice@example.com", self.message(self.big()))
        self.assertTrue(result.is_permanent)
        self.assertIn("/10:1/1:100000.", result.text)

    @defer.inlineCallbacks
    def test_small_messages_get_through_an_over_quota_mailbox(self):
        alice = self.add_user("alice", quota="5000")
        self.existing(alice.maildir, 6000)
        result = yield self.deliver("alice@example.com")
        self.assertDelivered(result, alice.maildir)
        self.assertTrue(self.get_user("alice").gid & Flags.BOUNCE_MAIL)
        self.assertEqual(self.userquota(), 6000)
        self.environ["OVERQUOTA_MAILSIZE"] = "10"
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_permanent)

    @defer.inlineCallbacks
    def test_grace_does_not_lock_an_account_that_is_not_over_yet(self):
        alice = self.add_user("alice", quota="5000")
        self.existing(alice.maildir, 4950)
        result = yield self.deliver("alice@example.com")
        self.assertDelivered(result, alice.maildir)
        self.assertFalse(self.get_user("alice").gid & Flags.BOUNCE_MAIL)

    @defer.inlineCallbacks
    def test_holdoverquota_defers_instead(self):
        alice = self.add_user("alice", quota="5000")
        self.existing(alice.maildir, 4900)
        marker = self.write(os.path.join(alice.maildir, "holdoverquota"), "")
        result = yield self.deliver("alice@example.com", self.message(self.big()))
        self.assertTrue(result.is_temporary)
        self.assertIn("has insufficient quota", result.text)
        self.assertFalse(self.get_user("alice").gid & Flags.BOUNCE_MAIL)
        os.unlink(marker)
        self.environ["HOLDOVERQUOTA"] = "defer-me"
        self.write(os.path.join(alice.dir, "defer-me"), "")
        result = yield self.deliver("alice@example.com", self.message(self.big()))
        self.assertTrue(result.is_temporary)
        self.environ["HOLDOVERQUOTA"] = os.path.join(self.root, "hold-everyone")
        result = yield self.deliver("alice@example.com", self.message(self.big()))
        self.assertTrue(result.is_permanent)
        self.write(self.environ["HOLDOVERQUOTA"], "")
        result = yield self.deliver("alice@example.com", self.message(self.big()))
        self.assertTrue(result.is_temporary)

    @defer.inlineCallbacks
    def test_locked_account_bounces_without_delivering(self):
        alice = self.add_user("alice", quota="5000", gid=int(Flags.BOUNCE_MAIL | Flags.NO_POP))
        self.existing(alice.maildir, 4900)
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.text,
                         "account alice@example.com locked/overquota 4900/5000. indimail (#5.1.1)")
        self.assertEqual(self.new_files(alice.maildir), [])
        self.write(os.path.join(alice.maildir, "holdoverquota"), "")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_temporary)

    @defer.inlineCallbacks
    def test_lock_is_lifted_when_a_megabyte_fits_again(self):
        alice = self.add_user("alice", quota="5000000", gid=int(Flags.BOUNCE_MAIL | Flags.NO_POP))
        self.existing(alice.maildir, 100)
        result = yield self.deliver("alice@example.com")
        self.assertDelivered(result, alice.maildir)
        self.assertEqual(self.get_user("alice").gid, Flags.NO_POP)
        self.assertEqual(self.userquota(), 0)

    @defer.inlineCallbacks
    def test_lock_stays_while_less_than_a_megabyte_fits(self):
        alice = self.add_user("alice", quota="1100000", gid=int(Flags.BOUNCE_MAIL))
        self.existing(alice.maildir, 100000)
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_permanent)

    @defer.inlineCallbacks
    def test_locked_account_without_quota_stays_locked(self):
        self.add_user("alice", gid=int(Flags.BOUNCE_MAIL))
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_permanent)
        self.assertIn("locked/overquota", result.text)

    @defer.inlineCallbacks
    def test_maildir_lines_use_that_maildirs_own_quota(self):
        shared = os.path.join(self.root, "shared", "Maildir")
        os.makedirs(shared)
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(shared, sub))
        self.write(os.path.join(shared, "maildirsize"), "3000S\n2900 1\n")
        self.existing(shared, 2900)
        self.add_alias("sales", shared + "/")
        result = yield self.deliver("sales@example.com", self.message(self.big()))
        self.assertTrue(result.is_permanent)
        self.assertTrue(result.text.startswith(f"{shared}/ has insufficient quota."), result)


class QuotaSQLiteTests(QuotaTestsMixin, unittest.TestCase):
    backend = "sqlite"


class QuotaMariaDBTests(QuotaTestsMixin, unittest.TestCase):
    backend = "mysql"
