#!/usr/bin/env python3
"""Benchmark 5: POP3 RETR throughput of 10 concurrent clients, ours vs Dovecot's pop3.

One root (``bench.test``, users user1..userC, each with M messages of a
realistic size mix: plain text 1-6 KB, multipart/alternative, and 15% with a
10-40 KB attachment), served in the same run by ``twistd indimail --pop3`` and
by a private Dovecot 2.3 (bench/dovecot_setup.py: passwd-file auth,
``mail_location = maildir:~/Maildir``) on other loopback ports.

Each client is a process (so the clients' own interpreter lock does not cap
the figures) logging in as its own user (a POP3 maildrop is locked per
session), then ``STAT``, ``RETR 1`` .. ``RETR M`` one after the other (no
pipelining, as fetchmail and getmail do) and ``QUIT``; nothing is deleted.
A round is all clients at once; the time of a round is from the first
connect to the last QUIT.  Rounds alternate between the servers after one
warm-up round each (first logins build the indexes: ours and Dovecot's), and
the figures are medians.  Messages/s and MB/s count what the clients
received (MB = 10^6 octets, the CRLF-encoded, dot-stuffed octets on the wire).

    .venv/bin/python bench/pop3_bench.py [--clients 10] [--messages 200] [--rounds 5]
                                         [--workers N] [--quick]

Our server is measured twice: as one process, and as N processes sharing the
listener (``twistd indimail --workers N``, N = ``--workers``, by default the
number of CPUs).  One Python process uses at most one CPU for its protocol
work (the interpreter lock), while Dovecot runs one pop3 process per
connection and uses them all; ``--workers`` equal to the CPU count is the
configuration to compare with it on a machine with several CPUs.
``--workers 1`` measures the single process only.  ``--quick`` is a smoke
run (50 messages per client, 3 rounds).

Runs as root (Dovecot serves the Maildirs as the ``vmail`` user, which
dovecot_setup.grant() sets up).  Prints the figures; does not write
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import dovecot_setup  # noqa: E402

HOST = "127.0.0.1"
DOMAIN = "bench.test"
PASSWORD = "bench-Pw-1"
WORDS = ("mail", "server", "twisted", "python", "maildir", "index", "message", "client",
         "benchmark", "dovecot", "indimail", "qmail", "delivery", "queue", "folder", "header",
         "body", "attachment", "the", "of", "and", "to", "in", "is", "that", "for", "it",
         "with", "as", "was", "on", "be", "at", "by", "this")


def _text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        if rng.random() < 0.02:
            line = "." + line          # dot-stuffing happens on the wire
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def make_message(n: int) -> bytes:
    rng = random.Random(n)
    kind = rng.random()
    head = (f"From: Sender {n % 50} <sender{n % 50}@example.org>\n"
            f"To: Bench User <user@{DOMAIN}>\n"
            f"Subject: pop3 bench message {n}\n"
            f"Date: Tue, 03 Mar 2026 10:{n // 60 % 60:02d}:{n % 60:02d} +0000\n"
            f"Message-ID: <{n}.pop3bench@example.org>\nMIME-Version: 1.0\n")
    if kind < 0.6:
        return (head + "Content-Type: text/plain; charset=us-ascii\n\n"
                + _text(rng, rng.randint(1000, 6000))).encode()
    text = _text(rng, rng.randint(800, 3000))
    html = "<html><body><p>" + text.replace("\n", "</p>\n<p>") + "</p></body></html>\n"
    alt = ("--alt\nContent-Type: text/plain; charset=utf-8\n\n" + text
           + "--alt\nContent-Type: text/html; charset=utf-8\n\n" + html + "--alt--\n")
    if kind < 0.85:
        return (head + 'Content-Type: multipart/alternative; boundary="alt"\n\n' + alt).encode()
    import base64
    blob = base64.encodebytes(rng.randbytes(rng.randint(10000, 40000))).decode()
    return (head + 'Content-Type: multipart/mixed; boundary="mix"\n\n'
            + '--mix\nContent-Type: multipart/alternative; boundary="alt"\n\n' + alt
            + '--mix\nContent-Type: application/octet-stream; name="data.bin"\n'
            + "Content-Transfer-Encoding: base64\n\n" + blob + "--mix--\n").encode()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("MYSQL_", "INDIMAIL", "QUEUE", "CONTROLDIR", "BASE_PATH",
                                 "CERTDIR", "SECURE_AUTH", "MAXPERIP", "MAXDAEMONS"))}


def make_root(root: str, clients: int, messages: int) -> None:
    from indimail_tw.admin.ops_domain import add_domain
    from indimail_tw.admin.ops_user import add_user
    from indimail_tw.admin.site import Site
    from indimail_tw.maildir import deliver

    shutil.rmtree(root, ignore_errors=True)
    site = Site.resolve(root, clean_env())
    site.paths.ensure()
    site.control.write_value("me", "bench.local")
    add_domain(site, DOMAIN, "pm-" + PASSWORD)
    scratch = os.path.join(root, "scratch")
    for i in range(1, clients + 1):
        user = add_user(site, f"user{i}@{DOMAIN}", PASSWORD)
        for n in range(messages):
            with open(scratch, "wb") as f:
                f.write(make_message(i * 100000 + n))
            deliver.deliver(user.maildir, scratch)
    os.unlink(scratch)
    site.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, alive=lambda: True, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if not alive() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- the client ------------------------------------------------------------------------------

class Client:
    """A minimal POP3 client: one command, one complete response."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.line()                                       # greeting

    def _fill(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        if not line.startswith(b"+OK"):
            raise RuntimeError(line.decode(errors="replace"))
        return line

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multiline(self, text: str) -> int:
        """Send ``text``, read ``+OK`` and the body up to ``.CRLF``; the body's octets."""
        self.command(text)
        start = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                end = 0
                break
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                end = i + 2
                break
            start = max(len(self.buf) - 4, 0)
            self._fill()
        del self.buf[:end + 3]
        return end + 3

    def close(self) -> None:
        self.sock.close()


def one_client(args: tuple[int, int, float]) -> tuple[int, int, float, float]:
    """(messages, octets, start, end) of one client's session."""
    port, user, go = args
    while time.time() < go:                           # all clients start together
        time.sleep(0.001)
    start = time.time()
    client = Client(port)
    client.command(f"USER user{user}@{DOMAIN}")
    client.command(f"PASS {PASSWORD}")
    count = int(client.command("STAT").split()[1])
    octets = 0
    for n in range(1, count + 1):
        octets += client.multiline(f"RETR {n}")
    client.command("QUIT")
    client.close()
    return count, octets, start, time.time()


def run_round(pool: multiprocessing.pool.Pool, port: int, clients: int) -> dict:
    go = time.time() + 0.3
    results = pool.map(one_client, [(port, i, go) for i in range(1, clients + 1)])
    messages = sum(r[0] for r in results)
    octets = sum(r[1] for r in results)
    seconds = max(r[3] for r in results) - min(r[2] for r in results)
    return {"messages": messages, "octets": octets, "seconds": seconds,
            "msg_s": messages / seconds, "mb_s": octets / seconds / 1e6}


# -- the servers -----------------------------------------------------------------------------

class Ours:
    name = "indimail_tw"

    def __init__(self, root: str, workers: int = 1) -> None:
        self.root = root
        self.workers = workers
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        if workers > 1:
            self.name = f"indimail_tw --workers {workers}"

    def start(self) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = dict(clean_env(), SECURE_AUTH="0", MAXPERIP="0", LOGIN_FAILURE_DELAY="0")
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile", os.path.join(self.root, "twistd.log"),
             "indimail", "--root", self.root, "--pop3", f"tcp:{self.port}:interface={HOST}",
             *(["--workers", str(self.workers)] if self.workers > 1 else [])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, lambda: self.process.poll() is None)

    def before_round(self) -> None:
        pass

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Dovecot:
    name = "dovecot"

    def __init__(self, root: str, base: str) -> None:
        self.root, self.base = root, base
        self.port = free_port()
        self.homes: list[str] = []

    def start(self) -> None:
        ports = {"pop3": self.port, "imap": free_port(), "imaps": 0, "pop3s": 0}
        dovecot_setup.write_config(self.base, self.root, ports, cert=None,
                                   default_realm=DOMAIN)
        self.homes = dovecot_setup.homes_of(self.base)
        dovecot_setup.start(self.base)

    def before_round(self) -> None:
        dovecot_setup.grant(self.homes)          # files our server created are root's

    def stop(self) -> None:
        dovecot_setup.stop(self.base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=200, help="per client")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per server")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="also measure ours with --workers N (default: the CPU count; "
                             "1: the single process only)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 50 messages per client, 3 rounds")
    parser.add_argument("--base", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = min(args.messages, 50), min(args.rounds, 3)

    base = args.base or tempfile.mkdtemp(prefix="pop3-bench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    root = os.path.join(base, "root")
    print(f"preparing {args.clients} users x {args.messages} messages in {root} ...",
          flush=True)
    make_root(root, args.clients, args.messages)
    servers = [Ours(root), Dovecot(root, os.path.join(base, "dovecot"))]
    if args.workers > 1:
        servers.insert(1, Ours(root, args.workers))
    results: dict[str, list[dict]] = {s.name: [] for s in servers}
    try:
        for server in servers:
            server.start()
        with multiprocessing.Pool(args.clients) as pool:
            for server in servers:                          # warm-up: indexes are built
                server.before_round()
                run_round(pool, server.port, args.clients)
            for _ in range(args.rounds):
                for server in servers:
                    server.before_round()
                    results[server.name].append(run_round(pool, server.port, args.clients))
    finally:
        for server in servers:
            server.stop()

    print(f"\nPOP3 RETR, {args.clients} concurrent clients x {args.messages} messages, "
          f"{args.rounds} rounds (median); CPUs: {os.cpu_count()}")
    summary = {}
    for name, rounds in results.items():
        msg_s = statistics.median(r["msg_s"] for r in rounds)
        mb_s = statistics.median(r["mb_s"] for r in rounds)
        summary[name] = (msg_s, mb_s)
        octets = rounds[0]["octets"] / rounds[0]["messages"]
        each = ", ".join(f"{r['msg_s']:.0f}" for r in rounds)
        print(f"  {name:12s} {msg_s:9.0f} messages/s  {mb_s:7.1f} MB/s   "
              f"(rounds: {each} msg/s; "
              f"{octets / 1000:.1f} KB/message)")
    theirs = summary["dovecot"]
    for name, ours in summary.items():
        if name != "dovecot":
            print(f"  ratio {name} / dovecot: {ours[0] / theirs[0]:.2f}x messages/s, "
                  f"{ours[1] / theirs[1]:.2f}x MB/s (goal: >= 1.0x)")
    if not args.base:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
