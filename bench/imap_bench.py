#!/usr/bin/env python3
"""IMAP4 and POP3 benchmarks, indimail_tw side by side with Dovecot 2.3 in one run.

Both servers serve the same Maildirs of one indimail_tw root (``--root``,
created with users ``user1..userN`` of ``bench.test`` and a ``big`` user unless
``--reuse``): ours as ``twistd -n indimail`` on 127.0.0.1, Dovecot as a private
instance written by bench/dovecot_setup.py.  Rounds alternate (ours, Dovecot,
ours, Dovecot, ...); each figure is the median of ``--rounds`` rounds and the
ratio is ours/Dovecot from the same run.  A warm-up round per server comes
first and is not counted.

Benchmarks (``--bench`` picks, default all):

``mix``        10 clients, each a loop of sessions: LOGIN, SELECT, FETCH
               (FLAGS ENVELOPE BODYSTRUCTURE) of up to 100 messages, FETCH of
               one whole BODY[], STORE flags, APPEND, STORE \\Deleted + EXPUNGE
               of the appended message, LOGOUT; tagged commands per second.
``open``       the same with sessions kept open (LOGIN/SELECT once).
``big``        a 100,000-message folder: time to SELECT and to FETCH 1:*
               (UID FLAGS), and the serving process's RSS after LOGIN and after
               the FETCH (ours: the twistd process; Dovecot: the imap process of
               the session).  Both servers restart before each round (fresh
               processes, indexes on disk); the warm-up's SELECT is the cold one
               (no index yet) and is reported separately.
``idle``       10,000 idle authenticated connections: server memory growth per
               connection (ours: twistd RSS; Dovecot: PSS summed over all its
               processes, restarted with one imap and one imap-login process
               serving every connection: client_limit raised, service_count 0).
               Servers restart before each round.
``pop3``       10 POP3 clients, each a loop of sessions: USER/PASS, STAT,
               UIDL, RETR of every message, QUIT; messages retrieved per second.

Run as root from the repository root (Dovecot's mail processes run as
``vmail``, see bench/dovecot_setup.py):

    .venv/bin/python bench/imap_bench.py --quick            # smoke run, a minute or two
    .venv/bin/python bench/imap_bench.py                    # everything, full sizes
    .venv/bin/python bench/imap_bench.py --bench mix,open --duration 30 --rounds 5
    .venv/bin/python bench/imap_bench.py --servers dovecot  # the peer alone

The client is one asyncio process with raw sockets; the table reports its CPU
use per round next to the servers' so a client bottleneck is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import dovecot_setup  # noqa: E402

DOMAIN = "bench.test"
PASSWORD = "bench-pw"
HOST = "127.0.0.1"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the mail: deterministic messages written straight into Maildir/cur -----------------

_WORDS = ("mail server maildir folder index client fetch envelope body structure flags "
          "message header quota delivery queue twisted python dovecot courier indimail "
          "the a of and to in is for on with as by at from")
WORDS = tuple(_WORDS.split())


def _text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def make_message(n: int, small: bool = False) -> bytes:
    """Message ``n``: plain (60%), multipart/alternative (25%) or a nested
    multipart/mixed with an attachment (15%); ``small``: plain, about 1 KB."""
    rng = random.Random(n)
    kind = rng.random() if not small else 0.0
    head = (f"Return-Path: <sender{n % 50}@example.org>\n"
            f"From: Sender {n % 50} <sender{n % 50}@example.org>\n"
            f"To: Bench User <user@{DOMAIN}>\n"
            + (f"Cc: other{n % 7}@example.net\n" if n % 3 == 0 else "")
            + f"Subject: bench message {n} {' '.join(rng.choice(WORDS) for _ in range(4))}\n"
            f"Date: Tue, 03 Mar 2026 {n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d} +0000\n"
            f"Message-ID: <{n}.bench@example.org>\n"
            + (f"In-Reply-To: <{n - 1}.bench@example.org>\n" if n % 4 == 1 else "")
            + "MIME-Version: 1.0\n")
    if kind < 0.6:
        body = _text(rng, 600 if small else rng.randint(1000, 6000))
        return (head + "Content-Type: text/plain; charset=us-ascii\n\n" + body).encode()
    text = _text(rng, rng.randint(800, 3000))
    html = "<html><body><p>" + text.replace("\n", "</p>\n<p>") + "</p></body></html>\n"
    alt = ("--alt\nContent-Type: text/plain; charset=utf-8\n\n" + text
           + "--alt\nContent-Type: text/html; charset=utf-8\n\n" + html + "--alt--\n")
    if kind < 0.85:
        return (head + 'Content-Type: multipart/alternative; boundary="alt"\n\n' + alt).encode()
    import base64
    blob = base64.encodebytes(rng.randbytes(rng.randint(8000, 30000))).decode()
    return (head + 'Content-Type: multipart/mixed; boundary="mix"\n\n'
            + '--mix\nContent-Type: multipart/alternative; boundary="alt"\n\n' + alt
            + '--mix\nContent-Type: application/octet-stream; name="data.bin"\n'
            + 'Content-Disposition: attachment; filename="data.bin"\n'
            + "Content-Transfer-Encoding: base64\n\n" + blob + "--mix--\n").encode()


def fill_maildir(maildir: str, count: int, small: bool = False, start: int = 1) -> None:
    """``count`` messages in ``maildir/cur``; a third of them \\Seen, some \\Flagged.
    Names carry ``,S=size`` (both servers then need no stat for the size)."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    stamp = 1772500000
    for n in range(start, start + count):
        data = make_message(n, small)
        flags = ("S" if n % 3 else "") + ("F" if n % 17 == 0 else "")
        flags = "".join(sorted(flags))
        name = f"{stamp + n}.M{n}P1.bench,S={len(data)}:2,{flags}"
        with open(os.path.join(maildir, "cur", name), "wb") as f:
            f.write(data)
        os.utime(os.path.join(maildir, "cur", name), (stamp + n, stamp + n))


