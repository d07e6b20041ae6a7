"""The recipient check for our own virtual domains."""

from __future__ import annotations

import os

import pytest

from indimail_tw.auth.flags import Flags
from indimail_tw.errors import StoreUnavailable
from indimail_tw.policy.recipients import dot_qmail_names
from tests.smtp.support import BlockingFakeStore, Conn, Site, ehlo, make_factory


@pytest.fixture(params=["deferred", "blocking"])
def site(request):
    """The same site with a store read through Deferreds (one lookup after the other)
    and with one that reads blocking (the whole check is one job)."""
    s = Site(control={"rcpthosts": "example.com\nalias.example\nother.example\nsys.example\n",
                      "virtualdomains": "example.com:example.com\nalias.example:alias.example\n",
                      "locals": "sys.example\n"})
    if request.param == "blocking":
        s.store = BlockingFakeStore()
    s.store.add_user("alice@example.com")
    s.store.add_user("sleepy@example.com", active=False)
    s.store.add_user("full@example.com", gid=Flags.BOUNCE_MAIL)
    s.store.aliases[("sales", "example.com")] = ["&alice@example.com"]
    s.store.alias_domains["alias.example"] = "example.com"
    s.catchall("example.com")
    yield s
    s.cleanup()


def rcpt(site, *addresses) -> list[str]:
    return rcpts_to(make_factory(site), *addresses)


def rcpts_to(factory, *addresses) -> list[str]:
    """The replies to MAIL and then RCPT for each address, on a new connection."""
    conn = Conn(factory)
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\n")
    conn.output()
    for address in addresses:
        conn.send(f"RCPT TO:<{address}>\r\n")
    return conn.lines()


OK = "250 2.1.5 ok"


def test_users_aliases_and_unknowns(site):
    assert rcpt(site, "alice@example.com", "ALICE@Example.COM", "sales@example.com",
                "alice@alias.example", "nobody@example.com") == [
        OK, OK, OK, OK, "550 5.1.1 sorry, mailbox <nobody@example.com> is absent on this domain"]


def test_inactive_and_overquota(site):
    assert rcpt(site, "sleepy@example.com", "full@example.com") == [
        "550 5.2.1 sorry, mailbox <sleepy@example.com> is inactive on this domain",
        "550 5.2.2 sorry, mailbox <full@example.com> is overquota on this domain"]


def test_extensions_postmaster_and_dot_qmail(site):
    with open(os.path.join(site.paths.domains, "example.com", ".qmail-list:a"), "w") as f:
        f.write("&alice@example.com\n")
    with open(os.path.join(site.paths.domains, "example.com", ".qmail-team-default"), "w") as f:
        f.write("&alice@example.com\n")
    assert rcpt(site, "alice-news@example.com", "sales-x@example.com", "postmaster@example.com",
                "list.a@example.com", "team-anything@example.com",
                "nobody-x@example.com")[:-1] == [OK] * 5
    assert dot_qmail_names("a.b-c") == [".qmail-a:b-c", ".qmail-a:b-default"]


@pytest.mark.parametrize("handler", ["delete", "/home/mail/example.com/catch/Maildir",
                                     "catch@example.com", "relay.example:192.0.2.1:25"])
def test_catchall_accepts_everything(site, handler):
    site.catchall("example.com", handler)
    assert rcpt(site, "anyone@example.com") == [OK]


def test_domain_without_qmail_default_is_checked(site):
    os.unlink(os.path.join(site.paths.domains, "example.com", ".qmail-default"))
    assert rcpt(site, "nobody@example.com")[0].startswith("550 5.1.1")


def test_not_checked_when_off_or_not_ours(site):
    assert rcpt(site, "anyone@other.example", "anyone@sys.example") == [OK, OK]
    site.environ["CHECKRECIPIENT"] = "0"
    assert rcpt(site, "nobody@example.com") == [OK]


def test_chkrcptdomains_and_etrnhosts(site):
    site.write_control("chkrcptdomains", "alias.example\n")
    site.reload()
    assert rcpt(site, "nobody@example.com", "nobody@alias.example")[0] == OK
    site.write_control("chkrcptdomains", "")
    site.write_control("etrnhosts", "example.com\n")
    site.reload()
    assert rcpt(site, "nobody@example.com") == [OK]


