"""DNS for tests: an in-memory resolver and a real twisted.names server on 127.0.0.1."""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import authority, dns, server
from twisted.names import error as dns_error


def mx(pref: int, name: str) -> dns.Record_MX:
    return dns.Record_MX(pref, name.encode())


def a(ip: str) -> dns.Record_A:
    return dns.Record_A(ip)


def aaaa(ip: str) -> dns.Record_AAAA:
    return dns.Record_AAAA(ip)


def cname(name: str) -> dns.Record_CNAME:
    return dns.Record_CNAME(name.encode())


class FakeResolver:
    """``zone`` maps a name to records (answered with CNAMEs followed within the zone,
    like an authoritative server) or to an exception to fail the lookup with."""

    def __init__(self, zone: dict[str, list | Exception]) -> None:
        self.zone = {k.lower(): v for k, v in zone.items()}
        self.queries: list[tuple[str, int]] = []

    def _lookup(self, name: str, kind: int) -> defer.Deferred:
        self.queries.append((name, kind))
        answers, current = [], name.lower()
        for _ in range(10):
            entry = self.zone.get(current)
            if isinstance(entry, Exception):
                return defer.fail(entry)
            if entry is None:
                if answers:
                    break
                return defer.fail(dns_error.DNSNameError(name))
            found = [r for r in entry if kind == r.TYPE]
            answers += [dns.RRHeader(current.encode(), kind, payload=r) for r in found]
            alias = [r for r in entry if r.TYPE == dns.CNAME]
            if found or not alias:
                break
            answers.append(dns.RRHeader(current.encode(), dns.CNAME, payload=alias[0]))
            current = str(alias[0].name).lower()
        return defer.succeed((answers, [], []))

    def lookupMailExchange(self, name, timeout=None):  # noqa: N802
        return self._lookup(name, dns.MX)

    def lookupAddress(self, name, timeout=None):  # noqa: N802
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name, timeout=None):  # noqa: N802
        return self._lookup(name, dns.AAAA)


class MemoryAuthority(authority.FileAuthority):
    """An authoritative zone built from a dict (FileAuthority loads from a "file")."""

    def __init__(self, origin: str, records: dict[str, list]) -> None:
        self._origin, self._zone = origin, records
        super().__init__(origin)

    def loadFile(self, filename):  # noqa: N802
        soa = dns.Record_SOA(mname=b"ns." + self._origin.encode(),
                             rname=b"root." + self._origin.encode(), serial=1, refresh=60,
                             retry=60, expire=60, minimum=60, ttl=60)
        self.soa = (self._origin.encode(), soa)
        self.records = {self._origin.encode(): [soa]}
        for name, records in self._zone.items():
            self.records.setdefault(name.lower().encode(), []).extend(records)


def start_dns_server(reactor, origin: str, records: dict[str, list]):
    """An authoritative DNS server on 127.0.0.1 (UDP, random port): (port, listening ports)."""
    factory = server.DNSServerFactory(authorities=[MemoryAuthority(origin, records)])
    udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    return udp.getHost().port, [udp]
