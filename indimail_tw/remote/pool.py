"""Per-host concurrency and the cache of idle connections.

:class:`HostSlots` bounds the connections in use to one remote IP
(control file ``concurrencyperhost``, default 5).  Deliveries beyond that
wait in FIFO order, but at most as many again: one more is turned away at
once (the agent answers :class:`~indimail_tw.remote.agent.Busy`, which the
scheduler parks until the agent has room again) instead of holding one of the
queue's ``concurrencyremote`` slots, so a slow or dead host can never take more
than twice its limit of them and the other destinations keep moving.

:class:`ConnectionCache` keeps a connection that finished a transaction for
``idle`` seconds, so the next message to the same host (same port, source
address, HELO name, TLS policy and credentials) goes over it.  A connection is
retired after :data:`MAX_TRANSACTIONS` transactions or :data:`MAX_AGE` seconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet import defer

DEFAULT_PER_HOST = 5
IDLE_SECONDS = 10.0
MAX_TRANSACTIONS = 100
MAX_AGE = 300.0


class HostSlots:
    """At most ``limit()`` connections in use per IP, and at most as many waiting."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.limit = limit
        self.active: dict[str, int] = {}
        self._waiting: dict[str, deque[defer.Deferred]] = {}

    def acquire(self, ip: str) -> defer.Deferred | None:
        """Deferred firing when a slot is ours; None when too many already wait."""
        limit = max(1, self.limit())
        if self.active.get(ip, 0) < limit:
            self.active[ip] = self.active.get(ip, 0) + 1
            return defer.succeed(None)
        waiting = self._waiting.setdefault(ip, deque())
        if len(waiting) >= limit:
            return None
        d: defer.Deferred = defer.Deferred()
        waiting.append(d)
        return d

    def release(self, ip: str) -> None:
        waiting = self._waiting.get(ip)
        if waiting:
            d = waiting.popleft()
            if not waiting:
                del self._waiting[ip]
            d.callback(None)                  # the slot passes to the next in line
            return
        count = self.active.get(ip, 0) - 1
        if count > 0:
            self.active[ip] = count
        else:
            self.active.pop(ip, None)

    def waiting(self, ip: str) -> int:
        return len(self._waiting.get(ip, ()))

    def full(self, ip: str) -> bool:
        """Whether :meth:`acquire` would turn a delivery to ``ip`` away now."""
        limit = max(1, self.limit())
        return self.active.get(ip, 0) >= limit and self.waiting(ip) >= limit


class ConnectionCache:
    """Idle, Ready connections by key; each closes (QUIT) after ``idle`` seconds."""

    def __init__(self, clock: Any, idle: float = IDLE_SECONDS, per_key: int = DEFAULT_PER_HOST
                 ) -> None:
        self.clock = clock
        self.idle = idle
        self.per_key = per_key
        self._idle: dict[Hashable, list[tuple[Any, Any]]] = {}   # key -> [(proto, timer)]

    def take(self, key: Hashable) -> Any | None:
        """An idle connection for ``key`` (most recently used first), or None."""
        entries = self._idle.get(key)
        while entries:
            proto, timer = entries.pop()
            if timer.active():
                timer.cancel()
            if proto.usable:
                if not entries:
                    self._idle.pop(key, None)
                return proto
        self._idle.pop(key, None)
        return None

    def put(self, key: Hashable, proto: Any) -> None:
        """Keep ``proto`` for reuse if it may be reused; else say QUIT."""
        entries = self._idle.setdefault(key, [])
        if (not proto.usable or self.idle <= 0 or len(entries) >= self.per_key
                or proto.core.transactions >= MAX_TRANSACTIONS
                or self.clock.seconds() - proto.created >= MAX_AGE):
            if not entries:
                self._idle.pop(key, None)
            proto.quit()
            return
        timer = self.clock.callLater(self.idle, self._expire, key, proto)
        entries.append((proto, timer))
        proto.closed.addCallback(lambda _: self._forget(key, proto))

    def _expire(self, key: Hashable, proto: Any) -> None:
        self._forget(key, proto)
        proto.quit()

    def _forget(self, key: Hashable, proto: Any) -> None:
        entries = self._idle.get(key)
        if not entries:
            return
        for i, (p, timer) in enumerate(entries):
            if p is proto:
                if timer.active():
                    timer.cancel()
                del entries[i]
                break
        if not entries:
            self._idle.pop(key, None)

    def __len__(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def close_all(self) -> list[Any]:
        """QUIT every idle connection; returns them (their ``closed`` Deferreds tell when)."""
        protos = []
        for key in list(self._idle):
            for proto, timer in self._idle.pop(key):
                if timer.active():
                    timer.cancel()
                protos.append(proto)
                proto.quit()
        return protos