def test_database_error_is_temporary(site):
    site.store.fail = StoreUnavailable("down")
    assert rcpt(site, "alice@example.com") == [
        "451 4.3.2 Requested action aborted: temporary database error"]


def test_max_rcpt_errcount(site):
    site.environ["MAX_RCPT_ERRCOUNT"] = "2"
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<a@example.com>\r\n"
              "RCPT TO:<b@example.com>\r\nRCPT TO:<alice@example.com>\r\n")
    assert conn.codes() == [250, 550, 421] and conn.closed


def test_goodrcptto_skips_the_check(site):
    site.write_control("goodrcptto", "@example.com\n")
    site.reload()
    assert rcpt(site, "nobody@example.com") == [OK]


def test_one_job_per_recipient_with_the_servers_store(tmp_path):
    """With the real store every RCPT is one blocking job: directory and rows at once."""
    from twisted.internet import defer

    from indimail_tw.policy import default_checks
    from indimail_tw.storage.engine import SQLiteEngine
    from indimail_tw.storage.store import REPOS, UserStore
    from indimail_tw.storage.users import User

    s = Site(control={"rcpthosts": "example.com\n",
                      "virtualdomains": "example.com:example.com\n"})
    engine = SQLiteEngine(str(tmp_path / "db.sqlite"))
    try:
        engine.run_sync(engine.prepare)
        engine.run_sync(REPOS.users.add, User("alice", "example.com", "x"))
        engine.run_sync(REPOS.users.add, User("sleepy", "example.com", "x", active=False))
        engine.run_sync(REPOS.aliases.add, "sales", "example.com", "&alice@example.com")
        s.store = UserStore(engine)
        s.catchall("example.com")
        jobs = []

        def blocking(fn, *args):
            jobs.append(fn.__name__)
            return defer.maybeDeferred(fn, *args)

        checks = default_checks(s.store, s.paths.domains, blocking=blocking)
        conn = Conn(make_factory(s, checks=checks))
        ehlo(conn)
        conn.send("MAIL FROM:<s@remote.example>\r\n")
        conn.output()
        for address in ("alice@example.com", "sales@example.com", "alice-x@example.com",
                        "sleepy@example.com", "nobody@example.com"):
            conn.send(f"RCPT TO:<{address}>\r\n")
        assert conn.lines() == [
            OK, OK, OK, "550 5.2.1 sorry, mailbox <sleepy@example.com> is inactive on this domain",
            "550 5.1.1 sorry, mailbox <nobody@example.com> is absent on this domain"]
        assert jobs == ["_check_now"] * 5
    finally:
        engine.close()
        s.cleanup()


class _Now:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _cached_site_checks(site, now, **kw):
    from twisted.internet import defer

    from indimail_tw.policy import RecipientExists, default_checks

    run = defer.maybeDeferred
    checks = default_checks(site.store, site.paths.domains, blocking=run)
    for i, check in enumerate(checks):
        if isinstance(check, RecipientExists):
            checks[i] = RecipientExists(site.store, site.paths.domains, run, now=now, **kw)
            return checks, checks[i]
    raise AssertionError("no recipient check")


def test_outcomes_are_reused_for_cache_seconds_then_looked_up_again(site):
    """A burst to the same address costs one lookup; a change to the user is seen
    once CACHE_SECONDS have passed."""
    now = _Now()
    checks, check = _cached_site_checks(site, now)
    factory = make_factory(site, checks=checks)
    site.store.calls.clear()
    assert rcpts_to(factory, "alice@example.com", "Alice@example.com",
                  "nobody@example.com", "nobody@example.com") == [
        OK, OK] + ["550 5.1.1 sorry, mailbox <nobody@example.com> is absent on this domain"] * 2
    looked_up = len(site.store.calls)
    assert looked_up > 0
    site.store.users.pop(("alice", "example.com"))
    site.store.add_user("nobody@example.com")
    now.t += check.cache_seconds - 0.01
    assert rcpts_to(factory, "alice@example.com", "nobody@example.com")[0] == OK
    assert len(site.store.calls) == looked_up            # answered from the cache
    now.t += 0.02
    assert rcpts_to(factory, "alice@example.com", "nobody@example.com") == [
        "550 5.1.1 sorry, mailbox <alice@example.com> is absent on this domain", OK]
    assert len(site.store.calls) > looked_up


