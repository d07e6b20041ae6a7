"""What the queue tools share: options, the installation, its queues, output helpers."""

from __future__ import annotations

import getopt
import os
import re
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from indimail_tw.admin import cli
from indimail_tw.config import ControlDir, Settings
from indimail_tw.errors import AdminError
from indimail_tw.paths import Paths

FAILED = 1      # could not be done: missing root or queue, queue busy, no such process
USAGE = 100     # bad usage or input: unknown option, bad regular expression, bad number

EXIT_NOTE = ("exit status: 0 done, 1 could not be done (missing root or queue, queue in "
             "use, unreadable file, no such process), 100 bad usage or input, "
             "111 unexpected error\n")
COMMON_HELP = (
    "  --root DIR             data root (default $INDIMAIL_ROOT, then /var/indimail)\n"
    "  --control-dir DIR      control directory (default ROOT/control, $CONTROLDIR)\n"
    "  --help                 this text\n")
_QUEUE_NAME = re.compile(r"queue([0-9]+)\Z")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


# -- options ------------------------------------------------------------------------


@dataclass(frozen=True)
class Opt:
    """One option: a letter and/or a long name; ``metavar`` when it takes an argument."""

    letter: str | None
    dest: str
    metavar: str | None = None
    help: str = ""
    long: str | None = None

    def label(self) -> str:
        names = ([f"-{self.letter}"] if self.letter else []) + (
            [f"--{self.long}"] if self.long else [])
        return ", ".join(names) + (f" {self.metavar}" if self.metavar else "")


class Command:
    """A tool's getopt-style options and help; run through :func:`admin.cli.run`, so
    every failure is one ``prog: message`` line on stderr and an exit status."""

    def __init__(self, prog: str, usage: str, summary: str, opts: Sequence[Opt],
                 notes: str = "") -> None:
        self.prog = prog
        self.usage = usage
        self.summary = summary
        self.opts = list(opts)
        self.notes = notes

    def help_text(self) -> str:
        lines = [f"usage: {self.prog} {self.usage}".rstrip(), "", self.summary.strip(), "",
                 "options:"]
        lines += [textwrap.fill(opt.help, 80, initial_indent=f"  {opt.label():<22} ",
                                subsequent_indent=" " * 25) for opt in self.opts]
        text = "\n".join(lines) + "\n" + COMMON_HELP
        if self.notes:
            text += "\n" + self.notes.strip() + "\n"
        return text + "\n" + textwrap.fill(EXIT_NOTE, 80) + "\n"

    def parse(self, argv: Sequence[str]) -> SimpleNamespace:
        short = "".join(o.letter + (":" if o.metavar else "") for o in self.opts if o.letter)
        longs = ["root=", "control-dir=", "help"] + [
            o.long + ("=" if o.metavar else "") for o in self.opts if o.long]
        try:
            pairs, operands = getopt.gnu_getopt(list(argv), short, longs)
        except getopt.GetoptError as e:
            raise AdminError(f"{e.msg} (see {self.prog} --help)", USAGE) from None
        args = SimpleNamespace(root=None, control_dir=None, help=False, **{
            o.dest: (None if o.metavar else 0) for o in self.opts})
        by_flag = {f"-{o.letter}": o for o in self.opts if o.letter}
        by_flag.update({f"--{o.long}": o for o in self.opts if o.long})
        for flag, value in pairs:
            if flag in ("--root", "--control-dir"):
                setattr(args, flag[2:].replace("-", "_"), value)
            elif flag == "--help":
                args.help = True
            else:
                opt = by_flag[flag]
                setattr(args, opt.dest, value if opt.metavar else getattr(args, opt.dest) + 1)
        if operands and not args.help:
            raise AdminError(f"unexpected argument {operands[0]!r} (see {self.prog} --help)",
                             USAGE)
        return args

    def run(self, body: Callable[[Any], int | None], argv: Sequence[str] | None) -> int:
        return cli.run(self, body, argv)  # type: ignore[arg-type]


def number(text: str, option: str) -> int:
    """A non-negative integer option argument, or a usage error."""
    if not text.isdigit():
        raise AdminError(f"{option} needs a non-negative integer, not {text!r}", USAGE)
    return int(text)


# -- the installation and its queues -----------------------------------------------------


@dataclass(frozen=True)
class QueueDir:
    name: str          # "queue3"
    number: int
    path: str


@dataclass
class Installation:
    paths: Paths
    settings: Settings
    base: str                       # the directory holding queue1 .. queueN
    queues: list[QueueDir]


def installation(args: Any, environ: dict[str, str] | None = None) -> Installation:
    """Resolve ``--root``/``--control-dir``, read the settings, find the queues."""
    env = dict(os.environ if environ is None else environ)
    paths = Paths.resolve(args.root, env, args.control_dir)
    if not os.path.isdir(paths.control):
        raise AdminError(f"{paths.control}: no control directory (is the data root "
                         f"{paths.root} right?)", FAILED)
    settings = Settings.load(ControlDir(paths.control, env))
    base = os.path.abspath(settings.queue_base or paths.queue)     # as build_queue does
    return Installation(paths, settings, base, find_queues(base, settings))


def find_queues(base: str, settings: Any) -> list[QueueDir]:
    """Every ``queueN`` directory in ``base``, by number.

    With ``QUEUE_START`` or ``QUEUE_COUNT`` set, only those in that range (the
    server's queues); otherwise all of them, so a queue left over from an
    earlier, larger ``QUEUE_COUNT`` is not overlooked.
    """
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        raise AdminError(f"{base}: no queue directory here", FAILED) from None
    except OSError as e:
        raise AdminError(f"{base}: cannot read the queue directory: {e.strerror}",
                         FAILED) from None
    limited = settings.is_set("queue_start") or settings.is_set("queue_count")
    low = settings.queue_start
    high = low + settings.queue_count - 1
    found = []
    for name in names:
        m = _QUEUE_NAME.match(name)
        path = os.path.join(base, name)
        if m and os.path.isdir(path) and (not limited or low <= int(m.group(1)) <= high):
            found.append(QueueDir(name, int(m.group(1)), path))
    return sorted(found, key=lambda q: q.number)


def router(settings: Settings) -> Callable[[str], str]:
    """The server's own channel classification (``locals``/``virtualdomains`` -> local)."""
    from indimail_tw.service import channel_router   # the same rule the scheduler uses

    return channel_router(SimpleNamespace(config=SimpleNamespace(current=settings)))


# -- output ------------------------------------------------------------------------------


def qmail_date(when: float) -> str:
    """qmail-qread's date: ``4 Mar 2024 10:11:12 GMT``."""
    tm = time.gmtime(when)
    return (f"{tm.tm_mday} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year} "
            f"{tm.tm_hour:02}:{tm.tm_min:02}:{tm.tm_sec:02} GMT")


def printable(text: str) -> str:
    """``text`` with control characters shown as ``_`` (as qmail-qread does)."""
    return "".join("_" if ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text)


def warn(prog: str, message: str) -> None:
    cli.report(prog, message)
