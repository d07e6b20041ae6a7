"""Temp installations with real queues, and running the tools on them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from indimail_tw.queue import Envelope, Queue
from tests.queue.helpers import make_queue, result_of

ENV_VARS = ("INDIMAIL_ROOT", "CONTROLDIR", "SYSCONFDIR", "QUEUEDIR", "QUEUE_BASE",
            "QUEUE_START", "QUEUE_COUNT")


def make_root(path: str, **control: str) -> str:
    """A data root with a control dir (``me``, ``locals``, ``virtualdomains``) and an
    empty queue base."""
    files = {"me": "mx.test", "locals": "local.test", "virtualdomains": "virt.test:virt.test"}
    files.update(control)
    os.makedirs(os.path.join(path, "control"))
    os.makedirs(os.path.join(path, "queue"))
    for name, text in files.items():
        with open(os.path.join(path, "control", name), "w") as f:
            f.write(text + "\n")
    return path


def queue_in(root: str, n: int = 1, **kw) -> Queue:
    """A started queue ``ROOT/queue/queueN`` (it holds the lock, as a server would)."""
    return make_queue(os.path.join(root, "queue", f"queue{n}"), **kw)


def enqueue(queue: Queue, sender: str, recipients: Sequence[str], data: bytes) -> str:
    return result_of(queue.enqueue(Envelope.simple(sender, *recipients), data))


@dataclass
class Result:
    status: int
    out: str
    err: str


def call(main: Callable[[list[str]], int], capsys, *argv: str) -> Result:
    """Run a tool's main() in this process."""
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return Result(status, out, err)


def run(module: str, *argv: str, env: dict[str, str] | None = None) -> Result:
    """Run ``python -m indimail_tw.queuetools.MODULE`` as a separate process."""
    environ = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    environ.update(env or {})
    done = subprocess.run([sys.executable, "-m", f"indimail_tw.queuetools.{module}", *argv],
                          capture_output=True, text=True, env=environ, timeout=120)
    return Result(done.returncode, done.stdout, done.stderr)


def snapshot(path: str) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and mtime: to prove nothing changed."""
    found = {}
    for directory, _, names in os.walk(path):
        for name in names:
            full = os.path.join(directory, name)
            st = os.stat(full)
            found[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
    return found


def one_line(err: str) -> str:
    """The single stderr line a failing tool prints (and never a traceback)."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]
