"""MX selection: preference order, random ties (seeded), CNAME, null MX, DNS failures."""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer
from twisted.names import error as dns_error

from indimail_tw.remote.mx import MXResolver, Unroutable, order_mx
from tests.remote.dnsfake import FakeResolver, a, aaaa, cname, mx


def run(coro):
    d = defer.Deferred.fromCoroutine(coro)
    results = []
    d.addBoth(results.append)
    assert results, "the fake resolver answers synchronously"
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def candidates(zone, domain, seed=1):
    return run(MXResolver(FakeResolver(zone), random.Random(seed)).mx_candidates(domain))


def failure(zone, domain):
    with pytest.raises(Unroutable) as info:
        candidates(zone, domain)
    return info.value.result


def test_order_mx_sorts_and_shuffles_ties_reproducibly():
    records = [(20, "c"), (10, "b"), (10, "a"), (10, "d"), (30, "e"), (10, "a")]
    first = order_mx(records, random.Random(7))
    assert [p for p, _ in first] == [10, 10, 10, 20, 30]
    assert sorted(n for p, n in first if p == 10) == ["a", "b", "d"]
    assert first == order_mx(records, random.Random(7))
    orders = {tuple(order_mx(records, random.Random(seed))) for seed in range(30)}
    assert len(orders) > 1                              # ties really are shuffled


def test_mx_in_preference_order_with_addresses():
    zone = {"example.com": [mx(20, "mx2.example.com"), mx(10, "mx1.example.com")],
            "mx1.example.com": [a("192.0.2.1"), aaaa("2001:db8::1")],
            "mx2.example.com": [a("192.0.2.2")]}
    found = candidates(zone, "Example.COM")
    assert [(c.host, c.ip, c.pref) for c in found] == [
        ("mx1.example.com", "192.0.2.1", 10), ("mx1.example.com", "2001:db8::1", 10),
        ("mx2.example.com", "192.0.2.2", 20)]


def test_no_mx_falls_back_to_a():
    zone = {"example.net": [a("192.0.2.5")]}
    (c,) = candidates(zone, "example.net")
    assert (c.host, c.ip, c.pref) == ("example.net", "192.0.2.5", 0)


def test_null_mx_is_permanent():
    result = failure({"nomail.example": [mx(0, "")]}, "nomail.example")
    assert result.is_permanent and result.enhanced == "5.1.10"


def test_a_null_mx_among_real_ones_is_ignored():
    zone = {"x.example": [mx(0, ""), mx(10, "mx.x.example")], "mx.x.example": [a("192.0.2.3")]}
    assert [c.ip for c in candidates(zone, "x.example")] == ["192.0.2.3"]


def test_nxdomain_is_permanent():
    result = failure({}, "nowhere.example")
    assert result.is_permanent and result.enhanced == "5.1.2"
    assert result.text == "Sorry, I couldn't find any host named nowhere.example. (#5.1.2)"


def test_temporary_dns_failure_defers():
    result = failure({"flaky.example": dns_error.DNSServerError("SERVFAIL")}, "flaky.example")
    assert result.is_temporary and result.enhanced == "4.4.3"
    result = failure({"slow.example": defer.TimeoutError()}, "slow.example")
    assert result.is_temporary and result.enhanced == "4.4.3"


def test_exchangers_without_addresses():
    zone = {"x.example": [mx(10, "gone.example")]}
    result = failure(zone, "x.example")
    assert result.is_permanent and result.enhanced == "5.4.4"
    zone = {"x.example": [mx(10, "flaky.example")],
            "flaky.example": dns_error.DNSServerError("SERVFAIL")}
    assert failure(zone, "x.example").is_temporary


def test_a_dead_exchanger_is_skipped():
    zone = {"x.example": [mx(10, "gone.example"), mx(20, "mx.x.example")],
            "mx.x.example": [a("192.0.2.3")]}
    assert [c.host for c in candidates(zone, "x.example")] == ["mx.x.example"]


def test_cname_within_the_answer():
    zone = {"alias.example": [cname("real.example")],
            "real.example": [mx(5, "mx.real.example")], "mx.real.example": [a("192.0.2.8")]}
    assert [(c.host, c.ip) for c in candidates(zone, "alias.example")] == [
        ("mx.real.example", "192.0.2.8")]


def test_cname_chain_outside_the_answer_is_asked_again():
    class Split(FakeResolver):
        """Answers only the first CNAME link, as a server outside the target's zone would."""

        def _lookup(self, name, kind):
            if name == "alias.example":
                from twisted.names import dns
                rr = dns.RRHeader(b"alias.example", dns.CNAME, payload=cname("real.example"))
                self.queries.append((name, kind))
                return defer.succeed(([rr], [], []))
            return super()._lookup(name, kind)

    resolver = Split({"real.example": [a("192.0.2.9")]})
    found = run(MXResolver(resolver, random.Random(1)).mx_candidates("alias.example"))
    assert [(c.host, c.ip) for c in found] == [("real.example", "192.0.2.9")]
    assert ("real.example", 15) in resolver.queries


def test_cname_loop_is_temporary():
    zone = {"a.example": [cname("b.example")], "b.example": [cname("a.example")]}
    assert failure(zone, "a.example").is_temporary


def test_address_literal_and_idn():
    (c,) = candidates({}, "[192.0.2.1]")
    assert (c.host, c.ip) == ("[192.0.2.1]", "192.0.2.1")
    zone = {"xn--bcher-kva.example": [a("192.0.2.4")]}
    assert [c.ip for c in candidates(zone, "bücher.example")] == ["192.0.2.4"]


def test_relay_host_uses_a_records_not_mx():
    resolver = FakeResolver({"relay.example": [mx(10, "other.example"), a("192.0.2.6")]})
    found = run(MXResolver(resolver).host_candidates("relay.example"))
    assert [c.ip for c in found] == ["192.0.2.6"]
    assert run(MXResolver(resolver).host_candidates("[192.0.2.7]"))[0].ip == "192.0.2.7"
    with pytest.raises(Unroutable) as info:
        run(MXResolver(resolver).host_candidates("missing.example"))
    assert info.value.result.is_permanent


class _HostsThenDNS(FakeResolver):
    """A names the host (as /etc/hosts would); AAAA goes to DNS: NXDOMAIN."""

    def lookupIPV6Address(self, name, timeout=None):  # noqa: N802
        return defer.fail(dns_error.DNSNameError(name))


def test_an_nxdomain_for_aaaa_keeps_the_a_addresses():
    resolver = MXResolver(_HostsThenDNS({"relay.example": [a("192.0.2.9")]}))
    (c,) = run(resolver.host_candidates("relay.example"))
    assert (c.host, c.ip) == ("relay.example", "192.0.2.9")
