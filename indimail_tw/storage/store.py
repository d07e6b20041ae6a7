"""The asynchronous user store the server uses (``IUserStore``).

A thin facade: each method runs one repository transaction function in the
engine's pool and returns a Deferred.  CLIs use the same repositories
synchronously through ``engine.run_sync``.  The ``*_now`` methods are for
server code already running in a worker thread: they block, reading on that
thread's own connection (``engine.run_read``).

With ``cache_seconds`` (the server passes :data:`CACHE_SECONDS`), what
:meth:`UserStore.get_user_and_aliases_now` read (the lookup local delivery
makes for every recipient) is reused for that long, as IndiMail's inlookup
caches it for vdelivermail: a burst of messages to the same users costs one
read per user, and a change to a user is seen within that time (the domain
files and the SMTP recipient check are re-read at the same pace).  Writes made
through this store drop everything remembered; at most :data:`CACHE_SIZE`
lookups are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet.defer import Deferred
from zope.interface import implementer

from indimail_tw.interfaces import IUserStore
from indimail_tw.storage.engine import Engine, Txn
from indimail_tw.recent import MISSING, RecentAnswers
from indimail_tw.storage.repos import (
    AliasDomains, Aliases, AtrnMap, DirControl, IpAliasMap, LastAuth, Relay, UserQuota,
    VLimits,
)
from indimail_tw.storage.users import User, Users


class Repos:
    """All repositories, stateless; one shared instance is enough."""

    users = Users()
    aliases = Aliases()
    lastauth = LastAuth()
    relay = Relay()
    atrn = AtrnMap()
    ipmap = IpAliasMap()
    aliasdomains = AliasDomains()
    dircontrol = DirControl()
    vlimits = VLimits()
    userquota = UserQuota()


REPOS = Repos()

#: Seconds the server reuses a delivery lookup, and how many it keeps.
CACHE_SECONDS = 1.0
CACHE_SIZE = 10000


def _lookup(txn: Txn, name: str, domain: str) -> tuple[User | None, str]:
    real = REPOS.aliasdomains.real_domain(txn, domain) or domain
    return REPOS.users.get(txn, name, real), real


def _lookup_with_aliases(txn: Txn, name: str, domain: str
                         ) -> tuple[User | None, str, list[str]]:
    user, real = _lookup(txn, name, domain)
    return user, real, REPOS.aliases.lines(txn, user.name if user else name, real)


@implementer(IUserStore)
class UserStore:
    """Deferred-returning access to the user database."""

    def __init__(self, engine: Engine, *, cache_seconds: float = 0.0,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.repos = REPOS
        self.cache_seconds = cache_seconds
        self._now = now
        #: (name, domain) -> (user, real domain, valias lines); shared by worker threads
        self._recent = RecentAnswers(cache_seconds, CACHE_SIZE, now)

    def forget(self) -> None:
        """Drop every remembered lookup."""
        self._recent.clear()

    def prepare(self) -> Deferred:
        """Create missing tables and check the schema version."""
        return self.engine.runInteraction(self.engine.prepare)

    def get_user(self, name: str, domain: str) -> Deferred:
        """Deferred[(User | None, real_domain)]: alias domains resolve to their real domain."""
        return self.engine.runInteraction(_lookup, name, domain)

    def get_user_now(self, name: str, domain: str) -> tuple[User | None, str]:
        """:meth:`get_user`, blocking (call it in a worker thread)."""
        return self.engine.run_read(_lookup, name, domain)

    def get_user_and_aliases_now(self, name: str, domain: str
                                 ) -> tuple[User | None, str, list[str]]:
        """(user, real domain, valias lines) in one read, blocking: the lines are those
        of the user when there is one, else of ``name`` (in the real domain).
        Reused for ``cache_seconds`` (see the module docstring)."""
        if self.cache_seconds <= 0:
            return self.engine.run_read(_lookup_with_aliases, name, domain)
        key = (name, domain)
        started = self._now()
        seen = self._recent.get(key)
        if seen is not MISSING:
            user, real, lines = seen
            return user, real, list(lines)
        user, real, lines = self.engine.run_read(_lookup_with_aliases, name, domain)
        self._recent.put(key, (user, real, tuple(lines)), started)
        return user, real, lines

    def alias_lines_now(self, alias: str, domain: str) -> list[str]:
        """:meth:`alias_lines`, blocking (call it in a worker thread)."""
        return self.engine.run_read(self.repos.aliases.lines, alias, domain)

    def real_domain(self, domain: str) -> Deferred:
        return self.engine.runInteraction(self.repos.aliasdomains.real_domain, domain)

    def alias_lines(self, alias: str, domain: str) -> Deferred:
        return self.engine.runInteraction(self.repos.aliases.lines, alias, domain)

    def record_lastauth(self, user: str, domain: str, service: str, remote_ip: str,
                        quota: int = 0, gecos: str = "") -> Deferred:
        return self.engine.runInteraction(self.repos.lastauth.record, user, domain,
                                          service, remote_ip, quota, gecos)

    def set_active(self, name: str, domain: str, active: bool) -> Deferred:
        self.forget()
        return self.engine.runInteraction(self.repos.users.set_active, name, domain, active)

    def set_flags(self, name: str, domain: str, gid: int) -> Deferred:
        self.forget()
        return self.engine.runInteraction(self.repos.users.set_flags, name, domain, gid)

    def add_relay(self, email: str, ipaddr: str, when: int) -> Deferred:
        return self.engine.runInteraction(self.repos.relay.add, email, ipaddr, when)

    def relay_allowed(self, ipaddr: str, since: int, email: str | None = None) -> Deferred:
        return self.engine.runInteraction(self.repos.relay.allowed, ipaddr, since, email)

    def atrn_domains(self, user: str, domain: str) -> Deferred:
        return self.engine.runInteraction(self.repos.atrn.domains_of, user, domain)

    def ip_domain(self, ipaddr: str) -> Deferred:
        return self.engine.runInteraction(self.repos.ipmap.domain_for, ipaddr)

    def close(self) -> None:
        self.engine.close()
