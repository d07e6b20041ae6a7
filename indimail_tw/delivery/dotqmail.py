"""dot-qmail files and valias lines: what each delivery line means.

Line types (``dot-qmail(5)``, IndiMail's ``deliver_mail``):

* ``# ...`` comment; blank lines are skipped (IndiMail's reading of ``.qmail``);
* ``|command`` — run ``sh -c command`` with the message on stdin;
* ``&address`` or a line starting with a letter or digit — forward;
* ``/path/`` or ``./path/`` (ends in ``/``) — Maildir delivery;
* ``/path`` or ``./path`` — mbox append.

The reading functions block (call them in a thread).  They also apply
qmail-local's safety rules: a group- or world-writable ``.qmail`` and a
sticky home directory ("user is editing his .qmail file") defer delivery; an
executable ``.qmail`` may only forward.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from dataclasses import dataclass

COMMENT, PROGRAM, FORWARD, MAILDIR, MBOX = "comment", "program", "forward", "maildir", "mbox"
MAX_QMAIL_SIZE = 256 * 1024


class DotQmailError(Exception):
    """A .qmail file we must not (yet) obey: a temporary failure."""

    def __init__(self, text: str, enhanced: str = "4.7.0") -> None:
        super().__init__(text)
        self.text = text
        self.enhanced = enhanced


@dataclass(frozen=True)
class Instruction:
    kind: str
    target: str  # the command, the address, or the path (relative ones resolved)
    line: str  # the line as written


def parse_line(line: str, home: str | None = None) -> Instruction | None:
    """One line; None for a blank line.  ``./`` paths are relative to ``home``."""
    text = line.rstrip(" \t\r\n")
    if not text:
        return None
    first = text[0]
    if first == "#":
        return Instruction(COMMENT, text, text)
    if first == "|":
        return Instruction(PROGRAM, text[1:].strip(), text)
    if first in "/.":
        path = text
        if first == ".":
            if home is None:
                raise DotQmailError(f"relative path {text!r} needs a home directory. (#4.2.1)",
                                    "4.2.1")
            path = os.path.join(home, text)
        return Instruction(MAILDIR if text.endswith("/") else MBOX, path, text)
    address = text[1:] if first == "&" else text
    address = address.strip()
    if not address or any(c in address for c in " \t<>()"):
        raise DotQmailError(f"invalid forwarding address {text!r}. (#4.2.1)", "4.2.1")
    return Instruction(FORWARD, address, text)


def parse_lines(lines: list[str], home: str | None = None) -> list[Instruction]:
    out = []
    for line in lines:
        parsed = parse_line(line, home)
        if parsed is not None and parsed.kind != COMMENT:
            out.append(parsed)
    return out


@dataclass(frozen=True)
class DotQmail:
    """A read ``.qmail`` file."""

    path: str
    lines: list[str]
    forward_only: bool  # the x bit is set: only forwards allowed

    @property
    def empty(self) -> bool:
        return not any(line.strip() and not line.lstrip().startswith("#")
                       for line in self.lines)


def check_home(home: str) -> os.stat_result | None:
    """Defer when the home directory is sticky (qmail's "safe editing" switch);
    its stat, or None when it does not exist."""
    try:
        st = os.stat(home)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DotQmailError(f"Unable to stat home directory: {e.strerror}. (#4.3.0)",
                            "4.3.0") from e
    if st.st_mode & stat.S_ISVTX:
        raise DotQmailError(
            "Home directory is sticky: user is editing his .qmail file. (#4.2.1)", "4.2.1")
    return st


def read_dot_qmail(path: str) -> DotQmail | None:
    """The file at ``path``; None when it does not exist (or is not a regular file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise DotQmailError(f"Unable to open {path}: {e.strerror}. (#4.3.0)", "4.3.0") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_mode & 0o022:
            raise DotQmailError("Uh-oh: .qmail file is writable. (#4.7.0)")
        data = f.read(MAX_QMAIL_SIZE + 1)
    if len(data) > MAX_QMAIL_SIZE:
        raise DotQmailError(f"{path} is too large. (#4.3.0)", "4.3.0")
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    return DotQmail(path, lines, bool(st.st_mode & 0o100))


def check_forward_only(qmail: DotQmail, instructions: list[Instruction]) -> None:
    if not qmail.forward_only:
        return
    for ins in instructions:
        if ins.kind in (MAILDIR, MBOX):
            raise DotQmailError("Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)")
        if ins.kind == PROGRAM:
            raise DotQmailError("Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)")


def safe_ext(ext: str) -> str:
    """qmail-local's lookup form of an extension: lower case, ``.`` -> ``:``."""
    return ext.lower().replace(".", ":")


def ext_candidates(ext: str) -> list[tuple[str, str | None]]:
    """``.qmail-`` suffixes to try for ``ext`` with the DEFAULT value each sets.

    ``a-b`` gives ``a-b`` (no DEFAULT), ``a-default`` (DEFAULT ``b``) and
    ``default`` (DEFAULT ``a-b``), in qmail-local's order.
    """
    safe = safe_ext(ext)
    out: list[tuple[str, str | None]] = [(safe, None)]
    for i in range(len(safe), -1, -1):
        if i == 0 or safe[i - 1] == "-":
            out.append((safe[:i] + "default", ext[i:]))
    return out


def find_domain_file(domain_dir: str, ext: str, names: Collection[str] | None = None
                     ) -> tuple[DotQmail, str | None] | None:
    """The domain's ``.qmail-<ext>`` or ``.qmail-<prefix>-default`` for ``ext``.

    The bare ``.qmail-default`` is left out: it names vdelivermail and its
    catch-all handler, which the local agent applies itself.  ``names``, when
    given, lists the directory's entries: files not in it are not looked for.
    Returns the file and the DEFAULT value, or None.
    """
    for suffix, default in ext_candidates(ext):
        if suffix == "default" or (names is not None and ".qmail-" + suffix not in names):
            continue
        found = read_dot_qmail(os.path.join(domain_dir, ".qmail-" + suffix))
        if found is not None:
            return found, default
    return None
