"""The result of one delivery attempt, as qmail-local/qmail-remote report it."""

from __future__ import annotations

from dataclasses import dataclass

OK, TEMPORARY, PERMANENT = "ok", "temporary", "permanent"


@dataclass(frozen=True)
class DeliveryResult:
    status: str                 # OK, TEMPORARY or PERMANENT
    text: str = ""              # the report (goes into the log and the bounce)
    enhanced: str = ""          # RFC 3463 status, e.g. "5.1.1"
    remote_mta: str = ""        # for remote deliveries: the host that answered
    diagnostic: str = ""        # e.g. "smtp; 550 5.1.1 no such user"

    @classmethod
    def ok(cls, text: str = "delivered", **kw) -> DeliveryResult:
        return cls(OK, text, kw.pop("enhanced", "2.0.0"), **kw)

    @classmethod
    def temporary(cls, text: str, enhanced: str = "4.0.0", **kw) -> DeliveryResult:
        return cls(TEMPORARY, text, enhanced, **kw)

    @classmethod
    def permanent(cls, text: str, enhanced: str = "5.0.0", **kw) -> DeliveryResult:
        return cls(PERMANENT, text, enhanced, **kw)

    @property
    def is_ok(self) -> bool:
        return self.status == OK

    @property
    def is_temporary(self) -> bool:
        return self.status == TEMPORARY

    @property
    def is_permanent(self) -> bool:
        return self.status == PERMANENT
