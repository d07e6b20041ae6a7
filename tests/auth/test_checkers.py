"""The cred checkers: store (vchkpass semantics), external checkpassword, chain; the realm."""

from __future__ import annotations

import hmac
import os
import sys
import textwrap

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor
from twisted.trial import unittest

from indimail_tw.auth import passwords
from indimail_tw.auth.checkers import (
    AuthPolicy, ChainChecker, CheckpasswordChecker, StoreChecker, checkpassword_input,
)
from indimail_tw.auth.credentials import (
    ChallengeCredentials, LoginCredentials, LoginDenied, TemporaryLoginFailure,
)
from indimail_tw.auth.flags import Flags
from indimail_tw.auth.loginname import default_domain, split_login
from indimail_tw.auth.realm import MaildirRealm
from indimail_tw.interfaces import IMailbox
from indimail_tw.storage import MySQLEngine, MySQLParams, User, UserStore
from indimail_tw.storage.store import REPOS
from tests.support import EngineMixin


class LoginNameTests(unittest.SynchronousTestCase):
    def test_forms(self):
        self.assertEqual(split_login("Alice@Example.COM"), ("alice", "example.com"))
        self.assertEqual(split_login("alice%example.com"), ("alice", "example.com"))
        self.assertEqual(split_login("alice:example.com"), ("alice", "example.com"))
        self.assertEqual(split_login("a%b@c"), ("a", "b@c"))
        self.assertEqual(split_login("alice"), ("alice", None))
        self.assertEqual(split_login("alice@"), ("alice", None))

    def test_default_domain_precedence(self):
        env = {"INDIMAIL_DOMAIN": "ind.org", "DEFAULT_DOMAIN": "def.org"}
        self.assertEqual(default_domain(env, "ip.org", (), "conf.org"), "ind.org")
        env.pop("INDIMAIL_DOMAIN")
        self.assertEqual(default_domain(env, "ip.org", (), "conf.org"), "ip.org")
        self.assertEqual(default_domain(env, "ip.org", ("ip.org",), "conf.org"), "def.org")
        env.pop("DEFAULT_DOMAIN")
        self.assertEqual(default_domain(env, None, (), "conf.org"), "conf.org")
        self.assertIsNone(default_domain({}, None, (), None))


