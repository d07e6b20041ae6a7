"""Every relay rule: rcpthosts, RELAYCLIENT, relayclients, relaydomains, relaymailfrom,
AUTH / NO_RELAY, CHECKRELAY, AUTH_ALL, addresses without @, [ip] literals, relay probes."""

from __future__ import annotations

import base64

import pytest
from twisted.internet import defer

from indimail_tw.config import ControlDir
from indimail_tw.errors import StoreUnavailable
from indimail_tw.policy.relay import relayclients_match
from tests.smtp.support import Conn, Site, ehlo, make_factory

NO_RELAY = ("553 5.7.1 sorry, that domain isn't allowed to be relayed thru this MTA "
            "without authentication")


@pytest.fixture
def site():
    s = Site(control={"rcpthosts": "example.com\n.sub.example.org\n",
                      "virtualdomains": "example.com:example.com\n"})
    s.store.add_user("alice@example.com")
    yield s
    s.cleanup()


def rcpt(site, *addresses, sender="s@remote.example", ip="192.0.2.10", service="smtp",
         **kw) -> list[str]:
    conn = Conn(make_factory(site, service=service, **kw), ip=ip)
    ehlo(conn)
    conn.send(f"MAIL FROM:<{sender}>\r\n")
    assert conn.codes() == [250]
    for address in addresses:
        conn.send(f"RCPT TO:<{address}>\r\n")
    return conn.lines()


def test_rcpthosts_and_suffix(site):
    assert rcpt(site, "alice@example.com", "x@a.sub.example.org", "x@sub.example.org",
                "x@elsewhere.example") == ["250 2.1.5 ok", "250 2.1.5 ok", NO_RELAY, NO_RELAY]


def test_morercpthosts_cdb(site):
    site.write_control("morercpthosts", "more.example\n")
    ControlDir(site.paths.control).make_cdb("morercpthosts")
    site.reload()
    assert rcpt(site, "x@more.example") == ["250 2.1.5 ok"]


def test_relayclient_from_environment_with_append(site):
    site.environ["RELAYCLIENT"] = ""
    assert rcpt(site, "x@elsewhere.example") == ["250 2.1.5 ok"]
    site.environ["RELAYCLIENT"] = "@fix.example"
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<user>\r\nDATA\r\nx\r\n.\r\n")
    assert conn.codes() == [250, 250, 354, 250]
    assert site.queue.messages[0][0].recipients[0].address == "user@fix.example"


def test_relayclients_control_file(site):
    site.write_control("relayclients", "192.0.2.:\n198.51.100.7:@x.example\n2001:db8::/32:\n")
    site.reload()
    assert rcpt(site, "x@elsewhere.example", ip="192.0.2.99") == ["250 2.1.5 ok"]
    assert rcpt(site, "x@elsewhere.example", ip="198.51.100.7") == ["250 2.1.5 ok"]
    assert rcpt(site, "x@elsewhere.example", ip="198.51.100.8") == [NO_RELAY]


def test_relayclients_match_forms():
    entries = ("10.1.:", "10.2.3.4", "::1:", "2001:db8::/32:@v6.example", "bad:entry:x")
    assert relayclients_match(entries, "10.1.200.3") == ""
    assert relayclients_match(entries, "10.2.3.4") == ""
    assert relayclients_match(entries, "10.2.3.5") is None
    assert relayclients_match(entries, "::1") == ""
    assert relayclients_match(entries, "2001:db8::99") == "@v6.example"
    assert relayclients_match(entries, "not-an-ip") is None


def test_relaydomains_needs_a_verified_host(site):
    site.write_control("relaydomains", "trusted.example\n")
    site.reload()
    factory = make_factory(site)
    factory.resolve = lambda ip: defer.succeed("trusted.example")
    conn = Conn(factory)
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<x@elsewhere.example>\r\n")
    assert conn.codes() == [250, 250]
    factory.resolve = lambda ip: defer.succeed(None)
    conn = Conn(factory)
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<x@elsewhere.example>\r\n")
    assert conn.codes() == [250, 553]


