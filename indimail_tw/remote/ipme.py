"""Which IP addresses are "me" (qmail's ipme): never deliver to ourselves by MX.

The addresses of the local interfaces (IPv4 through SIOCGIFADDR on Linux,
IPv6 from ``/proc/net/if_inet6``), plus ``127.0.0.1``, ``::1`` and the
unspecified addresses, plus the control file ``moreipme`` (addresses we
answer on through NAT or a load balancer), minus ``notipme``.  Reading is
blocking: do it at startup or in a thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import Any

SIOCGIFADDR = 0x8915
ALWAYS = ("127.0.0.1", "0.0.0.0", "::1", "::")


def _ipv4_interfaces() -> set[str]:
    found: set[str] = set()
    try:
        import fcntl

        names = [name for _, name in socket.if_nameindex()]
    except (ImportError, OSError):
        return found
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            with contextlib.suppress(OSError):
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                     struct.pack("256s", name.encode()[:15]))
                found.add(socket.inet_ntoa(packed[20:24]))
    return found


def _ipv6_interfaces() -> set[str]:
    found: set[str] = set()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                field = line.split()[0] if line.split() else ""
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.IPv6Address(bytes.fromhex(field)).compressed)
    except OSError:
        pass
    return found


def interface_addresses() -> set[str]:
    return _ipv4_interfaces() | _ipv6_interfaces()


def _normalise(entries: Iterable[str]) -> set[str]:
    out = set()
    for entry in entries:
        text = entry.strip().strip("[]")
        with contextlib.suppress(ValueError):
            out.add(ipaddress.ip_address(text).compressed)
    return out


def load_ipme(control: Any | None = None) -> frozenset[str]:
    """Our addresses: interfaces + ALWAYS + ``moreipme`` - ``notipme`` (blocking)."""
    addresses = interface_addresses() | set(ALWAYS)
    if control is not None:
        addresses |= _normalise(control.lines("moreipme"))
        addresses -= _normalise(control.lines("notipme"))
    return frozenset(addresses)
