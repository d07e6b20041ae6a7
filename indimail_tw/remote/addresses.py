"""Addresses and host names as remote delivery needs them (no I/O).

* :func:`domain_of` -- the part after the last ``@``, lower-cased;
* :func:`address_literal` -- the IP of ``[1.2.3.4]`` / ``[IPv6:...]`` domains;
* :func:`ascii_domain` -- IDNA A-labels for DNS and for peers without SMTPUTF8;
* :func:`ascii_address` -- an address a non-SMTPUTF8 server can take, if one exists.
"""

from __future__ import annotations

import ipaddress

import idna


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def address_literal(host: str) -> str | None:
    """``1.2.3.4`` for ``[1.2.3.4]``, ``2001:db8::1`` for ``[IPv6:2001:db8::1]``, else None."""
    if not (host.startswith("[") and host.endswith("]")):
        return None
    inner = host[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return ipaddress.ip_address(inner).compressed
    except ValueError:
        return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def ascii_domain(domain: str) -> str:
    """The A-label form of ``domain`` (unchanged if ASCII); ValueError if not a valid IDN."""
    domain = domain.rstrip(".")
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise ValueError(f"not a valid internationalised domain name: {e}") from None


def ascii_address(address: str) -> str | None:
    """``address`` with its domain in A-labels, or None when the local part is not ASCII."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return None
    try:
        return f"{local}@{ascii_domain(domain)}"
    except ValueError:
        return None
