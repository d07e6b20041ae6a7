"""vadduser, vdeluser, vpasswd, vmoduser, vsetuserquota, vuserinfo as a user runs them."""

from __future__ import annotations

import os

from indimail_tw.auth.flags import Flags
from indimail_tw.auth.passwords import verify
from indimail_tw.storage.store import REPOS
from tests.admin.helpers import ToolCase


class UserTests(ToolCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_domain("example.com")

    def test_vadduser_creates_row_home_maildir(self):
        self.ok("vadduser", "-c", "Alice Liddell", "-q", "5M", "alice@example.com", "pw1")
        alice = self.user("alice", "example.com")
        self.assertTrue(alice.active)
        self.assertEqual(alice.gecos, "Alice Liddell")
        self.assertEqual(alice.shell, "5242880")
        self.assertEqual((alice.uid, alice.gid), (1, 0))
        self.assertTrue(verify(alice.passwd, "pw1"))
        self.assertEqual(alice.dir, self.mail("A2E", "example.com", "alice"))
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(os.path.join(alice.maildir, sub)))
        self.assertTrue(self.read(os.path.join(alice.maildir, "maildirsize"))
                        .startswith("5242880S\n"))
        self.assertIn("add", self.db(REPOS.lastauth.get, "alice", "example.com"))
        self.assertEqual(self.db(REPOS.dircontrol.get, "example.com").cur_users, 2)
        # buckets by first character
        for name, bucket in [("frank", "F2K"), ("lucy", "L2P"), ("quinn", "Q2S"),
                             ("tom", "T2Zsym"), ("9lives", "T2Zsym"), ("_x", "T2Zsym")]:
            self.ok("vadduser", f"{name}@example.com", "pw")
            self.assertEqual(self.user(name, "example.com").dir,
                             self.mail(bucket, "example.com", name))
        self.assertFalse(os.path.exists(os.path.join(self.user("tom", "example.com").maildir,
                                                     "maildirsize")))
        self.fails("vadduser", "alice@example.com", "pw", message="exists")

    def test_hashed_directories_and_base_path(self):
        base = os.path.join(self.root, "base2")
        self.ok("vadduser", "-l", "1", "-B", base, "a1@example.com", "pw")
        self.ok("vadduser", "-l", "1", "-B", base, "a2@example.com", "pw")
        self.assertEqual(self.user("a2", "example.com").dir,
                         os.path.join(base, "A2E", "example.com", "1", "a2"))
        self.assertTrue(os.path.isdir(self.user("a2", "example.com").maildir))

    def test_password_sources_and_methods(self):
        self.ok("vadduser", "stdin@example.com", input="from stdin\n")
        self.assertTrue(verify(self.user("stdin", "example.com").passwd, "from stdin"))
        out = self.ok("vadduser", "-r", "16", "rand@example.com")
        self.assertRegex(out, r"^Password is [A-Za-z0-9]{16}\n$")
        self.assertTrue(verify(self.user("rand", "example.com").passwd, out.split()[-1]))
        self.ok("vadduser", "-h", "SHA-256", "sha@example.com", "pw")
        self.assertTrue(self.user("sha", "example.com").passwd.startswith("$5$"))
        self.ok("vadduser", "-e", "pre@example.com", "$1$salt$hash")
        self.assertEqual(self.user("pre", "example.com").passwd, "$1$salt$hash")
        self.ok("vadduser", "-e", "-h", "MD5", "eh@example.com", "pw")  # -h wins, as IndiMail
        self.assertTrue(verify(self.user("eh", "example.com").passwd, "pw"))
        self.assertEqual(self.ok("vadduser", "-r", "8", "given@example.com", "pw"), "")
        self.assertTrue(verify(self.user("given", "example.com").passwd, "pw"))
        self.ok("vadduser", "-m", "SCRAM-SHA-256", "scram@example.com", "pw")
        scram = self.user("scram", "example.com")
        # IndiMail's layout: crypt hash in pw_passwd, the record in the scram column
        self.assertTrue(scram.passwd.startswith("$6$"))
        self.assertTrue(scram.scram.startswith("{SCRAM-SHA-256}4096,"))
        self.assertTrue(verify(scram.secret, "pw"))
        self.assertTrue(verify(scram.passwd, "pw"))
        # precedence: domain hash_method file > PASSWORD_HASH > control/hash_method
        with open(os.path.join(self.control, "hash_method"), "w") as f:
            f.write("MD5\n")
        self.ok("vadduser", "ctl@example.com", "pw")
        self.assertTrue(self.user("ctl", "example.com").passwd.startswith("$1$"))
        self.ok("vadduser", "env@example.com", "pw", env={"PASSWORD_HASH": "2"})
        self.assertTrue(self.user("env", "example.com").passwd.startswith("$5$"))
        self.ok("vmoddomain", "-H", "SHA-512", "example.com")
        self.ok("vadduser", "dom@example.com", "pw", env={"PASSWORD_HASH": "2"})
        self.assertTrue(self.user("dom", "example.com").passwd.startswith("$6$"))
        self.fails("vadduser", "-m", "ROT13", "bad@example.com", "pw", status=100)
        self.fails("vadduser", "nopw@example.com", input="", status=100,
                   message="no password")
        self.assertIsNone(self.user("nopw", "example.com"))

    def test_inactive_users_and_rfc_mailboxes(self):
        self.ok("vadduser", "-i", "sleepy@example.com", "pw")
        self.assertFalse(self.user("sleepy", "example.com").active)
        self.ok("vadduser", "-i", "abuse@example.com", "pw")
        self.assertTrue(self.user("abuse", "example.com").active)

    def test_default_quota_from_hard_quota(self):
        self.ok("vadduser", "hq@example.com", "pw", env={"HARD_QUOTA": "2097152"})
        self.assertEqual(self.user("hq", "example.com").shell, "2097152")

    def test_failure_leaves_no_row_and_no_home(self):
        # a file where the home directory must go
        os.makedirs(self.mail("A2E", "example.com"), exist_ok=True)
        with open(self.mail("A2E", "example.com", "bob"), "w") as f:
            f.write("x")
        self.fails("vadduser", "bob@example.com", "pw", message="exists already")
        self.assertIsNone(self.user("bob", "example.com"))
        self.assertEqual(self.db(REPOS.dircontrol.get, "example.com").cur_users, 1)
        self.assertEqual(self.db(REPOS.lastauth.get, "bob", "example.com"), {})

    def test_unusable_mail_dir_leaves_no_row(self):
        with open(self.mail("A2E"), "w") as f:  # as good as an unwritable directory
            f.write("not a directory")
        self.fails("vadduser", "carol@example.com", "pw", message="cannot create directory")
        self.assertIsNone(self.user("carol", "example.com"))
        self.assertEqual(self.db(REPOS.lastauth.get, "carol", "example.com"), {})

    def test_vdeluser(self):
        self.ok("vadduser", "dave@example.com", "pw")
        self.ok("valias", "-i", "&elsewhere@example.org", "dave@example.com")
        self.ok("vatrn", "-i", "etrn.example", "dave@example.com")
        home = self.user("dave", "example.com").dir
        self.ok("vdeluser", "dave@example.com")
        self.assertIsNone(self.user("dave", "example.com"))
        self.assertFalse(os.path.exists(home))
        self.assertEqual(os.listdir(os.path.dirname(home)), [])
        self.assertEqual(self.db(REPOS.aliases.lines, "dave", "example.com"), [])
        self.assertEqual(self.db(REPOS.lastauth.get, "dave", "example.com"), {})
        self.assertEqual(self.db(REPOS.atrn.list), [])
        self.assertEqual(self.db(REPOS.dircontrol.get, "example.com").cur_users, 1)
        self.fails("vdeluser", "dave@example.com", message="no such user")
        self.fails("vdeluser", "Dave@example.com", status=100)

    def test_vpasswd(self):
        self.ok("vadduser", "erin@example.com", "old")
        self.ok("vpasswd", "erin@example.com", input="new one\n")
        erin = self.user("erin", "example.com")
        self.assertTrue(verify(erin.passwd, "new one"))
        self.assertIn("pass", self.db(REPOS.lastauth.get, "erin", "example.com"))
        self.ok("vpasswd", "erin@example.com", "argpw")
        self.assertTrue(verify(self.user("erin", "example.com").passwd, "argpw"))
        out = self.ok("vpasswd", "-r", "9", "erin@example.com")
        self.assertTrue(verify(self.user("erin", "example.com").passwd, out.split()[-1]))
        self.ok("vpasswd", "-C", "erin@example.com", "cram")
        erin = self.user("erin", "example.com")
        self.assertEqual(erin.scram, "{CRAM}cram")
        self.assertTrue(erin.secret.startswith("{CRAM}cram,$6$"))
        self.ok("vpasswd", "erin@example.com", "plain-again")
        self.assertIsNone(self.user("erin", "example.com").scram)
        out = self.ok("vuserinfo", "-p", "erin@example.com")
        self.assertNotIn("cram", out.replace("{CRAM}", ""))
        self.fails("vpasswd", "erin@example.com", input="", status=100)
        self.fails("vpasswd", "nobody@example.com", "pw", message="no such user")

    def test_vmoduser_flags_quota_gecos_state(self):
        self.ok("vadduser", "-q", "5M", "fay@example.com", "pw")
        self.ok("vmoduser", "-p", "-i", "-s", "fay@example.com")
        flags = Flags.NO_POP | Flags.NO_IMAP | Flags.NO_SMTP
        self.assertEqual(self.user("fay", "example.com").gid, flags)
        self.ok("vmoduser", "-t", "-p", "-r", "fay@example.com")
        self.assertEqual(self.user("fay", "example.com").gid,
                         Flags.NO_IMAP | Flags.NO_SMTP | Flags.NO_RELAY)
        self.ok("vmoduser", "-x", "-0", "-3", "-o", "-a", "-u", "-d", "-w", "-b",
                "fay@example.com")
        self.assertEqual(self.user("fay", "example.com").gid,
                         Flags.V_USER0 | Flags.V_USER3 | Flags.V_OVERRIDE | Flags.QA_ADMIN
                         | Flags.NO_DIALUP | Flags.NO_PASSWD_CHNG | Flags.NO_WEBMAIL
                         | Flags.BOUNCE_MAIL)
        self.ok("vmoduser", "-x", "fay@example.com")
        self.assertEqual(self.user("fay", "example.com").gid, 0)
        # relative quota, rewriting maildirsize
        self.ok("vmoduser", "-q", "-1M", "fay@example.com")
        fay = self.user("fay", "example.com")
        self.assertEqual(fay.shell, "4194304")
        self.assertTrue(self.read(os.path.join(fay.maildir, "maildirsize"))
                        .startswith("4194304S\n"))
        self.ok("vmoduser", "-q", "+2M", "-c", "Fay Wray", "fay@example.com")
        fay = self.user("fay", "example.com")
        self.assertEqual((fay.shell, fay.gecos), ("6291456", "Fay Wray"))
        # active <-> inactive
        self.ok("vmoduser", "-n", "fay@example.com")
        self.assertFalse(self.user("fay", "example.com").active)
        self.assertIn("INAC", self.db(REPOS.lastauth.get, "fay", "example.com"))
        self.ok("vmoduser", "-n", "fay@example.com")
        self.assertTrue(self.user("fay", "example.com").active)
        self.assertIn("ACTI", self.db(REPOS.lastauth.get, "fay", "example.com"))
        # passwords
        self.ok("vmoduser", "-P", "modpw", "fay@example.com")
        self.assertTrue(verify(self.user("fay", "example.com").passwd, "modpw"))
        self.ok("vmoduser", "-e", "$6$s$h", "fay@example.com")
        self.assertEqual(self.user("fay", "example.com").passwd, "$6$s$h")
        # refusals
        self.fails("vmoduser", "-p", "Fay@example.com", status=100, message="uppercase")
        self.fails("vmoduser", "fay@example.com", status=100, message="nothing to change")
        self.fails("vmoduser", "-h", "MD5", "fay@example.com", status=100)
        self.fails("vmoduser", "-q", "-100M", "fay@example.com", status=100)
        self.fails("vmoduser", "-p", "ghost@example.com", message="no such user")

    def test_vsetuserquota(self):
        self.ok("vadduser", "gus@example.com", "pw")
        maildir = self.user("gus", "example.com").maildir
        with open(os.path.join(maildir, "new", "1.msg"), "w") as f:
            f.write("x" * 100)
        self.ok("vsetuserquota", "gus@example.com", "10M")
        self.assertEqual(self.user("gus", "example.com").shell, "10485760")
        self.assertEqual(self.read(os.path.join(maildir, "maildirsize")),
                         "10485760S\n100 1\n")
        out = self.ok("vuserinfo", "-q", "gus@example.com")
        self.assertIn("10485760 [10.00 MiB]", out)
        self.assertIn("100S,1C", out)
        self.ok("vsetuserquota", "gus@example.com", "NOQUOTA")
        self.assertEqual(self.user("gus", "example.com").shell, "NOQUOTA")
        self.assertFalse(os.path.exists(os.path.join(maildir, "maildirsize")))
        self.assertIn("unlimited", self.ok("vuserinfo", "-q", "gus@example.com"))
        self.fails("vsetuserquota", "gus@example.com", "+1M", status=100)
        self.fails("vsetuserquota", "gus@example.com", status=100)
        self.fails("vsetuserquota", "nobody@example.com", "1M", message="no such user")

    def test_vuserinfo(self):
        self.ok("vadduser", "-c", "Hal", "hal@example.com", "secret-pw")
        self.ok("vmoduser", "-p", "hal@example.com")
        self.ok("valias", "-i", "&hal@elsewhere.org", "hal@example.com")
        out = self.ok("vuserinfo", "hal@example.com")
        self.assertIn("name          : hal@example.com", out)
        self.assertRegex(out, r"passwd        : \$6\$\S+ \(SHA-512\)")
        self.assertIn("-pop access closed", out)
        self.assertIn("gecos         : Hal", out)
        self.assertIn(f"dir           : {self.mail('F2K', 'example.com', 'hal')}", out)
        self.assertIn("account       : active", out)
        self.assertIn("Added On", out)
        self.assertIn("forwarding    : &hal@elsewhere.org", out)
        self.assertNotIn("secret-pw", out)
        self.assertEqual(self.ok("vuserinfo", "-n", "hal@example.com"),
                         "name          : hal@example.com\n")
        self.ok("vmoduser", "-P", "clear-pw", "-m", "SCRAM-SHA-1", "-C", "hal@example.com")
        out = self.ok("vuserinfo", "-p", "hal@example.com")
        self.assertEqual(out, "passwd        : {SCRAM-SHA-1} record (not shown)\n")
        self.ok("vpasswd", "-e", "hal@example.com", "plain-text-pw")
        out = self.ok("vuserinfo", "-a", "hal@example.com")
        self.assertNotIn("plain-text-pw", out)
        self.assertIn("clear text (not shown)", out)
        self.fails("vuserinfo", "nobody@example.com", message="no such user")
        self.fails("vuserinfo", status=100)