def make_root(root: str, users: int, messages: int, big: int) -> None:
    """A fresh indimail_tw root with ``bench.test``: user1..userN with ``messages``
    each and ``big`` with ``big`` small messages."""
    from indimail_tw.admin.ops_domain import add_domain
    from indimail_tw.admin.ops_user import add_user
    from indimail_tw.admin.site import Site
    from indimail_tw.tlsutil import make_self_signed

    shutil.rmtree(root, ignore_errors=True)
    site = Site.resolve(root, clean_env())
    site.paths.ensure()
    site.control.write_value("me", "bench.local")
    site.control.write_value("defaultdomain", DOMAIN)
    make_self_signed(os.path.join(site.paths.certs, "servercert.pem"), "bench.local")
    add_domain(site, DOMAIN, "pm-" + PASSWORD)
    for i in range(1, users + 1):
        user = add_user(site, f"user{i}@{DOMAIN}", PASSWORD)
        fill_maildir(user.maildir, messages)
    user = add_user(site, f"big@{DOMAIN}", PASSWORD)
    fill_maildir(user.maildir, big, small=True)
    site.close()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("MYSQL_", "INDIMAIL", "QUEUE", "CONTROLDIR", "BASE_PATH",
                                 "CERTDIR"))}


# -- /proc: memory and CPU of server processes ---------------------------------------------

def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return [text[text.index("(") + 1:text.rindex(")")]] + text[text.rindex(")") + 2:].split()


def children(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(int(entry))[2]) == ppid:
                    out.append(int(entry))
            except (OSError, IndexError):
                pass
    return out


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    fields = _stat(pid)      # [comm, state, ppid, ...]: utime is field 14 -> index 12
    ticks = int(fields[12]) + int(fields[13])
    if reaped_children:
        ticks += int(fields[14]) + int(fields[15])
    return ticks / CLK


# -- the two servers ---------------------------------------------------------------------

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
                raise RuntimeError(f"nothing listens on {HOST}:{port}") from None
            time.sleep(0.05)


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if n > hard and os.geteuid() == 0:
        hard = n
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


