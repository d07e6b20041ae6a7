"""Crash test: a real server under SMTP load, SIGKILLed at random moments.

After the last restart every message that got a 250 must be delivered into
the Maildir (duplicates are allowed and counted; a loss never is).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial import unittest

from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.ops_user import add_user
from indimail_tw.admin.site import Site

TWISTD = os.path.join(sys.prefix, "bin", "twistd")
SEED = 20261125
KILLS = 4
CLIENTS = 6
DELIVERY_DEADLINE = 180.0     # generous: a bound on waiting, not a measurement


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """Client threads sending numbered messages; they survive server restarts."""

    def __init__(self, port: int, recipients: list[str]) -> None:
        self.port = port
        self.recipients = recipients
        self.acked: set[int] = set()
        self.lock = threading.Lock()
        self.counter = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                        for i in range(CLIENTS)]

    def next_number(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def client(self, index: int) -> None:
        rng = random.Random(SEED + index)
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
                    while not self.stop.is_set():
                        n = self.next_number()
                        rcpt = rng.choice(self.recipients)
                        body = (f"From: load@client.test\r\nTo: {rcpt}\r\n"
                                f"Message-ID: <{n}@crash.test>\r\nSubject: crash {n}\r\n\r\n"
                                + "payload line\r\n" * rng.randint(1, 60))
                        smtp.sendmail("load@client.test", [rcpt], body)
                        with self.lock:
                            self.acked.add(n)
            except (OSError, smtplib.SMTPException):
                self.stop.wait(0.05)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def delivered_ids(maildirs: list[str]) -> list[int]:
    found = []
    for maildir in maildirs:
        for sub in ("new", "cur"):
            directory = os.path.join(maildir, sub)
            for name in os.listdir(directory):
                with open(os.path.join(directory, name), "rb") as f:
                    match = re.search(rb"^Message-ID: <(\d+)@crash\.test>", f.read(), re.M)
                if match:
                    found.append(int(match.group(1)))
    return found


def helpers_of(root: str) -> list[int]:
    """Local delivery helper processes serving ``root`` that are still running."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rpartition(b")")[2].split()[0] == b"Z"
        except (OSError, IndexError):
            continue
        if argv[1:3] == [b"-m", b"indimail_tw.delivery.lhelper"] and root.encode() in argv \
                and not zombie:
            found.append(int(pid))
    return found


class CrashTests(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="itw-crash-")
        self.addCleanup(shutil.rmtree, self.root, True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MYSQL_", "INDIMAIL", "QUEUE", "CONTROLDIR", "BASE_PATH"))}
        self.env = dict(env, QUEUE_COUNT="2")
        site = Site.resolve(self.root, self.env)
        site.paths.ensure()
        site.control.write_value("me", "crash.test")
        add_domain(site, "crash.test", "postmaster-secret")
        self.users = [add_user(site, f"user{i}@crash.test", "pw") for i in range(3)]
        site.close()
        self.port = free_port()
        self.server = None

    def start_server(self) -> None:
        self.server = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(self.root, "twistd.log"),
             "indimail", "--root", self.root, "--smtp", f"tcp:{self.port}:interface=127.0.0.1"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.server.poll() is not None:
                    self.fail("server exited at start; see twistd.log")
                time.sleep(0.05)
        self.fail("server did not start listening")

    def kill_server(self) -> None:
        self.server.send_signal(signal.SIGKILL)
        self.server.wait(30)

    def tearDown(self):
        if self.server and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(30)

    def test_every_acknowledged_message_is_delivered(self):
        rng = random.Random(SEED)
        load = Load(self.port, [u.address for u in self.users])
        self.start_server()
        load.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.5))      # a random moment under load
            self.kill_server()
            self.start_server()
        time.sleep(rng.uniform(0.3, 1.0))
        load.finish()
        acked = set(load.acked)
        self.assertGreater(len(acked), 0, "the load never got a message through")

        maildirs = [u.maildir for u in self.users]
        deadline = time.monotonic() + DELIVERY_DEADLINE
        while time.monotonic() < deadline:
            delivered = delivered_ids(maildirs)
            if acked <= set(delivered):
                break
            time.sleep(0.2)
        delivered = delivered_ids(maildirs)
        lost = sorted(acked - set(delivered))
        duplicates = len(delivered) - len(set(delivered))
        print(f"\ncrash test: {KILLS} SIGKILLs, {len(acked)} acknowledged, "
              f"{len(set(delivered))} delivered, {duplicates} duplicates, {len(lost)} lost")
        self.assertEqual(lost, [], f"acknowledged but never delivered: {lost[:20]}")
        corrupt = [os.path.join(dp, f) for dp, _dn, files in os.walk(
            os.path.join(self.root, "queue")) if dp.endswith("corrupt") for f in files]
        self.assertEqual(corrupt, [])
        # the delivery helpers of the killed servers died with them; the last
        # server's helper stops with it
        self.server.terminate()
        self.server.wait(60)
        deadline = time.monotonic() + 30
        while helpers_of(self.root) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(helpers_of(self.root), [])
