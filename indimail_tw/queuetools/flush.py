"""qmail-flush [--pid PID | --pidfile FILE] [--force]: ask the server to retry now.

qmail-send retries every queued recipient at once on SIGALRM (``qmailctl
flush``); so does an indimail_tw server, whose handler calls ``flush()`` on its
queues.  This tool only sends the signal.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from indimail_tw.errors import AdminError
from indimail_tw.queuetools import lock
from indimail_tw.queuetools.common import FAILED, USAGE, Command, Opt, installation, warn

COMMAND = Command(
    "qmail-flush", "[--pid PID | --pidfile FILE] [--force]",
    """Make the running server try every waiting delivery now, as qmail-send does on
SIGALRM: sends SIGALRM to the server.  The process is the one given by --pid, or
by --pidfile (the file twistd --pidfile writes), or else every process holding
a queue's lock (Linux: /proc/locks).""",
    [
        Opt(None, "pid", "PID", "the server's process id", long="pid"),
        Opt(None, "pidfile", "FILE", "read the process id from FILE", long="pidfile"),
        Opt(None, "force", None, "send even if the process does not seem to handle "
            "SIGALRM", long="force"),
    ],
    notes="""A process that does not handle SIGALRM would be killed by it, so when
/proc/PID/status shows that the process does not catch SIGALRM (an old server,
or a stale pid file naming another program) nothing is sent, unless --force.""")


def parse_pid(text: str, where: str) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) <= 0:
        raise AdminError(f"{where}: not a process id: {text[:40]!r}", USAGE)
    return int(text)


def pid_from_file(path: str) -> int:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(100)
    except FileNotFoundError:
        raise AdminError(f"{path}: no pid file (is the server running?)", FAILED) from None
    except OSError as e:
        raise AdminError(f"{path}: cannot read the pid file: {e.strerror}", FAILED) from None
    return parse_pid(text.split("\n", 1)[0], path)


def pids_from_locks(args: Any) -> list[int]:
    """Every process holding a queue's lock (several servers may each own some)."""
    site = installation(args)
    pids = {lock.holder(queue) for queue in site.queues} - {lock.NOBODY}
    if pids == {lock.UNKNOWN}:
        raise AdminError(f"cannot tell which process owns the queues in {site.base}; "
                         "use --pid or --pidfile", FAILED)
    if lock.UNKNOWN in pids:
        warn(COMMAND.prog, f"the owner of some queues in {site.base} is unknown; "
             "they are not flushed")
    if not pids:
        raise AdminError(f"no running server holds the queues in {site.base}", FAILED)
    return sorted(pids - {lock.UNKNOWN})


def catches(pid: int, signum: int) -> bool | None:
    """Whether the process catches ``signum`` (Linux); None when this cannot be known."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def send(pid: int, force: bool, origin: str) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        stale = f" (stale {origin}?)" if origin != "--pid" else ""
        raise AdminError(f"no process {pid}{stale}", FAILED) from None
    except PermissionError:
        raise AdminError(f"not allowed to signal process {pid} (run as its user or root)",
                         FAILED) from None
    if not force and catches(pid, signal.SIGALRM) is False:
        raise AdminError(f"process {pid} does not handle SIGALRM: it would be killed, not "
                         "flushed; is it an indimail_tw server? (--force sends anyway)",
                         FAILED)
    os.kill(pid, signal.SIGALRM)


def body(args: Any) -> int:
    if args.pid is not None and args.pidfile is not None:
        raise AdminError("--pid and --pidfile exclude each other", USAGE)
    if args.pid is not None:
        pids, origin = [parse_pid(args.pid, "--pid")], "--pid"
    elif args.pidfile is not None:
        pids, origin = [pid_from_file(args.pidfile)], f"pid file {args.pidfile}"
    else:
        pids, origin = pids_from_locks(args), "queue lock"
    status = 0
    for pid in pids:
        try:
            send(pid, bool(args.force), origin)
        except AdminError as e:
            warn(COMMAND.prog, str(e))
            status = e.status
            continue
        print(f"sent SIGALRM to process {pid}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return COMMAND.run(body, argv)


if __name__ == "__main__":
    sys.exit(main())
