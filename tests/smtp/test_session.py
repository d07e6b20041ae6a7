"""The SMTP session state machine, driven in memory through the protocol adapter."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from indimail_tw.errors import MailError
from indimail_tw.policy.base import Check
from indimail_tw.policy import default_checks
from indimail_tw.smtp.protocol import HOLD_LIMIT
from tests.smtp.support import ME, Conn, Site, ehlo, make_factory


@pytest.fixture
def site():
    s = Site()
    s.store.add_user("alice@example.com")
    s.store.add_user("bob@example.com")
    yield s
    s.cleanup()


@pytest.fixture
def conn(site):
    return Conn(make_factory(site))


def transaction(conn, rcpts=("alice@example.com",), sender="sender@remote.example",
                body=b"Subject: hi\r\n\r\nhello\r\n"):
    ehlo(conn)
    conn.send(f"MAIL FROM:<{sender}>\r\n")
    for r in rcpts:
        conn.send(f"RCPT TO:<{r}>\r\n")
    conn.send("DATA\r\n")
    conn.send(body + b".\r\n")
    return conn.lines()


def test_greeting_and_ehlo(conn):
    assert conn.output() == f"220 {ME} ESMTP\r\n".encode()
    lines = ehlo(conn)
    assert lines[0] == f"250-{ME}"
    keywords = [line[4:] for line in lines[1:]]
    for word in ("PIPELINING", "8BITMIME", "SIZE", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN",
                 "CHUNKING", "STARTTLS"):
        assert word in keywords
    assert not any(k.startswith("AUTH") for k in keywords)       # not before TLS
    assert lines[-1].startswith("250 ")


def test_ehlo_size_shows_databytes_and_greeting_file(site):
    site.write_control("databytes", "5000\n")
    site.write_control("smtpgreeting", "first.example welcome\nsecond line\n")
    site.reload()
    c = Conn(make_factory(site))
    assert c.lines() == ["220-first.example welcome ESMTP", "220 second line"]
    assert "250-SIZE 5000" in ehlo(c)


def test_mail_needs_helo_and_order(conn):
    conn.output()
    conn.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    assert conn.codes() == [503, 503, 503]
    ehlo(conn)
    conn.send("MAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n")
    assert conn.codes() == [250, 503, 503]


def test_simple_message_is_queued_with_received(site, conn):
    lines = transaction(conn, body=b"Subject: hi\r\n\r\n..dotted\r\nbye\r\n")
    assert lines[-1].startswith("250 2.0.0 ok ") and " qp q1" in lines[-1]
    envelope, data = site.queue.messages[0]
    assert envelope.sender == "sender@remote.example"
    assert [r.address for r in envelope.recipients] == ["alice@example.com"]
    assert envelope.protocol == "ESMTP" and envelope.helo == "client.example.org"
    assert data.startswith(b"Received: from client.example.org (unknown [192.0.2.10])\n"
                           b"\tby mx.example.com with ESMTP\n\tid ")
    assert data.endswith(b"Subject: hi\n\n.dotted\nbye\n")


def test_null_sender_and_single_recipient_bounce(conn):
    ehlo(conn)
    conn.send("MAIL FROM:<>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\n")
    assert conn.codes() == [250, 250, 553]


def test_rset_noop_vrfy_help_quit(site):
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<a@b.example>\r\nRSET\r\nRCPT TO:<alice@example.com>\r\nNOOP\r\n"
              "VRFY alice\r\nEXPN list\r\nHELP\r\n")
    lines = conn.lines()
    assert [int(x[:3]) for x in lines if x[3] == " "] == [250, 250, 503, 250, 252, 502, 214]
    assert "alice" not in "".join(lines)
    conn.send("QUIT\r\nNOOP\r\n")
    assert conn.lines() == [f"221 2.0.0 {ME} closing connection"]
    assert conn.closed
    site.environ.update(DISABLE_VRFY="1", DISABLE_HELP="1")
    conn = Conn(make_factory(site))
    conn.output()
    conn.send("VRFY alice\r\nHELP\r\n")
    assert conn.codes() == [502, 502]


def test_unknown_commands_and_error_limit(conn):
    conn.output()
    conn.send("FOO\r\n")
    assert conn.lines() == ["502 5.5.2 command not recognized"]
    conn.send("GET / HTTP/1.0\r\n" * 30)
    codes = conn.codes()
    assert codes[-1] == 421 and conn.closed


def test_long_command_line(site):
    site.write_control("maxcmdlen", "64\n")
    site.reload()
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<" + "a" * 100 + "@b.example>\r\nNOOP\r\n")
    assert conn.codes() == [500, 250]


def test_dsn_and_8bitmime_kept_in_envelope(site, conn):
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example> RET=HDRS ENVID=id+2Bx BODY=8BITMIME SIZE=20\r\n"
              "RCPT TO:<alice@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;alice+40x.example\r\n"
              "RCPT TO:<bob@example.com> NOTIFY=NEVER\r\nDATA\r\n\xe9t\xe9\r\n.\r\n".encode(
                  "latin-1"))
    assert conn.codes() == [250, 250, 250, 354, 250]
    env, data = site.queue.messages[0]
    assert (env.ret, env.envid, env.body) == ("HDRS", "id+x", "8BITMIME")
    assert env.recipients[0].notify == ("SUCCESS", "DELAY")
    assert env.recipients[0].orcpt == "rfc822;alice@x.example"
    assert env.recipients[1].notify == ("NEVER",)
    assert data.endswith(b"\xe9t\xe9\n")


@pytest.mark.parametrize("params", ["BODY=BINARYMIME", "RET=ALL", "FOO=1", "SIZE=x",
                                    "SMTPUTF8=1", "ENVID=a+zz"])
def test_bad_mail_parameters(conn, params):
    ehlo(conn)
    conn.send(f"MAIL FROM:<s@remote.example> {params}\r\n")
    assert conn.codes() == [555]


@pytest.mark.parametrize("params", ["NOTIFY=NEVER,SUCCESS", "NOTIFY=SOMETIMES", "ORCPT=x",
                                    "BAR=1"])
def test_bad_rcpt_parameters(conn, params):
    ehlo(conn)
    conn.send(f"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com> {params}\r\n")
    assert conn.codes() == [250, 555]


def test_smtputf8(site, conn):
    site.store.add_user("jörg@example.com")
    ehlo(conn)
    conn.send("MAIL FROM:<é@remote.example> SMTPUTF8\r\nRCPT TO:<jörg@example.com>\r\n"
              "DATA\r\nx\r\n.\r\n".encode())
    assert conn.codes() == [250, 250, 354, 250]
    env, _ = site.queue.messages[0]
    assert env.smtputf8 and env.protocol == "UTF8SMTP" and env.sender == "é@remote.example"
    conn.send("MAIL FROM:<é@remote.example>\r\n".encode())
    assert conn.codes() == [553]


def test_size_declared_and_actual(site):
    site.write_control("databytes", "100\n")
    site.reload()
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example> SIZE=101\r\n")
    assert conn.lines() == ["552 5.3.4 sorry, that message size exceeds my databytes limit"]
    lines = transaction(conn, body=b"x" * 200 + b"\r\n")
    assert lines[-1].startswith("552 5.3.4")
    assert site.queue.messages == [] and site.queue.writers[-1].aborted
    conn.send("NOOP\r\n")
    assert conn.codes() == [250]


def test_maxhops(site, conn):
    body = b"".join(b"Received: from x by y\r\n" for _ in range(100)) + b"\r\nbody\r\n"
    assert transaction(conn, body=body)[-1] == (
        "554 5.4.6 too many hops, this message is looping")
    body = b"Delivered-To: a@b\r\n" * 99 + b"\r\n" + b"Received: in body\r\n" * 5
    assert transaction(conn, body=body)[-1].startswith("250 ")


def test_maxrecipients(site):
    site.write_control("maxrecipients", "2\n")
    site.reload()
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\n" + "RCPT TO:<alice@example.com>\r\n" * 3)
    assert conn.codes() == [250, 250, 250, 557]


def test_tarpit_delays_replies_after_n_recipients(site):
    site.write_control("tarpitcount", "2\n")
    site.write_control("tarpitdelay", "3\n")
    site.reload()
    clock = task.Clock()
    conn = Conn(make_factory(site, clock=clock))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\n" + "RCPT TO:<alice@example.com>\r\n" * 3
              + "NOOP\r\n")
    clock.advance(HOLD_LIMIT)                          # pipelined replies are held that long
    assert conn.codes() == [250, 250]                  # MAIL, first RCPT
    clock.advance(2.9 - HOLD_LIMIT)
    assert conn.codes() == []
    clock.advance(0.1)                                 # the second RCPT's reply, held
    clock.advance(HOLD_LIMIT)
    assert conn.codes() == [250]                       # second RCPT
    clock.advance(3 - HOLD_LIMIT)
    assert conn.codes() == [250, 250]                  # third RCPT, then NOOP at once


def test_idle_timeout(site):
    site.write_control("timeoutsmtpd", "60\n")
    site.reload()
    clock = task.Clock()
    conn = Conn(make_factory(site, clock=clock))
    conn.output()
    clock.advance(59)
    conn.send("NOOP\r\n")
    clock.advance(59)
    assert conn.codes() == [250] and not conn.closed
    clock.advance(1)
    assert conn.lines() == ["451 4.4.2 timeout, closing connection"] and conn.closed
    conn.lose()
    assert not clock.getDelayedCalls()


def test_greetdelay_and_early_talkers(site):
    site.write_control("greetdelay", "-5\n")
    site.reload()
    clock = task.Clock()
    conn = Conn(make_factory(site, clock=clock))
    conn.send("EHLO impatient\r\n")
    assert conn.output() == b""
    clock.advance(5)
    assert conn.codes() == [220, 554] and conn.closed
    conn = Conn(make_factory(site, clock=clock))
    clock.advance(5)
    conn.send("EHLO patient\r\n")
    assert conn.codes() == [220, 250]


def test_shutdown(site):
    site.environ["SHUTDOWN"] = "down for maintenance"
    conn = Conn(make_factory(site))
    assert conn.lines() == ["421 4.3.2 down for maintenance"] and conn.closed


class Exploding(Check):
    def __init__(self, hook):
        self.hook = hook

    def mail(self, ctx, sender, params):
        if self.hook == "mail":
            raise RuntimeError("boom")

    def rcpt(self, ctx, request):
        if self.hook == "rcpt":
            return defer.fail(RuntimeError("deferred boom"))

    def data(self, ctx, info):
        if self.hook == "data":
            raise RuntimeError("late boom")


@pytest.mark.parametrize("hook,codes", [("mail", [451, 503, 503]),
                                        ("rcpt", [250, 451, 503]),
                                        ("data", [250, 250, 354, 451])])
def test_exception_in_a_hook_is_451_and_the_connection_lives(site, hook, codes):
    errors = []
    globalLogPublisher.addObserver(errors.append)
    try:
        checks = [Exploding(hook), *default_checks(site.store, site.paths.domains,
                                                   blocking=defer.maybeDeferred)]
        conn = Conn(make_factory(site, checks=checks))
        ehlo(conn)
        conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        if hook == "data":
            conn.send("x\r\n.\r\n")
        assert conn.codes() == codes
        conn.send("NOOP\r\n")
        assert conn.codes() == [250] and not conn.closed
    finally:
        globalLogPublisher.removeObserver(errors.append)
    assert any(e.get("log_failure") is not None for e in errors)


def test_never_250_before_commit_and_queue_errors(site):
    site.queue.auto_commit = False
    conn = Conn(make_factory(site))
    transaction(conn)
    conn.send("NOOP\r\n")
    assert conn.codes() == []                          # neither the 250 nor the NOOP
    site.queue.fire()
    assert conn.codes() == [250, 250]
    site.queue.commit_error = MailError(452, "4.3.1", "insufficient system storage")
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nx\r\n"
              ".\r\n")
    site.queue.fire()
    assert conn.lines()[-1] == "452 4.3.1 insufficient system storage"


def test_write_error_refuses_the_message(site, conn):
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    assert conn.codes() == [250, 250, 354]
    site.queue.write_error = MailError(452, "4.3.1", "disk full")
    conn.send("line\r\n" * 10 + ".\r\nNOOP\r\n")
    assert conn.lines() == ["452 4.3.1 disk full", "250 2.0.0 ok"]
    assert site.queue.messages == [] and site.queue.writers[0].aborted
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    assert conn.codes() == [250, 250, 452]             # the Received line cannot be written


def test_no_queue(site):
    site.queue = None
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
    assert conn.lines()[-1] == "451 4.3.0 Requested action aborted: unable to queue messages"


def test_bdat(site, conn):
    ehlo(conn)
    conn.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              b"BDAT 12\r\nSubject: x\r\nBDAT 11 LAST\r\n\r\nbody\r\n.\r\n"
              b"NOOP\r\n")
    lines = conn.lines()
    assert [int(x[:3]) for x in lines] == [250, 250, 250, 250, 250]
    assert lines[2] == "250 2.0.0 12 octets received"
    env, data = site.queue.messages[0]
    assert data.endswith(b"Subject: x\n\nbody\n.\n")


def test_bdat_replies(site, conn):
    ehlo(conn)
    conn.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              b"BDAT 3\r\nabcBDAT 0 LAST\r\nNOOP\r\n")
    lines = conn.lines()
    assert lines[2] == "250 2.0.0 3 octets received"
    assert lines[3].startswith("250 2.0.0 ok ") and lines[4] == "250 2.0.0 ok"
    assert site.queue.messages[0][1].endswith(b"\nabc")


def test_bdat_without_transaction_consumes_the_chunk(conn):
    ehlo(conn)
    conn.send(b"BDAT 12 LAST\r\nRSET\r\nQUIT\r\nNOOP\r\n")
    assert conn.codes() == [503, 250]


def test_bdat_failure_then_pipelined_chunks_are_drained(site):
    site.write_control("databytes", "10\n")
    site.reload()
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              b"BDAT 20\r\n" + b"x" * 20 + b"BDAT 6 LAST\r\nRSET\r\nNOOP\r\n")
    assert conn.codes() == [250, 250, 552, 503, 250]
    assert site.queue.messages == []


def test_data_after_bdat_and_bad_bdat(conn):
    ehlo(conn)
    conn.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
              b"BDAT 2\r\nabDATA\r\n")
    assert conn.codes() == [250, 250, 250, 503]
    conn.send(b"BDAT x\r\nNOOP\r\n")
    assert conn.codes() == [501] and conn.closed


def test_received_with_tls_and_auth(site):
    conn = Conn(make_factory(site, service="submission"))
    ehlo(conn)
    conn.send("STARTTLS\r\n")
    ehlo(conn)
    import base64
    conn.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.com\0secret") + b"\r\n")
    conn.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<friend@remote.example>\r\n"
              "DATA\r\nx\r\n.\r\n")
    assert conn.codes() == [235, 250, 250, 354, 250]
    env, data = site.queue.messages[0]
    assert env.protocol == "ESMTPSA" and env.auth_user == "alice@example.com"
    header = data.split(b"\n\tid ")[0].decode()
    assert header == ("Received: from client.example.org (unknown [192.0.2.10])\n"
                      "\t(authenticated user alice@example.com)\n"
                      "\tby mx.example.com with ESMTPSA (TLSv1.3 TLS_AES_256_GCM_SHA384)")
    assert b"secret" not in data


def test_hide_host_and_hostile_helo(site):
    site.environ["HIDE_HOST"] = "1"
    conn = Conn(make_factory(site))
    ehlo(conn, "evil)(<name>")
    conn.send("MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\nx\r\n"
              ".\r\n")
    assert conn.codes()[-1] == 250
    data = site.queue.messages[0][1]
    assert data.startswith(b"Received: from evil???name?\n\tby ")
    assert b"192.0.2.10" not in data


def test_hard_recipient_limit(site, monkeypatch):
    from indimail_tw.smtp import session
    monkeypatch.setattr(session, "MAX_RECIPIENTS", 3)
    conn = Conn(make_factory(site))
    ehlo(conn)
    conn.send("MAIL FROM:<s@remote.example>\r\n" + "RCPT TO:<alice@example.com>\r\n" * 4)
    assert conn.codes() == [250, 250, 250, 250, 452]
