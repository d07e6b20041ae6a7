"""Login names as IndiMail reads them.

``user@domain``, ``user%domain`` and ``user:domain`` (split at the first of
``@ % :``); a bare ``user`` gets the default domain, chosen as
``vset_default_domain`` does: ``INDIMAIL_DOMAIN`` > the IP alias map entry of
the local address the client connected to (vipmap; ignored when the mapped
domain is in ``locals``) > ``DEFAULT_DOMAIN`` > the ``defaultdomain`` control
file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

ATCHARS = "@%:"


def split_login(login: str) -> tuple[str, str | None]:
    """(user, domain or None), lower-cased; whitespace around the login is dropped."""
    login = login.strip()
    cut = min((i for i in (login.find(c) for c in ATCHARS) if i >= 0), default=-1)
    if cut < 0:
        return login.lower(), None
    return login[:cut].lower(), login[cut + 1:].lower() or None


def default_domain(environ: Mapping[str, str], ip_domain: str | None,
                   locals_: tuple[str, ...] | frozenset[str] = (),
                   configured: str | None = None) -> str | None:
    """The domain a bare login belongs to (see the module docstring)."""
    if environ.get("INDIMAIL_DOMAIN"):
        return environ["INDIMAIL_DOMAIN"].lower()
    if ip_domain and ip_domain.lower() not in {d.lower() for d in locals_}:
        return ip_domain.lower()
    if environ.get("DEFAULT_DOMAIN"):
        return environ["DEFAULT_DOMAIN"].lower()
    return configured.lower() if configured else None


def needs_ip_map(login: str, environ: Mapping[str, str]) -> bool:
    """Whether resolving ``login`` needs the vipmap lookup at all."""
    return split_login(login)[1] is None and not environ.get("INDIMAIL_DOMAIN")


def canonical_ip(text: str) -> str:
    """The form ip_alias_map stores: IPv4 dotted quad; IPv6 compressed lower case,
    with an IPv4-mapped address written ``::ffff:a.b.c.d`` (as tcpserver sets
    TCPLOCALIP).  vipmap writes and the login lookup reads in this form.
    ValueError if invalid."""
    address = ipaddress.ip_address(text.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)
