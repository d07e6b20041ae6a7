"""Value types, virtualdomains lookup and smtproutes parsing."""

from __future__ import annotations

import pytest

from indimail_tw.config import ParseError, SmtpRoute, VirtualDomains, parse_route
from indimail_tw.config import parsers as p

# -- numbers, booleans, names ------------------------------------------------------------


@pytest.mark.parametrize("text, value", [("0", 0), ("42", 42), ("+7", 7), ("-3", -3)])
def test_parse_int(text, value):
    assert p.parse_int(text) == value


@pytest.mark.parametrize("text", ["", "abc", "12abc", "1.5", "0x10", "1_000", "١٢"])
def test_parse_int_refuses_non_numbers(text):
    with pytest.raises(ParseError, match="not a number"):
        p.parse_int(text)


def test_nonnegative_clamps_like_qmail_smtpd():
    assert p.nonnegative("-5") == 0
    assert p.nonnegative("5") == 5


def test_positive_or_uses_the_fallback_for_zero_or_less():
    maxhops = p.positive_or(100)
    assert maxhops("0") == 100
    assert maxhops("-1") == 100
    assert maxhops("30") == 30


def test_at_least():
    assert p.at_least(1)("3") == 3
    with pytest.raises(ParseError, match="at least 1"):
        p.at_least(1)("0")


@pytest.mark.parametrize("text, value", [
    ("1", True), ("0", False), ("2", True), ("yes", True), ("No", False), ("true", True),
    ("off", False), ("", False),
])
def test_parse_bool(text, value):
    assert p.parse_bool(text) is value


def test_parse_bool_refuses_other_words():
    with pytest.raises(ParseError, match="not a boolean"):
        p.parse_bool("maybe")


@pytest.mark.parametrize("name", [
    "mail.example.com", "localhost", "a-b.example", "host_1.example", "example+",
    "[192.0.2.1]", "[IPv6:2001:db8::1]", "bücher.example",
])
def test_hostnames(name):
    assert p.parse_hostname(name) == name


@pytest.mark.parametrize("name", ["", "two words", "-lead.example", ".lead", "a@b", "a:b", "[x]"])
def test_bad_hostnames(name):
    with pytest.raises(ParseError, match="not a host name"):
        p.parse_hostname(name)


@pytest.mark.parametrize("text, method", [
    ("0", "DES"), ("1", "MD5"), ("2", "SHA-256"), ("3", "SHA-512"), ("4", "YESCRYPT"),
    ("sha-512", "SHA-512"), ("SHA256", "SHA-256"), ("YESCRYPT # strongest", "YESCRYPT"),
    ("bcrypt", "BCRYPT"),
])
def test_hash_methods(text, method):
    assert p.parse_hash_method(text) == method


@pytest.mark.parametrize("text", ["5", "SHA-1", "", "-1"])
def test_bad_hash_methods(text):
    with pytest.raises(ParseError, match="not a hash method"):
        p.parse_hash_method(text)


def test_each_reports_the_line_of_the_bad_entry():
    parse = p.each(p.parse_int)
    assert parse([(1, "1"), (3, "2")]) == (1, 2)
    with pytest.raises(ParseError) as e:
        parse([(1, "1"), (4, "x")])
    assert e.value.line == 4


# -- virtualdomains ----------------------------------------------------------------------


@pytest.fixture
def vdoms() -> VirtualDomains:
    return p.parse_virtualdomains([
        (1, "example.com:example.com"),
        (2, ".example.com:wild"),
        (3, ".deep.example.com:deep"),
        (4, "joe@example.com:joe-box"),
        (5, "plain.example.com:"),
        (6, "Upper.Example:upper"),
    ])


def test_domain_entry(vdoms):
    assert vdoms.lookup("ann@example.com") == "example.com"
    assert vdoms.rewrite("ann@example.com") == "example.com-ann@example.com"


def test_exact_address_wins_over_domain(vdoms):
    assert vdoms.lookup("joe@example.com") == "joe-box"
    assert vdoms.rewrite("joe@example.com") == "joe-box-joe@example.com"


