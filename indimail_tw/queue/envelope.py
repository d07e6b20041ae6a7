"""The envelope of a queued message: shared by every receiver, the queue and the agents.

Plain data.  The queue serialises it in its own self-delimiting record
format (never pickle); receivers build it; delivery agents and the bounce
generator read it.  A new field is stored automatically if its values are
str, int, float, bool, None or tuples of str (``indimail_tw.queue.records``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Recipient:
    """One envelope recipient, with its RFC 3461 DSN parameters."""

    address: str                       # local@domain as it will be delivered ("" never)
    notify: tuple[str, ...] = ()       # DSN NOTIFY: () = default; NEVER / SUCCESS,FAILURE,DELAY
    orcpt: str | None = None           # DSN ORCPT, e.g. "rfc822;user@example.com"


@dataclass
class Envelope:
    """Who sent a message to whom, and how it arrived."""

    sender: str                        # "" is the null sender (bounces)
    recipients: list[Recipient]
    # DSN (RFC 3461) parameters of MAIL FROM
    ret: str | None = None             # "FULL" or "HDRS"
    envid: str | None = None
    # how it arrived, for Received: lines, logs and bounces
    body: str | None = None            # "7BIT", "8BITMIME", "BINARYMIME" or None
    smtputf8: bool = False
    protocol: str = "ESMTP"            # ESMTP, ESMTPS, ESMTPSA, QMTP, LOCAL, ...
    remote_ip: str = ""
    remote_host: str = ""              # reverse DNS or ""
    helo: str = ""
    auth_user: str | None = None       # authenticated login, if any
    received_at: float = 0.0           # Unix time of acceptance (set by the queue if 0)
    extra: dict[str, str] = field(default_factory=dict)   # e.g. {"qqeh": "..."}

    @classmethod
    def simple(cls, sender: str, *addresses: str, **kw) -> Envelope:
        return cls(sender=sender, recipients=[Recipient(a) for a in addresses], **kw)

    @property
    def is_bounce(self) -> bool:
        """Null sender, or qmail's double-bounce sender ``#@[]``."""
        return self.sender in ("", "#@[]")
