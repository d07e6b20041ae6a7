"""The SASL state machines (indimail_tw.auth.sasl), shared by SMTP, POP3 and IMAP."""

from __future__ import annotations

import base64
import hmac

import pytest

from indimail_tw.auth import sasl
from indimail_tw.auth.credentials import ChallengeCredentials, LoginCredentials

CTX = sasl.SASLContext(service="smtp", remote_ip="192.0.2.1", local_ip="192.0.2.25",
                       hostname="mx.example.com", now=lambda: 1700000000.0,
                       nonce=lambda: "12345")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_with_initial_response():
    ex = sasl.exchange("plain", CTX)
    done = ex.start(b64(b"\0alice@example.com\0secret"))
    assert isinstance(done, sasl.Done)
    creds = done.credentials
    assert isinstance(creds, LoginCredentials)
    assert (creds.username, creds.password, creds.method) == (b"alice@example.com", b"secret", 2)
    assert (creds.service, creds.remote_ip, creds.local_ip) == ("smtp", "192.0.2.1", "192.0.2.25")
    assert b"secret" not in repr(creds).encode()


def test_plain_without_initial_response_and_same_authzid():
    ex = sasl.exchange("PLAIN", CTX)
    assert ex.start(None) == sasl.Challenge(b"")
    done = ex.respond(b64(b"alice\0alice\0pw"))
    assert done.credentials.username == b"alice"


@pytest.mark.parametrize("raw,error", [
    (b"alice\0pw", sasl.SASLMalformed),
    (b"\0\0pw", sasl.SASLMalformed),
    (b"\0alice\0", sasl.SASLMalformed),
    (b"bob\0alice\0pw", sasl.SASLAuthzRefused),
    (b"\0" + b"a" * 600 + b"\0pw", sasl.SASLMalformed),
])
def test_plain_errors(raw, error):
    with pytest.raises(error):
        sasl.exchange("PLAIN", CTX).start(b64(raw))


def test_login_steps_and_initial_user():
    ex = sasl.exchange("LOGIN", CTX)
    assert ex.start(None) == sasl.Challenge(b"Username:")
    assert ex.respond(b64(b"alice")) == sasl.Challenge(b"Password:")
    creds = ex.respond(b64(b"secret")).credentials
    assert (creds.username, creds.password, creds.method) == (b"alice", b"secret", 1)
    ex = sasl.exchange("LOGIN", CTX)
    assert ex.start(b64(b"alice")) == sasl.Challenge(b"Password:")


def test_cram_md5():
    ex = sasl.exchange("CRAM-MD5", CTX)
    challenge = ex.start(None)
    assert challenge.data == b"<12345.1700000000@mx.example.com>"
    digest = hmac.new(b"secret", challenge.data, "md5").hexdigest()
    creds = ex.respond(b64(b"alice " + digest.encode())).credentials
    assert isinstance(creds, ChallengeCredentials)
    assert creds.checkPassword(b"secret") and not creds.checkPassword(b"wrong")
    assert creds.challenge == challenge.data and creds.method == 3


def test_cram_md5_challenges_differ_and_reject_junk():
    a = sasl.CramMD5(sasl.SASLContext(hostname="h")).challenge
    b = sasl.CramMD5(sasl.SASLContext(hostname="h")).challenge
    assert a != b and a.startswith(b"<") and a.endswith(b"@h>")
    ex = sasl.exchange("CRAM-MD5", CTX)
    ex.start(None)
    with pytest.raises(sasl.SASLMalformed):
        ex.respond(b64(b"alice nothex"))
    with pytest.raises(sasl.SASLMalformed):
        sasl.exchange("CRAM-MD5", CTX).start(b64(b"early"))


def test_encoding_cancel_and_limits():
    ex = sasl.exchange("LOGIN", CTX)
    ex.start(None)
    with pytest.raises(sasl.SASLBadEncoding):
        ex.respond(b"not base64!")
    with pytest.raises(sasl.SASLBadEncoding):
        ex.respond(b"YWJj ZA==")
    with pytest.raises(sasl.SASLCancelled):
        ex.respond(b"*")
    with pytest.raises(sasl.SASLBadEncoding):
        ex.respond(b"A" * (sasl.MAX_LINE + 4))
    with pytest.raises(sasl.SASLCancelled):
        sasl.exchange("PLAIN", CTX).start(b"*")
    with pytest.raises(sasl.SASLMalformed):
        sasl.exchange("PLAIN", CTX).start(b"=")          # an empty initial response
    assert sasl.exchange("NTLM", CTX) is None


def test_disable_switches():
    assert sasl.enabled_mechanisms({}) == ("PLAIN", "LOGIN")
    assert sasl.enabled_mechanisms({"ENABLE_CRAM": ""}) == ("PLAIN", "LOGIN", "CRAM-MD5")
    assert sasl.enabled_mechanisms({"DISABLE_AUTH_LOGIN": "1", "DISABLE_CRAM_MD5": ""}) == (
        "PLAIN",)
    assert sasl.CramMD5.plaintext is False and sasl.Plain.plaintext is True
