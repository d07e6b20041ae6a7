"""Command syntax: verbs, paths, parameters, xtext."""

from __future__ import annotations

import pytest

from indimail_tw.smtp.syntax import (
    SyntaxProblem, decode_xtext, parse_mail_or_rcpt, parse_params, parse_path, split_command,
)


def test_split_command():
    assert split_command(b"ehlo  client.example ") == ("EHLO", b"client.example")
    assert split_command(b"QUIT") == ("QUIT", b"")
    for bad in (b"", b"M\x00IL", b"\xffHELO", b"MAIL\rFROM", b"1234", b"X" * 40):
        with pytest.raises(SyntaxProblem):
            split_command(bad)


@pytest.mark.parametrize("text,local,domain", [
    ("<a@example.com>", "a", "example.com"),
    ("<A.B+tag@EXAMPLE.com>", "A.B+tag", "example.com"),
    ("a@example.com", "a", "example.com"),
    ('<"john doe"@example.com>', '"john doe"', "example.com"),
    ('<"plain"@example.com>', "plain", "example.com"),
    ("<postmaster>", "postmaster", ""),
    ("<u@[192.0.2.1]>", "u", "[192.0.2.1]"),
    ("<u@[IPv6:2001:DB8::1]>", "u", "[IPv6:2001:db8::1]"),
    ("<@relay.example,@other.example:u@example.com>", "u", "example.com"),
])
def test_paths(text, local, domain):
    path, rest = parse_path(text)
    assert (path.local, path.domain, rest) == (local, domain, "")


def test_source_route_is_remembered():
    path, _ = parse_path("<@a.example,@b.example:u@c.example>")
    assert path.route == ("a.example", "b.example")


@pytest.mark.parametrize("text", [
    "<a@b", "<>", "<a b@c>", "<a@b..c>", "<a@-b>", "<a@[300.1.1.1]>", "<a@[IPv6:zz]>",
    "<" + "x" * 65 + "@b.c>", "<a@" + "b" * 64 + ".c>", "<a<b@c>", "<a@b>x", "",
    "<a@b@c>",
])
def test_bad_paths(text):
    with pytest.raises(ValueError):
        parse_path(text)


def test_null_path_only_where_allowed():
    path, _ = parse_path("<>", allow_null=True)
    assert path.null and path.address == ""


def test_mail_and_rcpt_arguments():
    args = parse_mail_or_rcpt(b"FROM: <a@b.example> SIZE=10 body=8bitmime", "FROM", True)
    assert args.path.address == "a@b.example"
    assert args.params == {"SIZE": "10", "BODY": "8bitmime"}
    args = parse_mail_or_rcpt(b"to:<x@y.example> NOTIFY=NEVER", "TO", True)
    assert args.params == {"NOTIFY": "NEVER"}
    with pytest.raises(SyntaxProblem) as e:
        parse_mail_or_rcpt(b"TO:<x@y>", "FROM", True)
    assert e.value.code == 501
    with pytest.raises(SyntaxProblem) as e:
        parse_mail_or_rcpt(b"FROM:<a b@c>", "FROM", True)
    assert (e.value.code, e.value.enhanced) == (501, "5.1.7")


def test_utf8_addresses_need_smtputf8():
    raw = "FROM:<jörg@bücher.example> SMTPUTF8".encode()
    args = parse_mail_or_rcpt(raw, "FROM", utf8_allowed=True)
    assert args.path.address == "jörg@bücher.example"
    with pytest.raises(SyntaxProblem) as e:
        parse_mail_or_rcpt("FROM:<jörg@x.example>".encode(), "FROM", True)
    assert (e.value.code, e.value.enhanced) == (553, "5.6.7")
    with pytest.raises(SyntaxProblem):
        parse_mail_or_rcpt("TO:<jörg@x.example>".encode(), "TO", True, utf8=False)
    assert parse_mail_or_rcpt("TO:<jörg@x.example>".encode(), "TO", True,
                              utf8=True).path.local == "jörg"


def test_params():
    assert parse_params("A=1 b") == {"A": "1", "B": None}
    for bad in ("A=", "=1", "A=1 A=2", "A=b=c", "-x"):
        with pytest.raises(SyntaxProblem):
            parse_params(bad)


def test_xtext():
    assert decode_xtext("rfc822+3Ba+2Bb@example.com") == "rfc822;a+b@example.com"
    for bad in ("a+zz", "a+4", "a b", "a+0A"):
        with pytest.raises(ValueError):
            decode_xtext(bad)
