"""IndiMail's recipient check (``CHECKRECIPIENT``): refuse unknown users of our domains at RCPT.

Unlike IndiMail, where it is opt-in, the check is on by default for our own
virtual domains (``virtualdomains`` entries of domains in ``rcpthosts``);
``CHECKRECIPIENT=0`` switches it off.  When ``chkrcptdomains`` lists domains,
only those are checked; ``etrnhosts`` domains and ``locals`` (system users)
never are.  A recipient passes when any of these deliver it:

1. a ``.qmail-<local>`` file (or ``.qmail-<prefix>-default``) in the domain's
   directory, or a catch-all (``.qmail-default``) other than bounce-no-mailbox:
   such a domain accepts everything;
2. a user of the domain (alias domains resolve to their real domain); an
   inactive user is refused ``5.2.1``, one with BOUNCE_MAIL ``5.2.2``;
3. a valias row;
4. for ``user-ext``, the user or alias ``user`` (qmail extension addresses);
5. ``postmaster`` always (RFC 5321).

Otherwise ``550 5.1.1 ... is absent on this domain``, IndiMail's text.  After
``MAX_RCPT_ERRCOUNT`` unknown recipients in one transaction the client is
told ``421`` and dropped.  A database failure is ``451 4.3.2``.

With the server's user store (which can read blocking, in the calling thread)
the whole check is one job in a thread: the domain directory (cached, see
:mod:`indimail_tw.delivery.domainfiles`) and the user and alias rows.  Other
stores are asked through their Deferred API, one lookup after the other.

The outcome of a lookup for an address (deliverable, unknown, inactive,
over quota) is remembered for :data:`CACHE_SECONDS`, the time within which the
domain files are also re-read, so a change to a user or an alias is seen within
that time too: a burst of messages to the same addresses is answered on the
reactor with no trip to a thread (IndiMail's inlookup caches these lookups for
its qmail-smtpd the same way).  A database failure is never remembered; at most
:data:`CACHE_SIZE` addresses are (the oldest are dropped first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from indimail_tw.recent import MISSING, RecentAnswers
from indimail_tw.auth.flags import Flags
from indimail_tw.delivery.catchall import QMAIL_DEFAULT, CatchAll
from indimail_tw.delivery.domainfiles import DomainFiles
from indimail_tw.policy.base import (
    TEMPORARY_DB_ERROR, Check, RcptRequest, Reject, SessionContext, Verdict,
)

log = Logger()

#: Seconds a lookup's outcome is reused, and how many addresses are remembered.
CACHE_SECONDS = 1.0
CACHE_SIZE = 10000

TOO_MANY_INVALID = Reject(421, "4.7.1", "too many invalid addresses, goodbye", close=True)


def absent(address: str) -> Reject:
    return Reject(550, "5.1.1", f"sorry, mailbox <{address}> is absent on this domain")


def inactive(address: str) -> Reject:
    return Reject(550, "5.2.1", f"sorry, mailbox <{address}> is inactive on this domain")


def overquota(address: str) -> Reject:
    return Reject(550, "5.2.2", f"sorry, mailbox <{address}> is overquota on this domain")


@dataclass(frozen=True)
class DomainFacts:
    """What the domain directory says about one local part."""

    catchall: CatchAll | None
    dot_qmail: bool

    @property
    def accepts_all(self) -> bool:
        return self.dot_qmail or (self.catchall is not None and self.catchall.kind != "bounce")


def dot_qmail_names(local: str) -> list[str]:
    """``.qmail-`` files that would deliver ``local`` (dots become colons, as qmail-local)."""
    ext = local.lower().replace(".", ":")
    names = [f".qmail-{ext}"]
    parts = ext.split("-")
    for n in range(len(parts) - 1, 0, -1):
        names.append(".qmail-" + "-".join(parts[:n]) + "-default")
    return [name for name in names if "/" not in name and name != QMAIL_DEFAULT]


def domain_facts(domains_dir: str | DomainFiles, domain: str, local: str) -> DomainFacts:
    """Blocking file lookups (run in a thread)."""
    files = domains_dir if isinstance(domains_dir, DomainFiles) else DomainFiles(domains_dir)
    found = files.get(domain)
    if not found.exists:
        return DomainFacts(None, False)
    directory = files.directory(domain)
    dot = any(name in found.names and os.path.isfile(os.path.join(directory, name))
              for name in dot_qmail_names(local))
    return DomainFacts(found.catchall, dot)


class RecipientExists(Check):
    """The recipient check; ``blocking`` runs a blocking function (default: in a thread)."""

    def __init__(self, store: Any, domains_dir: str,
                 blocking: Callable[..., defer.Deferred] | None = None, *,
                 now: Callable[[], float] = time.monotonic,
                 cache_seconds: float = CACHE_SECONDS, cache_size: int = CACHE_SIZE) -> None:
        self.store = store
        self.domains_dir = domains_dir
        self.domain_files = DomainFiles(domains_dir)
        if blocking is None:
            from twisted.internet import threads
            blocking = threads.deferToThread
        self.blocking = blocking
        self._one_job = hasattr(store, "get_user_now") and hasattr(store, "alias_lines_now")
        self._now = now
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        #: lowercased address -> its outcome: None, a Reject or False for unknown
        self._seen = RecentAnswers(cache_seconds, cache_size, now)
        #: lowercased address -> the Deferreds waiting for its lookup under way
        self._inflight: dict[str, list[defer.Deferred]] = {}

    def applies(self, ctx: SessionContext, domain: str) -> bool:
        settings = ctx.settings
        if ctx.env.get("CHECKRECIPIENT", "").strip() in ("0",):
            return False
        if not domain or not settings.is_rcpthost(domain) or settings.is_local(domain):
            return False
        if settings.virtualdomains.lookup(domain) is None:
            return False
        if settings.in_list("etrnhosts", domain):
            return False
        restricted = bool(settings.chkrcptdomains) or settings.cdb("chkrcptdomains") is not None
        return not restricted or settings.in_list("chkrcptdomains", domain)

    def rcpt(self, ctx: SessionContext, request: RcptRequest) -> Verdict | defer.Deferred:
        if request.whitelisted:
            return None
        local, _, domain = request.address.rpartition("@")
        domain = domain.lower()
        if not self.applies(ctx, domain) or local.lower() == "postmaster":
            return None
        seen = self._seen.get(request.address.lower())
        if seen is not MISSING:
            return self._judged(ctx, request.address, seen)
        return self._lookup(ctx, request.address, local, domain)

    def _lookup(self, ctx: SessionContext, address: str, local: str,
                domain: str) -> defer.Deferred:
        """Look the address up, or join the lookup of it already under way (sessions
        that miss the cache at the same moment share one lookup and one thread)."""
        key = address.lower()
        mine: defer.Deferred = defer.Deferred()
        mine.addCallback(lambda verdict: self._judged(ctx, address, verdict))
        waiting = self._inflight.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._inflight[key] = [mine]
        started = self._now()
        if not self._one_job:
            d = self._lookup_async(address, local, domain)
        else:
            d = self.blocking(self._check_now, address, local, domain)

        def found(verdict: Reject | bool | None) -> Reject | bool | None:
            self._seen.put(key, verdict, started)
            return verdict

        def failed(failure: Any) -> Reject:       # answered, not remembered
            log.failure("recipient lookup for {address} failed", failure, address=address)
            return TEMPORARY_DB_ERROR

        def answer(verdict: Reject | bool | None) -> None:
            for waiter in self._inflight.pop(key, ()):
                waiter.callback(verdict)

        d.addCallbacks(found, failed).addCallback(answer)
        return mine

    def forget(self) -> None:
        """Drop every remembered lookup (e.g. after the admin changed users)."""
        self._seen.clear()

    def _judged(self, ctx: SessionContext, address: str,
                verdict: Reject | bool | None) -> Verdict:
        return self._unknown(ctx, address) if verdict is False else verdict

    def _check_now(self, address: str, local: str, domain: str) -> Reject | bool | None:
        """The whole check, blocking (in a thread): None, a Reject or False (unknown)."""
        if domain_facts(self.domain_files, domain, local).accepts_all:
            return None
        name = local.lower()
        verdict = self._user_or_alias_now(address, name, domain)
        if verdict is False and "-" in name:
            verdict = self._user_or_alias_now(address, name.split("-", 1)[0], domain)
        return verdict

    def _user_or_alias_now(self, address: str, name: str, domain: str) -> Reject | bool | None:
        user, real = self.store.get_user_now(name, domain)
        if user is not None:
            return self._user_verdict(address, user)
        return None if self.store.alias_lines_now(name, real or domain) else False

    @staticmethod
    def _user_verdict(address: str, user: Any) -> Reject | None:
        if not user.active:
            return inactive(address)
        if user.gid & Flags.BOUNCE_MAIL:
            return overquota(address)
        return None

    @defer.inlineCallbacks
    def _lookup_async(self, address: str, local: str, domain: str):
        """:meth:`_check_now` through the store's Deferred API, one lookup after the other."""
        facts = yield self.blocking(domain_facts, self.domain_files, domain, local)
        if facts.accepts_all:
            return None
        name = local.lower()
        verdict = yield self._user_or_alias(address, name, domain)
        if verdict is False and "-" in name:
            verdict = yield self._user_or_alias(address, name.split("-", 1)[0], domain)
        return verdict

    @defer.inlineCallbacks
    def _user_or_alias(self, address: str, name: str, domain: str):
        """None (deliverable), a Reject (user in a refusing state) or False (unknown)."""
        user, real = yield self.store.get_user(name, domain)
        if user is not None:
            return self._user_verdict(address, user)
        lines = yield self.store.alias_lines(name, real or domain)
        return None if lines else False

    def _unknown(self, ctx: SessionContext, address: str) -> Reject:
        tx = ctx.transaction
        if tx is not None:
            tx.rcpt_errors += 1
            limit = ctx.env.get("MAX_RCPT_ERRCOUNT", "").strip()
            if limit.isdigit() and int(limit) > 0 and tx.rcpt_errors >= int(limit):
                return TOO_MANY_INVALID
        return absent(address)
