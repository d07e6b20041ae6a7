"""qmail-qstat: how many messages the queues hold (``qmail-qread -s``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from indimail_tw.queuetools.common import FAILED, Command, installation, warn
from indimail_tw.queuetools.qread import print_counts

COMMAND = Command(
    "qmail-qstat", "",
    """Summarise all queues, as qmail-qstat does: messages in the queue, messages
being received (qmail's "not yet preprocessed": this queue has no preprocessing
step, so the nearest thing is a message whose data is written but not yet
committed), recipients by state and channel, and damaged messages.  Per-queue
figures: qmail-qread -c.""",
    [],
    notes="Safe while the server runs: it only reads.")


def body(args: Any) -> int:
    site = installation(args)
    if not site.queues:
        warn(COMMAND.prog, f"{site.base}: no queueN directories")
        return FAILED
    return print_counts(site, False, sys.stdout, COMMAND.prog)


def main(argv: Sequence[str] | None = None) -> int:
    return COMMAND.run(body, argv)


if __name__ == "__main__":
    sys.exit(main())
