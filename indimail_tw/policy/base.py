"""What SMTP-time checks see and answer, and how a list of them is run.

A check is an object with any of the hook methods of :class:`Check`
(``connect``, ``helo``, ``mail``, ``rcpt``, ``data``).  Each gets the
session's :class:`SessionContext` and returns ``None`` (no objection), a
:class:`Reject`, or a Deferred firing with one of those.  :class:`SMTPPolicy`
runs the checks of one hook in order and stops at the first reject, so the
order of the list is the order of IndiMail's ``smtp_rcpt()`` and friends.

Checks never write to the network and never see passwords.  A check that
raises is the session's problem: it answers ``451 4.3.0`` and logs the
traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from indimail_tw.errors import MailError

SERVICES = ("smtp", "submission", "smtps")


@dataclass(frozen=True)
class Reject:
    """A refusal: the SMTP reply code, enhanced status code and public text.

    ``close``: drop the connection after the reply (421).
    """

    code: int
    enhanced: str
    text: str
    close: bool = False

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def smtp(self) -> bytes:
        lines = self.text.split("\n")
        out = [f"{self.code}-{self.enhanced} {line}" for line in lines[:-1]]
        out.append(f"{self.code} {self.enhanced} {lines[-1]}")
        return "".join(x + "\r\n" for x in out).encode("utf-8", "replace")

    @classmethod
    def from_error(cls, error: MailError) -> Reject:
        return cls(error.code, error.enhanced, error.text)


TEMPORARY_DB_ERROR = Reject(451, "4.3.2", "Requested action aborted: temporary database error")


@dataclass(frozen=True)
class Client:
    """The connection, as tcpserver would describe it in TCPREMOTEIP and friends."""

    remote_ip: str
    remote_port: int = 0
    local_ip: str = ""
    local_port: int = 0
    remote_host: str | None = None       # verified reverse DNS, if looked up
    service: str = "smtp"                # smtp (MX, 25), submission (587), smtps (465)


@dataclass
class Transaction:
    """One MAIL FROM ... DATA/BDAT."""

    sender: Any                          # smtp.syntax.Path
    params: dict[str, str | None] = field(default_factory=dict)
    recipients: list[Any] = field(default_factory=list)   # queue.envelope.Recipient
    relayclient: str | None = None       # relaymailfrom matched: relay like RELAYCLIENT=""
    pop_relay: bool | None = None        # cached CHECKRELAY answer
    rcpt_errors: int = 0                 # unknown recipients so far (MAX_RCPT_ERRCOUNT)


@dataclass
class SessionContext:
    """What checks may read about the session (the session owns and updates it)."""

    client: Client
    settings: Any                        # config.Settings, with this connection's env applied
    env: Mapping[str, str]
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    auth_user: str | None = None
    auth_relay: bool = False             # authenticated without NO_RELAY
    relayclient: str | None = None       # RELAYCLIENT (tcprules) or relayclients match
    transaction: Transaction | None = None
    now: Callable[[], float] = time.time

    def flag(self, name: str) -> bool:
        """An environment switch: set and not ``0``/``no``/``false``/``off``."""
        value = self.env.get(name)
        return value is not None and value.strip().lower() not in ("0", "no", "false", "off")


@dataclass
class RcptRequest:
    """A recipient under review; checks may rewrite ``address`` (RELAYCLIENT append)."""

    path: Any                            # smtp.syntax.Path
    address: str
    params: dict[str, str | None] = field(default_factory=dict)
    whitelisted: bool = False            # goodrcptto: skip badrcptto and the user check


@dataclass(frozen=True)
class MessageInfo:
    """What is known when the content has been received, before the queue commit."""

    size: int
    hops: int


Verdict = Reject | None


class Check:
    """Base class of policy units; override the hooks you need."""

    def connect(self, ctx: SessionContext) -> Verdict | defer.Deferred:
        return None

    def helo(self, ctx: SessionContext, name: str) -> Verdict | defer.Deferred:
        return None

    def mail(self, ctx: SessionContext, sender: Any,
             params: dict[str, str | None]) -> Verdict | defer.Deferred:
        return None

    def rcpt(self, ctx: SessionContext, request: RcptRequest) -> Verdict | defer.Deferred:
        return None

    def data(self, ctx: SessionContext, info: MessageInfo) -> Verdict | defer.Deferred:
        return None


HOOKS = ("connect", "helo", "mail", "rcpt", "data")


def _implements(check: Any, hook: str) -> bool:
    """Whether ``check`` has its own ``hook`` (not the no-op of :class:`Check`)."""
    if callable(getattr(check, "__dict__", {}).get(hook)):     # set on the instance
        return True
    method = getattr(type(check), hook, None)
    return method is not None and method is not getattr(Check, hook)


class SMTPPolicy:
    """An ordered list of checks; each hook runs them until the first reject.

    Each hook calls only the checks that implement it (a :class:`Check` that
    keeps the base class's method is skipped); the list per hook is made when
    ``checks`` is set, so assign a new list to change the checks.
    """

    def __init__(self, checks: Sequence[Check] = ()) -> None:
        self.checks = list(checks)

    @property
    def checks(self) -> list[Check]:
        return self._checks

    @checks.setter
    def checks(self, value: Sequence[Check]) -> None:
        self._checks = list(value)
        self._plans = {hook: [getattr(check, hook) for check in self._checks
                              if _implements(check, hook)] for hook in HOOKS}

    def run(self, hook: str, ctx: SessionContext, *args: Any) -> Verdict | defer.Deferred:
        """Synchronous while the checks are; a Deferred from the first one that is not."""
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r}")
        return self._run_from(0, hook, ctx, args)

    def _run_from(self, start: int, hook: str, ctx: SessionContext,
                  args: tuple) -> Verdict | defer.Deferred:
        plan = self._plans[hook]
        for index in range(start, len(plan)):
            verdict = plan[index](ctx, *args)
            if verdict is None:
                continue
            if isinstance(verdict, defer.Deferred):
                return verdict.addCallback(self._continue, index + 1, hook, ctx, args)
            return verdict
        return None

    def _continue(self, verdict: Verdict, start: int, hook: str, ctx: SessionContext,
                  args: tuple) -> Verdict | defer.Deferred:
        if verdict is not None:
            return verdict
        return self._run_from(start, hook, ctx, args)
