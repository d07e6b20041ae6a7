"""vadddomain, vdeldomain, vaddaliasdomain, vmoddomain, vdominfo as a user runs them."""

from __future__ import annotations

import os

from indimail_tw.auth.passwords import verify
from indimail_tw.storage.store import REPOS
from tests.admin.helpers import ToolCase


class DomainTests(ToolCase):
    def test_vadddomain_creates_everything(self):
        self.add_domain("example.com")
        directory = self.domain_dir("example.com")
        self.assertEqual(self.read(os.path.join(directory, ".qmail-default")),
                         "| /usr/sbin/vdelivermail '' bounce-no-mailbox\n")
        self.assertEqual(self.control_lines("rcpthosts"), ["example.com"])
        self.assertEqual(self.control_lines("virtualdomains"), ["example.com:example.com"])
        self.assertFalse(os.path.exists(os.path.join(self.root, "users", "assign")))
        pm = self.user("postmaster", "example.com")
        self.assertTrue(pm.active)
        self.assertTrue(verify(pm.passwd, "pm-secret"))
        self.assertTrue(pm.passwd.startswith("$6$"))
        self.assertEqual(pm.dir, self.mail("L2P", "example.com", "postmaster"))
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(os.path.join(pm.dir, "Maildir", sub)))
        for alias in ("abuse", "mailer-daemon"):
            self.assertEqual(self.db(REPOS.aliases.lines, alias, "example.com"),
                             ["&postmaster@example.com"])
        self.assertIn("add", self.db(REPOS.lastauth.get, "postmaster", "example.com"))

    def test_vadddomain_options(self):
        base = os.path.join(self.root, "other-base")
        out = self.ok("vadddomain", "-B", base, "-l", "7", "-q", "1M", "-R", "-t", "-f",
                      "-h", "MD5", "-O", "-r", "10", "opts.org")
        self.assertRegex(out, r"^Password is [A-Za-z0-9]{10}\n$")
        directory = self.domain_dir("opts.org")
        self.assertEqual(self.read(os.path.join(directory, ".base_path")), base + "\n")
        self.assertEqual(self.read(os.path.join(directory, ".users_per_level")), "7\n")
        self.assertEqual(self.read(os.path.join(directory, "hash_method")), "MD5\n")
        self.assertIn("vfilter '' bounce-no-mailbox",
                      self.read(os.path.join(directory, ".qmail-default")))
        self.assertEqual(self.control_lines("chkrcptdomains"), ["opts.org"])
        self.assertEqual(self.control_lines("etrnhosts"), ["opts.org"])
        pm = self.user("postmaster", "opts.org")
        self.assertTrue(pm.passwd.startswith("$1$"))
        self.assertTrue(verify(pm.passwd, out.split()[-1]))
        self.assertEqual(pm.shell, "1048576")
        self.assertTrue(pm.dir.startswith(base + "/L2P/opts.org/"))
        self.assertIn("1048576S", self.read(os.path.join(pm.dir, "Maildir", "maildirsize")))

    def test_vadddomain_password_from_stdin_and_catchall_forward(self):
        self.ok("vadddomain", "-E", "boss@elsewhere.org", "stdin.org", input="from-stdin\n")
        self.assertTrue(verify(self.user("postmaster", "stdin.org").passwd, "from-stdin"))
        self.assertEqual(self.read(os.path.join(self.domain_dir("stdin.org"), ".qmail-default")),
                         "| /usr/sbin/vdelivermail '' boss@elsewhere.org\n")
        self.assertFalse(os.path.exists(os.path.join(self.domain_dir("stdin.org"),
                                                     ".qmail_default")))

    def test_vadddomain_verbatim_password(self):
        self.ok("vadddomain", "-e", "verbatim.org", "$6$abc$xyz")
        self.assertEqual(self.user("postmaster", "verbatim.org").passwd, "$6$abc$xyz")

    def test_duplicate_domain(self):
        self.add_domain("example.com")
        self.fails("vadddomain", "example.com", "pw", message="exists")
        self.assertEqual(self.control_lines("rcpthosts"), ["example.com"])

    def test_failure_in_the_middle_leaves_nothing(self):
        # The mail directory cannot be used (a file where it should be; as good as
        # an unwritable directory, and it works when the tests run as root).
        with open(self.mail(), "w") as f:
            f.write("not a directory")
        self.fails("vadddomain", "broken.org", "pw", message="cannot create directory")
        self._assert_no_domain("broken.org")

    def test_failure_in_the_middle_leaves_nothing_file_in_the_way(self):
        # A file where postmaster's home must go: the DB part fails after the
        # domain dir and control entries were made; all of it must go again.
        os.makedirs(self.mail("L2P", "broken.org"))
        with open(self.mail("L2P", "broken.org", "postmaster"), "w") as f:
            f.write("in the way")
        self.fails("vadddomain", "broken.org", "pw", message="exists already")
        self._assert_no_domain("broken.org")
        self.assertTrue(os.path.isfile(self.mail("L2P", "broken.org", "postmaster")))

    def _assert_no_domain(self, domain: str) -> None:
        self.assertFalse(os.path.lexists(self.domain_dir(domain)))
        for name in ("rcpthosts", "virtualdomains", "morercpthosts"):
            self.assertEqual([x for x in self.control_lines(name) if domain in x], [])
        self.assertFalse(os.path.exists(os.path.join(self.control, "rcpthosts")))
        if self.backend == "sqlite" and not os.path.exists(self.paths.sqlite_file):
            return
        self.assertIsNone(self.user("postmaster", domain))
        self.assertEqual(self.db(REPOS.aliases.list_domain, domain), [])
        self.assertIsNone(self.db(REPOS.dircontrol.get, domain))

    def test_morercpthosts_past_fifty(self):
        os.makedirs(self.control, exist_ok=True)
        with open(os.path.join(self.control, "rcpthosts"), "w") as f:
            f.write("".join(f"d{i}.example\n" for i in range(50)))
        self.add_domain("fifty-one.org")
        self.assertNotIn("fifty-one.org", self.control_lines("rcpthosts"))
        self.assertEqual(self.control_lines("morercpthosts"), ["fifty-one.org"])
        from indimail_tw.config.control import ControlDir
        self.assertTrue(ControlDir(self.control).cdb_has("morercpthosts", "fifty-one.org"))
        self.ok("vdeldomain", "fifty-one.org")
        self.assertEqual(self.control_lines("morercpthosts"), [])
        self.assertFalse(ControlDir(self.control).cdb_has("morercpthosts", "fifty-one.org"))
        self.assertEqual(len(self.control_lines("rcpthosts")), 50)

    def test_alias_domain_and_vdeldomain(self):
        self.add_domain("example.com")
        self.ok("vadduser", "alice@example.com", "pw")
        self.ok("vaddaliasdomain", "alias.org", "example.com")
        link = self.domain_dir("alias.org")
        self.assertEqual(os.readlink(link), "example.com")
        self.assertEqual(self.db(REPOS.aliasdomains.real_domain, "alias.org"), "example.com")
        self.assertIn("alias.org", self.control_lines("rcpthosts"))
        self.assertIn("alias.org:alias.org", self.control_lines("virtualdomains"))
        self.assertEqual(self.read(os.path.join(self.domain_dir("example.com"),
                                                ".aliasdomains")), "alias.org\n")
        self.fails("vaddaliasdomain", "alias.org", "example.com", message="exists")
        self.fails("vaddaliasdomain", "new.org", "missing.org", message="does not exist")
        # a user added in the alias domain lands in the real domain
        self.ok("vadduser", "bob@alias.org", "pw")
        self.assertIsNotNone(self.user("bob", "example.com"))
        out = self.ok("vdominfo", "alias.org")
        self.assertIn("aliased to example.com", out)
        out = self.ok("vdominfo", "example.com")
        self.assertIn("Users: 3", out)
        self.assertIn("alias.org", out)
        # deleting the alias keeps the real domain
        self.ok("vdeldomain", "alias.org")
        self.assertFalse(os.path.lexists(link))
        self.assertIsNone(self.db(REPOS.aliasdomains.real_domain, "alias.org"))
        self.assertNotIn("alias.org", self.control_lines("rcpthosts"))
        self.assertFalse(os.path.exists(os.path.join(self.domain_dir("example.com"),
                                                     ".aliasdomains")))
        self.assertIsNotNone(self.user("alice", "example.com"))

    def test_vdeldomain_removes_everything(self):
        self.add_domain("example.com", "-R", "-t")
        self.add_domain("keep.org")
        self.ok("vadduser", "alice@example.com", "pw")
        self.ok("vaddaliasdomain", "alias.org", "example.com")
        self.ok("vipmap", "-i", "10.1.2.3", "example.com")
        self.ok("vatrn", "-i", "example.com", "postmaster@keep.org")
        self.ok("valias", "-i", "&alice@example.com", "info@example.com")
        home = self.user("alice", "example.com").dir
        self.ok("vdeldomain", "example.com")
        self.assertFalse(os.path.lexists(self.domain_dir("example.com")))
        self.assertFalse(os.path.lexists(self.domain_dir("alias.org")))
        self.assertFalse(os.path.exists(home))
        self.assertFalse(os.path.exists(self.mail("A2E", "example.com")))
        self.assertEqual(self.control_lines("rcpthosts"), ["keep.org"])
        self.assertEqual(self.control_lines("virtualdomains"), ["keep.org:keep.org"])
        self.assertEqual(self.control_lines("chkrcptdomains"), [])
        self.assertEqual(self.control_lines("etrnhosts"), [])
        self.assertEqual(self.db(REPOS.users.count_domain, "example.com"), 0)
        self.assertEqual(self.db(REPOS.aliases.list_domain, "example.com"), [])
        self.assertEqual(self.db(REPOS.lastauth.get, "alice", "example.com"), {})
        self.assertIsNone(self.db(REPOS.dircontrol.get, "example.com"))
        self.assertIsNone(self.db(REPOS.aliasdomains.real_domain, "alias.org"))
        self.assertEqual(self.db(REPOS.ipmap.list), [])
        self.assertEqual(self.db(REPOS.atrn.list), [])
        self.assertIsNotNone(self.user("postmaster", "keep.org"))
        leftovers = [n for n in os.listdir(self.mail("L2P")) if n.startswith(".")]
        self.assertEqual(leftovers, [])
        self.fails("vdeldomain", "example.com", message="does not exist")

    def test_catchall_jobs_with_vmoddomain(self):
        """FAQ: forward, bounce or delete mail for unknown users; store in a Maildir."""
        self.add_domain("example.com")
        qmail_default = os.path.join(self.domain_dir("example.com"), ".qmail-default")
        self.ok("vmoddomain", "-h", "catch@example.com", "example.com")
        self.assertEqual(self.read(qmail_default),
                         "| /usr/sbin/vdelivermail '' catch@example.com\n")
        self.ok("vmoddomain", "-f", "1", "-h", "delete", "example.com")
        self.assertEqual(self.read(qmail_default), "| /usr/sbin/vfilter '' delete\n")
        self.ok("vmoddomain", "-f", "0", "example.com")
        self.assertEqual(self.read(qmail_default), "| /usr/sbin/vdelivermail '' delete\n")
        self.ok("vmoddomain", "-h", "bounce-no-mailbox", "example.com")
        self.assertEqual(self.read(qmail_default),
                         "| /usr/sbin/vdelivermail '' bounce-no-mailbox\n")
        maildir = self.user("postmaster", "example.com").maildir
        self.ok("vmoddomain", "-h", maildir, "example.com")
        self.assertIn(f"'' {maildir}\n", self.read(qmail_default))
        self.ok("vmoddomain", "-H", "SHA-256", "-l", "1", "example.com")
        self.assertEqual(self.read(os.path.join(self.domain_dir("example.com"),
                                                "hash_method")), "SHA-256\n")
        out = self.ok("vdominfo", "-c", "-l", "example.com")
        self.assertIn("catchall:", out)
        self.assertIn("vlimits: enabled", out)
        self.fails("vmoddomain", "-h", "not an address", "example.com", status=100)
        self.fails("vmoddomain", "-h", "/nonexistent/Maildir", "example.com", status=100)
        self.fails("vmoddomain", "-f", "2", "-h", "delete", "example.com", status=100)
        self.fails("vmoddomain", "example.com", status=100, message="nothing to change")
        self.fails("vmoddomain", "-h", "delete", "missing.org", message="does not exist")
        self.fails("vmoddomain", "-h", "delete", "Example.com", status=100,
                   message="uppercase")

    def test_vdominfo_lists_all_domains(self):
        self.add_domain("b.org")
        self.add_domain("a.org")
        out = self.ok("vdominfo")
        self.assertLess(out.index("Domain a.org"), out.index("Domain b.org"))
        self.assertIn("Users: 1", out)
        self.assertEqual(self.ok("vdominfo", "-t", "a.org").splitlines()[1].strip(),
                         "Users: 1")
        self.fails("vdominfo", "missing.org", message="does not exist")


