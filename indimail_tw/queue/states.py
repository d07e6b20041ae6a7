"""Recipient states, their transitions, and qmail's retry schedule.

A message is committed once ``mess/ID`` exists (see the package docstring for
the layout).  From then on every recipient has one of these states; the state
log ``state/ID`` records each change as one self-checked line, and the last
valid line for a recipient wins.  No line for a recipient means ``pending``
with no attempt yet.

============  ===================================  =====================================
state         meaning                              leaves it when
============  ===================================  =====================================
pending       to be delivered (attempts, next      ok result -> ``done``;
              attempt time and last error kept)    temporary -> ``pending`` (attempts+1,
                                                   next = qmail's nextretry);
                                                   permanent, or temporary on an attempt
                                                   started after ``queuelifetime`` ->
                                                   ``failed``
done          delivered                            never
failed        permanent failure, the reason kept;  the message's bounce (one for all its
              no bounce enqueued yet               failed recipients) is durably
                                                   enqueued, or the bounce factory drops
                                                   it -> ``bounced``
bounced       failure reported to the sender       never
============  ===================================  =====================================

A message leaves the queue when no recipient is ``pending`` or ``failed``:
``mess/ID`` is removed first (the message is then gone), ``state/ID`` after the
next fsync of ``mess/`` (an old format-1 message: ``info/ID`` first, then
``mess/ID`` and ``state/ID``).

Crash behaviour: state lines are written without fsync (as qmail marks ``D``),
so a process crash loses nothing and an OS crash may forget the last changes;
a forgotten ``done`` means one more delivery, a forgotten ``bounced`` one more
bounce (at-least-once).  A ``pending`` recipient is never forgotten, because
``mess/ID`` is durable before the message is acknowledged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from indimail_tw.delivery.result import PERMANENT, DeliveryResult
from indimail_tw.queue.envelope import Recipient

PENDING, DONE, FAILED, BOUNCED = "pending", "done", "failed", "bounced"
STATES = (PENDING, DONE, FAILED, BOUNCED)
FINAL = (DONE, BOUNCED)

LOCAL, REMOTE = "local", "remote"
CHANSKIP = {LOCAL: 10, REMOTE: 20}

EXPIRED_NOTE = "I'm not going to try again; this message has been in the queue too long."


def next_retry(birth: float, now: float, chanskip: int) -> float:
    """qmail-send's ``nextretry``: ``birth + (isqrt(now - birth) + chanskip)**2``.

    Attempts made on time land on ``birth + (chanskip * n)**2`` (local: 0, 100,
    400, 900 s ...; remote: 0, 400, 1600, 3600 s ...); a late attempt does not
    cause a burst of catch-up retries.
    """
    n = 0 if birth > now else math.isqrt(int(now - birth))
    n += chanskip
    return birth + n * n


@dataclass
class RecipientState:
    """One recipient of a queued message and where its delivery stands."""

    index: int
    recipient: Recipient
    status: str = PENDING
    attempts: int = 0
    next_at: float = 0.0
    error: str = ""                      # the last failure's text
    result: DeliveryResult | None = None  # for ``failed``/``bounced``: the failure
    expired: bool = False                # failed because of queuelifetime

    @property
    def address(self) -> str:
        return self.recipient.address

    @property
    def is_final(self) -> bool:
        return self.status in FINAL

    def fields(self) -> dict[str, object]:
        """The state as it is logged (see :mod:`indimail_tw.queue.records`)."""
        r = self.result
        return {"i": self.index, "st": self.status, "a": self.attempts, "n": self.next_at,
                "e": self.error, "x": self.expired,
                "rs": r.status if r else None, "rt": r.text if r else None,
                "re": r.enhanced if r else None, "rm": r.remote_mta if r else None,
                "rd": r.diagnostic if r else None}

    def apply(self, fields: dict[str, object]) -> None:
        """Take over a logged state (the inverse of :meth:`fields`)."""
        status = fields.get("st")
        if status not in STATES:
            raise ValueError(f"unknown recipient state {status!r}")
        self.status = str(status)
        self.attempts = int(fields.get("a") or 0)
        self.next_at = float(fields.get("n") or 0.0)
        self.error = str(fields.get("e") or "")
        self.expired = bool(fields.get("x"))
        if fields.get("rs") is None:
            self.result = None
        else:
            self.result = DeliveryResult(
                str(fields.get("rs") or PERMANENT), str(fields.get("rt") or ""),
                str(fields.get("re") or ""), str(fields.get("rm") or ""),
                str(fields.get("rd") or ""))
