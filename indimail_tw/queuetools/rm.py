"""qmail-rm [-e] [-i] [-n bytes] -p pattern [-r|-d|-X secs] [-y yankdir] [-v]:
find queued messages by content, and yank, delete or expire them."""

from __future__ import annotations

import mmap
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from indimail_tw.errors import AdminError
from indimail_tw.queue import records
from indimail_tw.queuetools import actions, lock
from indimail_tw.queuetools.common import (
    FAILED,
    USAGE,
    Command,
    Installation,
    Opt,
    QueueDir,
    installation,
    number,
    qmail_date,
    router,
    warn,
)
from indimail_tw.queuetools.qread import message_lines
from indimail_tw.queuetools.scan import Damaged, Message, QueueReader

COMMAND = Command(
    "qmail-rm", "[-e] [-i] [-n bytes] -p pattern [-r|-d|-X secs] [-y yankdir] [-v]",
    """Search the queued messages (headers and body, as received) for a pattern.
Without -r, -d or -X the matching messages are only listed.""",
    [
        Opt("p", "pattern", "pattern", "what to look for (required)"),
        Opt("e", "regex", None, "pattern is a regular expression (Python syntax; ^ and $ "
            "match at line boundaries)"),
        Opt("i", "ignore_case", None, "ignore case"),
        Opt("n", "limit", "bytes", "search only the first bytes of each message"),
        Opt("r", "yank", None, "yank: move matching messages to the yank dir"),
        Opt("d", "delete", None, "delete matching messages outright"),
        Opt("X", "backdate", "secs", "back-date matching messages by secs (0: by "
            "queuelifetime) so the next delivery attempt is their last"),
        Opt("y", "yank_dir", "yankdir", "where -r puts messages (default QUEUE_BASE/trash)"),
        Opt("q", "queue_base", "qbase", "the queue base (default QUEUE_BASE, control file "
            "queue_base, ROOT/queue)"),
        Opt("v", "verbose", None, "also list each match's recipients, and the files "
            "yanked"),
    ],
    notes="""Each match is listed as qmail-qread lists it, then what was done to it; the
last line counts matches and changes.  A message whose envelope cannot be read
is reported on stderr and not searched.

-r, -d and -X change the queue, so they need every queue to themselves: they
take each queue's lock as the server does and refuse, changing nothing, while a
running server holds any of them ("queueN is in use by a running server; stop
it first").  Searching alone is safe while the server runs.

Yank layout: YANKDIR/queueN/ID.info (envelope), ID.mess (message), ID.state
(recipient states, if any); the same for messages of both queue formats.  To
restore one, with the server stopped: move ID.mess to queueN/mess/ID, ID.state
to queueN/state/ID, and ID.info to queueN/info/ID last (the queue reads it as
an old-format message).""")


def compile_pattern(args: Any) -> re.Pattern[bytes]:
    if args.pattern is None:
        raise AdminError("-p pattern is required (see qmail-rm --help)", USAGE)
    if not args.pattern:
        raise AdminError("the pattern is empty; it would match every message", USAGE)
    raw = os.fsencode(args.pattern)
    flags = re.MULTILINE | (re.IGNORECASE if args.ignore_case else 0)
    try:
        return re.compile(raw if args.regex else re.escape(raw), flags)
    except re.error as e:
        raise AdminError(f"bad regular expression {args.pattern!r}: {e}", USAGE) from None


def matches(path: str, regex: re.Pattern[bytes], limit: int | None,
            size: int | None = None) -> bool:
    """Whether the message matches (mapped, not read into memory): the first
    ``size`` bytes of the file (None: all of it); never the envelope after them."""
    with open(path, "rb") as f:
        if size is None:
            size = os.fstat(f.fileno()).st_size
        length = size if limit is None else min(size, limit)
        if length == 0:
            return regex.search(b"") is not None
        with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ) as data:
            return regex.search(data) is not None


