"""IndiMail's post-login tasks (reference 7.2) on both store backends."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import textwrap
from types import SimpleNamespace

from twisted.cred.portal import Portal
from twisted.internet import defer, reactor
from twisted.trial import unittest

from indimail_tw import fsutil
from indimail_tw.auth import passwords
from indimail_tw.auth.checkers import AuthPolicy, StoreChecker
from indimail_tw.auth.credentials import TemporaryLoginFailure
from indimail_tw.auth.flags import Flags
from indimail_tw.auth.postlogin import LoginTasks, LoginTooSoon
from indimail_tw.auth.realm import MaildirRealm, MailUser
from indimail_tw.policy.base import Client, RcptRequest, SessionContext, Transaction
from indimail_tw.policy.relay import NO_RELAY, RelayControl
from indimail_tw.storage import MySQLEngine, MySQLParams, User, UserStore
from indimail_tw.storage.store import REPOS
from tests.support import EngineMixin

DOMAIN = "example.com"
IP = "192.0.2.7"


class LoginFixture(EngineMixin):
    """A store with a few users whose homes live in a temporary root."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="itw-login-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.engine = self.make_engine()
        self.engine.run_sync(self.engine.prepare)
        self.store = UserStore(self.engine)
        self.environ: dict[str, str] = {"MIGRATEUSER": os.path.join(self.root, "absent")}
        secret = passwords.make_hash("secret", "SHA-512")

        def users(txn):
            def add(name, **kw):
                REPOS.users.add(txn, User(name=name, domain=DOMAIN, passwd=secret,
                                          dir=os.path.join(self.root, name), **kw))
            add("alice")
            add("norelay", gid=Flags.NO_RELAY)
            add("nopop", gid=Flags.NO_POP)
            add("sleepy", active=False)
            add("full", gid=Flags.BOUNCE_MAIL | Flags.NO_DIALUP, shell="1000")
            add("roomy", gid=Flags.BOUNCE_MAIL, shell="1048576")
            add("unlimited", gid=Flags.BOUNCE_MAIL)
            REPOS.ipmap.set(txn, "192.0.2.25", DOMAIN)

        self.engine.run_sync(users)

    def context(self, **env: str) -> SimpleNamespace:
        environ = dict(self.environ, **env)
        checker = StoreChecker(self.engine, AuthPolicy(environ=environ))
        return SimpleNamespace(store=self.store, engine=self.engine, environ=environ,
                               portal=Portal(MaildirRealm(self.store), [checker]),
                               reactor=reactor, io_pool=None)

    def user(self, name: str) -> User:
        return self.engine.run_sync(REPOS.users.get, name, DOMAIN)

    def avatar(self, name: str) -> MailUser:
        user = self.user(name)
        return MailUser(user, inactive=not user.active)

    def lastauth(self, name: str) -> dict:
        return self.engine.run_sync(REPOS.lastauth.get, name, DOMAIN)

    def relay_rows(self) -> list:
        return self.engine.run_sync(lambda txn: [tuple(r) for r in txn.query(
            "SELECT email, ipaddr FROM relay ORDER BY email")])

    def script(self, name: str, body: str) -> str:
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + textwrap.dedent(body))
        os.chmod(path, 0o755)
        return path


