"""The quick start's demo root: created once, credentials that work, the right listeners."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from indimail_tw import listeners
from indimail_tw.admin.demo import twistd_argv

BIN = os.path.join(sys.prefix, "bin")


class DemoTests(unittest.TestCase):
    def test_demo_root_and_credentials(self):
        root = tempfile.mkdtemp(prefix="itw-demo-")
        self.addCleanup(__import__("shutil").rmtree, root, True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "INDIMAIL"))}
        first = subprocess.run([os.path.join(BIN, "indimail-demo"), "--root", root],
                               capture_output=True, text=True, env=env)
        self.assertEqual(first.returncode, 0, first.stderr)
        again = subprocess.run([os.path.join(BIN, "indimail-demo"), "--root", root],
                               capture_output=True, text=True, env=env)
        self.assertEqual(first.stdout, again.stdout)      # same root, same credentials
        with open(os.path.join(root, "demo-credentials.txt")) as f:
            creds = dict(line.split("=", 1) for line in f.read().splitlines())
        self.assertEqual(os.stat(os.path.join(root, "demo-credentials.txt")).st_mode & 0o077, 0)
        self.assertIn(creds["password"], first.stdout)
        self.assertTrue(os.path.exists(os.path.join(root, "certs", "servercert.pem")))
        data = f"{creds['user']}\0{creds['password']}\0\0".encode()
        result = subprocess.run(
            ["sh", "-c", f"exec {os.path.join(BIN, 'vchkpass')} /bin/false 3<&0"],
            input=data, capture_output=True, env=dict(env, INDIMAIL_ROOT=root))
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_listeners_are_loopback_and_built_only(self):
        argv = twistd_argv("/r", "/r/certs/servercert.pem")
        built = [s for s in listeners.PROTOCOLS.values() if s.build]
        options = [a for a in argv[argv.index("indimail"):] if a.startswith("--") and a != "--root"]
        self.assertEqual(sorted(options), sorted(f"--{s.name}" for s in built))
        for spec in built:
            description = argv[argv.index(f"--{spec.name}") + 1]
            self.assertIn("interface=127.0.0.1", description)
            self.assertIn(str(spec.demo_port), description)
