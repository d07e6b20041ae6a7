"""SMTP AUTH through the portal: mechanisms, failures, TLS rules, submission, relaying."""

from __future__ import annotations

import base64
import hmac

import pytest
from twisted.logger import globalLogPublisher

from tests.smtp.support import Conn, Site, ehlo, make_factory


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@pytest.fixture
def site():
    s = Site()
    s.store.add_user("alice@example.com")
    yield s
    s.cleanup()


def tls_conn(site, service="submission"):
    conn = Conn(make_factory(site, service=service))
    ehlo(conn)
    conn.send("STARTTLS\r\n")
    conn.output()
    ehlo(conn)
    return conn


def test_plain_initial_response(site):
    conn = tls_conn(site)
    conn.send(b"AUTH PLAIN " + b64(b"\0alice@example.com\0secret") + b"\r\n")
    assert conn.lines() == ["235 2.7.0 ok, go ahead"]
    creds = site.checker.seen[0]
    assert (creds.service, creds.remote_ip, creds.local_ip) == ("smtp", "192.0.2.10",
                                                                "192.0.2.25")
    conn.send(b"AUTH PLAIN " + b64(b"\0alice@example.com\0secret") + b"\r\n")
    assert conn.lines() == ["503 5.5.1 you're already authenticated"]
    assert not any(line.startswith("250-AUTH") for line in ehlo(conn))


def test_plain_and_login_challenges(site):
    conn = tls_conn(site)
    conn.send("AUTH PLAIN\r\n")
    assert conn.lines() == ["334 "]
    conn.send(b64(b"\0alice@example.com\0secret") + b"\r\n")
    assert conn.codes() == [235]
    conn = tls_conn(site)
    conn.send("AUTH LOGIN\r\n")
    assert conn.lines() == ["334 " + b64(b"Username:").decode()]
    conn.send(b64(b"alice@example.com") + b"\r\n")
    assert conn.lines() == ["334 " + b64(b"Password:").decode()]
    conn.send(b64(b"secret") + b"\r\n")
    assert conn.codes() == [235]


def test_cram_md5(site):
    conn = tls_conn(site)
    conn.send("AUTH CRAM-MD5\r\n")
    line = conn.lines()[0]
    challenge = base64.b64decode(line[4:])
    assert challenge.startswith(b"<") and challenge.endswith(b"@mx.example.com>")
    digest = hmac.new(b"secret", challenge, "md5").hexdigest().encode()
    conn.send(b64(b"alice@example.com " + digest) + b"\r\n")
    assert conn.codes() == [235]


def test_failures_and_temporary_failure(site):
    conn = tls_conn(site)
    conn.send(b"AUTH PLAIN " + b64(b"\0alice@example.com\0wrong") + b"\r\n")
    conn.send(b"AUTH PLAIN " + b64(b"\0nobody@example.com\0secret") + b"\r\n")
    assert conn.lines() == ["535 5.7.8 authorization failure"] * 2
    site.checker.temporary = True
    conn.send(b"AUTH PLAIN " + b64(b"\0alice@example.com\0secret") + b"\r\n")
    assert conn.lines() == ["454 4.3.0 temporary authentication failure"]


def test_protocol_errors(site):
    conn = tls_conn(site)
    conn.send("AUTH LOGIN\r\n*\r\n")
    assert conn.lines()[-1] == "501 5.0.0 auth exchange cancelled"
    conn.send("AUTH LOGIN\r\nnot-base64!\r\n")
    assert conn.lines()[-1] == "501 5.5.2 malformed auth input (bad base64)"
    conn.send(b"AUTH PLAIN " + b64(b"garbage") + b"\r\n")
    assert conn.lines() == ["501 5.5.4 malformed auth input"]
    conn.send("AUTH NTLM\r\nAUTH\r\n")
    assert conn.codes() == [504, 501]
    conn.send("AUTH LOGIN\r\n" + "A" * 13000 + "\r\nNOOP\r\n")
    assert conn.codes()[-2:] == [500, 250]