class StoreCheckerMixin(EngineMixin):
    def setUp(self):
        self.engine = self.make_engine()
        self.engine.run_sync(self.engine.prepare)
        self.hash = passwords.make_hash("secret", "SHA-512")

        def users(txn):
            mk = lambda name, **kw: User(name=name, domain="example.com",  # noqa: E731
                                         passwd=kw.pop("passwd", self.hash),
                                         dir=f"/mail/example.com/{name}", **kw)
            REPOS.users.add(txn, mk("alice"))
            REPOS.users.add(txn, mk("nopop", gid=Flags.NO_POP))
            REPOS.users.add(txn, mk("nosmtp", gid=Flags.NO_SMTP))
            REPOS.users.add(txn, mk("norelay", gid=Flags.NO_RELAY))
            REPOS.users.add(txn, mk("sleepy", active=False))
            REPOS.users.add(txn, mk("cram", passwd=passwords.make_cram_record("tanstaaf")))
            # as vadduser -C stores it (IndiMail's sql_getpw): hash in pw_passwd,
            # the {CRAM} clear text in the scram column
            REPOS.users.add(txn, mk("cram2", passwd=passwords.make_hash("tanstaaf"),
                                    scram="{CRAM}tanstaaf"))
            REPOS.aliasdomains.add(txn, "example.net", "example.com")
            REPOS.ipmap.set(txn, "192.0.2.25", "example.com")

        self.engine.run_sync(users)
        self.checker = StoreChecker(self.engine, AuthPolicy(environ={}))

    def login(self, name, password="secret", service="smtp", **kw):
        return self.checker.requestAvatarId(
            LoginCredentials(name, password, service=service, **kw))

    @defer.inlineCallbacks
    def test_good_password_all_login_forms(self):
        for login in ("alice@example.com", "alice%example.com", "alice:example.com",
                      "ALICE@example.com", "alice@example.net"):
            avatar = yield self.login(login)
            self.assertEqual(avatar, b"alice@example.com")
            self.assertFalse(avatar.no_relay)

    @defer.inlineCallbacks
    def test_bare_login_uses_ip_map_or_default_domain(self):
        avatar = yield self.login("alice", local_ip="192.0.2.25")
        self.assertEqual(avatar, b"alice@example.com")
        self.engine.run_sync(REPOS.ipmap.set, "::ffff:198.51.100.1", "example.com")
        avatar = yield self.login("alice", local_ip="::FFFF:198.51.100.1")
        self.assertEqual(avatar, b"alice@example.com")
        yield self.assertFailure(self.login("alice", local_ip="192.0.2.26"), UnauthorizedLogin)
        self.checker.bind(self.engine, AuthPolicy(environ={"DEFAULT_DOMAIN": "example.com"}))
        avatar = yield self.login("alice", local_ip="192.0.2.26")
        self.assertEqual(avatar, b"alice@example.com")

    @defer.inlineCallbacks
    def test_failures_look_the_same(self):
        bad = yield self.assertFailure(self.login("alice@example.com", "wrong"),
                                       UnauthorizedLogin)
        unknown = yield self.assertFailure(self.login("nobody@example.com"), UnauthorizedLogin)
        self.assertEqual(str(bad), str(unknown))
        self.assertNotIsInstance(bad, LoginDenied)

    @defer.inlineCallbacks
    def test_service_flags(self):
        yield self.assertFailure(self.login("nopop@example.com", service="pop3"), LoginDenied)
        avatar = yield self.login("nopop@example.com", service="imap")
        self.assertEqual(avatar, b"nopop@example.com")
        yield self.assertFailure(self.login("nosmtp@example.com"), LoginDenied)
        # a wrong password is refused before any flag is looked at
        failure = yield self.assertFailure(self.login("nosmtp@example.com", "x"),
                                           UnauthorizedLogin)
        self.assertNotIsInstance(failure, LoginDenied)

    @defer.inlineCallbacks
    def test_no_relay_and_inactive(self):
        avatar = yield self.login("norelay@example.com")
        self.assertTrue(avatar.no_relay)
        yield self.assertFailure(self.login("sleepy@example.com"), LoginDenied)
        avatar = yield self.login("sleepy@example.com", service="imap")
        self.assertTrue(avatar.inactive)
        self.checker.bind(self.engine, AuthPolicy(environ={"ALLOW_INACTIVE": "1"}))
        avatar = yield self.login("sleepy@example.com")
        self.assertEqual(avatar, b"sleepy@example.com")

    @defer.inlineCallbacks
    def test_cram_md5(self):
        challenge = b"<1896.697170952@postoffice.example.net>"
        response = hmac.new(b"tanstaaf", challenge, "md5").hexdigest()
        avatar = yield self.checker.requestAvatarId(
            ChallengeCredentials("cram@example.com", challenge, response))
        self.assertEqual(avatar, b"cram@example.com")
        yield self.assertFailure(self.checker.requestAvatarId(
            ChallengeCredentials("cram@example.com", challenge, "0" * 32)), UnauthorizedLogin)
        # a plain hash record has no CRAM secret (unless ENABLE_CRAM)
        response = hmac.new(b"secret", challenge, "md5").hexdigest()
        yield self.assertFailure(self.checker.requestAvatarId(
            ChallengeCredentials("alice@example.com", challenge, response)), UnauthorizedLogin)
        # the {CRAM} record's hash still serves LOGIN/PLAIN
        avatar = yield self.login("cram@example.com", "tanstaaf")
        self.assertEqual(avatar, b"cram@example.com")
        # the scram column's record serves CRAM, pw_passwd serves LOGIN/PLAIN
        response = hmac.new(b"tanstaaf", challenge, "md5").hexdigest()
        avatar = yield self.checker.requestAvatarId(
            ChallengeCredentials("cram2@example.com", challenge, response))
        self.assertEqual(avatar, b"cram2@example.com")
        avatar = yield self.login("cram2@example.com", "tanstaaf")
        self.assertEqual(avatar, b"cram2@example.com")

    @defer.inlineCallbacks
    def test_domain_limits_expiry(self):
        self.engine.run_sync(lambda txn: txn.execute(
            "INSERT INTO vlimits (domain, domain_expiry) VALUES (?, ?)", ("example.com", 10)))
        avatar = yield self.login("alice@example.com")
        self.assertEqual(avatar, b"alice@example.com")
        self.checker.bind(self.engine, AuthPolicy(environ={"DOMAIN_LIMITS": "1"}))
        yield self.assertFailure(self.login("alice@example.com"), LoginDenied)

    @defer.inlineCallbacks
    def test_realm_gives_mailbox(self):
        store = UserStore(self.engine)
        portal = Portal(MaildirRealm(store), [self.checker])
        iface, avatar, logout = yield portal.login(
            LoginCredentials("norelay@example.com", "secret", service="imap"), None, IMailbox)
        self.assertIs(iface, IMailbox)
        self.assertEqual(avatar.maildir, "/mail/example.com/norelay/Maildir")
        self.assertFalse(avatar.relay_allowed)
        # an avatar id without a user row (external checker) is looked up
        _, avatar, _ = yield MaildirRealm(store).requestAvatar(b"alice@example.com", None,
                                                               IMailbox)
        self.assertEqual(avatar.address, "alice@example.com")
        yield self.assertFailure(MaildirRealm(store).requestAvatar(b"x@example.com", None,
                                                                   IMailbox), UnauthorizedLogin)


class SQLiteStoreCheckerTests(StoreCheckerMixin, unittest.TestCase):
    backend = "sqlite"


class MySQLStoreCheckerTests(StoreCheckerMixin, unittest.TestCase):
    backend = "mysql"


class UnavailableStoreTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_database_down_is_temporary(self):
        engine = MySQLEngine(MySQLParams(host="127.0.0.1", port=1))
        self.addCleanup(engine.close)
        checker = StoreChecker(engine)
        yield self.assertFailure(checker.requestAvatarId(LoginCredentials("a@b.c", "x")),
                                 TemporaryLoginFailure)

    @defer.inlineCallbacks
    def test_chain_stops_on_temporary_failure(self):
        engine = MySQLEngine(MySQLParams(host="127.0.0.1", port=1))
        self.addCleanup(engine.close)
        chain = ChainChecker([StoreChecker(engine), _Always(b"x@y.z")])
        yield self.assertFailure(chain.requestAvatarId(LoginCredentials("a@b.c", "x")),
                                 TemporaryLoginFailure)


class _Always:
    credentialInterfaces = LoginCredentials.__implemented__.declared[:1]

    def __init__(self, result):
        self.result = result

    def requestAvatarId(self, credentials):  # noqa: N802
        if isinstance(self.result, Exception):
            return defer.fail(self.result)
        return defer.succeed(self.result)


class ChainTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_refusal_goes_on_denial_stops(self):
        chain = ChainChecker([_Always(UnauthorizedLogin()), _Always(b"second")])
        self.assertEqual((yield chain.requestAvatarId(LoginCredentials("a", "b"))), b"second")
        chain = ChainChecker([_Always(LoginDenied()), _Always(b"second")])
        yield self.assertFailure(chain.requestAvatarId(LoginCredentials("a", "b")), LoginDenied)
        chain = ChainChecker([_Always(UnauthorizedLogin())])
        yield self.assertFailure(chain.requestAvatarId(LoginCredentials("a", "b")),
                                 UnauthorizedLogin)


def _script(testcase, body: str) -> str:
    path = os.path.abspath(testcase.mktemp())
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\n" + textwrap.dedent(body))
    os.chmod(path, 0o755)
    return path


class CheckpasswordCheckerTests(unittest.TestCase):
    """A real child process reading fd 3, as site scripts do."""

    def checker_for(self, body: str, **kw) -> CheckpasswordChecker:
        return CheckpasswordChecker([_script(self, body)], reactor=reactor, **kw)

    PROGRAM = """
        import os, sys
        data = os.read(3, 600)
        login, secret, response = data.split(b"\\0")[:3]
        if os.environ.get("TCPREMOTEIP") != "198.51.100.7":
            sys.exit(2)
        sys.exit({b"ok": 0, b"norelay": 3, b"temp": 111}.get(secret, 1))
    """

    @defer.inlineCallbacks
    def test_exit_codes(self):
        checker = self.checker_for(self.PROGRAM)

        def creds(secret):
            return LoginCredentials("bob@example.com", secret, remote_ip="198.51.100.7")

        avatar = yield checker.requestAvatarId(creds("ok"))
        self.assertEqual((avatar, avatar.no_relay), (b"bob@example.com", False))
        avatar = yield checker.requestAvatarId(creds("norelay"))
        self.assertTrue(avatar.no_relay)
        yield self.assertFailure(checker.requestAvatarId(creds("bad")), UnauthorizedLogin)
        yield self.assertFailure(checker.requestAvatarId(creds("temp")), TemporaryLoginFailure)

    @defer.inlineCallbacks
    def test_hung_program_is_killed_and_temporary(self):
        checker = self.checker_for("import time\ntime.sleep(60)\n", timeout=0.5)
        yield self.assertFailure(checker.requestAvatarId(LoginCredentials("a", "b")),
                                 TemporaryLoginFailure)

    @defer.inlineCallbacks
    def test_missing_program_is_refused_not_crash(self):
        checker = CheckpasswordChecker(["/nonexistent/checkpw"], reactor=reactor)
        failure = yield self.assertFailure(
            checker.requestAvatarId(LoginCredentials("a", "b")),
            UnauthorizedLogin, TemporaryLoginFailure)
        self.assertIsNotNone(failure)

    def test_fd3_format(self):
        self.assertEqual(checkpassword_input(LoginCredentials("u@d", "pw", method=2)),
                         b"u@d\0pw\0\0\x02\0")
        self.assertEqual(checkpassword_input(ChallengeCredentials("u@d", b"<c>", "ab")),
                         b"u@d\0<c>\0ab\0\x03\0")


class DecoyHashTests(unittest.SynchronousTestCase):
    """An unknown user costs a password check, like a wrong password does."""

    def test_unknown_user_still_checks_a_hash(self):
        from indimail_tw.auth.checkers import authenticate
        from indimail_tw.storage.engine import SQLiteEngine

        checked = []

        class Proof:
            def check(self, stored):
                checked.append(stored)
                return False

        engine = SQLiteEngine(os.path.join(os.path.abspath(self.mktemp()), "users.db"))
        engine.run_sync(engine.prepare)
        outcome = engine.run_sync(authenticate, "nobody@example.com", Proof(), "imap", "",
                                  AuthPolicy())
        self.assertEqual(outcome.status, "unknown")
        self.assertEqual(len(checked), 1)
        self.assertTrue(checked[0].startswith("$6$"))
        outcome = engine.run_sync(authenticate, "bare", Proof(), "imap", "", AuthPolicy())
        self.assertEqual(outcome.status, "unknown")
        self.assertEqual(len(checked), 2)
