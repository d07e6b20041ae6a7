"""The local delivery agent: lookups, valias, catch-all handlers, inactive users, loops."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from indimail_tw.delivery.local import LocalDeliveryAgent, build_local_agent, split_address
from indimail_tw.errors import MailError
from indimail_tw.interfaces import IDeliveryAgent
from indimail_tw.queue.envelope import Recipient
from indimail_tw.storage.engine import MySQLEngine, MySQLParams
from indimail_tw.storage.store import UserStore
from tests.delivery.support import BODY, SENDER, DeliverySite

DT = b"Delivered-To: example.com-alice@example.com\n"


class LookupTestsMixin(DeliverySite):
    """User lookups; run on SQLite and on MariaDB."""

    @defer.inlineCallbacks
    def test_delivers_to_the_users_maildir(self):
        alice = self.add_user("alice")
        result = yield self.deliver("alice@example.com")
        (data,) = self.assertDelivered(result, alice.maildir)
        self.assertEqual(data, b"Return-Path: <sender@remote.test>\n" + DT + BODY)
        (name,) = os.listdir(os.path.join(alice.maildir, "new"))
        self.assertRegex(name, rf",S={len(data)},W=\d+$")
        self.assertEqual(os.listdir(os.path.join(alice.maildir, "tmp")), [])

    @defer.inlineCallbacks
    def test_address_is_case_folded_and_quotes_removed(self):
        alice = self.add_user("alice")
        result = yield self.deliver('"Alice"@Example.COM')
        self.assertDelivered(result, alice.maildir)

    @defer.inlineCallbacks
    def test_alias_domain_resolves_to_the_real_domain(self):
        alice = self.add_user("alice")
        self.add_alias_domain("alias.test", "example.com")
        result = yield self.deliver("alice@alias.test")
        (data,) = self.assertDelivered(result, alice.maildir)
        self.assertIn(b"Delivered-To: alias.test-alice@alias.test\n", data)

    @defer.inlineCallbacks
    def test_unknown_domain_is_permanent(self):
        result = yield self.deliver("alice@nowhere.test")
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.text, "No such domain nowhere.test. indimail (#5.1.2)")

    @defer.inlineCallbacks
    def test_unknown_user_bounces_with_indimails_text(self):
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.text,
                         "no account nobody@example.com here by that name. indimail (#5.1.5)")
        self.assertEqual(result.enhanced, "5.1.1")

    @defer.inlineCallbacks
    def test_inactive_user_follows_the_catch_all(self):
        bob = self.add_user("bob", active=False)
        result = yield self.deliver("bob@example.com")
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.text, "account bob@example.com is inactive. indimail(#5.1.3)")
        self.assertEqual(self.new_files(bob.maildir), [])
        self.environ["ALLOW_INACTIVE"] = "1"
        result = yield self.deliver("bob@example.com")
        self.assertDelivered(result, bob.maildir)

    @defer.inlineCallbacks
    def test_inactive_user_with_delete_catch_all_is_discarded(self):
        self.add_domain("example.com", "delete")
        bob = self.add_user("bob", active=False)
        result = yield self.deliver("bob@example.com")
        self.assertTrue(result.is_ok)
        self.assertEqual(self.new_files(bob.maildir), [])

    @defer.inlineCallbacks
    def test_valias_forward_of_an_unknown_address(self):
        self.add_alias("sales", "&boss@remote.test")
        self.add_alias("sales", "clerk@remote.test")
        message = self.message(BODY, SENDER, "sales@example.com", envid="E1", ret="HDRS")
        result = yield self.deliver("sales@example.com", message,
                                    Recipient("sales@example.com", ("FAILURE",)))
        self.assertTrue(result.is_ok, result)
        ((envelope, data),) = self.queue.messages
        self.assertEqual(envelope.sender, SENDER)
        self.assertEqual([r.address for r in envelope.recipients],
                         ["boss@remote.test", "clerk@remote.test"])
        self.assertEqual(envelope.recipients[0].notify, ("FAILURE",))
        self.assertEqual(envelope.recipients[0].orcpt, "rfc822;sales@example.com")
        self.assertEqual((envelope.envid, envelope.ret), ("E1", "HDRS"))
        self.assertEqual(data, b"Delivered-To: example.com-sales@example.com\n" + BODY)

    @defer.inlineCallbacks
    def test_valias_program_and_mbox_lines(self):
        out = os.path.join(self.root, "alias.out")
        mbox = os.path.join(self.root, "alias.mbox")
        self.add_alias("info", f'|(echo "$HOME $EXT $RECIPIENT"; cat) > {out}')
        self.add_alias("info", mbox)
        result = yield self.deliver("info@example.com")
        self.assertTrue(result.is_ok, result)
        self.assertEqual(result.text, "did 1+0+1")
        home = os.path.join(self.paths.domains, "example.com")
        with open(out, "rb") as f:
            self.assertEqual(f.read(), f"{home} info example.com-info@example.com\n".encode()
                             + BODY)
        with open(mbox, "rb") as f:
            self.assertIn(b"Delivered-To: example.com-info@example.com\n" + BODY, f.read())

    @defer.inlineCallbacks
    def test_valias_replaces_the_users_own_maildir(self):
        alice = self.add_user("alice")
        other = os.path.join(self.root, "shared", "Maildir")
        self.add_alias("alice", other + "/")
        result = yield self.deliver("alice@example.com")
        self.assertTrue(result.is_ok, result)
        self.assertEqual(len(self.new_files(other)), 1)
        self.assertEqual(self.new_files(alice.maildir), [])

    @defer.inlineCallbacks
    def test_group_accounts_are_never_stored(self):
        group = self.add_user("team", gecos="MailGroup team")
        result = yield self.deliver("team@example.com")
        self.assertTrue(result.is_ok)
        self.assertEqual(self.new_files(group.maildir), [])

    @defer.inlineCallbacks
    def test_missing_maildir_is_created(self):
        alice = self.add_user("alice", maildir=False)
        result = yield self.deliver("alice@example.com")
        self.assertDelivered(result, alice.maildir)

    @defer.inlineCallbacks
    def test_maildirfolder(self):
        alice = self.add_user("alice")
        self.environ["MAILDIRFOLDER"] = "Lists"
        result = yield self.deliver("alice@example.com")
        folder = os.path.join(alice.maildir, ".Lists")
        self.assertDelivered(result, folder)
        self.assertTrue(os.path.exists(os.path.join(folder, "maildirfolder")))
        self.assertEqual(self.new_files(alice.maildir), [])

    @defer.inlineCallbacks
    def test_qmail_ext_falls_back_to_the_base_user(self):
        alice = self.add_user("alice")
        result = yield self.deliver("alice-news@example.com")
        self.assertTrue(result.is_permanent)
        self.environ["QMAIL_EXT"] = "1"
        result = yield self.deliver("alice-news@example.com")
        self.assertDelivered(result, alice.maildir)


class LookupSQLiteTests(LookupTestsMixin, unittest.TestCase):
    backend = "sqlite"


class LookupMariaDBTests(LookupTestsMixin, unittest.TestCase):
    backend = "mysql"


class OneReadTests(DeliverySite, unittest.TestCase):
    """The user row and its valias lines come in one read; after a failed combined
    read they are read one by one, so each failure keeps its own report."""

    @defer.inlineCallbacks
    def test_one_read_for_user_and_aliases(self):
        alice = self.add_user("alice")
        reads = []
        real = self.engine.run_read
        self.patch(self.engine, "run_read", lambda fn, *a: (reads.append(fn.__name__),
                                                            real(fn, *a))[1])
        result = yield self.deliver("alice@example.com")
        self.assertDelivered(result, alice.maildir)
        self.assertEqual(reads, ["_lookup_with_aliases"])

    @defer.inlineCallbacks
    def test_a_failed_combined_read_is_done_one_by_one(self):
        from indimail_tw.errors import StoreUnavailable

        alice = self.add_user("alice")
        self.add_alias("sales", "&alice@example.com")

        def down(*a):
            raise StoreUnavailable("busy")

        self.patch(self.store, "get_user_and_aliases_now", down)
        result = yield self.deliver("alice@example.com")
        self.assertDelivered(result, alice.maildir)
        result = yield self.deliver("sales@example.com")
        self.assertTrue(result.is_ok, result)
        self.assertEqual([e.recipients[0].address for e, _ in self.queue.messages],
                         ["alice@example.com"])
        self.patch(self.store, "alias_lines_now", down)
        result = yield self.deliver("sales@example.com")
        self.assertEqual((result.is_temporary, result.text),
                         (True, "temporary database error. (#4.4.3)"))


class DatabaseDownTests(DeliverySite, unittest.TestCase):
    @defer.inlineCallbacks
    def test_unreachable_database_is_temporary(self):
        engine = MySQLEngine(MySQLParams(host="127.0.0.1", port=1, password=""))
        self.addCleanup(engine.close)
        agent = LocalDeliveryAgent(UserStore(engine), self.paths.domains, self.settings(),
                                   self.queue, environ={})
        result = yield agent.deliver(self.message(), Recipient("alice@example.com"))
        self.assertTrue(result.is_temporary, result)
        self.assertEqual(result.enhanced, "4.4.3")


class CatchAllTests(DeliverySite, unittest.TestCase):
    """The FAQ's jobs: bounce, delete or forward mail for unknown users."""

    @defer.inlineCallbacks
    def test_delete(self):
        self.add_domain("example.com", "delete")
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_ok)
        self.assertEqual(self.queue.messages, [])

    @defer.inlineCallbacks
    def test_forward_to_an_address(self):
        self.add_domain("example.com", "catchall@other.test")
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_ok, result)
        ((envelope, data),) = self.queue.messages
        self.assertEqual([r.address for r in envelope.recipients], ["catchall@other.test"])
        self.assertEqual(envelope.sender, SENDER)
        self.assertTrue(data.startswith(b"Delivered-To: example.com-nobody@example.com\n"))

    @defer.inlineCallbacks
    def test_forward_with_ampersand_and_invalid_address(self):
        self.add_domain("example.com", "&catchall@other.test")
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_ok, result)
        self.assertEqual(self.queue.messages[0][0].recipients[0].address, "catchall@other.test")
        self.add_domain("example.com", "<x>@other.test")
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_temporary)

    @defer.inlineCallbacks
    def test_maildir_path_gets_maildir_appended(self):
        target = os.path.join(self.root, "catchall")
        self.add_domain("example.com", target)
        result = yield self.deliver("nobody@example.com")
        self.assertDelivered(result, os.path.join(target, "Maildir"))

    @defer.inlineCallbacks
    def test_route_is_deferred_until_remote_routing_exists(self):
        self.add_domain("example.com", "example.com:10.0.0.2:25")
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_temporary)
        self.assertIn("not supported yet", result.text)

    @defer.inlineCallbacks
    def test_route_bounces_inactive_users(self):
        self.add_domain("example.com", "example.com:10.0.0.2:25")
        self.add_user("bob", active=False)
        result = yield self.deliver("bob@example.com")
        self.assertTrue(result.is_permanent)

    @defer.inlineCallbacks
    def test_malformed_route_is_temporary(self):
        self.add_domain("example.com", "mailhost:25")
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_temporary)
        self.assertIn("Invalid SMTPROUTE", result.text)

    @defer.inlineCallbacks
    def test_domain_without_qmail_default_bounces(self):
        self.add_domain("bare.test", None)
        result = yield self.deliver("nobody@bare.test")
        self.assertTrue(result.is_permanent)
        self.assertIn("no account nobody@bare.test here", result.text)

    @defer.inlineCallbacks
    def test_handler_given_by_the_caller_wins(self):
        result = yield self.deliver("nobody@example.com", handler="delete")
        self.assertTrue(result.is_ok)

    @defer.inlineCallbacks
    def test_failed_forward_is_temporary(self):
        self.add_domain("example.com", "catchall@other.test")
        self.queue.fail = MailError(452, "4.3.1", "queue full")
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_temporary)
        self.assertIn("queue full", result.text)

    @defer.inlineCallbacks
    def test_refused_forward_is_permanent(self):
        self.add_domain("example.com", "catchall@other.test")
        self.queue.fail = MailError(554, "5.3.0", "refused")
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_permanent)

    @defer.inlineCallbacks
    def test_discard_bounce(self):
        self.environ["DISCARD_BOUNCE"] = "1"
        result = yield self.deliver("nobody@example.com")
        self.assertTrue(result.is_ok)


