"""The IMAP session in memory: greeting, capabilities, login, STARTTLS, ENABLE, ID, timers."""

from __future__ import annotations

import base64
import hmac
import zlib

import pytest
from twisted.internet import defer

from indimail_tw.policy.tcprules import RuleSet, parse_rules
from tests.imap4.session_support import PASSWORD, Server, untagged


@pytest.fixture
def server():
    s = Server()
    yield s
    s.cleanup()


def caps(line: str) -> list[str]:
    text = line.split("[CAPABILITY ", 1)[1] if "[CAPABILITY " in line else line
    return text.split("]", 1)[0].replace("* CAPABILITY ", "").split()


def test_greeting_lists_capabilities_without_software_name(server):
    conn = server.connect()
    (greeting,) = conn.lines()
    assert greeting.startswith("* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert greeting.endswith("] Server ready.")
    names = caps(greeting)
    for cap in ("STARTTLS", "LOGINDISABLED", "IDLE", "SASL-IR", "ID", "ENABLE", "LITERAL+",
                "AUTH=CRAM-MD5"):
        assert cap in names
    assert "AUTH=PLAIN" not in names             # plaintext only inside TLS
    assert "indimail" not in greeting.lower()


def test_capability_after_tls_and_after_login(server):
    conn = server.connect()
    conn.proto.session.tls = True
    answer = conn.ask("a CAPABILITY")
    assert answer[1] == "a OK CAPABILITY completed"
    names = caps(answer[0])
    assert "LOGINDISABLED" not in names and "STARTTLS" not in names
    assert {"AUTH=PLAIN", "AUTH=LOGIN"} <= set(names)
    ok = conn.login()[-1]
    full = caps(ok)
    for cap in ("UIDPLUS", "MOVE", "NAMESPACE", "SPECIAL-USE", "LITERAL+", "ENABLE", "ID",
                "UNSELECT", "CHILDREN", "CONDSTORE", "QRESYNC", "ESEARCH", "LIST-EXTENDED",
                "LIST-STATUS", "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE",
                "COMPRESS=DEFLATE", "UTF8=ACCEPT", "SEARCHRES", "BINARY", "IDLE"):
        assert cap in full, cap
    assert any(c.startswith("APPENDLIMIT=") for c in full)
    assert not any(c.startswith("AUTH=") for c in full)


def test_plaintext_login_refused_before_tls(server):
    conn = server.connect()
    conn.output()
    assert conn.tagged("a LOGIN alice@example.com " + PASSWORD) == (
        "a NO [PRIVACYREQUIRED] Plaintext login is not allowed without TLS; use STARTTLS first")
    assert conn.tagged("b AUTHENTICATE PLAIN") == (
        "b NO [PRIVACYREQUIRED] Plaintext authentication is not allowed without TLS")
    assert server.login.seen == []


def test_secure_auth_off_allows_plaintext():
    s = Server(environ={"SECURE_AUTH": "0"})
    try:
        conn = s.connect()
        assert "LOGINDISABLED" not in conn.lines()[0]
        assert conn.tagged(f"a LOGIN alice@example.com {PASSWORD}").startswith("a OK [CAPA")
    finally:
        s.cleanup()


def test_no_certificate_no_starttls():
    s = Server(tls=False)
    try:
        conn = s.connect()
        assert "STARTTLS" not in conn.lines()[0]
        assert conn.tagged("a STARTTLS") == "a BAD TLS is not available"
    finally:
        s.cleanup()


def test_login_success_and_failure(server):
    conn = server.connect()
    conn.proto.session.tls = True
    conn.output()
    assert conn.tagged("a LOGIN alice@example.com wrong") == (
        "a NO [AUTHENTICATIONFAILED] Authentication failed.")
    assert conn.tagged("b LOGIN nobody@example.com wrong") == (
        "b NO [AUTHENTICATIONFAILED] Authentication failed.")
    ok = conn.tagged(f'c LOGIN "alice@example.com" {{{len(PASSWORD)}+}}\r\n{PASSWORD}')
    assert ok.startswith("c OK [CAPABILITY IMAP4rev1")
    assert ok.endswith("] Logged in")
    assert conn.tagged("d LOGIN alice@example.com x") == "d BAD Already logged in"
    conn.lose()
    assert server.login.logouts == ["alice@example.com"]


def test_too_many_failures_close(server):
    conn = server.connect()
    conn.proto.session.tls = True
    for n in range(2):
        conn.ask(f"a{n} LOGIN alice@example.com bad")
    answer = conn.ask("a3 LOGIN alice@example.com bad")
    assert answer == ["a3 NO [AUTHENTICATIONFAILED] Authentication failed.",
                      "* BYE Too many authentication failures"]
    assert conn.closed