class Ours:
    name = "indimail_tw"

    def __init__(self, root: str, nofile: int, extra: list[str]) -> None:
        self.root, self.nofile, self.extra = root, nofile, extra
        self.imap, self.pop3 = free_port(), free_port()
        self.process: subprocess.Popen | None = None
        self.env = dict(clean_env(), SECURE_AUTH="0", MAXDAEMONS=str(nofile),
                        MAXPERIP="0")

    def start(self, **_: object) -> None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        from indimail_tw import listeners
        argv = [twistd, "-n", "--pidfile=", "--logfile", os.path.join(self.root, "twistd.log"),
                "indimail", "--root", self.root]
        ports = []
        for proto, port in (("imap", self.imap), ("pop3", self.pop3)):
            if listeners.PROTOCOLS[proto].build or os.environ.get("OUR_TWISTD"):
                argv += [f"--{proto}", f"tcp:{port}:interface={HOST}"]
                ports.append(port)
        argv += self.extra
        if os.environ.get("OUR_TWISTD"):    # another twistd entry point (development)
            argv[0] = os.environ["OUR_TWISTD"]
        self.process = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL,
                                        preexec_fn=lambda: raise_nofile(self.nofile))
        for port in ports:
            wait_port(port, lambda: self.process.poll() is None)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def before_round(self) -> None:
        pass

    def cpu(self) -> float:
        """This process and the workers it started (``--workers N``)."""
        return (cpu_seconds(self.process.pid, reaped_children=True)
                + sum(cpu_seconds(pid) for pid in children(self.process.pid)))

    def memory_kb(self) -> int:
        """PSS of the server (one process: about its RSS)."""
        return pss_kb(self.process.pid)

    def session_rss_kb(self) -> int:
        return rss_kb(self.process.pid)

    def process_count(self) -> int:
        return 1 + len(children(self.process.pid))


class Dovecot:
    name = "dovecot"

    def __init__(self, root: str, base: str, nofile: int) -> None:
        self.root, self.base, self.nofile = root, base, nofile
        self.imap, self.pop3 = free_port(), free_port()
        self.ports = {"imap": self.imap, "pop3": self.pop3, "imaps": 0, "pop3s": 0}
        self.master = 0
        self.homes: list[str] = []

    def start(self, client_limit: int = 0) -> None:
        dovecot_setup.write_config(self.base, self.root, self.ports, cert=None,
                                   client_limit=client_limit, default_realm=DOMAIN)
        self.homes = dovecot_setup.homes_of(self.base)
        self.master = dovecot_setup.start(self.base, self.nofile)

    def stop(self) -> None:
        dovecot_setup.stop(self.base)

    def before_round(self) -> None:
        dovecot_setup.grant(self.homes)     # files our server created are root's

    def pids(self) -> list[int]:
        return [self.master] + children(self.master)

    def process_count(self) -> int:
        return len(self.pids())

    def cpu(self) -> float:
        total = cpu_seconds(self.master, reaped_children=True)
        for pid in children(self.master):
            with contextlib.suppress(OSError):      # exited meanwhile
                total += cpu_seconds(pid)
        return total

    def memory_kb(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += pss_kb(pid)
        return total

    def session_rss_kb(self) -> int:
        """RSS of the newest imap process (the one serving the benchmark's session)."""
        best = None
        for pid in children(self.master):
            try:
                fields = _stat(pid)
            except OSError:
                continue
            if fields[0] == "imap" and (best is None or int(fields[20]) > best[0]):
                best = (int(fields[20]), pid)
        return rss_kb(best[1]) if best else 0


# -- a small asyncio IMAP / POP3 client --------------------------------------------------

LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class IMAPError(Exception):
    pass


class IMAP:
    def __init__(self) -> None:
        self.tagn = 0
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, port, limit=1 << 24)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                        socket.TCP_NODELAY, 1)
        greeting = await self.reader.readuntil(b"\r\n")
        if not greeting.startswith(b"* OK"):
            raise IMAPError(f"greeting {greeting!r}")

    async def line(self) -> bytes:
        """One response line with its literals inline."""
        parts = []
        while True:
            piece = await self.reader.readuntil(b"\r\n")
            parts.append(piece)
            m = LITERAL.search(piece)
            if not m:
                return b"".join(parts)
            parts.append(await self.reader.readexactly(int(m.group(1))))

    async def command(self, text: str, literal: bytes | None = None) -> list[bytes]:
        """Send ``tag text`` (and a synchronizing literal); the untagged lines on OK."""
        self.tagn += 1
        tag = b"a%d" % self.tagn
        if literal is None:
            self.writer.write(tag + b" " + text.encode() + b"\r\n")
        else:
            self.writer.write(tag + b" " + text.encode() + b" {%d}\r\n" % len(literal))
            while True:
                reply = await self.line()
                if reply.startswith(b"+"):
                    break
                if reply.startswith(tag + b" "):
                    raise IMAPError(f"{text}: {reply!r}")
            self.writer.write(literal + b"\r\n")
        untagged = []
        while True:
            reply = await self.line()
            if reply.startswith(tag + b" "):
                if reply[len(tag) + 1:len(tag) + 3] != b"OK":
                    raise IMAPError(f"{text}: {reply!r}")
                untagged.append(reply)
                return untagged
            untagged.append(reply)

    async def bulk(self, text: str) -> int:
        """Send ``tag text`` whose reply has no literals (e.g. FETCH 1:* (UID FLAGS)), read it
        in large chunks (the client must not be what a 100,000-line reply measures);
        returns the number of untagged lines."""
        self.tagn += 1
        tag = b"a%d " % self.tagn
        self.writer.write(tag + text.encode() + b"\r\n")
        buf = bytearray(b"\r\n")
        found = -1
        while True:
            chunk = await self.reader.read(1 << 20)
            if not chunk:
                raise IMAPError(f"{text}: connection closed")
            buf += chunk
            if found < 0:
                found = buf.find(b"\r\n" + tag, max(0, len(buf) - len(chunk) - len(tag) - 2))
            if found >= 0 and buf.endswith(b"\r\n") and buf.find(b"\r\n", found + 2) == \
                    len(buf) - 2:
                if not buf[found + 2 + len(tag):].startswith(b"OK"):
                    raise IMAPError(f"{text}: {bytes(buf[found:found + 200])!r}")
                return buf.count(b"\r\n") - 2

    def close(self, reset: bool = False) -> None:
        if not hasattr(self, "writer"):
            return
        if reset:       # RST instead of FIN: no TIME_WAIT left on the client's ports
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.close()