class PostLoginMixin(LoginFixture):
    def run_tasks(self, name: str = "alice", service: str = "pop3", ip: str = IP, **env):
        avatar = self.avatar(name)
        d = LoginTasks(self.context(**env)).run(avatar, service, ip)
        return d.addCallback(lambda result: (result, avatar))

    @defer.inlineCallbacks
    def test_missing_maildir_is_created(self):
        maildir = self.user("alice").maildir
        self.assertFalse(os.path.exists(maildir))
        result, _ = yield self.run_tasks()
        self.assertTrue(result.created)
        self.assertEqual(result.maildir, maildir)
        self.assertIsNone(result.message)
        self.assertFalse(result.end_session)
        for sub in ("cur", "new", "tmp"):
            mode = os.stat(os.path.join(maildir, sub)).st_mode
            self.assertTrue(stat.S_ISDIR(mode))
            self.assertEqual(stat.S_IMODE(mode), 0o700)
        result, _ = yield self.run_tasks()
        self.assertFalse(result.created)

    @defer.inlineCallbacks
    def test_relay_row_lets_smtp_relay_with_checkrelay(self):
        yield self.run_tasks(service="imap")
        self.assertEqual(self.relay_rows(), [("alice@example.com", IP)])
        allowed = yield self.store.relay_allowed(IP, 0, "Alice@Example.com")
        self.assertTrue(allowed)
        # qmail-smtpd's decision, as policy/relay.py makes it
        verdict = yield self.smtp_relay_verdict("alice@example.com", IP)
        self.assertIsNone(verdict)
        verdict = yield self.smtp_relay_verdict("alice@example.com", "192.0.2.8")
        self.assertIs(verdict, NO_RELAY)
        verdict = yield self.smtp_relay_verdict("bob@example.com", IP)
        self.assertIs(verdict, NO_RELAY)

    def smtp_relay_verdict(self, sender: str, ip: str):
        settings = SimpleNamespace(is_rcpthost=lambda d: d == DOMAIN, envnoathost=DOMAIN,
                                   localiphost=DOMAIN)
        ctx = SessionContext(client=Client(ip), settings=settings, env={"CHECKRELAY": "1"})
        ctx.transaction = Transaction(sender=SimpleNamespace(address=sender))
        request = RcptRequest(path=SimpleNamespace(local="x", route=()),
                              address="x@elsewhere.example")
        return defer.maybeDeferred(RelayControl(self.store).rcpt, ctx, request)

    @defer.inlineCallbacks
    def test_norelay_env_and_no_relay_flag_suppress_the_row(self):
        yield self.run_tasks(NORELAY="1")
        yield self.run_tasks("norelay")
        self.assertEqual(self.relay_rows(), [])
        self.assertIn("pop3", self.lastauth("norelay"))     # the rest still happens
        # an avatar that may not relay for another reason (checkpassword exit 3)
        avatar = MailUser(self.user("alice"), no_relay=True)
        yield LoginTasks(self.context()).run(avatar, "pop3", IP)
        self.assertEqual(self.relay_rows(), [])

    @defer.inlineCallbacks
    def test_lastauth_row(self):
        yield self.run_tasks(service="pop3")
        yield self.run_tasks(service="imap", ip="2001:db8::5")
        rows = self.lastauth("alice")
        self.assertEqual(rows["pop3"][1], IP)
        self.assertEqual(rows["imap"][1], "2001:db8::5")

    @defer.inlineCallbacks
    def test_nolastauth_skips_relay_lastauth_and_later_tasks(self):
        marker = os.path.join(self.root, "ran")
        postauth = self.script("postauth", f"echo x >> {marker}\n")
        for name in ("NOLASTAUTH", "NOLASTAUTHLOGGING"):
            result, _ = yield self.run_tasks(**{name: "1", "POSTAUTH": postauth,
                                                "MIN_LOGIN_INTERVAL": "3600"})
            self.assertTrue(os.path.isdir(result.maildir))
        self.assertEqual(self.lastauth("alice"), {})
        self.assertEqual(self.relay_rows(), [])
        self.assertFalse(os.path.exists(marker))

    @defer.inlineCallbacks
    def test_inactive_user_is_reactivated(self):
        self.assertFalse(self.user("sleepy").active)
        result, avatar = yield self.run_tasks("sleepy", NOLASTAUTH="1")
        self.assertTrue(result.reactivated)
        self.assertTrue(self.user("sleepy").active)
        self.assertFalse(avatar.inactive)
        self.assertTrue(avatar.user.active)
        self.assertIn("ACTI", self.lastauth("sleepy"))
        count = self.engine.run_sync(lambda txn: txn.query_one(
            "SELECT COUNT(*) FROM indibak WHERE pw_name = 'sleepy'")[0])
        self.assertEqual(count, 0)
        result, _ = yield self.run_tasks("sleepy")
        self.assertFalse(result.reactivated)

    @defer.inlineCallbacks
    def test_min_login_interval(self):
        yield self.run_tasks(MIN_LOGIN_INTERVAL="3600")
        yield self.assertFailure(self.run_tasks(service="imap", MIN_LOGIN_INTERVAL="3600"),
                                 LoginTooSoon)
        self.assertNotIn("imap", self.lastauth("alice"))
        # once the interval has passed, the login goes through
        self.engine.run_sync(lambda txn: txn.execute(
            "UPDATE lastauth SET timestamp = ? WHERE user = 'alice'", ("2001-01-01 00:00:00",)))
        yield self.run_tasks(service="imap", MIN_LOGIN_INTERVAL="3600")
        self.assertIn("imap", self.lastauth("alice"))
        # lastauth rows of other services (add, pass) do not count
        self.engine.run_sync(REPOS.lastauth.record, "roomy", DOMAIN, "pass", IP)
        yield self.run_tasks("roomy", MIN_LOGIN_INTERVAL="3600")

    @defer.inlineCallbacks
    def test_postauth_exit_codes(self):
        out = os.path.join(self.root, "postauth.out")
        tmp = os.path.join(self.root, "tmpmaildir")
        notice = os.path.join(self.root, "notice.txt")
        with open(notice, "w") as f:
            f.write("Your account is\nbeing migrated.\n")
        home = self.user("alice").dir

        def postauth(code):
            return self.script(f"postauth{code}", f"""\
                echo "$1 $2 $AUTHSERVICE $TCPREMOTEIP $HOME ${{PWSTRUCT%%:*}}" > {out}
                exit {code}
                """)

        result, _ = yield self.run_tasks(POSTAUTH=postauth(0), TMP_MAILDIR=tmp)
        self.assertEqual(result.maildir, self.user("alice").maildir)
        with open(out) as f:
            self.assertEqual(f.read().split(),
                             ["alice@example.com", home, "pop3", IP, home, "alice@example.com"])
        result, _ = yield self.run_tasks(service="imap", POSTAUTH=postauth(2), TMP_MAILDIR=tmp)
        self.assertEqual((result.maildir, result.message, result.end_session), (tmp, None, False))
        result, _ = yield self.run_tasks(POSTAUTH=postauth(2))
        self.assertEqual(result.maildir, home)
        result, _ = yield self.run_tasks(POSTAUTH=postauth(3), MSG_ONERROR=notice)
        self.assertEqual((result.maildir, result.message, result.end_session),
                         (home, "Your account is being migrated.", False))
        result, _ = yield self.run_tasks(POSTAUTH=postauth(3), MSG_ONERROR=notice,
                                         EXIT_ONERROR="1", TMP_MAILDIR=tmp)
        self.assertEqual((result.maildir, result.end_session), (tmp, True))
        self.assertEqual(result.message, "Your account is being migrated.")
        # another exit status: logged, the login goes on with the Maildir
        result, _ = yield self.run_tasks(POSTAUTH=postauth(1), TMP_MAILDIR=tmp)
        self.assertEqual((result.maildir, result.end_session), (self.user("alice").maildir,
                                                                False))
        # a POSTAUTH that is not executable is ignored
        result, _ = yield self.run_tasks(POSTAUTH=os.path.join(self.root, "none"))
        self.assertEqual(result.maildir, self.user("alice").maildir)

    @defer.inlineCallbacks
    def test_postauth_killed_after_timeout(self):
        postauth = self.script("slow", "exec sleep 30\n")
        result, _ = yield self.run_tasks(POSTAUTH=postauth, LOGIN_TASK_TIMEOUT="0.2",
                                         TMP_MAILDIR="/nonexistent")
        self.assertEqual(result.maildir, self.user("alice").maildir)

    @defer.inlineCallbacks
    def test_migrateuser_runs_once(self):
        count = os.path.join(self.root, "migrations")
        migrate = self.script("migrate", f'echo "$1" >> {count}\n')
        yield self.run_tasks(MIGRATEUSER=migrate)
        yield self.run_tasks(MIGRATEUSER=migrate, service="imap")
        with open(count) as f:
            self.assertEqual(f.read(), "alice@example.com\n")
        self.assertTrue(os.path.exists(os.path.join(self.user("alice").dir, "Qmail.txt")))
        # a custom flag name; a failing program is tried again at the next login
        failing = self.script("failing", f'echo "$1" >> {count}; exit 1\n')
        yield self.run_tasks(MIGRATEUSER=failing, MIGRATEFLAG="done.flag")
        yield self.run_tasks(MIGRATEUSER=failing, MIGRATEFLAG="done.flag")
        with open(count) as f:
            self.assertEqual(f.read().count("\n"), 3)
        self.assertFalse(os.path.exists(os.path.join(self.user("alice").dir, "done.flag")))

    @defer.inlineCallbacks
    def test_bounce_mail_cleared_only_under_quota(self):
        # roomy: 1 MB quota, empty Maildir -> cleared (other flags kept)
        result, avatar = yield self.run_tasks("roomy")
        self.assertFalse(self.user("roomy").gid & Flags.BOUNCE_MAIL)
        self.assertFalse(avatar.user.gid & Flags.BOUNCE_MAIL)
        self.assertEqual(self.engine.run_sync(REPOS.userquota.get, "roomy", DOMAIN), 0)
        # full: 1000-byte quota and a 2000-byte message -> kept
        maildir = self.user("full").maildir
        fsutil.make_maildir(maildir)
        with open(os.path.join(maildir, "cur", "1.2.host,S=2000:2,S"), "wb") as f:
            f.write(b"x" * 2000)
        yield self.run_tasks("full")
        self.assertEqual(self.user("full").gid, Flags.BOUNCE_MAIL | Flags.NO_DIALUP)
        # once the mail is gone it is cleared
        os.unlink(os.path.join(maildir, "cur", "1.2.host,S=2000:2,S"))
        os.unlink(os.path.join(maildir, "maildirsize"))
        yield self.run_tasks("full")
        self.assertEqual(self.user("full").gid, Flags.NO_DIALUP)
        # NOQUOTA: a BOUNCE_MAIL set by hand stays, as in local delivery
        yield self.run_tasks("unlimited")
        self.assertEqual(self.user("unlimited").gid, Flags.BOUNCE_MAIL)

    @defer.inlineCallbacks
    def test_unknown_service_refused(self):
        with self.assertRaises(ValueError):
            LoginTasks(self.context()).run(self.avatar("alice"), "smtp", IP)
        yield defer.succeed(None)


class SQLitePostLoginTests(PostLoginMixin, unittest.TestCase):
    backend = "sqlite"


class MySQLPostLoginTests(PostLoginMixin, unittest.TestCase):
    backend = "mysql"


class DeadDatabaseTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_database_down_is_temporary(self):
        root = tempfile.mkdtemp(prefix="itw-login-")
        self.addCleanup(shutil.rmtree, root, True)
        engine = MySQLEngine(MySQLParams(host="127.0.0.1", port=1))
        self.addCleanup(engine.close)
        context = SimpleNamespace(store=UserStore(engine), engine=engine, environ={},
                                  reactor=reactor, io_pool=None)
        user = User(name="alice", domain=DOMAIN, passwd="x", dir=os.path.join(root, "alice"))
        yield self.assertFailure(LoginTasks(context).run(MailUser(user), "imap", IP),
                                 TemporaryLoginFailure)
        # the Maildir step had already run; it needs no database
        self.assertTrue(os.path.isdir(os.path.join(root, "alice", "Maildir", "new")))
