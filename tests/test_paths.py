"""The data root and IndiMail's variables that override single locations."""

from __future__ import annotations

import os
import runpy

from twisted.application.service import IServiceCollection
from twisted.trial import unittest

from indimail_tw.paths import DEFAULT_ROOT, Paths

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PathsTests(unittest.SynchronousTestCase):
    def test_default_root(self):
        p = Paths.resolve(None, {})
        self.assertEqual(p.root, DEFAULT_ROOT)
        self.assertEqual(p.control, os.path.join(DEFAULT_ROOT, "control"))
        self.assertEqual(p.sqlite_file, os.path.join(DEFAULT_ROOT, "db", "indimail.sqlite"))

    def test_root_from_option_then_environment(self):
        self.assertEqual(Paths.resolve(None, {"INDIMAIL_ROOT": "/srv/im"}).root, "/srv/im")
        self.assertEqual(Paths.resolve("/opt/x", {"INDIMAIL_ROOT": "/srv/im"}).root, "/opt/x")
        p = Paths.resolve("/opt/x", {})
        self.assertEqual((p.tcp, p.certs, p.domains, p.queue, p.mail, p.db),
                         tuple(f"/opt/x/{d}" for d in
                               ("tcp", "certs", "domains", "queue", "mail", "db")))

    def test_indimail_variables_override_locations(self):
        env = {"CONTROLDIR": "/etc/indimail/control", "BASE_PATH": "/home/mail",
               "QUEUEDIR": "/var/indimail/queue", "SYSCONFDIR": "/etc/indimail",
               "INDIMAILDIR": "/var/indimail"}
        p = Paths.resolve("/r", env)
        self.assertEqual(p.control, "/etc/indimail/control")
        self.assertEqual(p.tcp, "/etc/indimail/tcp")
        self.assertEqual(p.certs, "/etc/indimail/certs")
        self.assertEqual(p.domains, "/var/indimail/domains")
        self.assertEqual(p.mail, "/home/mail")
        self.assertEqual(p.queue, "/var/indimail/queue")
        self.assertEqual(p.db, "/r/db")
        # SYSCONFDIR without CONTROLDIR; an explicit --control-dir wins over both
        self.assertEqual(Paths.resolve("/r", {"SYSCONFDIR": "/etc/im"}).control,
                         "/etc/im/control")
        self.assertEqual(Paths.resolve("/r", env, control="/c").control, "/c")

    def test_ensure_creates_the_tree(self):
        root = os.path.abspath(self.mktemp())
        Paths.resolve(root, {}).ensure()
        self.assertEqual(sorted(os.listdir(root)),
                         ["certs", "control", "db", "domains", "mail", "queue", "tcp"])


class TacTests(unittest.TestCase):
    def test_tac_builds_the_same_tree(self):
        root = os.path.abspath(self.mktemp())
        self.patch(os, "environ", dict(os.environ, INDIMAIL_OPTIONS=f"--root {root}"))
        namespace = runpy.run_path(os.path.join(HERE, "tac", "indimail.tac"))
        collection = IServiceCollection(namespace["application"])
        (service,) = list(collection)
        self.assertEqual(service.name, "indimail")
        self.assertTrue(os.path.exists(os.path.join(root, "db", "indimail.sqlite")))
        service.context.engine.close()
