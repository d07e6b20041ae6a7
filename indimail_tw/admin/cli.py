"""Shared plumbing of the admin CLIs: getopt-style options, errors, passwords.

Options are parsed like IndiMail's (GNU getopt: short options, arguments may
follow operands, an option argument is taken whatever it starts with, so
``vmoduser -q -1M`` works).  Every tool also takes ``--root DIR`` (default
``$INDIMAIL_ROOT``, then /var/indimail), ``--control-dir DIR`` and ``--help``.

Exit statuses (IndiMail's conventions):

* 0   success
* 1   the operation could not be done (exists, no such domain/user, a file
      could not be written, ...)
* 100 bad usage or invalid input (unknown option, bad name, upper case, ...)
* 111 temporary failure: the database is unreachable, or an unexpected error

Every failure is one line on stderr, ``<prog>: <message>``; never a traceback.
"""

from __future__ import annotations

import contextlib
import getopt
import getpass
import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO
from collections.abc import Callable, Sequence

from indimail_tw.admin.secret import Password, parse_mechanism, parse_method
from indimail_tw.admin.site import Site
from indimail_tw.admin.validate import USAGE, check_positive_int
from indimail_tw.errors import (
    AdminError, ConfigError, DuplicateEntry, SchemaTooNew, StoreError, StoreUnavailable,
)

TEMPORARY = 111
COMMON_HELP = (
    "      --root DIR         data root (default $INDIMAIL_ROOT, then /var/indimail)\n"
    "      --control-dir DIR  control directory (default ROOT/control, $CONTROLDIR)\n"
    "      --help             this text\n"
)


EXIT_NOTE = ("exit status: 0 done, 1 could not be done, 100 bad usage or input, "
             "111 temporary failure (database unreachable)\n")


@dataclass(frozen=True)
class Opt:
    """One short option: ``letter``, where it goes, and its argument's name if any."""

    letter: str
    dest: str
    metavar: str | None = None
    help: str = ""
    repeat: bool = False  # collect every occurrence into a list


class Args:
    """Parsed options (attributes named by ``Opt.dest``) and operands."""

    def __init__(self, opts: Sequence[Opt]) -> None:
        for opt in opts:
            setattr(self, opt.dest, [] if opt.repeat else (None if opt.metavar else False))
        self.root: str | None = None
        self.control_dir: str | None = None
        self.help = False
        self.operands: list[str] = []
        self.seen: list[str] = []  # option letters in the order given

    def __getattr__(self, name: str) -> Any:  # only for names no Opt declared
        raise AttributeError(name)


class Command:
    """A tool's options, usage and help text."""

    def __init__(self, prog: str, usage: str, summary: str, opts: Sequence[Opt],
                 notes: str = "", operands: tuple[int, int | None] = (0, None)) -> None:
        self.prog = prog
        self.usage = usage
        self.summary = summary
        self.opts = list(opts)
        self.notes = notes
        self.operands = operands
        self._by_letter = {opt.letter: opt for opt in self.opts}

    def usage_line(self) -> str:
        return f"usage: {self.prog} {self.usage}"

    def help_text(self) -> str:
        lines = [self.usage_line(), "", self.summary.strip(), "", "options:"]
        for opt in self.opts:
            head = f"-{opt.letter}" + (f" {opt.metavar}" if opt.metavar else "")
            lines.append(f"  {head:<22} {opt.help}")
        text = "\n".join(lines) + "\n" + COMMON_HELP
        if self.notes:
            text += "\n" + self.notes.strip() + "\n"
        return text + "\n" + EXIT_NOTE

    def parse(self, argv: Sequence[str]) -> Args:
        short = "".join(o.letter + (":" if o.metavar else "") for o in self.opts)
        try:
            pairs, operands = getopt.gnu_getopt(list(argv), short,
                                                ["root=", "control-dir=", "help"])
        except getopt.GetoptError as e:
            raise AdminError(f"{e.msg} (see {self.prog} --help)", USAGE) from None
        args = Args(self.opts)
        for flag, value in pairs:
            if flag == "--root":
                args.root = value
            elif flag == "--control-dir":
                args.control_dir = value
            elif flag == "--help":
                args.help = True
            else:
                opt = self._by_letter[flag[1:]]
                args.seen.append(opt.letter)
                if opt.repeat:
                    getattr(args, opt.dest).append(value if opt.metavar else True)
                else:
                    setattr(args, opt.dest, value if opt.metavar else True)
        args.operands = operands
        if not args.help:
            low, high = self.operands
            if len(operands) < low:
                raise AdminError(f"missing argument; {self.usage_line()}", USAGE)
            if high is not None and len(operands) > high:
                raise AdminError(f"too many arguments; {self.usage_line()}", USAGE)
        return args


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "error"


