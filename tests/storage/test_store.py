"""The user store on both engines: the same tests for SQLite and MariaDB."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from indimail_tw.errors import DuplicateEntry, SchemaTooNew, StoreError, StoreUnavailable
from indimail_tw.storage import (
    MySQLEngine, MySQLParams, SQLiteEngine, TableNames, User, UserStore,
)
from indimail_tw.storage.engine import SCHEMA_VERSION
from indimail_tw.storage.store import REPOS
from tests.support import EngineMixin

R = REPOS


def alice(**kw) -> User:
    base = dict(name="alice", domain="example.com", passwd="$6$x$y", gid=0,
                gecos="Alice", dir="/mail/A2E/example.com/alice", shell="NOQUOTA")
    base.update(kw)
    return User(**base)


class StoreTestsMixin(EngineMixin):
    def setUp(self):
        self.engine = self.make_engine()
        self.engine.run_sync(self.engine.prepare)

    def sync(self, fn, *args):
        return self.engine.run_sync(fn, *args)

    def test_add_get_delete(self):
        self.sync(R.users.add, alice())
        got = self.sync(R.users.get, "alice", "example.com")
        self.assertEqual(got.passwd, "$6$x$y")
        self.assertEqual(got.gecos, "Alice")
        self.assertTrue(got.active)
        self.assertEqual(got.maildir, "/mail/A2E/example.com/alice/Maildir")
        self.assertIsNone(self.sync(R.users.get, "bob", "example.com"))
        self.assertTrue(self.sync(R.users.delete, "alice", "example.com"))
        self.assertIsNone(self.sync(R.users.get, "alice", "example.com"))
        self.assertFalse(self.sync(R.users.delete, "alice", "example.com"))

    def test_duplicate_is_refused_in_either_table(self):
        self.sync(R.users.add, alice(active=False))
        self.assertRaises(DuplicateEntry, self.sync, R.users.add, alice())

    def test_failed_transaction_leaves_nothing(self):
        def add_then_fail(txn):
            R.users.add(txn, alice())
            raise RuntimeError("home directory could not be made")

        self.assertRaises(RuntimeError, self.sync, add_then_fail)
        self.assertIsNone(self.sync(R.users.get, "alice", "example.com"))

    def test_activation_moves_rows(self):
        self.sync(R.users.add, alice(gid=0x20))
        self.assertTrue(self.sync(R.users.set_active, "alice", "example.com", False))
        got = self.sync(R.users.get, "alice", "example.com")
        self.assertFalse(got.active)
        self.assertEqual(got.gid, 0x20)
        self.assertFalse(self.sync(R.users.set_active, "alice", "example.com", False))
        self.assertTrue(self.sync(R.users.set_active, "alice", "example.com", True))
        self.assertTrue(self.sync(R.users.get, "alice", "example.com").active)

    def test_updates(self):
        self.sync(R.users.add, alice())
        self.sync(R.users.set_password, "alice", "example.com", "{CRAM}a,b", "scramdata")
        self.sync(R.users.set_flags, "alice", "example.com", 0x2 | 0x8)
        self.sync(R.users.set_quota, "alice", "example.com", "5242880,100")
        self.sync(R.users.set_gecos, "alice", "example.com", "Alice A.")
        got = self.sync(R.users.get, "alice", "example.com")
        self.assertEqual((got.passwd, got.gid, got.shell, got.gecos),
                         ("{CRAM}a,b", 10, "5242880,100", "Alice A."))

    def test_domain_listing_and_count(self):
        self.sync(R.users.add, alice())
        self.sync(R.users.add, alice(name="bob", active=False))
        self.sync(R.users.add, alice(domain="other.org"))
        users = self.sync(R.users.list_domain, "example.com")
        self.assertEqual([(u.name, u.active) for u in users], [("alice", True), ("bob", False)])
        self.assertEqual(self.sync(R.users.count_domain, "example.com"), 2)
        self.assertEqual(self.sync(R.users.delete_domain, "example.com"), 2)
        self.assertEqual(self.sync(R.users.count_domain, "other.org"), 1)

    def test_valias(self):
        self.assertTrue(self.sync(R.aliases.add, "sales", "example.com", "&bob@example.com"))
        self.assertFalse(self.sync(R.aliases.add, "sales", "example.com", "&bob@example.com"))
        self.sync(R.aliases.add, "sales", "example.com", "/mail/x/Maildir/")
        self.assertEqual(self.sync(R.aliases.lines, "sales", "example.com"),
                         ["&bob@example.com", "/mail/x/Maildir/"])
        self.assertEqual(self.sync(R.aliases.reverse, "bob@example.com"),
                         [("sales", "example.com", "&bob@example.com")])
        self.assertEqual(self.sync(R.aliases.delete, "sales", "example.com", "/mail/x/Maildir/"), 1)
        self.assertEqual(self.sync(R.aliases.list_domain, "example.com"),
                         [("sales", "&bob@example.com")])

    def test_lastauth_relay_atrn_ipmap(self):
        self.sync(R.lastauth.record, "alice", "example.com", "imap", "127.0.0.1", 0, "A")
        self.sync(R.lastauth.record, "alice", "example.com", "imap", "127.0.0.2", 0, "A")
        seen = self.sync(R.lastauth.get, "alice", "example.com")
        self.assertEqual(list(seen), ["imap"])
        self.assertEqual(seen["imap"][1], "127.0.0.2")

        self.sync(R.relay.add, "alice@example.com", "192.0.2.1", 1000)
        self.assertTrue(self.sync(R.relay.allowed, "192.0.2.1", 900))
        self.assertTrue(self.sync(R.relay.allowed, "192.0.2.1", 900, "ALICE@example.com"))
        self.assertFalse(self.sync(R.relay.allowed, "192.0.2.1", 900, "bob@example.com"))
        self.assertFalse(self.sync(R.relay.allowed, "192.0.2.1", 1001))
        self.assertEqual(self.sync(R.relay.expire, 1001), 1)

        self.assertTrue(self.sync(R.atrn.add, "alice", "example.com", "dialup.org"))
        self.assertFalse(self.sync(R.atrn.add, "alice", "example.com", "dialup.org"))
        self.assertEqual(self.sync(R.atrn.domains_of, "alice", "example.com"), ["dialup.org"])

        self.sync(R.ipmap.set, "192.0.2.10", "example.com")
        self.sync(R.ipmap.set, "192.0.2.10", "other.org")
        self.assertEqual(self.sync(R.ipmap.domain_for, "192.0.2.10"), "other.org")
        self.assertIsNone(self.sync(R.ipmap.domain_for, "192.0.2.11"))

    def test_dir_control_allocation(self):
        dirs = [self.sync(R.dircontrol.allocate, "example.com", 2) for _ in range(5)]
        self.assertEqual(dirs, ["", "", "0", "0", "1"])
        self.sync(R.dircontrol.release, "example.com")
        self.assertEqual(self.sync(R.dircontrol.get, "example.com").cur_users, 4)

    def test_alias_domains(self):
        self.sync(R.aliasdomains.add, "example.net", "example.com")
        self.assertEqual(self.sync(R.aliasdomains.real_domain, "example.net"), "example.com")
        self.assertEqual(self.sync(R.aliasdomains.aliases_of, "example.com"), ["example.net"])
        self.assertRaises(DuplicateEntry, self.sync, R.aliasdomains.add, "example.net", "x.org")

    def test_prepare_is_idempotent_and_refuses_newer_schema(self):
        self.engine.run_sync(self.engine.prepare)
        self.sync(lambda txn: txn.execute("UPDATE indimail_tw_schema SET version = ?",
                                          (SCHEMA_VERSION + 1,)))
        self.assertRaises(SchemaTooNew, self.engine.run_sync, self.engine.prepare)
        self.assertRaises(SchemaTooNew, self.engine.run_sync, self.engine.check)

    @defer.inlineCallbacks
    def test_async_facade(self):
        store = UserStore(self.engine)
        yield store.prepare()
        self.sync(R.users.add, alice())
        self.sync(R.aliasdomains.add, "example.net", "example.com")
        user, real = yield store.get_user("alice", "example.net")
        self.assertEqual((user.name, real), ("alice", "example.com"))
        yield store.set_active("alice", "example.com", False)
        user, _ = yield store.get_user("alice", "example.com")
        self.assertFalse(user.active)
        yield store.record_lastauth("alice", "example.com", "pop3", "127.0.0.1")
        yield store.add_relay("alice@example.com", "127.0.0.1", 500)
        self.assertTrue((yield store.relay_allowed("127.0.0.1", 400)))

    def test_blocking_reads_on_the_threads_own_connection(self):
        import threading

        store = UserStore(self.engine)
        self.sync(R.users.add, alice())
        self.sync(R.aliasdomains.add, "example.net", "example.com")
        self.sync(R.aliases.add, "sales", "example.com", "&alice@example.com")
        user, real = store.get_user_now("alice", "example.net")
        self.assertEqual((user.name, real), ("alice", "example.com"))
        self.assertEqual(store.alias_lines_now("sales", "example.com"),
                         ["&alice@example.com"])
        first = self.engine._reader()
        self.assertIsNotNone(first)
        store.get_user_now("nobody", "example.com")
        self.assertIs(self.engine._reader(), first)        # kept for the thread's next call
        self.sync(R.users.set_active, "alice", "example.com", False)
        self.assertFalse(store.get_user_now("alice", "example.com")[0].active)  # sees writes
        other: list = []
        thread = threading.Thread(target=lambda: other.append(
            (store.get_user_now("alice", "example.com")[0].name, self.engine._reader())))
        thread.start()
        thread.join()
        self.assertEqual(other[0][0], "alice")
        self.assertIsNot(other[0][1], first)               # another thread, another one
        self.assertEqual(len(self.engine._readers), 2)
        self.engine.close()
        self.assertIsNone(self.engine._reader())           # close() drops them all
        self.assertEqual(self.engine._readers, set())
        self.assertEqual(store.get_user_now("alice", "example.com")[0].name, "alice")

    def test_a_failed_blocking_read_drops_the_connection(self):
        store = UserStore(self.engine)
        store.get_user_now("alice", "example.com")
        first = self.engine._reader()

        def broken(txn):
            txn.query("SELECT no_such_column FROM indimail")

        self.assertRaises(StoreError, self.engine.run_read, broken)
        self.assertIsNone(self.engine._reader())
        self.assertNotIn(first, self.engine._readers)
        self.assertIsNone(store.get_user_now("alice", "example.com")[0])

    @defer.inlineCallbacks
    def test_async_errors_are_translated(self):
        store = UserStore(self.engine)
        yield store.prepare()
        self.sync(R.aliasdomains.add, "a.org", "b.org")
        d = self.engine.runInteraction(R.aliasdomains.add, "a.org", "c.org")
        yield self.assertFailure(d, DuplicateEntry)


class SQLiteStoreTests(StoreTestsMixin, unittest.TestCase):
    backend = "sqlite"


class MySQLStoreTests(StoreTestsMixin, unittest.TestCase):
    backend = "mysql"

    def test_overridden_table_names(self):
        engine = self.make_engine(TableNames(indimail="users_on", indibak="users_off"))
        engine.run_sync(engine.prepare)
        engine.run_sync(R.users.add, alice())
        row = engine.run_sync(lambda txn: txn.query_one("SELECT pw_name FROM users_on"))
        self.assertEqual(row[0], "alice")

    def test_existing_indimail_database_without_scram_column(self):
        """A database created by an older IndiMail (no scram column) works unchanged."""
        engine = self.make_engine()
        engine.run_sync(lambda txn: txn.execute(
            "CREATE TABLE indimail (pw_name char(40) not null, pw_domain char(67) not null,"
            " pw_passwd char(128) not null, pw_uid int, pw_gid int, pw_gecos char(48) not null,"
            " pw_dir char(156), pw_shell char(30), timestamp TIMESTAMP not null DEFAULT"
            " CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, primary key (pw_name, pw_domain))"))
        engine.run_sync(engine.check)
        engine.run_sync(engine.prepare)
        engine.run_sync(R.users.add, alice(scram="x"))
        engine.run_sync(R.users.set_password, "alice", "example.com", "$1$a$b", "y")
        self.assertEqual(engine.run_sync(R.users.get, "alice", "example.com").passwd, "$1$a$b")

    def test_unreachable_server_is_temporary(self):
        engine = MySQLEngine(MySQLParams(host="127.0.0.1", port=1, user="x", password="y"))
        self.assertRaises(StoreUnavailable, engine.run_sync, engine.check)

    def test_unreachable_server_is_temporary_for_blocking_reads(self):
        engine = MySQLEngine(MySQLParams(host="127.0.0.1", port=1, user="x", password="y"))
        self.addCleanup(engine.close)
        self.assertRaises(StoreUnavailable, UserStore(engine).get_user_now, "a", "b.org")
        self.assertIsNone(engine._reader())

    def test_a_dropped_connection_is_replaced_once(self):
        store = UserStore(self.engine)
        self.sync(R.users.add, alice())
        store.get_user_now("alice", "example.com")
        first = self.engine._reader()
        first.close()                      # as when the server drops an idle connection
        user, _ = store.get_user_now("alice", "example.com")
        self.assertEqual(user.name, "alice")
        self.assertIsNot(self.engine._reader(), first)

    @defer.inlineCallbacks
    def test_unreachable_server_is_temporary_async(self):
        engine = MySQLEngine(MySQLParams(host="127.0.0.1", port=1, user="x", password="y"))
        self.addCleanup(engine.close)
        yield self.assertFailure(engine.runInteraction(engine.check), StoreUnavailable)


class SQLiteOnlyTests(unittest.TestCase):
    def test_missing_database_without_create(self):
        engine = SQLiteEngine(self.mktemp() + "/none.sqlite", create=False)
        self.assertRaises(StoreUnavailable, engine.run_sync, engine.check)

    def test_wal_mode(self):
        path = self.mktemp()
        engine = SQLiteEngine(path + "/db.sqlite")
        engine.run_sync(engine.prepare)
        mode = engine.run_sync(lambda txn: txn.query_one("PRAGMA journal_mode"))[0]
        self.assertEqual(mode, "wal")


class HostMysqlTests(unittest.SynchronousTestCase):
    def test_forms(self):
        from indimail_tw.storage.engine import parse_host_mysql
        p = parse_host_mysql("db.example.com\n", {})
        self.assertEqual((p.host, p.user, p.password, p.port, p.database),
                         ("db.example.com", "indimail", "ssh-1.5-", 3306, "indimail"))
        p = parse_host_mysql("# comment\n127.0.0.1:root::3307\n", {})
        self.assertEqual((p.host, p.user, p.password, p.port), ("127.0.0.1", "root", "", 3307))
        p = parse_host_mysql("localhost:u:p:/run/mysqld/mysqld.sock:ssl", {})
        self.assertEqual((p.socket, p.ssl), ("/run/mysqld/mysqld.sock", True))
        p = parse_host_mysql("localhost:u:p:3306", {"MYSQL_HOST": "h2", "MYSQL_VPORT": "3310",
                                                     "MYSQL_DATABASE": "mail"})
        self.assertEqual((p.host, p.port, p.database), ("h2", 3310, "mail"))

    def test_bad_port(self):
        from indimail_tw.errors import StoreError
        from indimail_tw.storage.engine import parse_host_mysql
        self.assertRaises(StoreError, parse_host_mysql, "h:u:p:notaport", {})
        self.assertRaises(StoreError, parse_host_mysql, "h:u:p:70000", {})


def _concurrent_writer(path: str, worker: int, count: int) -> int:
    engine = SQLiteEngine(path)
    failures = 0
    for i in range(count):
        def txn_fn(txn, name=f"w{worker}u{i}"):
            REPOS.dircontrol.allocate(txn, "example.com", 100)    # read, then write
            REPOS.users.add(txn, User(name=name, domain="example.com", passwd="x"))
        try:
            engine.run_sync(txn_fn)
        except Exception:  # noqa: BLE001
            failures += 1
    return failures


class SQLiteConcurrencyTests(unittest.TestCase):
    def test_processes_writing_at_once_never_fail(self):
        """Read-then-write transactions from several processes (CLIs beside the
        server) wait for each other instead of failing with 'database is locked'."""
        import subprocess
        import sys

        path = os.path.join(os.path.abspath(self.mktemp()), "db.sqlite")
        engine = SQLiteEngine(path)
        engine.run_sync(engine.prepare)
        # Separate interpreters (not fork: forking a process that runs threads
        # can deadlock the child).
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = ("import sys; from tests.storage.test_store import _concurrent_writer; "
                "print(_concurrent_writer(sys.argv[1], int(sys.argv[2]), 25))")
        children = [subprocess.Popen([sys.executable, "-c", code, path, str(w)], cwd=root,
                                     stdout=subprocess.PIPE, text=True) for w in range(4)]
        failures = [int(child.communicate(timeout=300)[0].strip()) for child in children]
        self.assertEqual(failures, [0, 0, 0, 0])
        self.assertEqual(engine.run_sync(R.users.count_domain, "example.com"), 100)
        self.assertEqual(engine.run_sync(R.dircontrol.get, "example.com").cur_users, 100)