def test_temporary_failure(server):
    server.login.temporary = True
    conn = server.connect()
    conn.proto.session.tls = True
    assert conn.tagged(f"a LOGIN alice@example.com {PASSWORD}") == (
        "a NO [UNAVAILABLE] Temporary authentication failure.")


def test_login_message_and_end_session(server):
    server.login.message = "Mailbox moved"
    conn = server.connect()
    answer = conn.login()
    assert answer[0] == "* OK [ALERT] Mailbox moved"
    server.login.end_session = True
    conn = server.connect()
    conn.proto.session.tls = True
    conn.output()
    assert conn.ask(f"x LOGIN alice@example.com {PASSWORD}") == [
        "* BYE Mailbox moved", "x NO [UNAVAILABLE] Login refused"]
    assert conn.closed


def test_authenticate_plain_with_initial_response(server):
    conn = server.connect()
    conn.proto.session.tls = True
    token = base64.b64encode(b"\0alice@example.com\0" + PASSWORD.encode()).decode()
    assert conn.tagged(f"a AUTHENTICATE PLAIN {token}").startswith("a OK [CAPABILITY")


def test_authenticate_plain_with_continuation(server):
    conn = server.connect()
    conn.proto.session.tls = True
    conn.output()
    assert conn.ask("a AUTHENTICATE PLAIN") == ["+ "]
    token = base64.b64encode(b"\0alice@example.com\0wrong").decode()
    assert conn.ask(token) == ["a NO [AUTHENTICATIONFAILED] Authentication failed."]
    assert conn.ask("b AUTHENTICATE LOGIN") == ["+ " + base64.b64encode(b"Username:").decode()]
    assert conn.ask(base64.b64encode(b"alice@example.com").decode()) == [
        "+ " + base64.b64encode(b"Password:").decode()]
    assert conn.ask(base64.b64encode(PASSWORD.encode()).decode())[-1].startswith("b OK")


def test_authenticate_cram_md5_before_tls(server):
    conn = server.connect()
    conn.output()
    (challenge_line,) = conn.ask("a AUTHENTICATE CRAM-MD5")
    challenge = base64.b64decode(challenge_line[2:])
    assert challenge == b"<12345.1700000000@mx.example.com>"
    digest = hmac.new(PASSWORD.encode(), challenge, "md5").hexdigest()
    answer = base64.b64encode(f"alice@example.com {digest}".encode()).decode()
    assert conn.ask(answer)[-1].startswith("a OK [CAPABILITY")


def test_authenticate_cancel_bad_base64_unknown(server):
    conn = server.connect()
    conn.proto.session.tls = True
    conn.output()
    conn.ask("a AUTHENTICATE PLAIN")
    assert conn.ask("*") == ["a BAD Authentication cancelled"]
    conn.ask("b AUTHENTICATE PLAIN")
    assert conn.ask("!!!") == ["b BAD Invalid base64 data"]
    assert conn.tagged("c AUTHENTICATE X-UNKNOWN") == "c NO Unsupported authentication mechanism"
    assert conn.tagged("d AUTHENTICATE PLAIN =") == (
        "d NO [AUTHENTICATIONFAILED] Authentication failed.")
    assert conn.tagged("e NOOP") == "e OK NOOP completed"


def test_starttls_discards_pipelined_plaintext(server):
    conn = server.connect()
    conn.output()
    conn.send("a STARTTLS\r\nb LOGIN alice@example.com " + PASSWORD + "\r\n")
    assert conn.lines() == ["a OK Begin TLS negotiation now"]
    assert conn.transport.tls_started_at is not None
    assert server.login.seen == []
    assert conn.proto.session.tls
    assert conn.tagged("c STARTTLS") == "c BAD TLS is already active"
    assert conn.tagged(f"d LOGIN alice@example.com {PASSWORD}").startswith("d OK")


def test_pipelined_commands_answer_in_order(server):
    server.login.gate = gate = defer.Deferred()
    conn = server.connect()
    conn.proto.session.tls = True
    conn.output()
    conn.send(f"a LOGIN alice@example.com {PASSWORD}\r\nb NOOP\r\nc CAPABILITY\r\n")
    assert conn.lines() == []                    # b and c wait for a
    gate.callback(None)
    lines = conn.lines()
    assert lines[0].startswith("a OK")
    assert lines[1] == "b OK NOOP completed"
    assert lines[2].startswith("* CAPABILITY") and lines[3] == "c OK CAPABILITY completed"