def exists_of(lines: list[bytes]) -> int:
    for line in lines:
        m = re.match(rb"\* (\d+) EXISTS", line)
        if m:
            return int(m.group(1))
    raise IMAPError("no EXISTS in SELECT")


APPENDED = make_message(999_999)


async def mix_iteration(imap: IMAP, exists: int, rng: random.Random) -> tuple[int, int]:
    """FETCH x2, STORE, APPEND, STORE, EXPUNGE on a selected INBOX; returns
    (commands, exists afterwards)."""
    low = max(1, exists - rng.randint(0, max(0, exists - 100)) - 99)
    high = min(exists, low + 99)
    await imap.command(f"FETCH {low}:{high} (FLAGS ENVELOPE BODYSTRUCTURE)")
    k = rng.randint(1, exists)
    await imap.command(f"FETCH {k} BODY[]")
    sign = "+" if rng.random() < 0.5 else "-"
    await imap.command(f"STORE {k} {sign}FLAGS (\\Flagged)")
    lines = await imap.command("APPEND INBOX (\\Seen) \"03-Mar-2026 10:00:00 +0000\"",
                               APPENDED)
    m = re.search(rb"APPENDUID \d+ (\d+)", lines[-1])
    if m:
        await imap.command(f"UID STORE {m.group(1).decode()} +FLAGS.SILENT (\\Deleted)")
    else:
        await imap.command(f"STORE {exists + 1} +FLAGS.SILENT (\\Deleted)")
    await imap.command("EXPUNGE")
    return 6, exists


async def mix_client(server, user: str, deadline: float, keep_open: bool, stats: dict,
                     seed: int) -> None:
    rng = random.Random(seed)
    imap = None
    exists = 0
    while time.monotonic() < deadline:
        try:
            if imap is None:
                imap = IMAP()
                await imap.connect(server.imap)
                await imap.command(f"LOGIN {user} {PASSWORD}")
                exists = exists_of(await imap.command("SELECT INBOX"))
                stats["commands"] += 2
            done, exists = await mix_iteration(imap, exists, rng)
            stats["commands"] += done
            if not keep_open:
                await imap.command("LOGOUT")
                stats["commands"] += 1
                imap.close()
                imap = None
        except (IMAPError, OSError, asyncio.IncompleteReadError) as e:
            stats["errors"] += 1
            stats.setdefault("first_error", repr(e)[:300])
            if imap:
                imap.close()
            imap = None
            await asyncio.sleep(0.05)
    if imap is not None:
        with contextlib.suppress(IMAPError, OSError, asyncio.IncompleteReadError):
            await imap.command("LOGOUT")
        imap.close()


