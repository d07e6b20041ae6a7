"""Mail exchangers through twisted.names: MX, CNAME, null MX, A/AAAA (RFC 5321 5.1).

* MX records in preference order, equal preferences in random order
  (:func:`order_mx`, the RNG is injected so tests can seed it);
* no MX records: the domain's own A/AAAA records (the "implicit MX", pref 0);
* a null MX (RFC 7505: one record, ``0 .``) fails permanently, 5.1.10;
* CNAMEs are followed, within an answer or by asking again (at most
  :data:`MAX_CNAME` links; a longer chain is a temporary failure);
* NXDOMAIN fails permanently (5.1.2), any other DNS trouble temporarily
  (4.4.3), as qmail-remote does;
* each exchanger's IPv4 addresses, then its IPv6 ones.  An exchanger whose
  addresses cannot be found is skipped; when none is left the delivery fails
  (temporarily if some lookup failed temporarily, else 5.4.4).

The resolver is any ``twisted.internet.interfaces.IResolver`` (``client.Resolver``
pointed at chosen servers, or the system's ``client.createResolver()``).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dns_error

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.remote.addresses import address_literal, ascii_domain, is_ip

MAX_CNAME = 8
MAX_ADDRESSES = 20             # connection attempts per delivery, at most


@dataclass(frozen=True)
class Candidate:
    """One address to try: ``host`` is the exchanger's name (or the literal)."""

    host: str
    ip: str
    pref: int


class Unroutable(Exception):
    """No address to try; ``result`` says why (temporary or permanent)."""

    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.text)
        self.result = result


class _NXDomain(Exception):
    pass


class _Temporary(Exception):
    pass