class UserInputTests(ToolCase):
    """Input checks: no database involved, so SQLite only."""

    def setUp(self) -> None:
        super().setUp()
        self.add_domain("example.com")

    def test_bad_user_names(self):
        for address, message in [
                ("Alice@example.com", "uppercase"), ("a..b@example.com", "'..'"),
                ("a/b@example.com", "'/'"), ("a:b@example.com", "':'"),
                ("a b@example.com", "whitespace"), ("a\tb@example.com", "whitespace"),
                ("a\x01b@example.com", "control"), ("a+b@example.com", "not allowed"),
                ("@example.com", "empty"), ("x" * 41 + "@example.com", "longer than 40"),
                ("a@b@example.com", "'@'"), (".hidden@example.com", "'.'"),
                ("alice@Example.com", "uppercase"), ("alice@bad..dom", "empty label")]:
            self.fails("vadduser", address, "pw", status=100, message=message)
        self.fails("vadduser", "alice@nosuch.org", "pw", message="does not exist")
        self.fails("vadduser", "alice", "pw", status=100, message="no domain")
        self.ok("vadduser", "alice", "pw", env={"DEFAULT_DOMAIN": "example.com"})
        self.ok("vadduser", "a+b@example.com", "pw", env={"ALLOWCHARS": "+"})
        self.fails("vadduser", "a/b@example.com", "pw", env={"ALLOWCHARS": "/"},
                   status=100)
        self.fails("vadduser", "-c", "a:b", "colon@example.com", "pw", status=100)
        self.fails("vadduser", "-q", "lots", "q@example.com", "pw", status=100)
        self.assertEqual(self.db(REPOS.users.count_domain, "example.com"), 3)


class UserTestsSQLite(UserTests):
    backend = "sqlite"


class UserTestsMariaDB(UserTests):
    backend = "mysql"


del UserTests
