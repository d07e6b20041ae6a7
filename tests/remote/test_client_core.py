"""The sans-IO SMTP client core, in memory: every reply path."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from indimail_tw.queue.envelope import Recipient
from indimail_tw.remote.client_parser import (
    ClientCore,
    Closed,
    Credentials,
    Phase,
    Ready,
    SendBody,
    SessionFailed,
    StartTLS,
    TLSMode,
    Transaction,
    TransactionDone,
)

EHLO_FULL = (b"250-mx.remote.example hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
             b"250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n"
             b"250 STARTTLS\r\n")
EHLO_PLAIN = b"250-mx.remote.example\r\n250 SIZE\r\n"


def tx(*rcpts: str, sender: str = "s@here.example", **kw) -> Transaction:
    return Transaction(sender, [Recipient(r) for r in rcpts or ("a@remote.example",)], **kw)


class Peer:
    """Drives a core: feeds replies, collects what it sends and the events."""

    def __init__(self, core: ClientCore) -> None:
        self.core = core
        self.events: list = []

    def says(self, data: bytes) -> bytes:
        self.events += self.core.receive(data)
        return self.core.outgoing()

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def ready(ehlo: bytes = EHLO_PLAIN, **kw) -> Peer:
    peer = Peer(ClientCore("mx.remote.example", "me.here.example",
                           tls=kw.pop("tls", TLSMode.NONE), **kw))
    assert peer.says(b"220 mx.remote.example ESMTP\r\n") == b"EHLO me.here.example\r\n"
    assert peer.says(ehlo) == b""
    assert isinstance(peer.events[-1], Ready) and peer.core.phase is Phase.READY
    return peer


# -- session setup ---------------------------------------------------------------------------

def test_ehlo_rejected_falls_back_to_helo():
    peer = Peer(ClientCore("old.example", "me.example", tls=TLSMode.OPPORTUNISTIC))
    assert peer.says(b"220-old\r\n220 ready\r\n") == b"EHLO me.example\r\n"
    assert peer.says(b"500 what?\r\n") == b"HELO me.example\r\n"
    assert peer.says(b"250 old.example\r\n") == b""
    assert isinstance(peer.events[-1], Ready)
    assert not peer.core.capabilities.esmtp and "STARTTLS" not in peer.core.capabilities


@pytest.mark.parametrize("reply, next_mx, permanent", [
    (b"421 4.3.2 busy\r\n", True, False),
    (b"554 5.7.1 go away\r\n", False, True),
])
def test_greeting_failures(reply, next_mx, permanent):
    peer = Peer(ClientCore("mx.example", "me.example"))
    assert peer.says(reply) == b"QUIT\r\n"
    (failed,) = peer.of(SessionFailed)
    assert failed.next_mx is next_mx and failed.tcpto is next_mx
    assert failed.result.is_permanent is permanent
    assert failed.result.text.startswith("Connected to mx.example but greeting failed.")
    assert failed.result.diagnostic == "smtp; " + reply.decode().strip()
    assert failed.result.remote_mta == "dns; mx.example"


def test_helo_rejected():
    peer = Peer(ClientCore("mx.example", "me.example"))
    peer.says(b"220 hi\r\n")
    peer.says(b"502 no ehlo\r\n")
    assert peer.says(b"550 5.7.1 bad name\r\n") == b"QUIT\r\n"
    (failed,) = peer.of(SessionFailed)
    assert failed.result.is_permanent and failed.result.enhanced == "5.7.1"
    assert "my name was rejected" in failed.result.text and not failed.next_mx


def test_helo_temporary_failure_tries_next_mx_only_when_asked():
    for flag in (False, True):
        peer = Peer(ClientCore("mx.example", "me.example", next_mx_on_helo_failure=flag))
        peer.says(b"220 hi\r\n")
        peer.says(b"502 no ehlo\r\n")
        peer.says(b"451 later\r\n")
        assert peer.of(SessionFailed)[0].next_mx is flag


def test_lost_before_greeting_goes_to_the_next_mx_and_tcpto():
    peer = Peer(ClientCore("mx.example", "me.example"))
    peer.events += peer.core.connection_lost()
    (failed,) = peer.of(SessionFailed)
    assert failed.next_mx and failed.tcpto and failed.result.is_temporary
    assert failed.result.enhanced == "4.4.2"


def test_timeout_during_ehlo_tries_next_mx_without_tcpto():
    peer = Peer(ClientCore("mx.example", "me.example"))
    peer.says(b"220 hi\r\n")
    assert peer.core.waiting
    peer.events += peer.core.timed_out()
    (failed,) = peer.of(SessionFailed)
    assert failed.next_mx and not failed.tcpto and "timed out" in failed.result.text


def test_garbage_from_the_server():
    peer = Peer(ClientCore("mx.example", "me.example"))
    peer.says(b"HTTP/1.1 400 Bad Request\r\n")
    (failed,) = peer.of(SessionFailed)
    assert failed.next_mx and "does not speak SMTP" in failed.result.text


def test_multiline_reply_code_must_not_change():
    peer = Peer(ClientCore("mx.example", "me.example"))
    peer.says(b"220-a\r\n250 b\r\n")
    assert peer.of(SessionFailed)


def test_oversized_reply_line():
    peer = Peer(ClientCore("mx.example", "me.example"))
    peer.says(b"220 " + b"x" * 5000)
    assert peer.of(SessionFailed)


# -- STARTTLS ------------------------------------------------------------------------------------

def test_starttls_then_ehlo_again():
    peer = Peer(ClientCore("mx.example", "me.example", tls=TLSMode.OPPORTUNISTIC))
    peer.says(b"220 hi\r\n")
    assert peer.says(EHLO_FULL) == b"STARTTLS\r\n"
    # a reply injected in the clear after 220 is dropped, never acted on
    assert peer.says(b"220 go ahead\r\n250 injected\r\n") == b""
    assert isinstance(peer.events[-1], StartTLS) and peer.core.phase is Phase.HANDSHAKE
    peer.events += peer.core.tls_started()
    assert peer.core.outgoing() == b"EHLO me.example\r\n"
    assert peer.says(b"250-mx\r\n250 PIPELINING\r\n") == b""
    assert isinstance(peer.events[-1], Ready) and peer.core.tls_active
    assert "STARTTLS" not in peer.core.capabilities


def test_starttls_refused_goes_on_in_clear_when_opportunistic():
    peer = Peer(ClientCore("mx.example", "me.example", tls=TLSMode.OPPORTUNISTIC))
    peer.says(b"220 hi\r\n")
    peer.says(EHLO_FULL)
    assert peer.says(b"454 4.7.0 TLS not available\r\n") == b""
    assert isinstance(peer.events[-1], Ready) and not peer.core.tls_active


@pytest.mark.parametrize("ehlo, starttls_reply", [(EHLO_PLAIN, None), (EHLO_FULL, b"454 no\r\n")])
def test_required_tls_fails_over_to_the_next_mx(ehlo, starttls_reply):
    peer = Peer(ClientCore("mx.example", "me.example", tls=TLSMode.REQUIRED))
    peer.says(b"220 hi\r\n")
    peer.says(ehlo)
    if starttls_reply:
        peer.says(starttls_reply)
    (failed,) = peer.of(SessionFailed)
    assert failed.next_mx and failed.result.is_temporary and "TLS" in failed.result.text


def test_handshake_failure_is_reported_as_tls_failure():
    peer = Peer(ClientCore("mx.example", "me.example", tls=TLSMode.OPPORTUNISTIC))
    peer.says(b"220 hi\r\n")
    peer.says(EHLO_FULL)
    peer.says(b"220 go ahead\r\n")
    peer.events += peer.core.connection_lost("certificate verify failed")
    (failed,) = peer.of(SessionFailed)
    assert failed.tls_failed and failed.next_mx and failed.result.enhanced == "4.7.5"
    assert "certificate verify failed" in failed.result.text


def test_no_starttls_when_tls_is_off():
    peer = ready(EHLO_FULL, tls=TLSMode.NONE)
    assert not peer.core.tls_active


# -- AUTH ----------------------------------------------------------------------------------------

def auth_peer(mechanisms: bytes, creds: Credentials, tls: bool = True) -> Peer:
    peer = Peer(ClientCore("relay.example", "me.example", tls=TLSMode.NONE,
                           implicit_tls=tls, credentials=creds))
    peer.says(b"220 hi\r\n")
    peer.sent = peer.says(b"250-relay\r\n250 AUTH " + mechanisms + b"\r\n")
    return peer


def test_auth_plain_over_tls():
    peer = auth_peer(b"LOGIN PLAIN", Credentials("u@x", "pw"))
    assert peer.sent == b"AUTH PLAIN " + base64.b64encode(b"\0u@x\0pw") + b"\r\n"
    assert peer.says(b"235 2.7.0 ok\r\n") == b""
    assert isinstance(peer.events[-1], Ready) and peer.core.authenticated


def test_auth_plain_answers_an_empty_challenge_once():
    peer = auth_peer(b"PLAIN", Credentials("u", "pw"))
    assert peer.says(b"334 \r\n") == base64.b64encode(b"\0u\0pw") + b"\r\n"
    assert peer.says(b"334 \r\n") == b"*\r\nQUIT\r\n"
    assert peer.of(SessionFailed)


def test_auth_login():
    peer = auth_peer(b"LOGIN", Credentials("u", "pw"))
    assert peer.sent == b"AUTH LOGIN\r\n"
    assert peer.says(b"334 VXNlcm5hbWU6\r\n") == base64.b64encode(b"u") + b"\r\n"
    assert peer.says(b"334 UGFzc3dvcmQ6\r\n") == base64.b64encode(b"pw") + b"\r\n"
    peer.says(b"235 ok\r\n")
    assert isinstance(peer.events[-1], Ready)


def test_auth_cram_md5_in_the_clear():
    peer = auth_peer(b"PLAIN LOGIN CRAM-MD5", Credentials("u", "pw"), tls=False)
    assert peer.sent == b"AUTH CRAM-MD5\r\n"
    challenge = b"<1.2@relay.example>"
    answer = peer.says(b"334 " + base64.b64encode(challenge) + b"\r\n")
    digest = hmac.new(b"pw", challenge, hashlib.md5).hexdigest().encode()
    assert base64.b64decode(answer.strip()) == b"u " + digest
    peer.says(b"235 ok\r\n")
    assert isinstance(peer.events[-1], Ready)


def test_no_password_in_the_clear():
    peer = auth_peer(b"PLAIN LOGIN", Credentials("u", "pw"), tls=False)
    assert peer.sent == b"QUIT\r\n"
    (failed,) = peer.of(SessionFailed)
    assert failed.result.is_temporary and "only over TLS" in failed.result.text


def test_password_in_the_clear_when_the_route_allows_it():
    peer = auth_peer(b"LOGIN", Credentials("u", "pw", plaintext_ok=True), tls=False)
    assert peer.sent == b"AUTH LOGIN\r\n"


def test_auth_mechanism_chosen_by_the_route():
    peer = auth_peer(b"PLAIN LOGIN", Credentials("u", "pw", mechanism="login"))
    assert peer.sent == b"AUTH LOGIN\r\n"


def test_no_auth_offered_goes_on_without():
    peer = Peer(ClientCore("relay.example", "me.example", tls=TLSMode.NONE,
                           credentials=Credentials("u", "pw")))
    peer.says(b"220 hi\r\n")
    assert peer.says(EHLO_PLAIN) == b""
    assert isinstance(peer.events[-1], Ready) and not peer.core.authenticated


@pytest.mark.parametrize("reply, permanent, enhanced", [
    (b"535 5.7.8 bad credentials\r\n", True, "5.7.8"),
    (b"535 nope\r\n", True, "5.7.8"),
    (b"454 4.7.0 try later\r\n", False, "4.7.0"),
])
def test_auth_rejected(reply, permanent, enhanced):
    peer = auth_peer(b"PLAIN", Credentials("u", "pw"))
    assert peer.says(reply) == b"QUIT\r\n"
    (failed,) = peer.of(SessionFailed)
    assert failed.result.is_permanent is permanent and failed.result.enhanced == enhanced
    assert "authentication was rejected (AUTH PLAIN)" in failed.result.text


# -- transactions ----------------------------------------------------------------------------

def test_pipelined_transaction_with_mixed_recipients():
    peer = ready(EHLO_FULL)
    peer.events.clear()
    peer.events += peer.core.start(tx("a@r.example", "b@r.example", "c@r.example", size=10))
    assert peer.core.outgoing() == (
        b"MAIL FROM:<s@here.example> SIZE=10\r\nRCPT TO:<a@r.example>\r\n"
        b"RCPT TO:<b@r.example>\r\nRCPT TO:<c@r.example>\r\nDATA\r\n")
    assert peer.says(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n451 4.2.0 greylisted\r\n"
                     b"354 go\r\n") == b""
    assert isinstance(peer.events[-1], SendBody)
    peer.events += peer.core.body_sent()
    assert peer.says(b"250 2.0.0 queued as X\r\n") == b""
    (done,) = peer.of(TransactionDone)
    ok, bad, later = done.results
    assert ok.is_ok and ok.text == ("mx.remote.example accepted message.\n"
                                    "Remote host said: 250 2.0.0 queued as X")
    assert bad.is_permanent and bad.enhanced == "5.1.1"
    assert bad.diagnostic == "smtp; 550 5.1.1 no such user"
    assert bad.text == ("mx.remote.example does not like recipient.\n"
                        "Remote host said: 550 5.1.1 no such user")
    assert later.is_temporary and later.enhanced == "4.2.0"
    assert done.reusable and peer.core.phase is Phase.READY and peer.core.transactions == 1


def test_sequential_transaction_without_pipelining():
    peer = ready()
    peer.core.start(tx("a@r.example", "b@r.example", size=5))
    assert peer.core.outgoing() == b"MAIL FROM:<s@here.example> SIZE=5\r\n"
    assert peer.says(b"250 ok\r\n") == b"RCPT TO:<a@r.example>\r\n"
    assert peer.says(b"550 no\r\n") == b"RCPT TO:<b@r.example>\r\n"
    assert peer.says(b"250 ok\r\n") == b"DATA\r\n"
    peer.says(b"354 go\r\n")
    peer.core.body_sent()
    peer.says(b"250 ok\r\n")
    (done,) = peer.of(TransactionDone)
    assert done.results[0].is_permanent and done.results[0].enhanced == "5.0.0"
    assert done.results[1].is_ok


def test_sender_rejected_sequential():
    peer = ready()
    peer.core.start(tx("a@r.example", "b@r.example"))
    peer.core.outgoing()
    assert peer.says(b"553 5.1.8 bad sender\r\n") == b"RSET\r\n"
    assert peer.says(b"250 ok\r\n") == b""
    (done,) = peer.of(TransactionDone)
    assert all(r.is_permanent and r.enhanced == "5.1.8" for r in done.results)
    assert done.results[0].text.startswith("Connected to mx.remote.example but sender was "
                                           "rejected.")
    assert done.reusable


def test_sender_rejected_pipelined_swallows_a_354():
    peer = ready(EHLO_FULL)
    peer.core.start(tx("a@r.example"))
    peer.core.outgoing()
    assert peer.says(b"451 4.3.0 later\r\n503 no mail\r\n354 weird\r\n") == b".\r\n"
    assert peer.says(b"554 no valid recipients\r\n") == b"RSET\r\n"
    peer.says(b"250 ok\r\n")
    (done,) = peer.of(TransactionDone)
    assert done.results[0].is_temporary and "sender was rejected" in done.results[0].text


def test_no_recipient_accepted_sequential_skips_data():
    peer = ready()
    peer.core.start(tx("a@r.example"))
    peer.core.outgoing()
    peer.says(b"250 ok\r\n")
    assert peer.says(b"550 no\r\n") == b"RSET\r\n"
    peer.says(b"250 ok\r\n")
    assert peer.of(TransactionDone)[0].results[0].is_permanent


def test_no_recipient_accepted_pipelined():
    peer = ready(EHLO_FULL)
    peer.core.start(tx("a@r.example"))
    peer.core.outgoing()
    assert peer.says(b"250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n") == b"RSET\r\n"
    peer.says(b"250 ok\r\n")
    (done,) = peer.of(TransactionDone)
    assert done.results[0].is_permanent and "does not like recipient" in done.results[0].text


@pytest.mark.parametrize("reply, permanent", [(b"554 5.6.0 no\r\n", True),
                                              (b"451 4.3.0 later\r\n", False)])
def test_data_rejected(reply, permanent):
    peer = ready(EHLO_FULL)
    peer.core.start(tx("a@r.example"))
    peer.core.outgoing()
    assert peer.says(b"250 ok\r\n250 ok\r\n" + reply) == b"RSET\r\n"
    peer.says(b"250 ok\r\n")
    result = peer.of(TransactionDone)[0].results[0]
    assert result.is_permanent is permanent and result.text.startswith("Failed on DATA command.")


@pytest.mark.parametrize("reply, permanent", [(b"554 5.7.1 spam\r\n", True),
                                              (b"452 4.3.1 disk full\r\n", False)])
def test_message_rejected_after_data(reply, permanent):
    peer = ready(EHLO_FULL)
    peer.core.start(tx("a@r.example"))
    peer.core.outgoing()
    peer.says(b"250 ok\r\n250 ok\r\n354 go\r\n")
    peer.core.body_sent()
    peer.says(reply)
    (done,) = peer.of(TransactionDone)
    assert done.results[0].is_permanent is permanent and done.reusable
    assert done.results[0].text.startswith("Failed after I sent the message.")


def test_rset_refused_closes_the_connection():
    peer = ready()
    peer.core.start(tx("a@r.example"))
    peer.core.outgoing()
    peer.says(b"550 no\r\n")
    assert peer.says(b"500 what\r\n") == b"QUIT\r\n"
    (done,) = peer.of(TransactionDone)
    assert not done.reusable
    peer.says(b"221 bye\r\n")
    assert isinstance(peer.events[-1], Closed)


def test_connection_lost_mid_transaction():
    peer = ready(EHLO_FULL)
    peer.core.start(tx("a@r.example", "b@r.example"))
    peer.core.outgoing()
    peer.says(b"250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n")
    peer.events += peer.core.connection_lost()
    (done,) = peer.of(TransactionDone)
    assert done.results[0].is_permanent                      # known before the loss
    assert done.results[1].is_temporary and "connection died" in done.results[1].text
    assert not done.reusable and done.answered and isinstance(peer.events[-1], Closed)


def test_timeout_waiting_for_the_final_reply():
    peer = ready(EHLO_FULL)
    peer.core.start(tx("a@r.example"))
    peer.core.outgoing()
    peer.says(b"250 ok\r\n250 ok\r\n354 go\r\n")
    peer.core.body_sent()
    assert peer.core.waiting
    peer.events += peer.core.timed_out()
    result = peer.of(TransactionDone)[0].results[0]
    assert result.is_temporary and "timed out" in result.text


def test_a_reused_connection_that_died_unanswered():
    peer = ready(EHLO_FULL)
    peer.core.start(tx("a@r.example"))
    peer.core.outgoing()
    peer.events += peer.core.connection_lost()
    assert peer.of(TransactionDone)[0].answered is False


def test_several_messages_over_one_connection():
    peer = ready(EHLO_FULL)
    for n in range(3):
        peer.core.start(tx(f"r{n}@r.example"))
        assert peer.core.outgoing().startswith(b"MAIL FROM:")
        peer.says(b"250 ok\r\n250 ok\r\n354 go\r\n")
        peer.core.body_sent()
        peer.says(b"250 ok\r\n")
    assert [d.results[0].is_ok for d in peer.of(TransactionDone)] == [True] * 3
    assert peer.core.transactions == 3
    peer.core.quit()
    assert peer.core.outgoing() == b"QUIT\r\n"
    peer.says(b"221 bye\r\n")
    assert isinstance(peer.events[-1], Closed)


def test_unsolicited_421_while_idle_closes():
    peer = ready()
    peer.says(b"421 4.4.2 idle timeout\r\n")
    assert isinstance(peer.events[-1], Closed)


# -- SIZE, 8BITMIME, SMTPUTF8, DSN -----------------------------------------------------------

def test_message_larger_than_size_fails_before_sending():
    peer = ready(EHLO_FULL)                      # SIZE 1000
    peer.events += peer.core.start(tx("a@r.example", "b@r.example", size=1001))
    assert peer.core.outgoing() == b""
    (done,) = peer.of(TransactionDone)
    assert all(r.is_permanent and r.enhanced == "5.3.4" for r in done.results)
    assert done.reusable and peer.core.phase is Phase.READY


def test_size_zero_means_no_limit():
    peer = ready(b"250-x\r\n250 SIZE 0\r\n")
    peer.core.start(tx(size=10 ** 9))
    assert peer.core.outgoing() == b"MAIL FROM:<s@here.example> SIZE=1000000000\r\n"


def test_8bitmime_declared_only_when_offered():
    peer = ready(EHLO_FULL)
    peer.core.start(tx(eight_bit=True, size=1))
    assert b" BODY=8BITMIME" in peer.core.outgoing()
    peer = ready(b"250-x\r\n250 PIPELINING\r\n")
    peer.core.start(tx(eight_bit=True))
    assert peer.core.outgoing().startswith(b"MAIL FROM:<s@here.example>\r\n")


def test_smtputf8_used_when_offered():
    peer = ready(EHLO_FULL)
    peer.core.start(tx("ü@bücher.example", sender="å@här.example", size=1))
    out = peer.core.outgoing().decode()
    assert out.startswith("MAIL FROM:<å@här.example> SIZE=1 SMTPUTF8\r\n")
    assert "RCPT TO:<ü@bücher.example>" in out


def test_without_smtputf8_idn_domains_become_a_labels():
    peer = ready(b"250-x\r\n250 PIPELINING\r\n")
    peer.core.start(tx("a@bücher.example", sender="s@här.example", smtputf8=True))
    assert peer.core.outgoing() == (b"MAIL FROM:<s@xn--hr-via.example>\r\n"
                                    b"RCPT TO:<a@xn--bcher-kva.example>\r\nDATA\r\n")


def test_without_smtputf8_a_utf8_local_part_bounces_5_6_7():
    peer = ready(b"250-x\r\n250 PIPELINING\r\n")
    peer.events += peer.core.start(tx("ü@r.example", "a@r.example"))
    assert peer.core.outgoing() == (b"MAIL FROM:<s@here.example>\r\n"
                                    b"RCPT TO:<a@r.example>\r\nDATA\r\n")
    peer.says(b"250 ok\r\n250 ok\r\n354 go\r\n")
    peer.core.body_sent()
    peer.says(b"250 ok\r\n")
    first, second = peer.of(TransactionDone)[0].results
    assert first.is_permanent and first.enhanced == "5.6.7" and second.is_ok


@pytest.mark.parametrize("kw", [{"sender": "ü@here.example"},
                                {"smtputf8": True, "utf8_header": True}])
def test_without_smtputf8_the_whole_message_bounces(kw):
    peer = ready(b"250-x\r\n250 PIPELINING\r\n")
    peer.events += peer.core.start(tx("a@r.example", **kw))
    assert peer.core.outgoing() == b""
    (done,) = peer.of(TransactionDone)
    assert done.results[0].enhanced == "5.6.7" and done.reusable


def test_dsn_parameters_when_offered():
    peer = ready(EHLO_FULL)
    rcpt = Recipient("a@r.example", notify=("SUCCESS", "FAILURE"),
                     orcpt="rfc822;a+b=c@r.example")
    peer.core.start(Transaction("s@here.example", [rcpt], size=1, ret="HDRS",
                                envid="id 1"))
    out = peer.core.outgoing()
    assert out.startswith(b"MAIL FROM:<s@here.example> SIZE=1 RET=HDRS ENVID=id+201\r\n")
    assert b"RCPT TO:<a@r.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb+3Dc@r.example\r\n" \
        in out


def test_no_dsn_parameters_without_dsn():
    peer = ready()
    peer.core.start(Transaction("s@x.example", [Recipient("a@r.example", notify=("NEVER",))],
                                ret="FULL"))
    assert peer.core.outgoing() == b"MAIL FROM:<s@x.example> SIZE=0\r\n"


def test_null_sender():
    peer = ready()
    peer.core.start(tx(sender=""))
    assert peer.core.outgoing().startswith(b"MAIL FROM:<>")


def test_start_only_when_ready():
    peer = Peer(ClientCore("mx.example", "me.example"))
    with pytest.raises(RuntimeError):
        peer.core.start(tx())


def test_replies_split_byte_by_byte():
    peer = ready(EHLO_FULL)
    peer.core.start(tx("a@r.example"))
    peer.core.outgoing()
    for byte in b"250 ok\r\n250-a\r\n250 b\r\n354 go\r\n":
        peer.says(bytes([byte]))
    assert isinstance(peer.events[-1], SendBody)


def test_bytes_after_the_starttls_220_in_the_same_segment_are_dropped_unparsed():
    peer = Peer(ClientCore("mx.example", "me.example", tls=TLSMode.OPPORTUNISTIC))
    peer.says(b"220 hi\r\n")
    peer.says(EHLO_FULL)
    peer.says(b"220 go ahead\r\n\x16\x03\x01 not a reply at all\r\n")
    assert isinstance(peer.events[-1], StartTLS) and not peer.of(SessionFailed)
