"""Failure paths shared by every tool: usage, missing or unreachable database,
unexpected errors; and the Python API other modules use."""

from __future__ import annotations

import contextlib
import io
import os
import unittest

from indimail_tw.admin import cli
from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.ops_user import add_user
from indimail_tw.admin.site import Site
from indimail_tw.auth.passwords import verify
from indimail_tw.errors import AdminError
from indimail_tw.storage.store import REPOS
from tests.admin.helpers import ToolCase
from tests.admin.helpers import tool as tool_path

TOOLS = ("vadddomain", "vdeldomain", "vaddaliasdomain", "vmoddomain", "vdominfo",
         "vadduser", "vdeluser", "vpasswd", "vmoduser", "vsetuserquota", "vuserinfo",
         "valias", "vatrn", "vipmap")


class UsageTests(ToolCase):
    def test_help_and_bad_options(self):
        for name in TOOLS:
            out = self.ok(name, "--help")
            self.assertTrue(out.startswith(f"usage: {name} "), out)
            self.assertIn("--root DIR", out)
        for name in ("vadduser", "vmoduser", "vipmap"):
            self.fails(name, "-Z", "x", status=100, message="not recognized")
        self.assertIn("users/assign", self.ok("vadddomain", "--help"))

    def test_missing_operands(self):
        for name in ("vadddomain", "vdeldomain", "vaddaliasdomain", "vmoddomain", "vadduser",
                     "vdeluser", "vpasswd", "vmoduser", "vsetuserquota", "vuserinfo"):
            self.fails(name, status=100, message="missing argument")
        self.fails("vdeldomain", "a.org", "b.org", status=100, message="too many")


class MissingDatabaseTests(ToolCase):
    """Tools other than vadddomain never create the SQLite database."""

    def setUp(self) -> None:
        super().setUp()
        os.makedirs(self.domain_dir("example.com"))

    def test_no_database(self):
        calls = [("vuserinfo", "a@example.com"), ("vdominfo",), ("vdominfo", "example.com"),
                 ("valias", "-s"), ("valias", "a@example.com"), ("vatrn", "-s"),
                 ("vipmap", "-p"), ("vadduser", "a@example.com", "pw"),
                 ("vdeluser", "a@example.com"), ("vpasswd", "a@example.com", "pw"),
                 ("vmoduser", "-p", "a@example.com"), ("vsetuserquota", "a@example.com", "1M"),
                 ("valias", "-i", "&x@y.org", "a@example.com"),
                 ("vipmap", "-i", "10.0.0.1", "example.com"),
                 ("vaddaliasdomain", "alias.org", "example.com"),
                 ("vdeldomain", "example.com")]
        for call in calls:
            self.fails(*call, message="no user database")
        self.assertFalse(os.path.exists(self.paths.sqlite_file))
        self.assertFalse(os.path.lexists(self.domain_dir("alias.org")))
        self.assertTrue(os.path.isdir(self.domain_dir("example.com")))


class UnreachableDatabaseTests(ToolCase):
    def setUp(self) -> None:
        super().setUp()
        os.makedirs(self.control)
        with open(os.path.join(self.control, "host.mysql"), "w") as f:
            f.write("127.0.0.1:nobody:nothing:1\n")  # nothing listens on port 1

    def test_temporary_failure(self):
        self.fails("vadddomain", "down.org", "pw", status=111, message="temporary failure")
        self.assertFalse(os.path.lexists(self.domain_dir("down.org")))
        self.assertEqual(self.control_lines("rcpthosts"), [])
        self.assertEqual(self.control_lines("virtualdomains"), [])
        os.makedirs(self.domain_dir("down.org"))
        self.fails("vuserinfo", "a@down.org", status=111, message="temporary failure")
        self.fails("vadduser", "a@down.org", "pw", status=111)
        self.assertFalse(os.path.exists(os.path.join(self.root, "mail", "A2E")))


class RunWrapperTests(unittest.TestCase):
    """In process: whatever a tool raises becomes one line and a status."""

    def run_body(self, error: BaseException) -> tuple[int, str]:
        def body(args):
            raise error

        command = cli.Command("vtest", "x", "test", [])
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = cli.run(command, body, [])
        return status, stderr.getvalue()

    def test_unexpected_error_is_one_line(self):
        status, text = self.run_body(RuntimeError("boom\nsecond line"))
        self.assertEqual(status, 111)
        self.assertEqual(text, "vtest: unexpected error: RuntimeError: boom second line\n")

    def test_admin_error_status(self):
        self.assertEqual(self.run_body(AdminError("nope", 1)), (1, "vtest: nope\n"))


