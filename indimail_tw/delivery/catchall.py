"""A domain's catch-all handler: the last argument of the ``vdelivermail`` line
in ``domains/<domain>/.qmail-default`` (IndiMail's vadddomain/vmoddomain write it).

Handlers: ``bounce-no-mailbox``, ``delete``, an absolute Maildir path, an
e-mail address (forward), or an SMTPROUTE ``host:ip:port``.  Our local
delivery agent interprets the line itself; the program is never executed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PREFIX = "/usr/sbin"
PROGRAMS = ("vdelivermail", "vfilter")
DEFAULT_HANDLER = "bounce-no-mailbox"
QMAIL_DEFAULT = ".qmail-default"


@dataclass(frozen=True)
class CatchAll:
    program: str        # "vdelivermail" or "vfilter"
    handler: str

    @property
    def kind(self) -> str:
        """bounce, delete, maildir, forward or route."""
        h = self.handler
        if h == "delete":
            return "delete"
        if h == DEFAULT_HANDLER or not h:
            return "bounce"
        if h.startswith("/"):
            return "maildir"
        if "@" in h:
            return "forward"
        return "route"


def qmail_default_line(handler: str = DEFAULT_HANDLER, vfilter: bool = False) -> str:
    """The one program line of ``.qmail-default`` as IndiMail writes it."""
    return f"| {PREFIX}/{PROGRAMS[1] if vfilter else PROGRAMS[0]} '' {handler}\n"


def parse_qmail_default(text: str) -> CatchAll:
    """The handler of a ``.qmail-default`` (the default when it has no vdelivermail line)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|"):
            words = line[1:].split()
            if words and os.path.basename(words[0]) in PROGRAMS:
                handler = words[-1] if len(words) > 1 else DEFAULT_HANDLER
                if handler in ("''", '""'):
                    handler = DEFAULT_HANDLER
                return CatchAll(os.path.basename(words[0]), handler)
    return CatchAll(PROGRAMS[0], DEFAULT_HANDLER)


def handler_for(domains_dir: str, domain: str) -> CatchAll | None:
    """The catch-all of ``domain``; None when the domain has no ``.qmail-default``.

    Blocking file I/O (server code calls it in a thread or caches it).
    """
    path = os.path.join(domains_dir, domain, QMAIL_DEFAULT)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse_qmail_default(f.read())
    except (FileNotFoundError, NotADirectoryError):
        return None