def test_suffix_matches_subdomains_longest_first(vdoms):
    assert vdoms.lookup("x@a.example.com") == "wild"
    assert vdoms.lookup("x@b.deep.example.com") == "deep"
    assert vdoms.lookup("x@deep.example.com") == "wild"  # .deep... covers subdomains only


def test_empty_prefix_means_not_virtual(vdoms):
    assert vdoms.lookup("x@plain.example.com") is None
    assert vdoms.match("x@plain.example.com") == ("plain.example.com", "")
    assert vdoms.rewrite("x@plain.example.com") is None


def test_lookup_ignores_case_but_keeps_the_prefix(vdoms):
    assert vdoms.lookup("X@UPPER.example") == "upper"
    assert vdoms.rewrite("X@UPPER.example") == "upper-X@UPPER.example"
    assert vdoms["upper.example"] == "upper"


def test_dots_in_the_local_part_are_not_suffixes(vdoms):
    v = p.parse_virtualdomains([(1, ".com:dotcom")])
    assert v.match("a.com@example.org") is None


def test_unknown_domain(vdoms):
    assert vdoms.lookup("x@other.org") is None
    assert vdoms.match("x@other.org") is None


def test_catch_all_entry():
    v = p.parse_virtualdomains([(1, ":alias"), (2, "example.com:example.com")])
    assert v.lookup("x@example.com") == "example.com"
    assert v.lookup("x@anything.else") == "alias"


def test_bare_domain_lookup(vdoms):
    assert vdoms.lookup("example.com") == "example.com"
    assert vdoms.lookup("a.example.com") == "wild"


def test_later_duplicate_wins():
    v = p.parse_virtualdomains([(1, "example.com:old"), (2, "EXAMPLE.com:new")])
    assert v.lookup("x@example.com") == "new"
    assert len(v) == 1


def test_virtualdomains_line_without_colon():
    with pytest.raises(ParseError) as e:
        p.parse_virtualdomains([(1, "a.example:a"), (7, "broken")])
    assert e.value.line == 7


def test_virtualdomains_is_a_mapping(vdoms):
    assert "example.com" in vdoms
    assert dict(vdoms)["joe@example.com"] == "joe-box"


# -- smtproutes --------------------------------------------------------------------------


@pytest.mark.parametrize("text, route", [
    ("example.com:relay.example.net", SmtpRoute("example.com", "relay.example.net", None)),
    ("example.com:relay.example.net:2525",
     SmtpRoute("example.com", "relay.example.net", 2525)),
    (":smarthost.example:587", SmtpRoute("", "smarthost.example", 587)),
    ("local.example:", SmtpRoute("local.example", "", None)),
    (".example.org:[192.0.2.7]:25", SmtpRoute(".example.org", "[192.0.2.7]", 25)),
    ("v6.example:[2001:db8::1]", SmtpRoute("v6.example", "[2001:db8::1]", None)),
    ("!@:bounces.example:25", SmtpRoute("!@", "bounces.example", 25)),
    ("a.example:relay::", SmtpRoute("a.example", "relay", None, ("",))),
    ("a.example:relay:25:3600:120", SmtpRoute("a.example", "relay", 25, ("3600", "120"))),
    ("a.example:relay:465 user secret ENV=1",
     SmtpRoute("a.example", "relay", 465, (), ("user", "secret", "ENV=1"))),
    ("a.example:relay /s", SmtpRoute("a.example", "relay", None, (), ("/s",))),
])
def test_parse_route(text, route):
    assert parse_route(text) == route


@pytest.mark.parametrize("text, reason", [
    ("no-colon", "expected"),
    ("a.example:relay:smtp", "not a port"),
    ("a.example:relay:0", "not a port"),
    ("a.example:relay:65536", "not a port"),
    ("a.example:[192.0.2.1", "unbalanced"),
    ("a.example:[192.0.2.1]x", "unbalanced"),
])
def test_bad_routes(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse_route(text, 9)


def test_smtproutes_keep_order_and_lines():
    routes = p.parse_smtproutes([(2, "b.example:r1"), (5, ":r2")])
    assert [(r.domain, r.line) for r in routes] == [("b.example", 2), ("", 5)]