def report(prog: str, message: str, stream: TextIO | None = None) -> None:
    stream = sys.stderr if stream is None else stream
    try:
        stream.write(f"{prog}: {one_line(message)}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def run(command: Command, body: Callable[[Args], int | None],
        argv: Sequence[str] | None = None) -> int:
    """Parse, run ``body``, and turn every failure into one stderr line and a status."""
    prog = command.prog
    try:
        args = command.parse(sys.argv[1:] if argv is None else argv)
        if args.help:
            sys.stdout.write(command.help_text())
            return 0
        status = body(args)
        sys.stdout.flush()
        return 0 if status is None else status
    except AdminError as e:
        report(prog, str(e))
        return e.status
    except DuplicateEntry as e:
        report(prog, f"exists already: {e}")
        return 1
    except StoreUnavailable as e:
        report(prog, f"temporary failure: {e}")
        return TEMPORARY
    except SchemaTooNew as e:
        report(prog, str(e))
        return 1
    except StoreError as e:
        report(prog, f"database error: {e}")
        return TEMPORARY
    except ConfigError as e:
        report(prog, f"configuration error: {e}")
        return 1
    except KeyboardInterrupt:
        report(prog, "interrupted")
        return TEMPORARY
    except BrokenPipeError:
        # stdout went away (| head): nothing more to say; keep the exit flush quiet
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # noqa: BLE001 - the promise: never a traceback
        report(prog, f"unexpected error: {type(e).__name__}: {e}")
        return TEMPORARY


def site_of(args: Args) -> Site:
    return Site.resolve(args.root, None, args.control_dir)


def verbose(args: Args, message: str) -> None:
    if getattr(args, "verbose", False):
        print(message)


# -- passwords -------------------------------------------------------------------

PASSWORD_OPTS = [
    Opt("e", "encrypted", None, "store the password as given (already hashed); "
        "ignored with -h"),
    Opt("h", "hash", "method", "hash method: DES MD5 SHA-256 SHA-512 YESCRYPT (or 0-4)"),
    Opt("m", "mechanism", "method", "also store CRAM or SCRAM-SHA-1 / SCRAM-SHA-256 secrets"),
    Opt("C", "keep_clear", None, "store the clear text too (CRAM / SCRAM with clear text)"),
    Opt("r", "random", "len", "generate a random password of length len (printed)"),
    Opt("S", "salt", "salt", "fixed salt (base64 for SCRAM, [./0-9A-Za-z] for crypt)"),
    Opt("I", "iterations", "iter", "SCRAM iteration count (default 4096)"),
]


def password_options(args: Args) -> dict[str, Any]:
    """The storage options (-h -m -C -S -I) as Password keyword arguments."""
    options: dict[str, Any] = {}
    if args.hash:
        options["method"] = parse_method(args.hash)
    if args.mechanism:
        options["mechanism"] = parse_mechanism(args.mechanism)
    if args.keep_clear:
        options["keep_clear"] = True
    if args.salt is not None:
        options["salt"] = args.salt
    if args.iterations is not None:
        options["iterations"] = check_positive_int(args.iterations, "-I")
    return options


def password_from(args: Args, operand: str | None, who: str, *,
                  clear_option: str | None = None, required: bool = True) -> Password | None:
    """The password an invocation gives: the operand (or vmoduser's ``-P``), else
    ``-r``, else a prompt on a terminal or one line of stdin.

    ``-e`` (a flag, as in IndiMail's vadddomain/vadduser/vpasswd) stores that
    password verbatim unless ``-h`` is given; vmoduser's ``-e value`` (an
    option with an argument) is the verbatim value itself.  Returns None when
    nothing was given and ``required`` is false.
    """
    options = password_options(args)
    encrypted = args.encrypted
    if isinstance(encrypted, str):
        return Password(verbatim=encrypted, **options)
    clear = clear_option if clear_option is not None else operand
    if clear is not None and not clear:
        raise AdminError("empty password", USAGE)
    random = getattr(args, "random", None)
    if clear is None and random is not None:
        return Password.random(check_positive_int(random, "-r"), **options)
    if clear is None:
        if not required:
            return None
        clear = read_password(who)
    if encrypted and not args.hash:
        return Password(verbatim=clear, **options)
    return Password(clear=clear, **options)


def read_password(who: str) -> str:
    """Prompt twice on a terminal; otherwise read one line from stdin."""
    stream = sys.stdin
    if stream is not None and stream.isatty():
        try:
            first = getpass.getpass(f"New password for {who}: ")
            second = getpass.getpass("Retype new password: ")
        except EOFError:
            raise AdminError("no password given", USAGE) from None
        if first != second:
            raise AdminError("passwords do not match", 1)
        text = first
    else:
        text = stream.readline() if stream is not None else ""
        text = text.rstrip("\n").rstrip("\r")
    if not text:
        raise AdminError("no password given", USAGE)
    return text


def print_random(password: Password | None) -> None:
    """IndiMail prints a generated password (and only that one)."""
    if password is not None and password.generated:
        print(f"Password is {password.clear}")