def order_mx(records: Iterable[tuple[int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """Sort by preference; shuffle each group of equal preference (no duplicates)."""
    groups: dict[int, list[str]] = {}
    for pref, name in records:
        names = groups.setdefault(pref, [])
        if name not in names:
            names.append(name)
    ordered = []
    for pref in sorted(groups):
        names = sorted(groups[pref])
        rng.shuffle(names)
        ordered += [(pref, name) for name in names]
    return ordered


def _name(value: Any) -> str:
    return str(value).rstrip(".").lower()


def follow_cname(answers: Iterable[Any], name: str, rtype: int) -> tuple[str, list[Any]]:
    """The end of ``name``'s CNAME chain within ``answers`` and its records of ``rtype``."""
    answers = list(answers)
    current, seen = _name(name), set()
    while True:
        found = [rr for rr in answers if rr.type == rtype and _name(rr.name) == current]
        if found:
            return current, found
        cname = next((rr for rr in answers if rr.type == dns.CNAME
                      and _name(rr.name) == current), None)
        if cname is None:
            return current, []
        seen.add(current)
        current = _name(cname.payload.name)
        if current in seen or len(seen) > MAX_CNAME:
            raise _Temporary("CNAME loop or chain too long")


def _temporary(text: str) -> Unroutable:
    return Unroutable(DeliveryResult.temporary(text, "4.4.3"))


def _permanent(text: str, enhanced: str) -> Unroutable:
    return Unroutable(DeliveryResult.permanent(text, enhanced))


class MXResolver:
    """Candidates (exchanger, IP, preference) for a domain or a relay host."""

    def __init__(self, resolver: Any, rng: random.Random | None = None,
                 timeout: tuple[int, ...] | None = None) -> None:
        self.resolver = resolver
        self.rng = rng or random.Random()
        self.timeout = timeout

    async def _query(self, kind: int, name: str) -> list[Any]:
        lookup = {dns.MX: self.resolver.lookupMailExchange, dns.A: self.resolver.lookupAddress,
                  dns.AAAA: self.resolver.lookupIPV6Address}[kind]
        try:
            d = lookup(name) if self.timeout is None else lookup(name, timeout=self.timeout)
            answers, _authority, _additional = await d
        except dns_error.DNSNameError:
            raise _NXDomain(name) from None
        except Exception as e:  # noqa: BLE001 -- SERVFAIL, REFUSED, timeouts, ...
            raise _Temporary(f"{name}: {type(e).__name__}") from None
        return list(answers)

    async def _records(self, kind: int, name: str) -> tuple[str, list[Any]]:
        """(canonical name, records of ``kind``), following CNAMEs across queries too."""
        current = name
        for _ in range(MAX_CNAME):
            canonical, found = follow_cname(await self._query(kind, current), current, kind)
            if found or canonical == _name(current):
                return canonical, found
            current = canonical
        raise _Temporary("CNAME chain too long")

    async def _addresses(self, host: str) -> tuple[list[str], bool]:
        """(IPv4 then IPv6 addresses of ``host``, whether a lookup failed temporarily)."""
        ips: list[str] = []
        soft = False
        for kind in (dns.A, dns.AAAA):
            try:
                _canonical, records = await self._records(kind, host)
            except _NXDomain:
                # keep what A found: /etc/hosts may know the IPv4 address of a name
                # whose AAAA query then goes to DNS and gets NXDOMAIN
                return ips, False
            except _Temporary:
                soft = True
                continue
            for rr in records:
                if kind == dns.A:
                    ips.append(rr.payload.dottedQuad())
                else:
                    ips.append(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
        return ips, soft

    async def _candidates(self, hosts: list[tuple[int, str]], domain: str) -> list[Candidate]:
        lookups = [defer.Deferred.fromCoroutine(self._addresses(host)) for _, host in hosts]
        found = await defer.gatherResults(lookups, consumeErrors=True)
        candidates, soft = [], False
        for (pref, host), (ips, host_soft) in zip(hosts, found, strict=True):
            soft = soft or host_soft
            candidates += [Candidate(host, ip, pref) for ip in ips]
        if not candidates:
            if soft:
                raise _temporary(f"Sorry, I couldn't find the address of a mail exchanger "
                                 f"for {domain}; DNS failed temporarily. (#4.4.3)")
            raise _permanent("Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)",
                             "5.4.4")
        return candidates[:MAX_ADDRESSES]

    async def mx_candidates(self, domain: str) -> list[Candidate]:
        """Where mail for ``domain`` goes; raises :class:`Unroutable`."""
        literal = address_literal(domain)
        if literal is not None:
            return [Candidate(domain, literal, 0)]
        try:
            name = ascii_domain(domain)
        except ValueError:
            raise _permanent(f"Sorry, I couldn't find any host named {domain}. (#5.1.2)",
                             "5.1.2") from None
        try:
            canonical, records = await self._records(dns.MX, name)
        except _NXDomain:
            raise _permanent(f"Sorry, I couldn't find any host named {domain}. (#5.1.2)",
                             "5.1.2") from None
        except _Temporary:
            raise _temporary(f"Sorry, I couldn't find any host named {domain}; DNS failed "
                             "temporarily. (#4.4.3)") from None
        if not records:
            return await self._candidates([(0, canonical)], domain)
        exchangers = [(rr.payload.preference, _name(rr.payload.name)) for rr in records]
        real = [(pref, host) for pref, host in exchangers if host]
        if not real:
            raise _permanent(f"Sorry, {domain} does not accept mail: it has a null MX "
                             "record. (#5.1.10)", "5.1.10")
        return await self._candidates(order_mx(real, self.rng), domain)

    async def host_candidates(self, host: str) -> list[Candidate]:
        """The addresses of a relay (never its MX); raises :class:`Unroutable`."""
        literal = address_literal(host)
        if literal is not None or is_ip(host):
            return [Candidate(host, literal or host, 0)]
        try:
            name = ascii_domain(host)
        except ValueError:
            raise _permanent(f"Sorry, I couldn't find any host named {host}. (#5.1.2)",
                             "5.1.2") from None
        ips, soft = await self._addresses(name)
        if ips:
            return [Candidate(name, ip, 0) for ip in ips][:MAX_ADDRESSES]
        if soft:
            raise _temporary(f"Sorry, I couldn't find any host named {host}; DNS failed "
                             "temporarily. (#4.4.3)")
        raise _permanent(f"Sorry, I couldn't find any host named {host}. (#5.1.2)", "5.1.2")
