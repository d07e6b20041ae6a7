"""smtproutes syntax and matching; moresmtproutes.cdb; route credentials."""

from __future__ import annotations

import cdbx

from indimail_tw.config.parsers import parse_smtproutes
from indimail_tw.remote.routes import (
    credentials, find_route, more_routes, next_hop, parse_env, relay_address, remote_auth,
    remote_auth_key,
)

ROUTES = parse_smtproutes(list(enumerate([
    "inside.af.mil:firewall.af.mil:26",
    ".af.mil:",
    "example.com:[192.0.2.7]",
    "smarthost.example:relay.example:587:600:60 user@example.org s3cret",
    "!@:bounces.example:27",
    ":heaven.af.mil",
    "example.com:ignored.example",                 # a later duplicate never wins
], start=1)))


def route_for(domain, sender="s@x.example"):
    return find_route(ROUTES, domain, sender)


def test_exact_domain_wins():
    r = route_for("inside.af.mil")
    assert (r.relay, r.port, r.line) == ("firewall.af.mil", 26, 1)


def test_suffix_matches_subdomains_only_and_empty_relay_means_mx():
    assert route_for("x.y.af.mil").line == 2
    hop = next_hop("x.y.af.mil", route_for("x.y.af.mil"), {})
    assert hop.use_mx and hop.host == "x.y.af.mil" and not hop.artificial
    assert route_for("af.mil").line == 6                   # not the .af.mil line


def test_default_route():
    hop = next_hop("anything.example", route_for("anything.example"), {})
    assert (hop.host, hop.use_mx, hop.artificial, hop.origin) == (
        "heaven.af.mil", False, True, "smtproutes line 6")


def test_case_insensitive_and_first_line_wins():
    assert route_for("EXAMPLE.com").relay == "[192.0.2.7]"


def test_ip_literal_relay():
    hop = next_hop("example.com", route_for("example.com"), {})
    assert hop.host == "[192.0.2.7]" and relay_address(hop.host) == "192.0.2.7"
    assert relay_address("192.0.2.8") == "192.0.2.8"
    assert relay_address("[IPv6:2001:db8::1]") == "2001:db8::1"
    assert relay_address("relay.example") is None


def test_null_sender_route():
    assert route_for("inside.af.mil", sender="").line == 5
    assert route_for("inside.af.mil", sender="#@[]").line == 5


def test_port_465_means_implicit_tls():
    (route,) = parse_smtproutes([(1, "x.example:relay.example:465")])
    assert next_hop("x.example", route, {}).implicit_tls


def test_penalty_and_credentials():
    hop = next_hop("smarthost.example", route_for("smarthost.example"), {})
    assert (hop.port, hop.penalty, hop.max_tolerance) == (587, 600, 60)
    creds = hop.credentials
    assert (creds.user, creds.password, creds.plaintext_ok) == ("user@example.org", "s3cret",
                                                                False)
    assert "s3cret" not in repr(creds)


def test_no_route_means_mx():
    assert find_route([], "x.example", "s@x") is None
    assert next_hop("x.example", None, {}).use_mx


def test_envstr():
    assert parse_env("AUTH_SMTP=LOGIN,SECURE_AUTH=,X=a\\,b") == {
        "AUTH_SMTP": "LOGIN", "SECURE_AUTH": None, "X": "a,b"}
    creds = credentials(["u", "p", "AUTH_SMTP=login,SECURE_AUTH="], {})
    assert creds.mechanism == "LOGIN" and creds.plaintext_ok
    assert credentials(["u", "p", "SECURE_AUTH=0"], {}).plaintext_ok
    assert not credentials(["u", "p"], {}).plaintext_ok
    assert credentials(["u", "p"], {"SECURE_AUTH": "0", "AUTH_SMTP": "PLAIN"}).mechanism == \
        "PLAIN"
    assert credentials(["u", "p", "AUTH_SMTP=XOAUTH2"], {}).mechanism is None


def test_unsupported_credentials_forms():
    assert credentials(["/s"], {}) is None
    assert credentials(["onlyuser"], {}) is None
    assert credentials([], {}) is None


def test_moresmtproutes_cdb(tmp_path):
    with open(tmp_path / "moresmtproutes.cdb", "wb") as f:
        maker = cdbx.CDB.make(f)
        maker.add(b"vip@example.com", b"[192.0.2.9]:2525")
        maker.add(b"!@", b"bounce.example")
        maker.commit().close()
    found = more_routes(str(tmp_path), {}, ["vip@example.com", "other@example.com"],
                        "s@x.example")
    assert (found[0].relay, found[0].port) == ("[192.0.2.9]", 2525) and found[1] is None
    (bounce,) = more_routes(str(tmp_path), {}, ["other@example.com"], "")
    assert bounce.relay == "bounce.example"
    assert more_routes(str(tmp_path / "nowhere"), {}, ["a@b"], "") == [None]


def write_remote_auth(directory, entries):
    with open(directory / "remote_auth.cdb", "wb") as f:
        maker = cdbx.CDB.make(f)
        for key, value in entries.items():
            maker.add(key.encode(), value.encode())
        maker.commit().close()


def test_remote_auth_keys():
    assert remote_auth_key("/s", "alice@me.example", "bob@x.example") == "alice@me.example"
    assert remote_auth_key("/r", "alice@me.example", "bob@x.example") == "bob@x.example"
    assert remote_auth_key("/relay-login", "a@b", "c@d") == "relay-login"


def test_remote_auth_cdb_entries(tmp_path):
    write_remote_auth(tmp_path, {
        "!alice@me.example": "alice secret AUTH_SMTP=LOGIN,SECURE_AUTH=0",
        "relay-login": "relayuser pw",
        "!broken@me.example": "nopassword"})
    found = remote_auth(str(tmp_path), ["alice@me.example", "relay-login", "nobody@x",
                                        "broken@me.example", ""])
    assert found == {"alice@me.example": ("alice", "secret", "AUTH_SMTP=LOGIN,SECURE_AUTH=0"),
                     "relay-login": ("relayuser", "pw")}
    assert remote_auth(str(tmp_path / "missing"), ["alice@me.example"]) == {}


def test_routes_with_remote_auth_lookups(tmp_path):
    routes = parse_smtproutes(list(enumerate([
        "bysender.example:relay.example:587 /s",
        "byrcpt.example:relay.example:587 /r",
        "bytoken.example:relay.example:587 /relay-login"], start=1)))
    looked_up = {"alice@me.example": ("alice", "secret", "AUTH_SMTP=LOGIN,SECURE_AUTH=0"),
                 "bob@byrcpt.example": ("bob", "pw2"), "relay-login": ("relayuser", "pw")}

    def hop(domain, recipient, sender="alice@me.example"):
        return next_hop(domain, find_route(routes, domain, sender), {}, "smtproutes",
                        looked_up, sender, recipient)

    creds = hop("bysender.example", "x@bysender.example").credentials
    assert (creds.user, creds.password, creds.mechanism, creds.plaintext_ok) == (
        "alice", "secret", "LOGIN", True)
    assert hop("byrcpt.example", "bob@byrcpt.example").credentials.user == "bob"
    assert hop("byrcpt.example", "carol@byrcpt.example").credentials is None   # not found
    assert hop("bytoken.example", "x@bytoken.example").credentials.user == "relayuser"
    # different credentials: different transactions
    assert hop("byrcpt.example", "bob@byrcpt.example").key != \
        hop("byrcpt.example", "carol@byrcpt.example").key