async def run_mix(server, clients: int, duration: float, keep_open: bool, seed: int) -> dict:
    stats = {"commands": 0, "errors": 0}
    deadline = time.monotonic() + duration
    start = time.monotonic()
    await asyncio.gather(*(mix_client(server, f"user{i % 10 + 1}@{DOMAIN}", deadline,
                                      keep_open, stats, seed + i) for i in range(clients)))
    elapsed = time.monotonic() - start
    out = {"value": stats["commands"] / elapsed, "commands": stats["commands"],
           "errors": stats["errors"], "seconds": round(elapsed, 2)}
    if "first_error" in stats:
        out["first_error"] = stats["first_error"]
    return out


async def run_big(server, user: str) -> dict:
    imap = IMAP()
    await imap.connect(server.imap)
    await imap.command(f"LOGIN {user} {PASSWORD}")
    await imap.command("NOOP")
    rss_login = server.session_rss_kb()
    t0 = time.monotonic()
    exists = exists_of(await imap.command("SELECT INBOX"))
    t1 = time.monotonic()
    lines = await imap.bulk("FETCH 1:* (UID FLAGS)")
    t2 = time.monotonic()
    rss_after = server.session_rss_kb()
    await imap.command("LOGOUT")
    imap.close()
    if lines < exists:
        raise IMAPError(f"FETCH 1:* gave {lines} lines for {exists} messages")
    return {"value": t1 - t0, "select_s": t1 - t0, "fetch_s": t2 - t1, "exists": exists,
            "rss_login_kb": rss_login, "rss_after_kb": rss_after}


async def open_idle(server, count: int, batch: int) -> list[IMAP]:
    conns: list[IMAP] = []

    async def one(i: int) -> IMAP:
        imap = IMAP()
        await imap.connect(server.imap)
        await imap.command(f"LOGIN user{i % 10 + 1}@{DOMAIN} {PASSWORD}")
        return imap

    for first in range(0, count, batch):
        conns += await asyncio.gather(*(one(i) for i in range(first, min(count, first + batch))))
    return conns


async def run_idle(server, count: int, batch: int) -> dict:
    settle = 1.0
    await asyncio.sleep(settle)
    before = server.memory_kb()
    t0 = time.monotonic()
    conns = await open_idle(server, count, batch)
    opened = time.monotonic() - t0
    await asyncio.sleep(settle)
    after = server.memory_kb()
    processes = server.process_count()
    # still alive?  a NOOP on a sample
    for imap in conns[:: max(1, count // 20)]:
        await imap.command("NOOP")
    for imap in conns:
        imap.close(reset=True)
    growth = after - before
    return {"value": growth * 1024 / count / 1024, "kb_before": before, "kb_after": after,
            "connections": count, "open_s": round(opened, 2), "server_processes": processes}


async def pop3_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     command: bytes | None, multi: bool = False) -> bytes:
    """Send ``command`` (None: read the greeting); the +OK reply, whole if ``multi``."""
    if command:
        writer.write(command + b"\r\n")
    first = await reader.readuntil(b"\r\n")
    if not first.startswith(b"+OK"):
        raise IMAPError(f"{command!r}: {first!r}")
    return first + await _multiline(reader) if multi else first


async def pop3_client(server, user: str, deadline: float, stats: dict) -> None:
    while time.monotonic() < deadline:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(HOST, server.pop3, limit=1 << 24)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                       socket.TCP_NODELAY, 1)
            await pop3_reply(reader, writer, None)
            await pop3_reply(reader, writer, b"USER " + user.encode())
            await pop3_reply(reader, writer, b"PASS " + PASSWORD.encode())
            count = int((await pop3_reply(reader, writer, b"STAT")).split()[1])
            await pop3_reply(reader, writer, b"UIDL", multi=True)
            for n in range(1, count + 1):
                if time.monotonic() >= deadline:
                    break
                data = await pop3_reply(reader, writer, b"RETR %d" % n, multi=True)
                if b"\r\nMessage-ID: <" not in data:
                    raise IMAPError(f"RETR {n}: not a bench message: {data[:200]!r}")
                stats["messages"] += 1
                stats["bytes"] += len(data)
            await pop3_reply(reader, writer, b"QUIT")
        except (IMAPError, OSError, asyncio.IncompleteReadError, ValueError) as e:
            stats["errors"] += 1
            stats.setdefault("first_error", repr(e)[:300])
            await asyncio.sleep(0.05)
        finally:
            if writer is not None:
                writer.close()


