"""Running the installed admin tools against a fresh root, on SQLite or MariaDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from indimail_tw.paths import Paths
from indimail_tw.storage.engine import open_engine
from indimail_tw.storage.store import REPOS
from tests.support import create_mysql_database, require_mysql

BIN = os.path.join(sys.prefix, "bin")
# Variables that would move parts of a test root elsewhere, or change defaults.
_SCRUB = ("INDIMAIL_ROOT", "CONTROLDIR", "SYSCONFDIR", "TCPDIR", "CERTDIR", "DOMAINDIR",
          "INDIMAILDIR", "QMAILHOME", "QUEUEDIR", "BASE_PATH", "PASSWORD_HASH", "HARD_QUOTA",
          "ALLOWCHARS", "DEFAULT_DOMAIN", "MYSQL_HOST", "MYSQL_USER", "MYSQL_PASSWD",
          "MYSQL_DATABASE", "MYSQL_VPORT", "MYSQL_SOCKET", "MYSQL_TABLE",
          "MYSQL_INACTIVE_TABLE", "POSIXLY_CORRECT")


def tool(name: str) -> str:
    path = shutil.which(name, path=BIN + os.pathsep + os.environ.get("PATH", ""))
    if path is None:
        raise unittest.SkipTest(f"{name} is not installed (pip install -e .)")
    return path


class ToolCase(unittest.TestCase):
    """A fresh root per test; ``backend`` picks SQLite or MariaDB (control/host.mysql)."""

    backend = "sqlite"

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="itw-admin-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        self.env["INDIMAIL_ROOT"] = os.path.join(self.root, "not-this-one")
        if self.backend == "mysql":
            require_mysql(self)
            params, drop = create_mysql_database()
            self.addCleanup(drop)
            os.makedirs(self.control, exist_ok=True)
            with open(os.path.join(self.control, "host.mysql"), "w") as f:
                # An empty password field means an empty password (storage/engine.py).
                f.write(f"{params.host}:{params.user}:{params.password}:{params.port}\n")
            self.env["MYSQL_DATABASE"] = params.database
        self.paths = Paths.resolve(self.root, self.env)

    # -- locations -----------------------------------------------------------------
    @property
    def control(self) -> str:
        return os.path.join(self.root, "control")

    def domain_dir(self, domain: str) -> str:
        return os.path.join(self.root, "domains", domain)

    def mail(self, *parts: str) -> str:
        return os.path.join(self.root, "mail", *parts)

    def control_lines(self, name: str) -> list[str]:
        try:
            with open(os.path.join(self.control, name)) as f:
                return [ln.rstrip("\n") for ln in f if ln.strip()]
        except FileNotFoundError:
            return []

    def read(self, path: str) -> str:
        with open(path) as f:
            return f.read()

    # -- running tools ---------------------------------------------------------------
    def run_tool(self, name: str, *args: str, input: str | None = "",
                 env: dict | None = None, root: bool = True) -> subprocess.CompletedProcess:
        argv = [tool(name)] + (["--root", self.root] if root else []) + list(args)
        environ = dict(self.env, **(env or {}))
        result = subprocess.run(argv, input=input, capture_output=True, text=True,
                                env=environ, timeout=60)
        self.assertNotIn("Traceback", result.stderr, result.stderr)
        self.assertNotIn("Traceback", result.stdout)
        return result

    def ok(self, name: str, *args: str, **kw) -> str:
        result = self.run_tool(name, *args, **kw)
        self.assertEqual(result.returncode, 0,
                         f"{name} {' '.join(args)}: {result.stderr}{result.stdout}")
        self.assertEqual(result.stderr, "")
        return result.stdout

    def fails(self, name: str, *args: str, status: int = 1, message: str = "",
              **kw) -> str:
        """Run a tool that must fail with ``status`` and one stderr line naming it."""
        result = self.run_tool(name, *args, **kw)
        self.assertEqual(result.returncode, status,
                         f"{name} {' '.join(args)}: {result.stderr}{result.stdout}")
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith(f"{name}: "), lines[0])
        self.assertIn(message, lines[0])
        return lines[0]

    # -- the database, through the repositories ------------------------------------------
    def db(self, fn, *args):
        engine = open_engine(self.paths, self.env, create=False)
        try:
            return engine.run_sync(fn, *args)
        finally:
            engine.close()

    def user(self, name: str, domain: str):
        return self.db(REPOS.users.get, name, domain)

    def add_domain(self, domain: str = "example.com", *args: str) -> None:
        self.ok("vadddomain", *args, domain, "pm-secret")