def test_state_checks_and_unknown_commands(server):
    conn = server.connect()
    conn.output()
    assert conn.tagged("a SELECT INBOX") == "a BAD Not logged in"
    assert conn.tagged("b FETCH 1 FLAGS") == "b BAD Not logged in"
    assert conn.tagged("c FROBNICATE") == "c BAD Unknown command"
    assert conn.tagged("d NOOP extra") == "d BAD NOOP takes no arguments"
    conn.login()
    assert conn.tagged("e FETCH 1 FLAGS") == "e BAD No mailbox selected"
    assert conn.tagged("f ENABLE") .startswith("f BAD")


def test_bad_input_never_kills_the_connection(server):
    conn = server.connect()
    conn.output()
    for junk in ("", "   ", "*", "a", "a (", '"unterminated', "a LOGIN {5", "\x00\x01",
                 "a UID", "a UID FROB 1", "+ 1"):
        conn.send(junk + "\r\n")
    out = conn.lines()
    assert out and all(line.startswith(("* BAD", "a BAD", "+ ")) or " BAD " in line
                       for line in out), out
    assert not conn.closed
    assert conn.tagged("z NOOP") == "z OK NOOP completed"


def test_too_many_bad_commands(server):
    conn = server.connect()
    conn.output()
    for n in range(19):
        conn.ask(f"x{n} BOGUS")
    assert conn.ask("y BOGUS") == ["y BAD Unknown command", "* BYE Too many invalid commands"]
    assert conn.closed


def test_huge_literal_is_refused(server):
    conn = server.connect()
    conn.login()
    answer = conn.ask("a APPEND INBOX {999999999999}")
    assert answer and answer[0].startswith("a BAD"), answer
    assert conn.tagged("b NOOP") == "b OK NOOP completed"


def test_literal_continuation(server):
    conn = server.connect()
    conn.proto.session.tls = True
    conn.output()
    assert conn.ask("a LOGIN {17}") == ["+ Ready for literal data"]
    assert conn.ask(f"alice@example.com {PASSWORD}")[-1].startswith("a OK")


def test_enable(server):
    conn = server.connect()
    conn.login()
    assert conn.ask("a ENABLE QRESYNC X-UNKNOWN utf8=accept") == [
        "* ENABLED QRESYNC UTF8=ACCEPT", "a OK ENABLE completed"]
    session = conn.proto.session
    assert session.enabled == {"QRESYNC", "CONDSTORE", "UTF8=ACCEPT"}
    assert conn.ask("b ENABLE CONDSTORE IMAP4rev2") == ["* ENABLED IMAP4rev2",
                                                         "b OK ENABLE completed"]
    assert session.rev2
    conn = server.connect()
    conn.login()
    assert conn.ask("c ENABLE CONDSTORE QRESYNC") == ["* ENABLED CONDSTORE QRESYNC",
                                                       "c OK ENABLE completed"]
    assert conn.ask("d ENABLE CONDSTORE") == ["* ENABLED", "d OK ENABLE completed"]


def test_id_and_namespace(server):
    conn = server.connect()
    conn.output()
    assert conn.ask('a ID ("name" "mutt" "version" "2")') == ["* ID NIL", "a OK ID completed"]
    assert conn.ask("b ID NIL") == ["* ID NIL", "b OK ID completed"]
    conn.login()
    assert conn.ask("c NAMESPACE") == ['* NAMESPACE (("" ".")) NIL NIL',
                                       "c OK NAMESPACE completed"]


def test_logout(server):
    conn = server.connect()
    conn.login()
    assert conn.ask("a LOGOUT") == ["* BYE Logging out", "a OK LOGOUT completed"]
    assert conn.closed


def test_autologout_before_and_after_login(server):
    conn = server.connect()
    server.clock.advance(59)
    assert not conn.closed
    server.clock.advance(2)
    assert conn.lines()[-1] == "* BYE Autologout; idle for too long"
    assert conn.closed
    conn = server.connect()
    conn.login()
    server.clock.advance(1799)
    conn.send("n NOOP\r\n")
    server.clock.advance(1799)
    assert not conn.closed
    server.clock.advance(2)
    assert conn.closed
    assert server.clock.getDelayedCalls() == []


def test_shutdown_says_bye(server):
    a, b = server.connect(), server.connect()
    b.login()
    server.factory.shutdown()
    assert a.lines()[-1] == "* BYE Server shutting down"
    assert b.lines()[-1] == "* BYE Server shutting down"
    assert a.closed and b.closed


def test_shutdown_environment_refuses():
    s = Server(environ={"SHUTDOWN": "Maintenance"})
    try:
        conn = s.connect()
        assert conn.lines() == ["* BYE Maintenance"]
        assert conn.closed
    finally:
        s.cleanup()


