"""vchkpass, run as the installed program over the fd-3 protocol (the FAQ's test)."""

from __future__ import annotations

import hmac
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from indimail_tw.auth import passwords
from indimail_tw.auth.flags import Flags
from indimail_tw.paths import Paths
from indimail_tw.storage import User
from indimail_tw.storage.engine import open_engine
from indimail_tw.storage.store import REPOS
from tests.support import create_mysql_database, require_mysql

BIN = os.path.join(sys.prefix, "bin")


def tool(name: str) -> str:
    path = shutil.which(name, path=BIN + os.pathsep + os.environ.get("PATH", ""))
    assert path, f"{name} is not installed (pip install -e .)"
    return path


class VchkpassMixin:
    backend = "sqlite"

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="itw-vchkpass-")
        self.addCleanup(shutil.rmtree, self.root, True)
        paths = Paths.resolve(self.root, {})
        paths.ensure()
        if self.backend == "mysql":
            require_mysql(self)
            params, drop = create_mysql_database()
            self.addCleanup(drop)
            with open(os.path.join(paths.control, "host.mysql"), "w") as f:
                f.write(f"{params.host}:{params.user}:{params.password}:{params.port}\n")
            self.env_extra = {"MYSQL_DATABASE": params.database}
        else:
            self.env_extra = {}
        engine = open_engine(paths, self.env_extra)
        engine.run_sync(engine.prepare)
        sha = passwords.make_hash("pass", "SHA-512")

        def users(txn):
            for name, gid, active, pw in (
                    ("user", 0, True, sha), ("norelay", Flags.NO_RELAY, True, sha),
                    ("nosmtp", Flags.NO_SMTP, True, sha), ("idle", 0, False, sha),
                    ("md5", 0, True, passwords.make_hash("pass", "MD5")),
                    ("cram", 0, True, passwords.make_cram_record("pass"))):
                REPOS.users.add(txn, User(name=name, domain="example.com", passwd=pw,
                                          gid=gid, active=active,
                                          dir=f"{self.root}/mail/{name}"))
        engine.run_sync(users)
        with open(os.path.join(paths.control, "defaultdomain"), "w") as f:
            f.write("example.com\n")

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MYSQL_", "DEFAULT_DOMAIN", "INDIMAIL_"))}
        env.update(INDIMAIL_ROOT=self.root, **self.env_extra, **extra)
        return env

    def check(self, data: bytes, *next_program, **env) -> subprocess.CompletedProcess:
        """Run vchkpass with ``data`` on fd 3, as qmail-smtpd does."""
        read_end, write_end = os.pipe()
        os.write(write_end, data)
        os.close(write_end)
        try:
            return subprocess.run([tool("vchkpass"), *(next_program or ["/bin/false"])],
                                  pass_fds=(read_end, 3), capture_output=True,
                                  env=self.env(**env), timeout=60,
                                  preexec_fn=lambda: os.dup2(read_end, 3))
        finally:
            os.close(read_end)

    def assertExit(self, result, code):
        self.assertEqual(result.returncode, code, result.stderr.decode())
        self.assertNotIn(b"Traceback", result.stderr)

    def test_faq_command_line(self):
        """printf "user@domain\\0pass\\0\\0" | vchkpass /bin/false 3<&0"""
        cmd = f"printf 'user@example.com\\0pass\\0\\0' | {tool('vchkpass')} /bin/false 3<&0"
        result = subprocess.run(["sh", "-c", cmd], env=self.env(), capture_output=True)
        self.assertExit(result, 0)
        cmd = cmd.replace("\\0pass", "\\0wrong")
        result = subprocess.run(["sh", "-c", cmd], env=self.env(), capture_output=True)
        self.assertExit(result, 1)

    def test_login_forms_and_default_domain(self):
        for login in (b"user@example.com", b"user%example.com", b"user:example.com", b"user"):
            self.assertExit(self.check(login + b"\0pass\0\0"), 0)
        self.assertExit(self.check(b"md5@example.com\0pass\0\0"), 0)

    def test_flags_and_inactive(self):
        self.assertExit(self.check(b"norelay@example.com\0pass\0\0"), 3)
        denied = self.check(b"nosmtp@example.com\0pass\0\0", "/bin/true")
        self.assertExit(denied, 1)          # denied: the chain does not go on
        self.assertIn(b"553", denied.stdout)
        self.assertExit(self.check(b"idle@example.com\0pass\0\0", "/bin/true"), 1)
        self.assertExit(self.check(b"idle@example.com\0pass\0\0", ALLOW_INACTIVE="1"), 0)

    def test_unknown_or_wrong_goes_to_next_module_with_same_input(self):
        probe = os.path.join(self.root, "probe.py")
        with open(probe, "w") as f:
            f.write(f"#!{sys.executable}\nimport os, sys\n"
                    "sys.stdout.write(repr(os.read(3, 600)))\nsys.exit(0)\n")
        os.chmod(probe, 0o755)
        result = self.check(b"ghost@example.com\0pass\0\0", probe)
        self.assertExit(result, 0)
        self.assertEqual(result.stdout, repr(b"ghost@example.com\0pass\0\0").encode())
        self.assertExit(self.check(b"user@example.com\0bad\0\0", probe), 0)
        self.assertExit(self.check(b"user@example.com\0bad\0\0", "/bin/false"), 1)

    def test_cram(self):
        challenge = b"<12345.67890@example.com>"
        for method, alg in ((3, "md5"), (6, "sha256")):
            response = hmac.new(b"pass", challenge, alg).hexdigest().encode()
            data = b"cram@example.com\0" + challenge + b"\0" + response + b"\0"
            self.assertExit(self.check(data + bytes([method]) + b"\0"), 0)
            self.assertExit(self.check(data), 0)          # no method: every flavour tried
            self.assertExit(self.check(data, DISABLE_CRAM_MD5="1", DISABLE_CRAM_SHA256="1"), 1)
        bad = b"cram@example.com\0" + challenge + b"\0" + b"0" * 32 + b"\0\x03\0"
        self.assertExit(self.check(bad), 1)

    def test_misuse(self):
        self.assertExit(self.check(b"x" * 600), 2)
        self.assertExit(self.check(b"no-separators"), 2)
        result = subprocess.run([tool("vchkpass")], env=self.env(), capture_output=True)
        self.assertExit(result, 2)
        # fd 3 not open at all
        result = subprocess.run([tool("vchkpass"), "/bin/false"], env=self.env(),
                                capture_output=True, close_fds=True)
        self.assertExit(result, 2)


class SQLiteVchkpassTests(VchkpassMixin, unittest.TestCase):
    backend = "sqlite"

    def test_missing_database_is_temporary(self):
        os.unlink(os.path.join(self.root, "db", "indimail.sqlite"))
        result = self.check(b"user@example.com\0pass\0\0")
        self.assertExit(result, 111)
        self.assertIn(b"454", result.stdout)


class MySQLVchkpassTests(VchkpassMixin, unittest.TestCase):
    backend = "mysql"

    def test_database_down_is_temporary(self):
        result = self.check(b"user@example.com\0pass\0\0", MYSQL_VPORT="1")
        self.assertExit(result, 111)
        self.assertIn(b"454-failed to connect to database", result.stdout)
