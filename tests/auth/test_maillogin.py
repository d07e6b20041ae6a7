"""MailLogin: the portal, the throttle and the post-login tasks as POP3/IMAP see them."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from types import SimpleNamespace

from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from indimail_tw.auth import sasl
from indimail_tw.auth.checkers import StoreChecker
from indimail_tw.auth.maillogin import LoginFailed, LoginSession, MailLogin
from indimail_tw.auth.realm import MaildirRealm
from indimail_tw.auth.throttle import LoginThrottle
from indimail_tw.storage import MySQLEngine, MySQLParams, UserStore
from tests.auth.test_postlogin import IP, LoginFixture


class MailLoginMixin(LoginFixture):
    def setUp(self):
        super().setUp()
        self.clock = task.Clock()

    def maillogin(self, service: str = "pop3", **env: str) -> MailLogin:
        return MailLogin(self.context(**env), service, self.clock)

    @defer.inlineCallbacks
    def test_success_gives_a_session(self):
        login = self.maillogin("imap")
        conn = login.connection(IP, "192.0.2.1")
        session = yield conn.login(conn.credentials("alice@example.com", "secret"))
        self.assertIsInstance(session, LoginSession)
        self.assertEqual(session.address, "alice@example.com")
        self.assertEqual(session.maildir, self.user("alice").maildir)
        self.assertTrue(os.path.isdir(os.path.join(session.maildir, "new")))
        self.assertEqual((session.message, session.end_session, session.service),
                         (None, False, "imap"))
        session.logout()
        self.assertEqual(self.lastauth("alice")["imap"][1], IP)
        self.assertEqual(self.relay_rows(), [("alice@example.com", IP)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_failures_look_the_same(self):
        """Unknown user, wrong password, NO_POP: same failure, same count, same delay."""
        login = self.maillogin("pop3")
        seen = []
        for n, (user, password) in enumerate([("nobody@example.com", "secret"),
                                              ("alice@example.com", "wrong"),
                                              ("nopop@example.com", "secret"),
                                              ("alice@nowhere.example", "secret")]):
            ip = f"198.51.100.{n}"
            conn = login.connection(ip)
            failure = yield self.assertFailure(conn.login(conn.credentials(user, password)),
                                               LoginFailed)
            seen.append((failure.temporary, failure.close, failure.reason, str(failure),
                         failure.pop3(), failure.imap(b"a1"), login.throttle.delay(ip),
                         conn.failures))
        self.assertEqual(len(set(seen)), 1, seen)
        self.assertEqual(seen[0][4], b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(seen[0][5], b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        self.assertEqual(self.relay_rows(), [])

    @defer.inlineCallbacks
    def test_failed_logins_delay_the_next_attempt_from_that_address(self):
        login = self.maillogin("imap")
        conn = login.connection(IP)
        yield self.assertFailure(conn.login(conn.credentials("alice@example.com", "x")),
                                 LoginFailed)
        # the next attempt, even a good one, waits 1 s before it is checked
        d = conn.login(conn.credentials("alice@example.com", "secret"))
        self.assertNoResult(d)
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [1.0])
        self.clock.advance(0.5)
        self.assertNoResult(d)
        self.clock.advance(0.5)
        session = yield d
        self.assertEqual(session.address, "alice@example.com")
        # other addresses are not held up
        other = login.connection("192.0.2.99")
        d = other.login(other.credentials("alice@example.com", "secret"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        yield d

    @defer.inlineCallbacks
    def test_connection_limit_closes(self):
        login = self.maillogin("pop3", MAX_LOGIN_FAILURES="3")
        conn = login.connection(IP)
        closes = []
        for password in ("a", "b", "c"):
            d = conn.login(conn.credentials("alice@example.com", password))
            self.clock.advance(15)
            failure = yield self.assertFailure(d, LoginFailed)
            closes.append(failure.close)
        self.assertEqual(closes, [False, False, True])
        self.assertTrue(conn.exhausted)
        self.assertEqual(login.throttle.failures(IP), 3)
        # a new connection from the same address starts a fresh count, but waits
        again = login.connection(IP)
        d = again.login(again.credentials("alice@example.com", "d"))
        self.assertNoResult(d)
        self.clock.advance(4)
        failure = yield self.assertFailure(d, LoginFailed)
        self.assertFalse(failure.close)

    @defer.inlineCallbacks
    def test_cancel_while_waiting(self):
        login = self.maillogin("pop3")
        login.throttle.failed(IP)
        conn = login.connection(IP)
        d = conn.login(conn.credentials("alice@example.com", "secret"))
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(conn.failures, 0)

    @defer.inlineCallbacks
    def test_bare_login_uses_default_domain_or_ip_map(self):
        login = self.maillogin("pop3")
        conn = login.connection(IP, "192.0.2.25")           # vipmap: 192.0.2.25 -> example.com
        session = yield conn.login(conn.credentials("alice", "secret"))
        self.assertEqual(session.address, "alice@example.com")
        conn = login.connection(IP, "192.0.2.26")
        yield self.assertFailure(conn.login(conn.credentials("alice", "secret")), LoginFailed)
        login = self.maillogin("pop3", DEFAULT_DOMAIN="example.com")
        conn = login.connection("192.0.2.50", "192.0.2.26")
        session = yield conn.login(conn.credentials("alice", "secret"))
        self.assertEqual(session.address, "alice@example.com")

    @defer.inlineCallbacks
    def test_sasl_plain_through_the_same_login(self):
        login = self.maillogin("imap")
        conn = login.connection(IP)
        exchange = sasl.exchange("PLAIN", conn.sasl_context("mail.example.com"))
        step = exchange.start(base64.b64encode(b"\0alice@example.com\0secret"))
        self.assertEqual(step.credentials.service, "imap")
        session = yield conn.login(step.credentials)
        self.assertEqual(session.address, "alice@example.com")

    @defer.inlineCallbacks
    def test_inactive_user_reactivated_on_login(self):
        login = self.maillogin("imap")
        conn = login.connection(IP)
        session = yield conn.login(conn.credentials("sleepy@example.com", "secret"))
        self.assertTrue(session.result.reactivated)
        self.assertFalse(session.avatar.inactive)
        self.assertTrue(self.user("sleepy").active)

    @defer.inlineCallbacks
    def test_min_login_interval_is_a_quiet_temporary_failure(self):
        login = self.maillogin("pop3", MIN_LOGIN_INTERVAL="3600")
        conn = login.connection(IP)
        yield conn.login(conn.credentials("alice@example.com", "secret"))
        failure = yield self.assertFailure(
            conn.login(conn.credentials("alice@example.com", "secret")), LoginFailed)
        self.assertEqual((failure.temporary, failure.close, failure.reason),
                         (True, False, "interval"))
        self.assertEqual(failure.pop3(), b"-ERR [SYS/TEMP] Temporary authentication failure.\r\n")
        self.assertEqual(login.throttle.failures(IP), 0)      # not the client's fault

    @defer.inlineCallbacks
    def test_exit_onerror_ends_the_session(self):
        postauth = self.script("postauth", "exit 3\n")
        tmp = os.path.join(self.root, "tmpbox")
        login = self.maillogin("imap", POSTAUTH=postauth, MSG_ONERROR="Mailbox moved",
                               EXIT_ONERROR="1", TMP_MAILDIR=tmp)
        conn = login.connection(IP)
        session = yield conn.login(conn.credentials("alice@example.com", "secret"))
        self.assertEqual((session.maildir, session.message, session.end_session),
                         (tmp, "Mailbox moved", True))

    def test_unknown_service(self):
        with self.assertRaises(ValueError):
            MailLogin(self.context(), "smtp", self.clock)


class SQLiteMailLoginTests(MailLoginMixin, unittest.TestCase):
    backend = "sqlite"


class MySQLMailLoginTests(MailLoginMixin, unittest.TestCase):
    backend = "mysql"


class DeadDatabaseTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_database_down_is_temporary_and_not_counted(self):
        root = tempfile.mkdtemp(prefix="itw-login-")
        self.addCleanup(shutil.rmtree, root, True)
        engine = MySQLEngine(MySQLParams(host="127.0.0.1", port=1))
        self.addCleanup(engine.close)
        store = UserStore(engine)
        context = SimpleNamespace(store=store, engine=engine, environ={}, reactor=reactor,
                                  io_pool=None,
                                  portal=Portal(MaildirRealm(store), [StoreChecker(engine)]))
        clock = task.Clock()
        login = MailLogin(context, "imap", clock, throttle=LoginThrottle(clock))
        conn = login.connection(IP)
        for _ in range(4):
            failure = yield self.assertFailure(
                conn.login(conn.credentials("alice@example.com", "secret")), LoginFailed)
            self.assertEqual((failure.temporary, failure.close, failure.reason),
                             (True, False, "unavailable"))
        self.assertEqual(failure.imap(b"a"),
                         b"a NO [UNAVAILABLE] Temporary authentication failure.\r\n")
        self.assertEqual((conn.failures, login.throttle.failures(IP)), (0, 0))


class UnexpectedErrorTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_broken_checker_is_a_temporary_failure(self):
        class Broken:
            def login(self, *args):
                raise RuntimeError("bug")

        context = SimpleNamespace(portal=Broken(), environ={}, store=None, reactor=reactor)
        login = MailLogin(context, "pop3", task.Clock())
        failure = yield self.assertFailure(login.login(login.credentials("a@b.c", "x"), IP),
                                           LoginFailed)
        self.assertEqual((failure.temporary, failure.reason), (True, "error"))
        self.flushLoggedErrors(RuntimeError)