def test_tcprules_deny_and_maxperip():
    rules = RuleSet.from_rules(parse_rules("192.0.2.66:deny\n:allow,MAXPERIP=\"1\"\n"))

    class Rules:
        def current(self):
            return rules

    s = Server(rules=Rules())
    try:
        denied = s.connect(ip="192.0.2.66")
        assert denied.output() == b"" and denied.closed
        first = s.connect()
        assert first.lines()[0].startswith("* OK")
        second = s.connect()
        assert second.lines() == ["* BYE Too many connections, try again later"]
        first.lose()
        second.lose()
        assert s.connect().lines()[0].startswith("* OK")
    finally:
        s.cleanup()


def test_compress_deflate(server):
    conn = server.connect()
    conn.login()
    assert conn.ask("a COMPRESS DEFLATE") == ["a OK DEFLATE active"]
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    inflate = zlib.decompressobj(-15)
    conn.send(deflate.compress(b"b NOOP\r\nc COMPRESS DEFLATE\r\n")
              + deflate.flush(zlib.Z_SYNC_FLUSH))
    out = inflate.decompress(conn.output())
    assert out == (b"b OK NOOP completed\r\n"
                   b"c NO [COMPRESSIONACTIVE] Compression is already active\r\n")
    conn.send(deflate.compress(b"d CAPABILITY\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
    out = inflate.decompress(conn.output())
    assert b"COMPRESS=DEFLATE" not in out and out.endswith(b"d OK CAPABILITY completed\r\n")


def test_compress_unknown_mechanism(server):
    conn = server.connect()
    conn.login()
    assert conn.tagged("a COMPRESS LZ4") == "a BAD Unsupported compression mechanism"


def test_special_use_folders_at_first_login(server):
    conn = server.connect()
    conn.login()
    lines = conn.ask('a LIST "" "*"')
    assert untagged(lines, "LIST") == [
        '* LIST (\\HasNoChildren) "." INBOX',
        '* LIST (\\HasNoChildren \\Archive) "." Archive',
        '* LIST (\\HasNoChildren \\Drafts) "." Drafts',
        '* LIST (\\HasNoChildren \\Junk) "." Junk',
        '* LIST (\\HasNoChildren \\Sent) "." Sent',
        '* LIST (\\HasNoChildren \\Trash) "." Trash',
    ]


def test_overlong_line_ends_authenticate_and_idle(server):
    conn = server.connect()
    conn.proto.session.tls = True
    conn.output()
    conn.ask("a AUTHENTICATE PLAIN")
    answer = conn.ask("x" * 70000)
    assert len(answer) == 1 and answer[0].startswith("a BAD"), answer
    assert conn.tagged("b NOOP") == "b OK NOOP completed"
    conn.login()
    conn.ask("c IDLE")
    answer = conn.ask("y" * 70000)
    assert len(answer) == 1 and answer[0].startswith("c BAD"), answer
    assert conn.tagged("d NOOP") == "d OK NOOP completed"


COMMAND_NAMES = ["CAPABILITY", "NOOP", "LOGOUT", "ID", "STARTTLS", "AUTHENTICATE", "LOGIN",
                 "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
                 "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "GETQUOTA",
                 "GETQUOTAROOT", "SETQUOTA", "COMPRESS", "UNSELECT", "CHECK", "CLOSE"]
ARGUMENTS = ['""', '"*"', "%", "*", "INBOX", "inbox", "Sent", "A.B", "()", "(SUBSCRIBED)",
             "(MESSAGES UNSEEN SIZE)", "RETURN", "(STATUS (MESSAGES))", "NIL", "{3+}\r\nabc",
             '"a..b"', "(USE (\\Sent))", "(\\Junk)", "DEFLATE", "PLAIN", "=", "*",
             "(CONDSTORE)", "(QRESYNC (1 2))", '"Entw&APw-rfe"', '"&Jjo"', "UTF8=ACCEPT",
             "(RECURSIVEMATCH SUBSCRIBED)", "(SPECIAL-USE)", "RETURN (CHILDREN SPECIAL-USE)"]


@pytest.mark.parametrize("seed", range(8))
def test_random_commands_never_crash(server, seed):
    import random

    rng = random.Random(seed)
    conn = server.connect()
    if seed % 2:
        conn.login()
    out = []
    for n in range(150):
        if conn.closed:
            conn = server.connect()
            conn.login()
        name = rng.choice(COMMAND_NAMES)
        if name in ("LOGOUT", "COMPRESS", "STARTTLS") and rng.random() < 0.8:
            continue
        args = " ".join(rng.choice(ARGUMENTS) for _ in range(rng.randrange(4)))
        conn.send(f"t{n} {name} {args}".rstrip() + "\r\n")
        if conn.proto.session is not None and conn.proto.session.raw_mode:
            conn.send("*\r\n")
        out.append(conn.output())
    text = b"".join(out)
    assert b"SERVERBUG" not in text, text[-2000:]