class Remover:
    """One run: searches every queue and applies the chosen action to each match."""

    def __init__(self, site: Installation, args: Any, regex: re.Pattern[bytes]) -> None:
        self.site = site
        self.regex = regex
        self.limit = None if args.limit is None else number(args.limit, "-n")
        self.action = ("yank" if args.yank else "delete" if args.delete
                       else "backdate" if args.backdate is not None else None)
        seconds = None if args.backdate is None else number(args.backdate, "-X")
        self.seconds = seconds or site.settings.queuelifetime
        self.yank_dir = os.path.abspath(args.yank_dir or os.path.join(site.base, "trash"))
        self.verbose = args.verbose
        self.route = router(site.settings)
        self.matched = self.done = 0
        self.status = 0

    def run(self) -> int:
        for queue in self.site.queues:
            self.search(queue)
        summary = f"{self.matched} message{'s' if self.matched != 1 else ''} matched"
        if self.action:
            done = {"yank": f"yanked to {self.yank_dir}", "delete": "deleted",
                    "backdate": f"back-dated by {self.seconds} s"}[self.action]
            summary += f"; {self.done} {done}"
        print(summary)
        return self.status

    def search(self, queue: QueueDir) -> None:
        reader = QueueReader(queue)
        try:
            ids = reader.ids()
        except OSError as e:
            self.fail(f"{queue.path}: cannot read the queue: {e.strerror or e}")
            return
        for found in reader.messages(ids):
            if isinstance(found, Damaged):
                warn(COMMAND.prog, f"{found.queue}/#{found.id}: damaged ({found.reason}); "
                     "not searched")
                continue
            try:
                hit = matches(found.path, self.regex, self.limit, found.size)
            except FileNotFoundError:
                continue                               # delivered meanwhile
            except (OSError, ValueError) as e:
                self.fail(f"{found.queue}/#{found.id}: cannot read the message: {e}")
                continue
            if hit:
                self.matched += 1
                self.report(found)
                if self.action:
                    self.act(reader, found)

    def report(self, message: Message) -> None:
        lines = message_lines(message, self.route)
        print("\n".join(lines if self.verbose else lines[:1]))

    def act(self, reader: QueueReader, message: Message) -> None:
        store, msg_id = reader.store, message.id
        try:
            if self.action == "yank":
                made = actions.yank(store, msg_id, os.path.join(self.yank_dir, message.queue))
                detail = "  yanked: " + (" ".join(made) if self.verbose
                                          else os.path.dirname(made[0]))
            elif self.action == "delete":
                actions.delete(store, msg_id)
                detail = "  deleted"
            else:
                birth = actions.backdate(store, msg_id, self.seconds)
                detail = f"  back-dated: arrival now {qmail_date(birth)}"
        except (OSError, records.CorruptRecord) as e:
            self.fail(f"{message.queue}/#{msg_id}: cannot {self.action}: {e}")
            return
        self.done += 1
        print(detail)

    def fail(self, text: str) -> None:
        warn(COMMAND.prog, text)
        self.status = FAILED


def body(args: Any) -> int:
    regex = compile_pattern(args)
    if sum(bool(x) for x in (args.yank, args.delete, args.backdate is not None)) > 1:
        raise AdminError("-r, -d and -X exclude each other", USAGE)
    for value, option in ((args.limit, "-n"), (args.backdate, "-X")):
        if value is not None:
            number(value, option)
    env = dict(os.environ)
    if args.queue_base:
        env["QUEUE_BASE"] = args.queue_base
    site = installation(args, env)
    if not site.queues:
        raise AdminError(f"{site.base}: no queueN directories", FAILED)
    remover = Remover(site, args, regex)
    if remover.action is None:
        return remover.run()
    try:
        with lock.hold(site.queues):
            return remover.run()
    except lock.QueuesBusy as e:
        names = ", ".join(q.name for q in e.queues)
        verb = "is" if len(e.queues) == 1 else "are"
        raise AdminError(f"{names} {verb} in use by a running server; stop it first; "
                         "nothing was changed", FAILED) from None


def main(argv: Sequence[str] | None = None) -> int:
    return COMMAND.run(body, argv)


if __name__ == "__main__":
    sys.exit(main())