async def _multiline(reader: asyncio.StreamReader) -> bytes:
    """The rest of a multi-line reply after its +OK line, up to the lone ".\r\n"."""
    parts = []
    while True:
        part = await reader.readuntil(b".\r\n")
        parts.append(part)      # every part ends a line: a part ".\r\n" is the lone dot
        if part == b".\r\n" or part.endswith(b"\r\n.\r\n"):
            return b"".join(parts)


async def run_pop3(server, clients: int, duration: float) -> dict:
    stats = {"messages": 0, "bytes": 0, "errors": 0}
    start = time.monotonic()
    deadline = start + duration
    await asyncio.gather(*(pop3_client(server, f"user{i % 10 + 1}@{DOMAIN}", deadline, stats)
                           for i in range(clients)))
    elapsed = time.monotonic() - start
    out = {"value": stats["messages"] / elapsed, "messages": stats["messages"],
           "bytes_per_message": round(stats["bytes"] / max(1, stats["messages"])),
           "errors": stats["errors"], "seconds": round(elapsed, 2)}
    if "first_error" in stats:
        out["first_error"] = stats["first_error"]
    return out


# -- rounds, table -----------------------------------------------------------------------

def measured(server, coroutine) -> dict:
    """Run one round; add the client's and the server's CPU seconds."""
    server.before_round()
    c0, s0 = time.process_time(), server.cpu()
    w0 = time.monotonic()
    result = asyncio.run(coroutine)
    wall = time.monotonic() - w0
    result["client_cpu"] = round((time.process_time() - c0) / wall, 2)
    result["server_cpu"] = round((server.cpu() - s0) / wall, 2)
    return result


BENCHES = ("mix", "open", "big", "idle", "pop3")
TITLES = {
    "mix": ("IMAP session mix, {clients} clients, login per session", "commands/s",
            "higher", "≥ 1x"),
    "open": ("IMAP session mix, {clients} clients, sessions kept open", "commands/s",
             "higher", "≥ 1x"),
    "big": ("{big:,}-message folder", "", "lower", "≤ 2x"),
    "idle": ("{idle:,} idle authenticated IMAP connections", "KB per connection",
             "lower", "< 50 KB"),
    "pop3": ("POP3 RETR, {clients} clients", "messages/s", "higher", "≥ 1x"),
}


def run_bench(name: str, servers: list, args) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {s.name: [] for s in servers}
    restart = name in ("big", "idle")

    def one(server, warm: bool = False) -> dict:
        if name in ("mix", "open"):
            return measured(server, run_mix(server, args.clients,
                                            args.warmup if warm else args.duration,
                                            name == "open", args.seed))
        if name == "pop3":
            return measured(server, run_pop3(server, args.clients,
                                             args.warmup if warm else args.duration))
        if name == "big":
            return measured(server, run_big(server, f"big@{DOMAIN}"))
        return measured(server, run_idle(server, args.idle, args.idle_batch))

    def restart_all(server) -> None:
        for s in servers:
            s.stop()
        server.start(client_limit=args.idle if name == "idle" else 0)

    for server in servers:          # warm-up: indexes, page cache, first logins
        if restart:
            restart_all(server)
        warm = one(server, warm=True) if name != "idle" else {}
        if name == "big":
            results[server.name + " cold"] = [warm]
        log(f"{name} warm-up {server.name}: {json.dumps(warm)}")
    for rnd in range(1, args.rounds + 1):
        for server in servers:
            if restart:
                restart_all(server)
            result = one(server)
            results[server.name].append(result)
            log(f"{name} round {rnd} {server.name}: {json.dumps(result)}")
    if restart:
        for s in servers:
            s.stop()
        for s in servers:
            s.start()
    return results


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def median(rows: list[dict], key: str = "value") -> float:
    return statistics.median(r[key] for r in rows)


def fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}" if abs(x) < 10 else f"{x:,.1f}"


