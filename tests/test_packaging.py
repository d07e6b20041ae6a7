"""``pip install .`` ships the package, the console scripts and the twistd plugin."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial import unittest

EXPECTED_SCRIPTS = (
    "vadddomain", "vdeldomain", "vaddaliasdomain", "vmoddomain", "vdominfo", "vadduser",
    "vdeluser", "vpasswd", "vmoduser", "vsetuserquota", "vuserinfo", "valias", "vatrn",
    "vipmap", "vchkpass", "indimail-demo", "tcprules", "vdelivermail", "qmail-qread",
    "qmail-qstat", "qmail-rm", "qmail-flush", "qmail-tcpto", "qmail-tcpok",
)
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WheelTests(unittest.TestCase):
    def test_wheel_contents(self):
        out = tempfile.mkdtemp(prefix="itw-wheel-")
        self.addCleanup(__import__("shutil").rmtree, out, True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "-q", "-w", out, HERE], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        (wheel,) = glob.glob(os.path.join(out, "indimail_tw-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            self.assertIn("twisted/plugins/indimail.py", names)
            self.assertIn("twisted/plugins/indimail_cred.py", names)
            self.assertNotIn("twisted/plugins/__init__.py", names)
            self.assertNotIn("twisted/__init__.py", names)
            self.assertIn("indimail_tw/storage/schema/sqlite.sql", names)
            self.assertIn("indimail_tw/storage/schema/mysql.sql", names)
            (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
            text = z.read(entry_points).decode()
        scripts = {line.split("=")[0].strip() for line in text.splitlines() if "=" in line}
        self.assertLessEqual(set(EXPECTED_SCRIPTS), scripts)