def test_auth_during_transaction_and_before_ehlo(site):
    site.environ["SECURE_AUTH"] = "0"
    conn = Conn(make_factory(site))
    conn.output()
    conn.send("AUTH PLAIN\r\nHELO x\r\nAUTH PLAIN\r\n")
    assert conn.codes() == [503, 250, 503]
    ehlo(conn)
    conn.send("MAIL FROM:<a@remote.example>\r\nAUTH PLAIN\r\n")
    assert conn.lines() == ["250 2.1.0 ok", "503 5.5.1 no AUTH during mail transaction"]


def test_no_auth_before_tls_unless_allowed(site):
    conn = Conn(make_factory(site, service="submission"))
    assert not any(line.startswith("250-AUTH") for line in ehlo(conn))
    conn.send(b"AUTH PLAIN " + b64(b"\0alice@example.com\0secret") + b"\r\n")
    assert conn.lines() == ["538 5.7.11 encryption required for requested authentication "
                            "mechanism"]
    conn.send("AUTH CRAM-MD5\r\n")
    assert conn.codes() == [538]
    assert site.checker.seen == []
    site.environ["SECURE_AUTH"] = "0"
    conn = Conn(make_factory(site, service="submission"))
    assert "250-AUTH PLAIN LOGIN CRAM-MD5" in ehlo(conn)
    conn.send(b"AUTH PLAIN " + b64(b"\0alice@example.com\0secret") + b"\r\n")
    assert conn.codes() == [235]


def test_disabled_mechanisms(site):
    site.environ.update(DISABLE_AUTH_LOGIN="", DISABLE_CRAM_MD5="1")
    conn = tls_conn(site)
    assert "250-AUTH PLAIN" in conn.transport.value().decode()
    conn.send("AUTH LOGIN\r\n")
    assert conn.codes() == [504]


def test_submission_requires_auth_and_then_relays(site):
    conn = tls_conn(site)
    conn.send("MAIL FROM:<alice@example.com>\r\n")
    assert conn.lines() == ["530 5.7.0 authentication required"]
    conn.send(b"AUTH PLAIN " + b64(b"\0alice@example.com\0secret") + b"\r\n")
    conn.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<friend@remote.example>\r\n")
    assert conn.codes() == [235, 250, 250]


def test_requireauth_on_port_25(site):
    site.environ["REQUIREAUTH"] = "1"
    conn = tls_conn(site, service="smtp")
    conn.send("MAIL FROM:<a@remote.example>\r\n")
    assert conn.codes() == [530]


def test_no_relay_user_sends_only_locally(site):
    conn = tls_conn(site)
    conn.send(b"AUTH PLAIN " + b64(b"\0bob@example.com\0hunter2") + b"\r\n")
    conn.send("MAIL FROM:<bob@example.com>\r\nRCPT TO:<friend@remote.example>\r\n"
              "RCPT TO:<alice@example.com>\r\n")
    assert conn.codes() == [235, 250, 553, 250]


def test_too_many_failures_disconnect(site):
    conn = tls_conn(site)
    for _ in range(5):
        conn.send(b"AUTH PLAIN " + b64(b"\0alice@example.com\0wrong") + b"\r\n")
    assert conn.codes() == [535, 535, 535, 535, 421]
    assert conn.closed


def test_passwords_never_logged(site):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        conn = tls_conn(site)
        conn.send(b"AUTH PLAIN " + b64(b"\0alice@example.com\0wrong-pw-XYZ") + b"\r\n")
        conn.send(b"AUTH LOGIN\r\n" + b64(b"alice@example.com") + b"\r\n"
                  + b64(b"secret") + b"\r\n")
        site.checker.temporary = True
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent
    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert "wrong-pw-XYZ" not in text and "secret" not in text
    assert "alice@example.com" in text