def table(all_results: dict, servers: list, args, argv: list[str]) -> str:
    ours, peer = "indimail_tw", "dovecot"
    names = [s.name for s in servers]
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), platform.processor())
    out = [f"Command: `{' '.join(argv)}`", "",
           f"Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
           f"load average at start {args.load_start}, at end "
           f"{loadavg()}; "
           f"Dovecot {args.dovecot_version}; commit {args.commit}.", "",
           "| Benchmark | Metric | indimail_tw | Dovecot | ratio ours/Dovecot | goal |",
           "|---|---|---|---|---|---|"]

    def row(title, metric, key, goal, scale=1.0):
        a = [r[key] * scale for r in results.get(ours, [])] if ours in names else []
        b = [r[key] * scale for r in results.get(peer, [])] if peer in names else []
        ma = statistics.median(a) if a else None
        mb = statistics.median(b) if b else None
        ratio = f"{ma / mb:.2f}x" if ma is not None and mb else "n/a"
        cell = lambda m, xs: (f"**{fmt(m)}** ({', '.join(fmt(x) for x in xs)})"  # noqa: E731
                              if m is not None else "-")
        out.append(f"| {title} | {metric} | {cell(ma, a)} | {cell(mb, b)} | {ratio} | {goal} |")

    for name, results in all_results.items():
        title, metric, _, goal = TITLES[name]
        title = title.format(clients=args.clients, big=args.big, idle=args.idle)
        if name == "big":
            row(title, "SELECT, s", "select_s", goal)
            row(title, "FETCH 1:* (UID FLAGS), s", "fetch_s", goal)
            row(title, "server RSS after FETCH, MB", "rss_after_kb", goal, 1 / 1024)
            row(title, "RSS growth LOGIN→FETCH, MB", "rss_growth_kb", goal, 1 / 1024)
            for key, label in (("select_s", "first SELECT (cold, builds index), s"),
                               ("fetch_s", "first FETCH 1:* (cold), s")):
                a = results.get(f"{ours} cold", [])
                b = results.get(f"{peer} cold", [])
                va = a[0][key] if a else None
                vb = b[0][key] if b else None
                ratio = f"{va / vb:.2f}x" if va and vb else "n/a"
                out.append(f"| {title} | {label} | {fmt(va) if va else '-'} | "
                           f"{fmt(vb) if vb else '-'} | {ratio} | |")
        else:
            row(title, metric, "value", goal)
            if name != "idle":
                row(title, "server CPU (cores busy)", "server_cpu", "")
        row(title, "client CPU (cores busy)", "client_cpu", "")
    errors = {f"{name}/{srv}": sum(r.get("errors", 0) for r in rs)
              for name, results in all_results.items() for srv, rs in results.items()}
    out += ["", "Figures: median **bold**, then every round in order. Errors per benchmark: "
            + ", ".join(f"{k} {v}" for k, v in errors.items())]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--bench", default=",".join(BENCHES),
                        help="comma-separated subset of " + ",".join(BENCHES))
    parser.add_argument("--servers", default="indimail_tw,dovecot")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke run of every benchmark")
    parser.add_argument("--root", default="/var/tmp/imapbench")
    parser.add_argument("--dovecot-base", default="/var/tmp/imapbench-dovecot")
    parser.add_argument("--reuse", action="store_true", help="keep an existing --root")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--messages", type=int, default=300, help="per user1..user10")
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--idle-batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--our-args", default="", help="more options for twistd indimail")
    parser.add_argument("--json", help="also write every round's figures here")
    args = parser.parse_args(argv[1:])
    if args.quick:
        args.duration, args.warmup, args.messages = min(args.duration, 3.0), 1.0, 60
        args.big, args.idle = min(args.big, 3000), min(args.idle, 300)
    benches = [b for b in args.bench.split(",") if b]
    unknown = set(benches) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    args.load_start = loadavg()
    args.dovecot_version = subprocess.run([dovecot_setup.DOVECOT, "--version"],
                                          capture_output=True, text=True).stdout.split()[0]
    args.commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip() or "?"
    nofile = args.idle + 2000
    raise_nofile(nofile)

    if not args.reuse or not os.path.isdir(args.root):
        log(f"creating {args.root}: 10 users x {args.messages} messages, big x {args.big}")
        make_root(args.root, 10, args.messages, args.big)
    servers = []
    for name in args.servers.split(","):
        if name == "indimail_tw":
            servers.append(Ours(args.root, nofile, args.our_args.split()))
        elif name == "dovecot":
            servers.append(Dovecot(args.root, args.dovecot_base, nofile))
        else:
            parser.error(f"unknown server {name}")
    all_results = {}
    try:
        for server in servers:
            server.start()
        for name in benches:
            results = run_bench(name, servers, args)
            if name == "big":
                for rows in results.values():
                    for r in rows:
                        r["rss_growth_kb"] = r["rss_after_kb"] - r["rss_login_kb"]
            all_results[name] = results
    finally:
        for server in servers:
            server.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=1)
    print(table(all_results, servers, args, [os.path.relpath(argv[0])] + argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
