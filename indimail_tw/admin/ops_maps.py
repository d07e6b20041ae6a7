"""Row-only operations: valias (forwardings), atrn_map (vatrn), ip_alias_map (vipmap).

These touch no files.  Each operation is one transaction; a change that finds
nothing to change (deleting a line that is not there, adding one that is) is an
error (exit 1), so scripts notice typos.
"""

from __future__ import annotations

from indimail_tw.admin.ops_user import _get, parse_address, real_domain
from indimail_tw.admin.site import FAILED, Site
from indimail_tw.admin.validate import (
    bad, check_alias_line, check_domain, check_ip, check_user, split_address,
)
from indimail_tw.errors import AdminError
from indimail_tw.storage.engine import Txn
from indimail_tw.storage.store import REPOS

Row = tuple[str, str, str]


# -- valias ------------------------------------------------------------------------------

def _alias_address(site: Site, address: str, *, domain_ok: bool = False) -> tuple[str, str]:
    """``alias@domain`` (or ``@domain`` when ``domain_ok``); the domain must exist."""
    if address.startswith("@") and domain_ok:
        name, domain = "", address[1:]
    else:
        name, domain = split_address(address, site.default_domain())
        check_user(name, site.environ, "alias")
    check_domain(domain)
    if not site.domain_exists(domain):
        raise AdminError(f"domain {domain} does not exist", FAILED)
    return name, domain


def list_aliases(site: Site, address: str | None = None) -> list[Row]:
    """valias -s: rows of one alias, of one domain (``@domain``), or all."""
    if address is None:
        return site.read(REPOS.aliases.list_all)
    name, domain = _alias_address(site, address, domain_ok=True)

    def transaction(txn: Txn) -> list[Row]:
        real = real_domain(txn, site, domain)
        if not name:
            return [(a, real, line) for a, line in REPOS.aliases.list_domain(txn, real)]
        return [(name, real, line) for line in REPOS.aliases.lines(txn, name, real)]

    return site.read(transaction)


def track_aliases(site: Site, target: str) -> list[Row]:
    """valias -S: the aliases that deliver to ``target``."""
    if not target:
        raise bad("empty address")
    return site.read(REPOS.aliases.reverse, target)


def add_alias_lines(site: Site, address: str, lines: list[str]) -> list[str]:
    """valias -i: add delivery lines to ``alias@domain``; returns the stored lines."""
    name, domain = _alias_address(site, address)
    checked = [check_alias_line(line) for line in lines]
    if not checked:
        raise bad("no alias line given")

    def transaction(txn: Txn) -> list[str]:
        real = real_domain(txn, site, domain)
        for line in checked:
            if not REPOS.aliases.add(txn, name, real, line):
                raise AdminError(f"{name}@{real} already has the line {line}", FAILED)
        return REPOS.aliases.lines(txn, name, real)

    return site.write(transaction)


def delete_alias_lines(site: Site, address: str, lines: list[str]) -> int:
    """valias -d: remove delivery lines; each must exist."""
    name, domain = _alias_address(site, address)

    def transaction(txn: Txn) -> int:
        real = real_domain(txn, site, domain)
        total = 0
        for line in lines:
            count = REPOS.aliases.delete(txn, name, real, line.lstrip(" "))
            if not count:
                raise AdminError(f"{name}@{real} has no line {line}", FAILED)
            total += count
        return total

    return site.write(transaction)


def replace_alias_line(site: Site, address: str, old: str, new: str) -> None:
    """valias -u old -i new."""
    name, domain = _alias_address(site, address)
    new = check_alias_line(new)

    def transaction(txn: Txn) -> None:
        real = real_domain(txn, site, domain)
        if new in REPOS.aliases.lines(txn, name, real):
            raise AdminError(f"{name}@{real} already has the line {new}", FAILED)
        if not REPOS.aliases.replace_line(txn, name, real, old.lstrip(" "), new):
            raise AdminError(f"{name}@{real} has no line {old}", FAILED)

    site.write(transaction)


# -- atrn_map ------------------------------------------------------------------------------

