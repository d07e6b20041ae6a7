"""valias, vatrn and vipmap as a user runs them."""

from __future__ import annotations

from indimail_tw.storage.store import REPOS
from tests.admin.helpers import ToolCase


class MapTests(ToolCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_domain("example.com")

    def test_valias(self):
        self.ok("valias", "-i", "&alice@example.org", "-i", "/var/mail/box/Maildir/",
                "info@example.com")
        self.assertEqual(self.db(REPOS.aliases.lines, "info", "example.com"),
                         ["&alice@example.org", "/var/mail/box/Maildir/"])
        out = self.ok("valias", "info@example.com")
        self.assertEqual(out, "info@example.com -> &alice@example.org\n"
                              "info@example.com -> /var/mail/box/Maildir/\n")
        out = self.ok("valias", "-s", "@example.com")
        self.assertIn("abuse@example.com -> &postmaster@example.com", out)
        self.assertIn("info@example.com -> &alice@example.org", out)
        self.assertIn("info@example.com -> &alice@example.org", self.ok("valias"))
        self.assertEqual(self.ok("valias", "-S", "alice@example.org"),
                         "info@example.com -> alice@example.org\n")
        self.ok("valias", "-u", "&alice@example.org", "-i", "&bob@example.org",
                "info@example.com")
        self.assertIn("&bob@example.org", self.db(REPOS.aliases.lines, "info", "example.com"))
        self.ok("valias", "-d", "/var/mail/box/Maildir/", "info@example.com")
        self.assertEqual(self.db(REPOS.aliases.lines, "info", "example.com"),
                         ["&bob@example.org"])
        self.ok("valias", "-i", "| /usr/bin/true", "pipe@example.com")
        # refusals
        self.fails("valias", "-i", "&bob@example.org", "info@example.com", message="already")
        self.fails("valias", "-d", "&nobody@x.org", "info@example.com", message="no line")
        self.fails("valias", "-u", "&nobody@x.org", "-i", "&y@x.org", "info@example.com",
                   message="no line")
        self.fails("valias", "-i", "", "info@example.com", status=100, message="empty")
        self.fails("valias", "-i", "just-a-word", "info@example.com", status=100,
                   message="invalid alias line")
        self.fails("valias", "-i", "&a@b.org", "Info@example.com", status=100,
                   message="uppercase")
        self.fails("valias", "-i", "&a@b.org", "info@nosuch.org", message="does not exist")
        self.fails("valias", "-i", "&a@b.org", status=100)
        self.fails("valias", "-u", "x", "info@example.com", status=100)

    def test_valias_alias_domain_uses_real_domain(self):
        self.ok("vaddaliasdomain", "alias.org", "example.com")
        self.ok("valias", "-i", "&x@y.org", "sales@alias.org")
        self.assertEqual(self.db(REPOS.aliases.lines, "sales", "example.com"), ["&x@y.org"])

    def test_vatrn(self):
        """FAQ: an ATRN domain and the users who may pull it."""
        self.ok("vadddomain", "-t", "etrn.dom", "pw")
        self.ok("vadduser", "-q", "1000000", "master@example.com", "pw")
        self.ok("vatrn", "-i", "etrn.dom", "master@example.com")
        self.ok("vatrn", "-i", "other.dom", "master@example.com")
        self.assertEqual(self.db(REPOS.atrn.domains_of, "master", "example.com"),
                         ["etrn.dom", "other.dom"])
        out = self.ok("vatrn", "-s")
        self.assertRegex(out, r"master\s+example.com\s+etrn.dom")
        self.assertEqual(len(self.ok("vatrn", "-s", "etrn.dom").splitlines()), 1)
        self.assertEqual(len(self.ok("vatrn", "-s", "master@example.com").splitlines()), 2)
        self.ok("vatrn", "-u", "other.dom", "-i", "new.dom", "master@example.com")
        self.ok("vatrn", "-d", "etrn.dom", "master@example.com")
        self.assertEqual(self.db(REPOS.atrn.domains_of, "master", "example.com"),
                         ["new.dom"])
        self.fails("vatrn", "-i", "new.dom", "master@example.com", message="already")
        self.fails("vatrn", "-d", "etrn.dom", "master@example.com", message="no ATRN map")
        self.fails("vatrn", "-i", "x.dom", "ghost@example.com", message="no such user")
        self.fails("vatrn", "-i", "Bad..dom", "master@example.com", status=100)
        self.fails("vatrn", "master@example.com", status=100, message="must specify")

    def test_vipmap(self):
        """FAQ: an IP address per domain, so users log in as plain "user"."""
        self.ok("vadddomain", "other.org", "pw")
        self.ok("vipmap", "-i", "192.0.2.1", "example.com")
        self.ok("vipmap", "-a", "2001:DB8::1", "other.org")
        self.ok("vipmap", "-i", "::ffff:192.0.2.9", "other.org")
        self.assertEqual(self.db(REPOS.ipmap.domain_for, "192.0.2.1"), "example.com")
        self.assertEqual(self.db(REPOS.ipmap.domain_for, "2001:db8::1"), "other.org")
        self.assertEqual(self.db(REPOS.ipmap.domain_for, "::ffff:192.0.2.9"), "other.org")
        out = self.ok("vipmap", "-p")
        self.assertIn("192.0.2.1 example.com\n", out)
        self.assertIn("2001:db8::1 other.org\n", out)
        self.assertEqual(self.ok("vipmap", "-s", "example.com"), "192.0.2.1 example.com\n")
        self.fails("vipmap", "-i", "192.0.2.1", "other.org", message="already mapped")
        self.ok("vipmap", "-u", "192.0.2.1", "other.org")
        self.assertEqual(self.db(REPOS.ipmap.domain_for, "192.0.2.1"), "other.org")
        self.ok("vipmap", "-d", "192.0.2.1", "other.org")
        self.assertIsNone(self.db(REPOS.ipmap.domain_for, "192.0.2.1"))
        self.fails("vipmap", "-d", "192.0.2.1", "other.org", message="no mapping")
        self.fails("vipmap", "-u", "192.0.2.77", "other.org", message="not mapped")
        for bad_ip in ("300.1.2.3", "1.2.3", "example.com", "2001:db8::g"):
            self.fails("vipmap", "-i", bad_ip, "example.com", status=100,
                       message="invalid IP")
        self.fails("vipmap", "-i", "192.0.2.5", "nosuch.org", message="does not exist")
        self.fails("vipmap", "-i", "192.0.2.5", status=100, message="domain")


class MapTestsSQLite(MapTests):
    backend = "sqlite"


class MapTestsMariaDB(MapTests):
    backend = "mysql"


del MapTests
