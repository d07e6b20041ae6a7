"""RFC 3464 bounces, parsed back with the ``email`` package and checked field by field."""

from __future__ import annotations

import email
import email.policy
import os
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from indimail_tw.config import ControlDir, Settings
from indimail_tw.delivery.bounce import EXPIRED_TEXT, make_bounce, wants_failure_notice
from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue import records
from indimail_tw.queue.envelope import Envelope, Recipient

ORIGINAL = (b"From: Alice <alice@example.org>\nTo: bob@example.com\nSubject: lunch?\n"
            b"Message-ID: <m1@example.org>\n\nShall we meet at noon?\n")
NOW = 1_700_000_000.0
NOSUCH = DeliveryResult.permanent(
    "no account bob@example.com here by that name. indimail (#5.1.5)", "5.1.1")
REMOTE = DeliveryResult.permanent("Remote host said: 550 5.1.1 unknown user", "5.1.1",
                                  remote_mta="mx.other.test",
                                  diagnostic="smtp; 550 5.1.1 unknown user")


@dataclass
class Message:
    id: str
    envelope: Envelope
    path: str
    size: int


def settings(**kw):
    base = dict(me="mx.example.com", bouncefrom="MAILER-DAEMON", bouncehost="mx.example.com",
                bouncesubject="failure notice", doublebounceto="postmaster",
                doublebouncehost="mx.example.com", doublebouncesubject="failure notice",
                bouncemaxbytes=50000)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture
def make_message(tmp_path):
    def make(sender="alice@example.org", rcpts=("bob@example.com",), body=ORIGINAL, **env):
        path = tmp_path / f"msg{len(os.listdir(tmp_path))}"
        recipients = [r if isinstance(r, Recipient) else Recipient(r) for r in rcpts]
        envelope = Envelope(sender=sender, recipients=recipients, received_at=NOW - 60, **env)
        record = records.encode_envelope(envelope, len(body))
        # a queue file: the envelope after the message, never part of the bounce
        path.write_bytes(body + record + records.encode_trailer(len(record)))
        return Message("1", envelope, str(path), len(body))
    return make


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def parts(data: bytes):
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, original = msg.get_payload()
    return msg, human, status, original


def test_structure_and_fields(make_message):
    rcpt = Recipient("bob@example.com", orcpt="rfc822;Bob@Example.COM")
    message = make_message(rcpts=[rcpt], envid="ENV-42")
    envelope, data = make_bounce(message, [(rcpt, NOSUCH)], settings(), now=NOW)
    assert envelope.sender == ""
    assert [r.address for r in envelope.recipients] == ["alice@example.org"]
    msg, human, status, original = parts(data)
    assert msg["From"] == "MAILER-DAEMON@mx.example.com"
    assert msg["To"] == "alice@example.org"
    assert msg["Subject"] == "failure notice"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"] and msg["Message-ID"].endswith("@mx.example.com>")

    text = human.get_content()
    assert text.startswith("Hi. This is the qmail-send program at mx.example.com.\n")
    assert "I'm afraid I wasn't able to deliver your message" in text
    assert "<bob@example.com>:\nno account bob@example.com here by that name." in text
    assert EXPIRED_TEXT not in text

    assert status.get_content_type() == "message/delivery-status"
    per_message, per_rcpt = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.example.com"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert per_message["Arrival-Date"]
    assert per_rcpt["Original-Recipient"] == "rfc822; Bob@Example.COM"
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.com"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] is None and per_rcpt["Diagnostic-Code"] is None

    assert original.get_content_type() == "message/rfc822"
    (enclosed,) = original.get_payload()
    assert enclosed["Subject"] == "lunch?"
    assert enclosed.get_content() == "Shall we meet at noon?\n"