class DomainInputTests(ToolCase):
    """Input checks: no database involved, so SQLite only."""

    def test_bad_domain_names(self):
        for name, message in [("Example.com", "uppercase"), ("a..b.com", "empty label"),
                              ("-x.com", "label"), ("x-.com", "label"), (".x.com", "label"),
                              ("x.com.", "label"), ("ex_ample.com", "are allowed"),
                              ("a" * 68, "longer than 67"), ("ex ample.com", "are allowed")]:
            self.fails("vadddomain", "--", name, "pw", status=100, message=message)
        self.assertFalse(os.path.exists(os.path.join(self.root, "domains")))
        self.assertFalse(os.path.exists(os.path.join(self.root, "db")))

    def test_usage_errors(self):
        self.fails("vadddomain", status=100, message="missing argument")
        self.fails("vadddomain", "-Z", "x.org", "pw", status=100, message="not recognized")
        self.fails("vadddomain", "-l", "zero", "x.org", "pw", status=100)
        self.fails("vadddomain", "-h", "ROT13", "x.org", "pw", status=100, message="hash")
        self.fails("vadddomain", "-E", "/no/such/Maildir", "x.org", "pw", status=100,
                   message="not a Maildir")
        self.fails("vadddomain", "x.org", "", status=100, message="empty password")
        self.fails("vadddomain", "x.org", input="", status=100, message="no password")
        self.assertFalse(os.path.exists(self.domain_dir("x.org")))


class DomainTestsSQLite(DomainTests):
    backend = "sqlite"


class DomainTestsMariaDB(DomainTests):
    backend = "mysql"


del DomainTests
