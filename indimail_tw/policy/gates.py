"""Gates that depend on how the client connected and what it declared.

* :class:`ForceTLS` -- ``FORCE_TLS``: no MAIL before STARTTLS (AUTH is refused
  by the session itself);
* :class:`RequireAuth` -- submission (587/465) always, port 25 with
  ``REQUIREAUTH``: no MAIL before a successful AUTH;
* :class:`DeclaredSize` -- ``SIZE=`` above ``databytes`` is refused at MAIL
  (RFC 1870) rather than after the upload;
* :class:`BounceSingleRecipient` -- a null sender gets one recipient (IndiMail);
* :class:`MaxHops` -- ``maxhops`` Received/Delivered-To lines mean a loop.
"""

from __future__ import annotations

from typing import Any

from indimail_tw.policy.base import (
    Check, MessageInfo, RcptRequest, Reject, SessionContext, Verdict,
)

TLS_REQUIRED = Reject(530, "5.7.0", "must issue a STARTTLS command first")
AUTH_REQUIRED = Reject(530, "5.7.0", "authentication required")
TOO_BIG = Reject(552, "5.3.4", "sorry, that message size exceeds my databytes limit")
BAD_BOUNCE = Reject(553, "5.7.1", "sorry, bounce messages should have a single envelope "
                                  "recipient")
LOOPING = Reject(554, "5.4.6", "too many hops, this message is looping")


class ForceTLS(Check):
    def mail(self, ctx: SessionContext, sender: Any, params: dict) -> Verdict:
        if ctx.flag("FORCE_TLS") and not ctx.tls:
            return TLS_REQUIRED
        return None


class RequireAuth(Check):
    def mail(self, ctx: SessionContext, sender: Any, params: dict) -> Verdict:
        required = ctx.client.service in ("submission", "smtps") or ctx.flag("REQUIREAUTH")
        if required and ctx.auth_user is None:
            return AUTH_REQUIRED
        return None


class DeclaredSize(Check):
    def mail(self, ctx: SessionContext, sender: Any, params: dict) -> Verdict:
        size = params.get("SIZE")
        limit = ctx.settings.databytes
        if size is not None and limit and int(size) > limit:
            return TOO_BIG
        return None


class BounceSingleRecipient(Check):
    def rcpt(self, ctx: SessionContext, request: RcptRequest) -> Verdict:
        tx = ctx.transaction
        if tx is not None and tx.sender.null and tx.recipients:
            return BAD_BOUNCE
        return None


class MaxHops(Check):
    def data(self, ctx: SessionContext, info: MessageInfo) -> Verdict:
        if info.hops >= ctx.settings.maxhops:
            return LOOPING
        return None