def test_remote_failure_fields_and_several_recipients(make_message):
    message = make_message(rcpts=("bob@example.com", "carol@other.test"))
    b, c = message.envelope.recipients
    _, data = make_bounce(message, [(b, NOSUCH), (c, REMOTE)], settings(), now=NOW)
    _, human, status, _ = parts(data)
    per_message, first, second = status.get_payload()
    assert first["Final-Recipient"] == "rfc822; bob@example.com"
    assert second["Final-Recipient"] == "rfc822; carol@other.test"
    assert second["Remote-MTA"] == "dns; mx.other.test"
    assert second["Diagnostic-Code"] == "smtp; 550 5.1.1 unknown user"
    assert "<carol@other.test>:\nRemote host said: 550 5.1.1 unknown user" in human.get_content()
    assert parse(data)["X-Bounced-Address"] == "bob@example.com, carol@other.test"


def test_notify_never_and_lists_without_failure(make_message):
    never = Recipient("a@example.com", notify=("NEVER",))
    success = Recipient("b@example.com", notify=("SUCCESS", "DELAY"))
    failure = Recipient("c@example.com", notify=("SUCCESS", "FAILURE"))
    default = Recipient("d@example.com")
    assert [wants_failure_notice(r) for r in (never, success, failure, default)] == \
        [False, False, True, True]
    message = make_message(rcpts=[never, success, failure, default])
    assert make_bounce(message, [(never, NOSUCH), (success, NOSUCH)], settings()) is None
    _, data = make_bounce(message, [(r, NOSUCH) for r in (never, success, failure, default)],
                          settings(), now=NOW)
    _, _, status, _ = parts(data)
    finals = [g["Final-Recipient"] for g in status.get_payload()[1:]]
    assert finals == ["rfc822; c@example.com", "rfc822; d@example.com"]


def test_ret_hdrs_encloses_only_the_header(make_message):
    message = make_message(ret="HDRS")
    rcpt = message.envelope.recipients[0]
    _, data = make_bounce(message, [(rcpt, NOSUCH)], settings(), now=NOW)
    _, human, _, original = parts(data)
    assert original.get_content_type() == "text/rfc822-headers"
    enclosed = original.get_payload(decode=True)
    assert b"Subject: lunch?" in enclosed and b"noon" not in enclosed
    assert "original headers" in human.get_content()


def test_truncated_at_bouncemaxbytes(make_message):
    body = ORIGINAL + b"".join(b"line %05d of a long message\n" % i for i in range(2000))
    message = make_message(body=body)
    rcpt = message.envelope.recipients[0]
    _, data = make_bounce(message, [(rcpt, NOSUCH)], settings(bouncemaxbytes=500), now=NOW)
    assert len(data) < 5000
    _, human, _, original = parts(data)
    (enclosed,) = original.get_payload()
    assert enclosed["Subject"] == "lunch?"
    assert enclosed.as_bytes().endswith(b"\n")
    assert "truncated to" in human.get_content()
    _, full = make_bounce(message, [(rcpt, NOSUCH)], settings(bouncemaxbytes=0), now=NOW)
    assert b"line 01999 of a long message" in full


def test_expired_adds_the_queue_lifetime_sentence(make_message):
    message = make_message()
    rcpt = message.envelope.recipients[0]
    deferred = DeliveryResult.temporary("Connection refused. (#4.4.1)", "4.4.1")
    _, data = make_bounce(message, [(rcpt, deferred)], settings(), expired=True, now=NOW)
    _, human, status, _ = parts(data)
    assert f"Connection refused. (#4.4.1)\n{EXPIRED_TEXT}" in human.get_content()
    assert status.get_payload()[1]["Status"] == "5.4.1"
    # with a permanent failure alongside, only the timed-out recipient gets the sentence
    message = make_message(rcpts=("bob@example.com", "carol@other.test"))
    b, c = message.envelope.recipients
    expired_result = DeliveryResult.permanent("Connection refused. (#4.4.1)", "4.4.1")
    _, data = make_bounce(message, [(b, NOSUCH), (c, expired_result)], settings(),
                          expired=True, now=NOW)
    text = parts(data)[1].get_content()
    assert text.count(EXPIRED_TEXT) == 1
    assert f"<carol@other.test>:\nConnection refused. (#4.4.1)\n{EXPIRED_TEXT}" in text


