"""Connection limits: total concurrency and connections per client IP (tcpserver -c / -C).

Total: ``MAXDAEMONS`` (environment), else the ``concurrencyincoming`` control
file, else 100.  Per IP: ``MAXPERIP`` (environment, usually set per client by
a tcprules rule), else 20 as tcpserver's default; 0 means no per-IP limit.
A refused client gets ``421`` and the connection is closed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from indimail_tw.policy.base import Reject

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_MAX_PER_IP = 20

TOO_MANY = Reject(421, "4.7.0", "too many connections, try again later", close=True)
TOO_MANY_FROM_IP = Reject(421, "4.7.0", "too many connections from your address, try again "
                                        "later", close=True)


def _number(text: str | None, default: int) -> int:
    try:
        return max(int((text or "").strip()), 0) if text and text.strip() else default
    except ValueError:
        return default


def max_connections(environ: Mapping[str, str], control_value: str | None) -> int:
    """The total limit: MAXDAEMONS, else control/concurrencyincoming, else the default."""
    if environ.get("MAXDAEMONS"):
        return _number(environ["MAXDAEMONS"], DEFAULT_MAX_CONNECTIONS)
    return _number(control_value, DEFAULT_MAX_CONNECTIONS)


def max_per_ip(environ: Mapping[str, str]) -> int:
    return _number(environ.get("MAXPERIP"), DEFAULT_MAX_PER_IP)


class ConnectionLimiter:
    """Counts open connections of one listener, in total and per remote IP."""

    def __init__(self) -> None:
        self.total = 0
        self.per_ip: Counter[str] = Counter()

    def admit(self, ip: str, total_limit: int, ip_limit: int) -> Reject | None:
        """Count the connection in, or say why it may not stay (then it is not counted)."""
        if total_limit and self.total >= total_limit:
            return TOO_MANY
        if ip_limit and self.per_ip[ip] >= ip_limit:
            return TOO_MANY_FROM_IP
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total = max(self.total - 1, 0)
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