def atrn_add(site: Site, address: str, atrn_domain: str) -> None:
    """vatrn -i: ``address`` (an existing user) may pull ``atrn_domain`` with ATRN."""
    check_domain(atrn_domain, "ATRN domain")
    name, domain = parse_address(site, address)

    def transaction(txn: Txn) -> None:
        user = _get(txn, site, name, domain)
        if not REPOS.atrn.add(txn, user.name, user.domain, atrn_domain):
            raise AdminError(f"{user.address} may already pull {atrn_domain}", FAILED)

    site.write(transaction)


def atrn_delete(site: Site, address: str, atrn_domain: str) -> None:
    check_domain(atrn_domain, "ATRN domain")
    name, domain = parse_address(site, address)

    def transaction(txn: Txn) -> None:
        real = real_domain(txn, site, domain)
        if not REPOS.atrn.delete(txn, name, real, atrn_domain):
            raise AdminError(f"no ATRN map {name}@{real} -> {atrn_domain}", FAILED)

    site.write(transaction)


def atrn_rename(site: Site, address: str, old: str, new: str) -> None:
    """vatrn -u old -i new."""
    check_domain(old, "ATRN domain")
    check_domain(new, "ATRN domain")
    name, domain = parse_address(site, address)

    def transaction(txn: Txn) -> None:
        real = real_domain(txn, site, domain)
        if new in REPOS.atrn.domains_of(txn, name, real):
            raise AdminError(f"{name}@{real} may already pull {new}", FAILED)
        if not REPOS.atrn.rename(txn, name, real, old, new):
            raise AdminError(f"no ATRN map {name}@{real} -> {old}", FAILED)

    site.write(transaction)


def atrn_list(site: Site, target: str | None = None) -> list[Row]:
    """vatrn -s: all rows, those of one user (``user@domain``) or of one ATRN domain."""
    if target is None:
        return site.read(REPOS.atrn.list)
    if "@" in target:
        name, domain = parse_address(site, target)

        def transaction(txn: Txn) -> list[Row]:
            real = real_domain(txn, site, domain)
            return [(name, real, d) for d in REPOS.atrn.domains_of(txn, name, real)]

        return site.read(transaction)
    check_domain(target)
    return site.read(REPOS.atrn.list, target)


# -- ip_alias_map -------------------------------------------------------------------------

def _ip_and_domain(site: Site, ip: str, domain: str, *, must_exist: bool) -> tuple[str, str]:
    ip = check_ip(ip)
    check_domain(domain)
    if must_exist and not site.domain_exists(domain):
        raise AdminError(f"domain {domain} does not exist", FAILED)
    return ip, domain


def ipmap_add(site: Site, ip: str, domain: str) -> str:
    """vipmap -i: bare logins on local address ``ip`` belong to ``domain``."""
    ip, domain = _ip_and_domain(site, ip, domain, must_exist=True)

    def transaction(txn: Txn) -> str:
        current = REPOS.ipmap.domain_for(txn, ip)
        if current is not None:
            raise AdminError(f"{ip} is already mapped to {current} (use -u to change it)",
                             FAILED)
        REPOS.ipmap.set(txn, ip, domain)
        return ip

    return site.write(transaction)


def ipmap_update(site: Site, ip: str, domain: str) -> str:
    ip, domain = _ip_and_domain(site, ip, domain, must_exist=True)

    def transaction(txn: Txn) -> str:
        if REPOS.ipmap.domain_for(txn, ip) is None:
            raise AdminError(f"{ip} is not mapped (use -i to add it)", FAILED)
        REPOS.ipmap.set(txn, ip, domain)
        return ip

    return site.write(transaction)


def ipmap_delete(site: Site, ip: str, domain: str) -> str:
    ip, domain = _ip_and_domain(site, ip, domain, must_exist=False)

    def transaction(txn: Txn) -> str:
        if not REPOS.ipmap.delete(txn, ip, domain):
            raise AdminError(f"no mapping {ip} -> {domain}", FAILED)
        return ip

    return site.write(transaction)


def ipmap_list(site: Site, domain: str | None = None) -> list[tuple[str, str]]:
    if domain is not None:
        check_domain(domain)
    return site.read(REPOS.ipmap.list, domain)