def test_relaymailfrom(site):
    site.write_control("relaymailfrom", "trusted@remote.example\n@partner.example\n")
    site.reload()
    assert rcpt(site, "x@elsewhere.example", sender="trusted@remote.example") == [
        "250 2.1.5 ok"]
    assert rcpt(site, "x@elsewhere.example", sender="any@partner.example") == ["250 2.1.5 ok"]
    assert rcpt(site, "x@elsewhere.example", sender="other@remote.example") == [NO_RELAY]


def auth_conn(site, user=b"alice@example.com", password=b"secret"):
    site.environ["SECURE_AUTH"] = "0"
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send(b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + password) + b"\r\n")
    return conn


def test_auth_relays_unless_no_relay(site):
    conn = auth_conn(site)
    conn.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\n")
    assert conn.codes() == [235, 250, 250]
    conn = auth_conn(site, b"bob@example.com", b"hunter2")
    conn.send("MAIL FROM:<bob@example.com>\r\nRCPT TO:<x@elsewhere.example>\r\n")
    assert conn.codes() == [235, 250, 553]


def test_pop_before_smtp(site):
    site.environ["CHECKRELAY"] = "1"
    site.store.relays.append(("popper@example.com", "192.0.2.10", 0))
    assert rcpt(site, "x@elsewhere.example", sender="popper@example.com") == ["250 2.1.5 ok"]
    assert rcpt(site, "x@elsewhere.example", sender="other@example.com") == [NO_RELAY]
    assert rcpt(site, "x@elsewhere.example", sender="popper@example.com",
                ip="192.0.2.11") == [NO_RELAY]
    call = [c for c in site.store.calls if c[0] == "relay_allowed"][0]
    assert call == ("relay_allowed", "192.0.2.10", -3600, "popper@example.com")


def test_pop_before_smtp_window_and_errors(site):
    from twisted.internet import task
    clock = task.Clock()
    clock.advance(10_000)
    site.environ.update(CHECKRELAY="1", RELAY_CLEAR_MINUTES="30")
    site.store.relays.append(("popper@example.com", "192.0.2.10", 10_000 - 31 * 60))
    assert rcpt(site, "x@elsewhere.example", sender="popper@example.com", clock=clock) == [
        NO_RELAY]
    site.store.relays.append(("popper@example.com", "192.0.2.10", 10_000 - 29 * 60))
    assert rcpt(site, "x@elsewhere.example", "y@elsewhere.example",
                sender="popper@example.com", clock=clock) == ["250 2.1.5 ok"] * 2
    site.store.fail = StoreUnavailable("down")
    assert rcpt(site, "x@elsewhere.example", sender="popper@example.com",
                clock=clock)[0].startswith("451 4.3.2")


def test_auth_all_makes_every_domain_foreign(site):
    site.environ["AUTH_ALL"] = "1"
    assert rcpt(site, "alice@example.com") == [NO_RELAY]
    conn = auth_conn(site)
    conn.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<alice@example.com>\r\n")
    assert conn.codes() == [235, 250, 250]


def test_address_without_at_gets_envnoathost(site):
    site.write_control("envnoathost", "example.com\n")
    site.reload()
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<Postmaster>\r\nDATA\r\nx\r\n.\r\n")
    assert conn.codes() == [250, 250, 354, 250]
    assert site.queue.messages[0][0].recipients[0].address == "Postmaster@example.com"


def test_local_address_literal(site):
    site.write_control("localiphost", "example.com\n")
    site.reload()
    assert rcpt(site, "alice@[192.0.2.25]", "alice@[192.0.2.99]") == ["250 2.1.5 ok",
                                                                      NO_RELAY]


@pytest.mark.parametrize("address", ["x%elsewhere.example@example.com",
                                     "elsewhere.example!x@example.com",
                                     '"x@elsewhere.example"@example.com',
                                     "@example.com:x@elsewhere.example",
                                     "@example.com:alice@example.com"])
def test_relay_probes(site, address):
    assert rcpt(site, address) == ["550 5.7.1 we don't relay"]


def test_source_route_ignored_for_relay_clients(site):
    site.environ["RELAYCLIENT"] = ""
    assert rcpt(site, "@example.com:x@elsewhere.example") == ["250 2.1.5 ok"]
    assert rcpt(site, "x%y@example.com") == ["550 5.7.1 we don't relay"]