def test_cached_unknowns_still_count_against_max_rcpt_errcount(site):
    site.environ["MAX_RCPT_ERRCOUNT"] = "2"
    checks, _ = _cached_site_checks(site, _Now())
    factory = make_factory(site, checks=checks)
    assert rcpts_to(factory, "nobody@example.com")[0].startswith("550 5.1.1")
    conn = Conn(factory)
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<nobody@example.com>\r\n"
              "RCPT TO:<nobody@example.com>\r\nRCPT TO:<alice@example.com>\r\n")
    assert conn.codes() == [250, 550, 421] and conn.closed


def test_database_errors_are_not_remembered(site):
    checks, _ = _cached_site_checks(site, _Now())
    factory = make_factory(site, checks=checks)
    site.store.fail = StoreUnavailable("down")
    assert rcpts_to(factory, "alice@example.com")[0].startswith("451 4.3.2")
    site.store.fail = None
    assert rcpts_to(factory, "alice@example.com") == [OK]


def test_cache_is_bounded_and_can_be_switched_off(site):
    now = _Now()
    checks, check = _cached_site_checks(site, now, cache_size=2)
    factory = make_factory(site, checks=checks)
    rcpts_to(factory, "a1@example.com", "a2@example.com", "a3@example.com")
    assert list(check._seen) == ["a2@example.com", "a3@example.com"]
    check.forget()
    assert not check._seen
    checks, check = _cached_site_checks(site, now, cache_seconds=0)
    rcpts_to(make_factory(site, checks=checks), "alice@example.com")
    assert not check._seen


def test_sessions_that_miss_together_share_one_lookup(site):
    """RCPTs for an address whose lookup is under way wait for it instead of starting
    their own (with any casing); each still gets its own verdict."""
    from twisted.internet import defer

    from indimail_tw.policy import RecipientExists, default_checks

    jobs: list = []

    def blocking(fn, *args):
        d = defer.Deferred()
        jobs.append((d, fn, args))
        return d

    def sessions(*addresses):
        """New sessions sending one RCPT each at once; their last replies."""
        checks = default_checks(site.store, site.paths.domains, blocking=blocking)
        check = next(c for c in checks if isinstance(c, RecipientExists))
        checks[checks.index(check)] = check = RecipientExists(
            site.store, site.paths.domains, blocking, now=_Now())
        factory = make_factory(site, checks=checks)
        conns = [Conn(factory) for _ in addresses]
        site.store.calls.clear()
        for conn, address in zip(conns, addresses, strict=True):
            ehlo(conn)
            conn.send(f"MAIL FROM:<s@remote.example>\r\nRCPT TO:<{address}>\r\n")
        while jobs:
            d, fn, args = jobs.pop(0)
            try:
                d.callback(fn(*args))
            except Exception:  # noqa: BLE001 -- the store's failure, as a thread's
                d.errback()
        assert not check._inflight
        return [c.lines()[-1] for c in conns], list(site.store.calls), check

    _, alone, _ = sessions("nobody@example.com")
    replies, together, _ = sessions("nobody@example.com", "NOBODY@example.com")
    assert replies == [
        "550 5.1.1 sorry, mailbox <nobody@example.com> is absent on this domain",
        "550 5.1.1 sorry, mailbox <NOBODY@example.com> is absent on this domain"]
    assert together == alone                          # one lookup for both

    site.store.fail = StoreUnavailable("down")        # everyone's temporary error,
    replies, _, check = sessions("carol@example.com", "carol@example.com")
    assert [r[:9] for r in replies] == ["451 4.3.2"] * 2
    assert "carol@example.com" not in list(check._seen)   # and not remembered