class LoopTests(DeliverySite, unittest.TestCase):
    @defer.inlineCallbacks
    def test_our_delivered_to_line_means_a_loop(self):
        alice = self.add_user("alice")
        result = yield self.deliver("alice@example.com", self.message(DT + BODY))
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.text,
                         "This message is looping: it already has my Delivered-To line. (#5.4.6)")
        self.assertEqual(result.enhanced, "5.4.6")
        self.assertEqual(self.new_files(alice.maildir), [])

    @defer.inlineCallbacks
    def test_other_delivered_to_lines_are_fine(self):
        alice = self.add_user("alice")
        body = b"Delivered-To: example.com-bob@example.com\n" + BODY
        result = yield self.deliver("alice@example.com", self.message(body))
        self.assertDelivered(result, alice.maildir)

    @defer.inlineCallbacks
    def test_a_line_in_the_body_is_not_a_loop(self):
        alice = self.add_user("alice")
        result = yield self.deliver("alice@example.com", self.message(BODY + DT))
        self.assertDelivered(result, alice.maildir)

    @defer.inlineCallbacks
    def test_maxdeliveredto(self):
        alice = self.add_user("alice")
        self.control("maxdeliveredto", "1")
        result = yield self.deliver("alice@example.com", self.message(DT + BODY))
        self.assertDelivered(result, alice.maildir)
        result = yield self.deliver("alice@example.com", self.message(DT + DT + BODY))
        self.assertTrue(result.is_permanent)
        self.control("maxdeliveredto", "-1")
        result = yield self.deliver("alice@example.com", self.message(DT * 5 + BODY))
        self.assertDelivered(result, alice.maildir, 2)

    @defer.inlineCallbacks
    def test_forward_back_to_where_the_copy_came_from_is_a_loop(self):
        self.add_alias("sales", "&boss@remote.test")
        body = b"Delivered-To: remote.test-boss@remote.test\n" + BODY
        result = yield self.deliver("sales@example.com", self.message(body))
        self.assertTrue(result.is_permanent)
        self.assertIn("is looping", result.text)
        self.assertEqual(self.queue.messages, [])

    @defer.inlineCallbacks
    def test_alias_ping_pong_is_stopped(self):
        self.add_alias("a", "&b@example.com")
        self.add_alias("b", "&a@example.com")
        yield self.deliver("a@example.com")
        ((_, first),) = self.queue.messages
        # b would send it back to a, whose Delivered-To line it already carries
        second = yield self.deliver("b@example.com", self.message(first))
        self.assertTrue(second.is_permanent)
        self.assertIn("a@example.com is looping", second.text)
        # and if it got back to a anyway, a's own line stops it there
        third = yield self.deliver("a@example.com", self.message(first))
        self.assertEqual(third.enhanced, "5.4.6")
        self.assertEqual(len(self.queue.messages), 1)


