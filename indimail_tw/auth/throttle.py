"""Failed-login throttling, shared by POP3 and IMAP (and usable by SMTP AUTH).

IndiMail has nothing of its own here (its proxies only count bad attempts per
session), so this follows Dovecot's auth penalty and ``auth_failure_delay``:

* Per client address, every failed login adds to a penalty.  The next login
  attempt from that address waits before it is checked: 0 s after no
  failures, then 1 s, 2 s, 4 s, ... doubling up to a cap (15 s).  The wait
  comes *before* the check, for successes too, so a client that drops the
  connection instead of waiting for a failure reply gains nothing.
* The penalty decays: one failure is forgotten per quiet period (60 s)
  without failures, so a user who mistyped is soon back to no delay.
* IPv6 clients are counted per /64 network (one host usually has a whole
  /64); IPv4-mapped IPv6 addresses count as their IPv4 address.
* Memory is bounded: at most ``max_entries`` addresses are remembered; the
  one with the oldest failure is forgotten first.
* Per connection, after ``per_connection`` failed logins the protocol closes
  the connection (:class:`ConnectionAttempts`).

Temporary failures (database down) are our fault and never count.

Environment variables (read by :meth:`LoginThrottle.from_environ`):

``LOGIN_FAILURE_DELAY``      first delay in seconds (default 1; 0 disables delays)
``LOGIN_FAILURE_DELAY_MAX``  the cap in seconds (default 15)
``LOGIN_FAILURE_DECAY``      seconds of quiet that forget one failure (default 60)
``LOGIN_THROTTLE_SIZE``      addresses remembered (default 10000)
``MAX_LOGIN_FAILURES``       failed logins per connection before it is closed (default 3)

Everything runs on the reactor thread; time comes from the ``clock``
(``IReactorTime``) given to the constructor.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_DELAY = 1.0
DEFAULT_MAX_DELAY = 15.0
DEFAULT_DECAY = 60.0
DEFAULT_MAX_ENTRIES = 10000
DEFAULT_PER_CONNECTION = 3


def _number(environ: Mapping[str, str], name: str, default: float, low: float = 0.0) -> float:
    try:
        value = float(environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value >= low else default


def address_key(remote_ip: str) -> str:
    """The key an address is counted under: IPv4 as is, IPv6 by its /64."""
    text = (remote_ip or "").strip()
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text.lower()
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Entry:
    failures: int
    last: float     # when the last failure (or decay step) was counted


class LoginThrottle:
    """Per-address login penalty (see the module docstring)."""

    def __init__(self, clock: Any, *, delay: float = DEFAULT_DELAY,
                 max_delay: float = DEFAULT_MAX_DELAY, decay: float = DEFAULT_DECAY,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 per_connection: int = DEFAULT_PER_CONNECTION) -> None:
        if max_entries < 1 or per_connection < 1 or decay <= 0:
            raise ValueError("max_entries, per_connection and decay must be positive")
        self.clock = clock
        self.base_delay = max(0.0, delay)
        self.max_delay = max(self.base_delay, max_delay)
        self.decay = decay
        self.max_entries = max_entries
        self.per_connection = per_connection
        self._table: OrderedDict[str, _Entry] = OrderedDict()

    @classmethod
    def from_environ(cls, clock: Any, environ: Mapping[str, str]) -> LoginThrottle:
        """A throttle configured from the variables listed in the module docstring."""
        return cls(clock,
                   delay=_number(environ, "LOGIN_FAILURE_DELAY", DEFAULT_DELAY),
                   max_delay=_number(environ, "LOGIN_FAILURE_DELAY_MAX", DEFAULT_MAX_DELAY),
                   decay=_number(environ, "LOGIN_FAILURE_DECAY", DEFAULT_DECAY, 1.0),
                   max_entries=int(_number(environ, "LOGIN_THROTTLE_SIZE",
                                           DEFAULT_MAX_ENTRIES, 1.0)),
                   per_connection=int(_number(environ, "MAX_LOGIN_FAILURES",
                                              DEFAULT_PER_CONNECTION, 1.0)))

    def __len__(self) -> int:
        return len(self._table)

    def failures(self, remote_ip: str) -> int:
        """The failures still counted against ``remote_ip`` (after decay)."""
        entry = self._current(address_key(remote_ip))
        return entry.failures if entry else 0

    def delay(self, remote_ip: str) -> float:
        """Seconds the next login attempt from ``remote_ip`` waits before it is checked."""
        return self.delay_for(self.failures(remote_ip))

    def delay_for(self, failures: int) -> float:
        """0 for no failures, then ``delay`` doubling per failure up to ``max_delay``."""
        if failures <= 0 or self.base_delay <= 0:
            return 0.0
        exponent = min(failures - 1, 32)      # 2**32 s is past any sane cap
        return min(self.max_delay, self.base_delay * (2 ** exponent))

    def failed(self, remote_ip: str) -> float:
        """Count a failed login from ``remote_ip``; return the delay its next attempt gets."""
        key = address_key(remote_ip)
        now = self.clock.seconds()
        entry = self._current(key)
        if entry is None:
            entry = self._table[key] = _Entry(0, now)
        entry.failures += 1
        entry.last = now
        self._table.move_to_end(key)
        while len(self._table) > self.max_entries:
            self._table.popitem(last=False)
        return self.delay_for(entry.failures)

    def connection(self) -> ConnectionAttempts:
        """A fresh per-connection failure counter with this throttle's limit."""
        return ConnectionAttempts(self.per_connection)

    def _current(self, key: str) -> _Entry | None:
        """The entry for ``key`` with the decay applied (dropped once fully decayed)."""
        entry = self._table.get(key)
        if entry is None:
            return None
        elapsed = self.clock.seconds() - entry.last
        if elapsed >= self.decay:
            steps = int(elapsed // self.decay)
            entry.failures -= steps
            entry.last += steps * self.decay
            if entry.failures <= 0:
                del self._table[key]
                return None
        return entry


class ConnectionAttempts:
    """Failed logins on one connection; ``exhausted`` once ``limit`` is reached."""

    def __init__(self, limit: int = DEFAULT_PER_CONNECTION) -> None:
        self.limit = max(1, limit)
        self.failures = 0

    def failed(self) -> bool:
        """Count one failure; True when the connection must now be closed."""
        self.failures += 1
        return self.exhausted

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.limit
