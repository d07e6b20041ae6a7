#!/usr/bin/env python3
"""Relay benchmark, side by side in one run: our remote agent vs Postfix, to smtp-sink.

Both MTAs get the same 5,000 messages (``--messages``, ``--size`` bytes, one
recipient each, round-robin over 10 domains ``d0.bench`` .. ``d9.bench``), held
in their queues; then the queue is released and the time until Postfix's
``smtp-sink`` has accepted every message is measured (messages/s).  The 10
domains are 10 destinations: one ``smtp-sink`` per domain on 127.0.0.11 ..
127.0.0.20, all on one port, counted with ``smtp-sink -c``.

* ours: ``twistd indimail`` with ``smtproutes`` ``dN.bench:[127.0.0.(11+N)]:PORT``,
  ``holdremote`` while injecting (SMTP from 127.0.0.1, relaying allowed by
  tcp.smtp); release = remove ``holdremote`` + SIGHUP.
* Postfix: a private instance (own config/queue/data under ``--base``, the
  system's Postfix untouched) with ``transport_maps`` sending dN.bench to the same
  sinks, ``defer_transports = smtp`` while injecting; release =
  ``defer_transports =``, ``postfix reload``, ``postqueue -f``.

Concurrency, the same for both: at most 10 connections per destination
(Postfix's ``default_destination_concurrency_limit``, our ``concurrencyperhost``,
divided among the processes with ``--workers N``),
so at most 100 at once (also Postfix's ``default_process_limit`` and our
``concurrencyremote``, which is per queue).  Postfix's other settings are its
defaults (connection caching on demand, slow start); ours are ours (10 queues).

Run as root from the repository root (Postfix needs it; apt-get install postfix):
    .venv/bin/python bench/relay_bench.py --rounds 3
    .venv/bin/python bench/relay_bench.py --our-args="--workers 2"   (options for
        'twistd indimail'; the environment variable OUR_ARGS does the same)
    TWISTD_ARGS="--profile=/tmp/p --profiler=cprofile --savestats" ... --only ours
Prints one JSON line per round and side, the ratio of each round and the median.
Talks only to loopback.  A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pty
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.interop.mailservers import POSTFIX_MASTER_CF  # noqa: E402

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
TWISTD = os.path.join(sys.prefix, "bin", "twistd")
DOMAINS = 10
TOTAL_CONCURRENCY = 100
PER_DESTINATION = 10
WAIT = 900.0            # seconds: give up waiting for a phase after this long


def sink_ip(n: int) -> str:
    return f"127.0.0.{11 + n}"


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_listening(ip: str, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {ip}:{port}")


class Sinks:
    """One ``smtp-sink -c`` per destination; the sum of their message counters."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.counts = [0] * DOMAINS
        self.procs: list[subprocess.Popen] = []
        for n in range(DOMAINS):
            # a terminal for stdout: smtp-sink flushes its counters to a tty only
            master, slave = pty.openpty()
            proc = subprocess.Popen([SMTP_SINK, "-c", "-u", "nobody", f"{sink_ip(n)}:{port}",
                                     "1024"], stdout=slave, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL)
            os.close(slave)
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(n, master), daemon=True).start()
        for n in range(DOMAINS):
            wait_listening(sink_ip(n), port)
        self.base = 0
        self.base = self.total()    # the readiness probes count as sessions, not messages

    def _read(self, n: int, fd: int) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                os.close(fd)
                return
            buf += chunk
            *records, buf = buf.split(b"\r")
            for record in reversed(records):           # "sess=N quit=N mesg=N"
                fields = [f for f in record.split() if f.startswith(b"mesg=")]
                if fields:
                    self.counts[n] = int(fields[0][5:])
                    break

    def total(self) -> int:
        return sum(self.counts) - self.base

    def wait_for(self, count: int) -> float:
        """Seconds (monotonic clock) at which the sinks had accepted ``count`` more."""
        target = self.total() + count
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.total() >= target:
                return time.monotonic()
            time.sleep(0.005)
        raise SystemExit(f"the sinks got {self.total() - target + count} of {count}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


def message(n: int, size: int) -> tuple[str, str]:
    rcpt = f"user{n % 7}@d{n % DOMAINS}.bench"
    head = (f"From: bench <bench@client.test>\r\nTo: <{rcpt}>\r\n"
            f"Subject: relay bench {n}\r\nMessage-ID: <{n}.{time.time()}@client.test>\r\n\r\n")
    line = "x" * 70 + "\r\n"
    body_len = max(0, size - len(head))
    body = (line * (body_len // len(line) + 1))[:body_len].rstrip("\r\n") + "\r\n"
    return rcpt, head + body


def inject(port: int, messages: int, size: int, sessions: int) -> float:
    """Send the messages over ``sessions`` SMTP sessions; returns seconds taken."""
    started = time.monotonic()
    numbers = iter(range(messages))
    lock = threading.Lock()

    def session() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
            while True:
                with lock:
                    n = next(numbers, None)
                if n is None:
                    return
                rcpt, text = message(n, size)
                smtp.sendmail("bench@client.test", [rcpt], text)

    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        for f in [pool.submit(session) for _ in range(sessions)]:
            f.result()
    return time.monotonic() - started


def workers_of(our_args: str) -> int:
    """N of ``--workers N`` / ``--workers=N`` in the options for twistd indimail (1 without)."""
    words = our_args.split()
    for i, word in enumerate(words):
        if word == "--workers" and i + 1 < len(words):
            return max(1, int(words[i + 1]))
        if word.startswith("--workers="):
            return max(1, int(word.split("=", 1)[1]))
    return 1


class Ours:
    def __init__(self, base: str, sink_port: int, our_args: str = "") -> None:
        from indimail_tw.admin.site import Site

        self.root = os.path.join(base, "ours")
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("MYSQL_", "INDIMAIL", "QUEUE", "CONTROLDIR",
                                         "EXTRAQUEUE", "SMTPROUTE", "CERTDIR"))}
        site = Site.resolve(self.root, self.env)
        site.paths.ensure()
        control = site.control
        control.write_value("me", "relay.local")
        with open(os.path.join(site.paths.control, "smtproutes"), "w") as f:
            f.writelines(f"d{n}.bench:[{sink_ip(n)}]:{sink_port}\n" for n in range(DOMAINS))
        control.write_value("concurrencyremote", str(TOTAL_CONCURRENCY))
        # concurrencyperhost is per process: with --workers N each process gets its
        # share, so a destination still sees at most PER_DESTINATION connections
        self.per_host = max(1, PER_DESTINATION // workers_of(our_args))
        control.write_value("concurrencyperhost", str(self.per_host))
        self.control = site.paths.control
        with open(os.path.join(site.paths.tcp, "tcp.smtp"), "w") as f:
            f.write('127.0.0.1:allow,RELAYCLIENT=""\n')
        site.close()
        self.hold(True)
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(self.root, "twistd.log"),
             *os.environ.get("TWISTD_ARGS", "").split(), "indimail", "--root", self.root,
             "--smtp", f"tcp:{self.port}:interface=127.0.0.1",
             *our_args.split()],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening("127.0.0.1", self.port)

    def hold(self, on: bool) -> None:
        path = os.path.join(self.control, "holdremote")
        if on:
            with open(path, "w") as f:
                f.write("1\n")
        elif os.path.exists(path):
            os.unlink(path)

    def held(self) -> None:
        self.hold(True)
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(2)                     # the reload has happened

    def release(self) -> None:
        self.hold(False)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)