class MiscTests(DeliverySite, unittest.TestCase):
    def test_split_address(self):
        self.assertEqual(split_address("Joe@Example.COM."), ("joe", "example.com"))
        self.assertEqual(split_address("@example.com"), ("postmaster", "example.com"))
        self.assertEqual(split_address("joe", "default.test"), ("joe", "default.test"))

    @defer.inlineCallbacks
    def test_delivered_to_follows_virtualdomains(self):
        alice = self.add_user("alice")
        self.control("virtualdomains", "example.com:example.com")
        result = yield self.deliver("alice@example.com")
        (data,) = self.assertDelivered(result, alice.maildir)
        self.assertIn(DT, data)
        self.control("virtualdomains", "example.com:vd7")
        result = yield self.deliver("alice@example.com")
        data = self.assertDelivered(result, alice.maildir, 2)
        self.assertIn(b"\nDelivered-To: vd7-alice@example.com\n", b"\n".join(data))
        loop = b"Delivered-To: vd7-alice@example.com\n" + BODY
        result = yield self.deliver("alice@example.com", self.message(loop))
        self.assertTrue(result.is_permanent)

    @defer.inlineCallbacks
    def test_zero_size_message_is_discarded(self):
        alice = self.add_user("alice")
        result = yield self.deliver("alice@example.com", self.message(b""))
        self.assertTrue(result.is_ok)
        self.assertEqual(self.new_files(alice.maildir), [])

    @defer.inlineCallbacks
    def test_blackholed_sender_is_discarded(self):
        alice = self.add_user("alice")
        self.control("blackholedsender", "@spam.test")
        result = yield self.deliver("alice@example.com", self.message(BODY, "x@spam.test"))
        self.assertTrue(result.is_ok)
        self.assertEqual(self.new_files(alice.maildir), [])

    @defer.inlineCallbacks
    def test_null_sender_return_path(self):
        alice = self.add_user("alice")
        result = yield self.deliver("alice@example.com", self.message(BODY, ""))
        (data,) = self.assertDelivered(result, alice.maildir)
        self.assertTrue(data.startswith(b"Return-Path: <>\n"))

    @defer.inlineCallbacks
    def test_build_local_agent_from_a_server_context(self):
        from types import SimpleNamespace

        from indimail_tw.config import Config

        alice = self.add_user("alice")
        context = SimpleNamespace(store=self.store, paths=self.paths,
                                  config=Config(self.paths.control, fqdn=lambda: "mx.test"),
                                  queue=None, reactor=None, environ={})
        agent = build_local_agent(context)
        self.assertTrue(IDeliveryAgent.providedBy(agent))
        result = yield agent.deliver(self.message(), Recipient("alice@example.com"))
        self.assertDelivered(result, alice.maildir)
        context.queue = self.queue
        self.add_alias("fwd", "&x@remote.test")
        result = yield agent.deliver(self.message(), Recipient("fwd@example.com"))
        self.assertTrue(result.is_ok, result)
        self.assertEqual(len(self.queue.messages), 1)

    @defer.inlineCallbacks
    def test_unexpected_errors_are_temporary(self):
        self.add_user("alice")
        message = self.message()
        os.unlink(message.path)
        result = yield self.deliver("alice@example.com", message)
        self.assertTrue(result.is_temporary)
        self.flushLoggedErrors()


