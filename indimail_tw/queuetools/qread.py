"""qmail-qread [-c] [-s] [-i]: list the queued messages and their recipients."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from indimail_tw.queue.states import FAILED, PENDING
from indimail_tw.queuetools import lock
from indimail_tw.queuetools.common import (
    FAILED as EXIT_FAILED,
    Command,
    Installation,
    Opt,
    installation,
    printable,
    qmail_date,
    router,
    warn,
)
from indimail_tw.queuetools.scan import Counts, Damaged, Message, QueueReader

COMMAND = Command(
    "qmail-qread", "[-c] [-s] [-i]",
    """List every message of every queue: arrival date, queue and id, size in bytes,
sender, then one line per recipient with its channel (local or remote, as the
server routes it: locals and virtualdomains are local) and its state: nothing
for pending, or done, failed (waiting for its bounce), bounced.  Messages that
cannot be read are listed as damaged.""",
    [
        Opt("c", "counts", None, "counts only: per queue, then the totals"),
        Opt("s", "silent", None, "totals only (implies -c)"),
        Opt("i", "info", None, "per queue: messages, and which process owns it"),
    ],
    notes="""Safe while the server runs: it only reads, and a message that leaves the
queue while it is being read is skipped.  Queues are QUEUE_BASE (or control file
queue_base, default ROOT/queue)/queueN; with QUEUE_START or QUEUE_COUNT set only
those, else every queueN there.""")


def message_lines(message: Message, route: Callable[[str], str]) -> list[str]:
    flags = " bouncing" if any(s.status == FAILED for s in message.states) else ""
    lines = [f"{qmail_date(message.birth)}  {message.queue}/#{message.id}  {message.size}"
             f"  <{printable(message.envelope.sender)}> {flags}".rstrip()]
    for state in message.states:
        mark = "" if state.status == PENDING else f"  {state.status}"
        lines.append(f"{mark}\t{route(state.address)}\t{printable(state.address)}")
    return lines


def count_lines(counts: Counts, prefix: str = "") -> list[str]:
    r = counts.recipients
    return [
        f"{prefix}messages in queue: {counts.messages}",
        f"{prefix}messages in queue but not yet committed: {counts.uncommitted}",
        f"{prefix}recipients pending: {r['pending']} (local {counts.pending_local}, "
        f"remote {counts.pending_remote})",
        f"{prefix}recipients done: {r['done']}, failed: {r['failed']}, "
        f"bounced: {r['bounced']}",
        f"{prefix}damaged messages: {counts.damaged}",
    ]


def print_counts(site: Installation, per_queue: bool, out: Any,
                 prog: str = COMMAND.prog) -> int:
    """The ``-c`` report (also qmail-qstat's); returns the exit status."""
    route = router(site.settings)
    total, status = Counts(), 0
    for queue in site.queues:
        try:
            counts = QueueReader(queue).counts(route)
        except OSError as e:
            warn(prog, f"{queue.path}: cannot read the queue: {e.strerror or e}")
            status = EXIT_FAILED
            continue
        total.add(counts)
        if per_queue:
            out.write("".join(line + "\n" for line in count_lines(counts, f"{queue.name}: ")))
    out.write("".join(line + "\n" for line in count_lines(total)))
    return status


def print_messages(site: Installation, out: Any) -> int:
    route = router(site.settings)
    status = 0
    for queue in site.queues:
        reader = QueueReader(queue)
        try:
            ids = reader.ids()
        except OSError as e:
            warn(COMMAND.prog, f"{queue.path}: cannot read the queue: {e.strerror or e}")
            status = EXIT_FAILED
            continue
        for found in reader.messages(ids):
            if isinstance(found, Damaged):
                out.write(f"{found.queue}/#{found.id}  damaged: {found.reason}\n")
            else:
                out.write("".join(line + "\n" for line in message_lines(found, route)))
    return status


def print_info(site: Installation, out: Any) -> int:
    s = site.settings
    out.write(f"queue base {site.base}: {len(site.queues)} queues; concurrency local "
              f"{s.concurrencylocal}, remote {s.concurrencyremote}; queuelifetime "
              f"{s.queuelifetime} s\n")
    status = 0
    for queue in site.queues:
        reader = QueueReader(queue)
        try:
            ids = reader.ids()
        except OSError as e:
            warn(COMMAND.prog, f"{queue.path}: cannot read the queue: {e.strerror or e}")
            status = EXIT_FAILED
            continue
        pid = lock.holder(queue)
        owner = ("not in use" if pid == lock.NOBODY else "owner unknown"
                 if pid == lock.UNKNOWN else f"in use by pid {pid}")
        out.write(f"{queue.name}: {len(ids)} message{'' if len(ids) == 1 else 's'}, "
                  f"{reader.uncommitted()} "
                  f"being received, {reader.corrupt()} in corrupt/; {owner}\n")
    return status


def body(args: Any) -> int:
    site = installation(args)
    out = sys.stdout
    if not site.queues:
        warn(COMMAND.prog, f"{site.base}: no queueN directories")
        return EXIT_FAILED
    status = 0
    if args.info:
        status = max(status, print_info(site, out))
    if args.counts or args.silent:
        status = max(status, print_counts(site, not args.silent, out))
    elif not args.info:
        status = max(status, print_messages(site, out))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return COMMAND.run(body, argv)


if __name__ == "__main__":
    sys.exit(main())
