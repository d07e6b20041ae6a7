"""SMTP-time policy as composable checks (see :mod:`indimail_tw.policy.base`).

:func:`default_checks` is qmail-smtpd's order of checks; sites may build
their own list from the same units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from indimail_tw.policy.access import BadHelo, BadMailFrom, BadRcptTo
from indimail_tw.policy.base import (
    Check, Client, MessageInfo, RcptRequest, Reject, SessionContext, SMTPPolicy, Transaction,
)
from indimail_tw.policy.gates import (
    BounceSingleRecipient, DeclaredSize, ForceTLS, MaxHops, RequireAuth,
)
from indimail_tw.policy.recipients import RecipientExists
from indimail_tw.policy.relay import RelayControl, RelayProbe


def default_checks(store: Any = None, domains_dir: str | None = None,
                   blocking: Callable | None = None) -> list[Check]:
    """The standard checks; the recipient check needs ``store`` and ``domains_dir``."""
    checks: list[Check] = [
        ForceTLS(), RequireAuth(), DeclaredSize(),
        BadHelo(), BadMailFrom(),
        RelayProbe(), BadRcptTo(), RelayControl(store),
    ]
    if store is not None and domains_dir is not None:
        checks.append(RecipientExists(store, domains_dir, blocking))
    checks += [BounceSingleRecipient(), MaxHops()]
    return checks


def default_policy(store: Any = None, domains_dir: str | None = None,
                   blocking: Callable | None = None) -> SMTPPolicy:
    return SMTPPolicy(default_checks(store, domains_dir, blocking))


__all__ = [
    "Check", "Client", "MessageInfo", "RcptRequest", "Reject", "SMTPPolicy",
    "SessionContext", "Transaction", "default_checks", "default_policy",
]
