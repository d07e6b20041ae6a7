"""The relay decision, as qmail-smtpd makes it (reference section 5.4, step 7).

A recipient is accepted when its domain is ours (``rcpthosts`` or
``morercpthosts.cdb``, ``.suffix`` entries for subdomains) or when the client
may relay:

* ``RELAYCLIENT`` is set (normally by a tcprules rule); its value is appended
  to every recipient address, as qmail does;
* the client IP matches ``relayclients`` (``ip-or-prefix:append``) or its
  verified host name is in ``relaydomains``;
* the sender is in ``relaymailfrom`` (for that transaction);
* the client authenticated (SMTP AUTH) and the account has no NO_RELAY flag;
* ``CHECKRELAY`` is set and the store has a POP/IMAP-before-SMTP grant for
  this IP and sender newer than ``RELAY_CLEAR_MINUTES`` (default 60).

``AUTH_ALL`` treats every domain as foreign.  Addresses without ``@`` are
completed with ``envnoathost`` and accepted (qmail's rcpthosts lets them
pass), and ``box@[ip]`` for our own address becomes ``box@localiphost``.

Relay probes are refused first: ``@``, ``%`` or ``!`` in a local part
(``user%elsewhere@us``, bang paths), and source routes from clients that may
not relay (``<@us:user@elsewhere>``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from indimail_tw.policy.access import list_matches
from indimail_tw.policy.base import (
    TEMPORARY_DB_ERROR, Check, RcptRequest, Reject, SessionContext, Verdict,
)

log = Logger()

NO_RELAY = Reject(553, "5.7.1", "sorry, that domain isn't allowed to be relayed thru this "
                                "MTA without authentication")
RELAY_PROBE = Reject(550, "5.7.1", "we don't relay")
DEFAULT_RELAY_CLEAR_MINUTES = 60


def relayclients_match(entries: tuple[str, ...], ip: str) -> str | None:
    """The append value of the first ``relayclients`` entry matching ``ip``, else None.

    Entries are ``ip:append`` or ``prefix.:append`` (the ``:append`` part may be
    empty or missing); IPv6 addresses match exactly or as CIDR networks.
    """
    table: dict[str, str] = {}
    for entry in entries:
        key, value = _split_entry(entry)
        table.setdefault(key.lower(), value)
    candidates = [ip.lower()]
    if "." in ip and ":" not in ip:
        parts = ip.split(".")
        candidates += [".".join(parts[:n]) + "." for n in range(len(parts) - 1, 0, -1)]
    for key in candidates:
        if key in table:
            return table[key]
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for key, value in table.items():
        if "/" in key:
            try:
                if address in ipaddress.ip_network(key, strict=False):
                    return value
            except ValueError:
                continue
    return None


def _split_entry(entry: str) -> tuple[str, str]:
    """``key:append``; a colon inside an IPv6 address is not the separator."""
    head, sep, tail = entry.rpartition(":")
    if sep and (tail == "" or tail.startswith("@")):
        return head, tail
    return entry, ""


def rewrite_literal(ctx: SessionContext, domain: str) -> str:
    """``[ip]`` naming the address the client connected to is ``localiphost``."""
    if domain.startswith("[") and domain.endswith("]") and ctx.client.local_ip:
        literal = domain[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            if ipaddress.ip_address(literal) == ipaddress.ip_address(ctx.client.local_ip):
                return ctx.settings.localiphost
        except ValueError:
            return domain
    return domain


def may_relay(ctx: SessionContext) -> bool:
    """Whether the client may relay without looking at the store (CHECKRELAY aside)."""
    tx = ctx.transaction
    return (ctx.relayclient is not None or (tx is not None and tx.relayclient is not None)
            or (ctx.auth_user is not None and ctx.auth_relay))


class RelayProbe(Check):
    """Refuse ``@ % !`` in local parts and, from non-relay clients, source routes."""

    def rcpt(self, ctx: SessionContext, request: RcptRequest) -> Verdict:
        local = request.path.local.strip('"')
        if any(ch in local for ch in "@%!"):
            return RELAY_PROBE
        if request.path.route and not may_relay(ctx):
            return RELAY_PROBE
        return None


class RelayControl(Check):
    """The relay decision (see the module docstring); ``store`` serves CHECKRELAY."""

    def __init__(self, store: Any = None) -> None:
        self.store = store

    def connect(self, ctx: SessionContext) -> Verdict:
        if ctx.relayclient is None:
            if "RELAYCLIENT" in ctx.env:
                ctx.relayclient = ctx.env["RELAYCLIENT"]
            else:
                ctx.relayclient = relayclients_match(ctx.settings.relayclients,
                                                     ctx.client.remote_ip)
            host = ctx.client.remote_host
            if ctx.relayclient is None and host and list_matches(ctx.settings, "relaydomains",
                                                                 host):
                ctx.relayclient = ""
        return None

    def mail(self, ctx: SessionContext, sender: Any, params: dict) -> Verdict:
        tx = ctx.transaction
        if (tx is not None and ctx.relayclient is None and sender.address
                and list_matches(ctx.settings, "relaymailfrom", sender.address)):
            tx.relayclient = ""
        return None

    def rcpt(self, ctx: SessionContext, request: RcptRequest) -> Verdict | defer.Deferred:
        settings = ctx.settings
        local, _, domain = request.address.rpartition("@")
        if not _:
            local, domain = request.address, ""
        if domain:
            rewritten = rewrite_literal(ctx, domain)
            if rewritten != domain:
                domain = rewritten
                request.address = f"{local}@{domain}"
        tx = ctx.transaction
        append = ctx.relayclient
        if append is None and tx is not None:
            append = tx.relayclient
        if append is not None:
            request.address += append
            if "@" not in request.address:
                request.address += "@" + settings.envnoathost
            return None
        if not domain:
            request.address = f"{local}@{settings.envnoathost}"
            return None
        if not ctx.flag("AUTH_ALL") and settings.is_rcpthost(domain):
            return None
        if ctx.auth_user is not None and ctx.auth_relay:
            return None
        if ctx.flag("CHECKRELAY") and self.store is not None and tx is not None:
            return self._pop_before_smtp(ctx, tx)
        return NO_RELAY

    def _pop_before_smtp(self, ctx: SessionContext, tx: Any) -> Verdict | defer.Deferred:
        if tx.pop_relay is not None:
            return None if tx.pop_relay else NO_RELAY
        sender = tx.sender.address
        if not sender:
            return NO_RELAY
        try:
            minutes = int(ctx.env.get("RELAY_CLEAR_MINUTES") or DEFAULT_RELAY_CLEAR_MINUTES)
        except ValueError:
            minutes = DEFAULT_RELAY_CLEAR_MINUTES
        since = int(ctx.now()) - minutes * 60
        d = defer.maybeDeferred(self.store.relay_allowed, ctx.client.remote_ip, since, sender)

        def decided(allowed: bool) -> Verdict:
            tx.pop_relay = bool(allowed)
            return None if allowed else NO_RELAY

        def failed(failure) -> Verdict:
            log.failure("CHECKRELAY lookup failed", failure)
            return TEMPORARY_DB_ERROR

        return d.addCallbacks(decided, failed)