class Postfix:
    def __init__(self, base: str, sink_port: int) -> None:
        self.base = os.path.join(base, "postfix")
        self.conf = os.path.join(self.base, "conf")
        self.queue = os.path.join(self.base, "queue")
        self.port = free_port()
        for sub in ("conf", "queue", "data"):
            os.makedirs(os.path.join(self.base, sub))
        shutil.chown(os.path.join(self.base, "data"), "postfix")
        with open(os.path.join(self.conf, "transport"), "w") as f:
            f.writelines(f"d{n}.bench smtp:[{sink_ip(n)}]:{sink_port}\n"
                         for n in range(DOMAINS))
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(ip="127.0.0.1", port=self.port))
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write("\n".join([
                "compatibility_level = 3.6",
                f"queue_directory = {self.queue}",
                f"data_directory = {self.base}/data",
                "myhostname = pf.relay.local",
                "mydestination =",
                "inet_interfaces = loopback-only",
                "inet_protocols = ipv4",
                "mynetworks = 127.0.0.0/8",
                "smtp_dns_support_level = disabled",
                f"maillog_file = {self.base}/maillog",
                f"maillog_file_prefixes = {self.base}",
                "alias_maps =",
                "alias_database =",
                f"transport_maps = texthash:{self.conf}/transport",
                f"default_process_limit = {TOTAL_CONCURRENCY}",
                f"default_destination_concurrency_limit = {PER_DESTINATION}",
                "smtpd_client_connection_count_limit = 0",
                "defer_transports = smtp",
                "",
            ]))
        self.postfix("start")
        wait_listening("127.0.0.1", self.port)

    def postfix(self, *args: str) -> None:
        subprocess.run([POSTFIX, "-c", self.conf, *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def queued(self) -> int:
        """Messages in the deferred queue (held by defer_transports)."""
        return sum(len(files) for _dir, _sub, files in
                   os.walk(os.path.join(self.queue, "deferred")))

    def settled(self) -> bool:
        return not any(files for sub in ("maildrop", "incoming", "active")
                       for _dir, _sub, files in os.walk(os.path.join(self.queue, sub)))

    def wait_held(self, count: int) -> int:
        """Wait until every injected message is deferred (a few may slip out while
        the hold is being reloaded); returns how many are held."""
        deadline = time.monotonic() + WAIT
        while not (self.settled() and self.settled()):
            if time.monotonic() > deadline:
                raise SystemExit(f"Postfix deferred {self.queued()} of {count}")
            time.sleep(0.2)
        return self.queued()

    def held(self) -> None:
        subprocess.run([POSTCONF, "-c", self.conf, "-e", "defer_transports = smtp"],
                       check=True)
        self.postfix("reload")
        time.sleep(2)

    def release(self) -> None:
        subprocess.run([POSTCONF, "-c", self.conf, "-e", "defer_transports ="], check=True)
        self.postfix("reload")
        subprocess.run([POSTQUEUE, "-c", self.conf, "-f"], check=True)

    def stop(self) -> None:
        self.postfix("stop")


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), {os.uname().release}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=10, help="injection sessions")
    parser.add_argument("--base", default="/var/tmp/itwrelay")
    parser.add_argument("--only", choices=("ours", "postfix"), default=None)
    parser.add_argument("--our-args", default=os.environ.get("OUR_ARGS", ""),
                        help="more options for 'twistd indimail', e.g. --our-args='--workers 2'")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: Postfix and smtp-sink -u need it")
    shutil.rmtree(args.base, ignore_errors=True)
    os.makedirs(args.base)
    os.chmod(args.base, 0o755)
    print(f"machine: {machine()}", flush=True)
    if args.our_args:
        print(f"ours: twistd indimail ... {args.our_args} (concurrencyperhost "
              f"{max(1, PER_DESTINATION // workers_of(args.our_args))} per process)",
              flush=True)
    sink_port = free_port(sink_ip(0))
    sinks = ours = postfix = None
    ratios = []
    try:
        sinks = Sinks(sink_port)
        ours = Ours(args.base, sink_port, args.our_args) if args.only != "postfix" else None
        postfix = Postfix(args.base, sink_port) if args.only != "ours" else None
        for rnd in range(1, args.rounds + 1):
            rates = {}
            for name, mta in (("indimail_tw", ours), ("postfix", postfix)):
                if mta is None:
                    continue
                start = sinks.total()
                injected = inject(mta.port, args.messages, args.size, args.sessions)
                held = args.messages
                if isinstance(mta, Postfix):
                    held = mta.wait_held(args.messages)
                held = min(held, args.messages - (sinks.total() - start))
                t0 = time.monotonic()
                mta.release()
                t1 = sinks.wait_for(held)
                rate = held / (t1 - t0)
                rates[name] = rate
                print(json.dumps({"round": rnd, "mta": name, "messages": held,
                                  "size": args.size, "inject_s": round(injected, 2),
                                  "relay_s": round(t1 - t0, 3),
                                  "relayed_per_s": round(rate, 1)}), flush=True)
                time.sleep(5)              # the queue finishes its bookkeeping
                mta.held()
            if len(rates) == 2:
                ratio = rates["indimail_tw"] / rates["postfix"]
                ratios.append(ratio)
                print(f"round {rnd}: indimail_tw/postfix = {ratio:.2f}x", flush=True)
        if ratios:
            print(f"median ratio over {len(ratios)} rounds: {statistics.median(ratios):.2f}x "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    finally:
        for part in (ours, postfix, sinks):
            if part is not None:
                try:
                    part.stop()
                except Exception as e:  # noqa: BLE001 -- stop the others anyway
                    print(f"stopping {type(part).__name__}: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
