"""badmailfrom, badrcptto, goodrcptto, badhelo: exact, @domain, wildcards, regex, cdb, patterns."""

from __future__ import annotations

import pytest

from indimail_tw.config import ControlDir
from indimail_tw.policy.access import list_matches, pattern_matches
from tests.smtp.support import Conn, Site, ehlo, make_factory


@pytest.fixture
def site():
    s = Site()
    s.store.add_user("alice@example.com")
    s.store.add_user("victim@example.com")
    yield s
    s.cleanup()


def mail(site, sender: str, helo: str = "client.example.org") -> int:
    conn = Conn(make_factory(site))
    ehlo(conn, helo)
    conn.send(f"MAIL FROM:<{sender}>\r\n")
    return conn.codes()[0]


def test_badmailfrom_exact_and_domain(site):
    site.write_control("badmailfrom", "spammer@bad.example\n@worse.example\n")
    site.reload()
    assert mail(site, "Spammer@BAD.example") == 553
    assert mail(site, "anyone@worse.example") == 553
    assert mail(site, "friend@bad.example") == 250
    assert mail(site, "") == 250


def test_badmailfrom_reply_text(site):
    site.write_control("badmailfrom", "@worse.example\n")
    site.reload()
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<x@worse.example>\r\n")
    assert conn.lines() == ["553 5.7.1 sorry, your envelope sender has been denied"]


def test_badmailfrom_cdb_wins(site):
    site.write_control("badmailfrom", "a@cdb.example\n")
    ControlDir(site.paths.control).make_cdb("badmailfrom")
    site.write_control("badmailfrom", "")
    site.reload()
    assert mail(site, "a@cdb.example") == 553


def test_wildcards_regex_and_patterns(site):
    site.write_control("badmailfrom", "*@*.spam.example\n")
    site.reload()
    assert mail(site, "x@a.spam.example") == 553
    assert mail(site, "x@spam.example") == 250
    site.write_control("badmailfrom", "^x[0-9]+@\n")
    site.environ["QREGEX"] = "1"
    site.reload()
    assert mail(site, "x123@any.example") == 553
    assert mail(site, "y123@any.example") == 250
    del site.environ["QREGEX"]
    site.write_control("badmailfrom", "")
    site.write_control("badmailpatterns", "!boss@*\n*@*.biz\n")
    site.reload()
    assert mail(site, "boss@corp.biz") == 250
    assert mail(site, "other@corp.biz") == 553


def test_pattern_matches_first_line_decides():
    assert pattern_matches(("!a*", "*"), "abc") is False
    assert pattern_matches(("*", "!a*"), "abc") is True
    assert pattern_matches((), "abc") is False


def test_badrcptto_and_goodrcptto(site):
    site.write_control("badrcptto", "victim@example.com\n@blocked.example\n")
    site.write_control("rcpthosts", "example.com\nblocked.example\n")
    site.reload()
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<victim@example.com>\r\n"
              "RCPT TO:<x@blocked.example>\r\nRCPT TO:<alice@example.com>\r\n")
    lines = conn.lines()
    assert lines[1] == "553 5.7.1 sorry, your envelope recipient has been denied"
    assert [int(x[:3]) for x in lines] == [250, 553, 553, 250]
    site.write_control("goodrcptto", "victim@example.com\n")
    site.reload()
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<victim@example.com>\r\n")
    assert conn.codes() == [250, 250]


def test_badhelo(site):
    site.write_control("badhelo", "localhost\n*.dynamic.example\n")
    site.reload()
    conn = Conn(make_factory(site))
    conn.output()
    conn.send("EHLO localhost\r\nMAIL FROM:<a@b.example>\r\nHELO host.dynamic.example\r\n"
              "EHLO fine.example\r\nMAIL FROM:<a@b.example>\r\n")
    lines = conn.lines()
    assert lines[0] == "553 5.7.1 sorry, your HELO/EHLO greeting is in my badhelo list"
    assert [int(x[:3]) for x in lines if x[3] == " "] == [553, 503, 553, 250, 250]


def test_env_names_another_file(site, tmp_path):
    other = tmp_path / "other-bmf"
    other.write_text("x@y.example\n")
    site.environ["BADMAILFROM"] = str(other)
    site.reload()
    assert mail(site, "x@y.example") == 553


def test_list_matches_ignores_bad_regex(site):
    site.write_control("badmailfrom", "([\n")
    site.environ["QREGEX"] = "1"
    site.reload()
    assert list_matches(site.config.current, "badmailfrom", "a@b") is False


def test_policy_calls_only_the_checks_that_implement_a_hook():
    """Checks that keep Check's no-op for a hook are not called for it; duck-typed
    checks and methods set on an instance are; a reject stops the rest."""
    from indimail_tw.policy.base import Check, Reject, SMTPPolicy

    calls = []

    class Mail(Check):
        def mail(self, ctx, sender, params):
            calls.append("Mail.mail")

    class Quiet(Check):
        def __getattribute__(self, name):
            if name in ("mail", "rcpt"):
                calls.append(f"Quiet.{name} looked up")
            return super().__getattribute__(name)

    class Duck:
        def mail(self, ctx, sender, params):
            calls.append("Duck.mail")
            return Reject(550, "5.7.1", "no")

    instance = Check()
    instance.rcpt = lambda ctx, request: calls.append("instance.rcpt")
    policy = SMTPPolicy([Quiet(), Mail(), Duck(), instance, Mail()])
    calls.clear()
    verdict = policy.run("mail", None, "s@example.com", {})
    assert verdict.code == 550
    assert calls == ["Mail.mail", "Duck.mail"]
    calls.clear()
    assert policy.run("rcpt", None, object()) is None
    assert calls == ["instance.rcpt"]


def test_list_is_empty_only_without_entries_and_cdb(site):
    assert site.context().config.current.list_is_empty("badmailfrom")
    site.write_control("badmailfrom", "@worse.example\n")
    site.reload()
    settings = site.context().config.current
    assert not settings.list_is_empty("badmailfrom")
    assert list_matches(settings, "badmailfrom", "x@worse.example")
    with pytest.raises(KeyError):
        settings.list_is_empty("databytes")