def test_local_options_follow_the_environment_values():
    """Parsed once per set of values (every delivery asks), yet a changed value counts."""
    from indimail_tw.delivery.steps import LocalOptions

    env = {"QMAIL_EXT": "1", "OVERQUOTA_MAILSIZE": "2000"}
    first = LocalOptions.from_environ(env)
    assert first.qmail_ext and first.quota.overquota_mailsize == 2000
    assert LocalOptions.from_environ(dict(env)) is first
    env["OVERQUOTA_MAILSIZE"] = "3000"
    env["MAILDIRFOLDER"] = ".Inbox"
    changed = LocalOptions.from_environ(env)
    assert changed.quota.overquota_mailsize == 3000 and changed.maildirfolder == ".Inbox"
    assert LocalOptions.from_environ({}) == LocalOptions()


def test_precheck_uses_the_bytes_the_queue_kept(tmp_path):
    """With the message's bytes at hand the file is not read (it may even be gone)."""
    from indimail_tw.delivery.steps import precheck

    data = b"Delivered-To: a@example.com\nSubject: x\n\nbody\n"
    pre = precheck(str(tmp_path / "missing"), "s@example.com", None, data)
    assert pre.size == len(data) and pre.data is data
    assert pre.scan.delivered_to == ("a@example.com",)
    assert pre.scan.header == b"Delivered-To: a@example.com\nSubject: x\n\n"