def test_failed_bounce_becomes_a_double_bounce(make_message):
    message = make_message(sender="", rcpts=("alice@example.org",))
    rcpt = message.envelope.recipients[0]
    envelope, data = make_bounce(message, [(rcpt, REMOTE)], settings(), now=NOW)
    assert envelope.sender == "#@[]"
    assert [r.address for r in envelope.recipients] == ["postmaster@mx.example.com"]
    msg, human, status, _ = parts(data)
    assert msg["To"] == "postmaster@mx.example.com"
    assert "but the bounce bounced!" in human.get_content()
    assert status.get_payload()[1]["Final-Recipient"] == "rfc822; alice@example.org"
    other = settings(doublebounceto="admin", doublebouncehost="ops.example.com")
    envelope, _ = make_bounce(message, [(rcpt, REMOTE)], other, now=NOW)
    assert envelope.recipients[0].address == "admin@ops.example.com"
    full = settings(doublebounceto="noc@elsewhere.test")
    assert make_bounce(message, [(rcpt, REMOTE)], full)[0].recipients[0].address == \
        "noc@elsewhere.test"


def test_double_bounces_can_be_dropped(make_message):
    message = make_message(sender="", rcpts=("alice@example.org",))
    rcpt = message.envelope.recipients[0]
    assert make_bounce(message, [(rcpt, NOSUCH)], settings(doublebounceto="")) is None
    assert make_bounce(message, [(rcpt, NOSUCH)], settings(doublebounceto="@")) is None


def test_failed_double_bounce_is_dropped_and_nothing_goes_to_the_null_sender(make_message):
    message = make_message(sender="#@[]", rcpts=("postmaster@mx.example.com",))
    rcpt = message.envelope.recipients[0]
    assert make_bounce(message, [(rcpt, NOSUCH)], settings()) is None
    for sender in ("", "alice@example.org"):
        result = make_bounce(make_message(sender=sender), [(rcpt, NOSUCH)], settings())
        assert result is not None
        assert all(r.address for r in result[0].recipients)


def test_no_failures_no_bounce(make_message):
    assert make_bounce(make_message(), [], settings()) is None


def test_with_real_settings_defaults(make_message, tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    (control / "me").write_text("mail.example.net\n")
    real = Settings.load(ControlDir(str(control), {}), fqdn=lambda: "unused")
    message = make_message()
    rcpt = message.envelope.recipients[0]
    _, data = make_bounce(message, [(rcpt, NOSUCH)], real, now=NOW)
    msg, _, status, _ = parts(data)
    assert msg["From"] == "MAILER-DAEMON@mail.example.net"
    assert status.get_payload()[0]["Reporting-MTA"] == "dns; mail.example.net"


def test_eight_bit_original(make_message):
    body = b"Subject: caf\xc3\xa9\nContent-Type: text/plain; charset=utf-8\n\nna\xc3\xafve\n"
    message = make_message(body=body)
    rcpt = message.envelope.recipients[0]
    _, data = make_bounce(message, [(rcpt, NOSUCH)], settings(), now=NOW)
    assert body in data
    _, _, _, original = parts(data)
    assert original["Content-Transfer-Encoding"] == "8bit"


def test_the_enclosed_original_never_holds_the_queue_envelope(make_message):
    """The queue file goes on with the envelope record: the bounce encloses the
    message bytes only, whole or cut, headers only or not."""
    body = ORIGINAL
    message = make_message(body=body, sender="alice@example.org")
    with open(message.path, "rb") as f:
        tail = f.read()[len(body):]
    assert tail.startswith(records.MAGIC)
    failures = [(Recipient("bob@example.com"), DeliveryResult.permanent("no mailbox", "5.1.1"))]
    for kw in ({}, {"bouncemaxbytes": 0}, {"bouncemaxbytes": len(body) + 10}):
        _, data = make_bounce(message, failures, settings(**kw), now=NOW)
        assert records.MAGIC not in data and b"END " not in data and b"ITWQ2" not in data
        assert body in data