class PythonApiTests(ToolCase):
    """add_domain / add_user as other modules (indimail-demo) call them."""

    def test_add_domain_and_user(self):
        site = Site.resolve(self.root, self.env)
        added = add_domain(site, "api.org", "pm-pw", quota="10M")
        self.assertEqual(added.postmaster.address, "postmaster@api.org")
        user = add_user(site, "carol@api.org", "carol-pw", gecos="Carol", quota="1M")
        site.close()
        self.assertEqual(user.dir, self.mail("A2E", "api.org", "carol"))
        self.assertTrue(verify(self.user("carol", "api.org").passwd, "carol-pw"))
        self.assertEqual(self.user("postmaster", "api.org").shell, "10485760")
        self.assertEqual(self.db(REPOS.aliases.lines, "abuse", "api.org"),
                         ["&postmaster@api.org"])
        with self.assertRaises(AdminError) as caught:
            add_user(site, "carol@api.org", "x")
        self.assertEqual(caught.exception.status, 1)
        site.close()


class TerminalPromptTests(ToolCase):
    """On a terminal the password is asked twice (getpass, no echo)."""

    def run_on_tty(self, argv: list[str], answers: list[str]) -> tuple[int, str]:
        import pty
        import select

        pid, fd = pty.fork()
        if pid == 0:  # child: the pty is its controlling terminal
            try:
                os.execve(argv[0], argv, self.env)
            finally:
                os._exit(127)
        output = b""

        def read_some(timeout: float = 20.0) -> bytes:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                return b""
            try:
                return os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                return b""

        for answer in answers:
            while b": " not in output.rsplit(b"\n", 1)[-1]:
                chunk = read_some()
                if not chunk:
                    break
                output += chunk
            os.write(fd, answer.encode() + b"\n")
            output += b"\n"
        while chunk := read_some(5.0):
            output += chunk
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), output.decode(errors="replace")

    def test_prompt_twice(self):
        self.add_domain("example.com")
        self.ok("vadduser", "tty@example.com", "first")
        argv = [tool_path("vpasswd"), "--root", self.root, "tty@example.com"]
        status, output = self.run_on_tty(argv, ["typed-pw", "typed-pw"])
        self.assertEqual(status, 0, output)
        self.assertIn("New password for tty@example.com: ", output)
        self.assertIn("Retype new password: ", output)
        self.assertNotIn("typed-pw", output)  # no echo
        self.assertTrue(verify(self.user("tty", "example.com").passwd, "typed-pw"))
        status, output = self.run_on_tty(argv, ["one", "other"])
        self.assertEqual(status, 1, output)
        self.assertIn("vpasswd: passwords do not match", output)
        self.assertTrue(verify(self.user("tty", "example.com").passwd, "typed-pw"))


class LocationAndSchemaTests(ToolCase):
    def test_indimail_location_variables(self):
        base = os.path.join(self.root, "homes")
        control = os.path.join(self.root, "etc-control")
        domains = os.path.join(self.root, "vdomains")
        env = {"BASE_PATH": base, "CONTROLDIR": control, "DOMAINDIR": domains}
        self.ok("vadddomain", "loc.org", "pw", env=env)
        self.ok("vadduser", "ann@loc.org", "pw", env=env)
        self.assertTrue(os.path.isdir(os.path.join(base, "A2E", "loc.org", "ann", "Maildir")))
        self.assertTrue(os.path.isfile(os.path.join(domains, "loc.org", ".qmail-default")))
        with open(os.path.join(control, "rcpthosts")) as f:
            self.assertEqual(f.read(), "loc.org\n")
        self.assertFalse(os.path.exists(self.control))
        # --control-dir wins over CONTROLDIR
        other = os.path.join(self.root, "cli-control")
        self.ok("vadddomain", "--control-dir", other, "cli.org", "pw", env=env)
        with open(os.path.join(other, "virtualdomains")) as f:
            self.assertEqual(f.read(), "cli.org:cli.org\n")

    def test_database_from_newer_code_is_refused(self):
        self.add_domain("example.com")
        self.db(lambda txn: txn.execute("UPDATE indimail_tw_schema SET version = 999"))
        self.fails("vadduser", "new@example.com", "pw", message="newer")
        self.fails("vuserinfo", "postmaster@example.com", message="newer")
        self.assertIsNone(self.user("new", "example.com"))
