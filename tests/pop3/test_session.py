"""POP3 commands and error paths, in memory (StringTransport, Clock), on real Maildirs."""

from __future__ import annotations

import base64
import hmac
import os

from twisted.internet import defer
from twisted.trial import unittest

from indimail_tw.maildir.index import FolderIndex
from indimail_tw.pop3 import parser as p
from indimail_tw.pop3.maildrop import LOCK_NAME
from tests.pop3.support import PASSWORD, POP3Site

M1 = b"From: a@example.org\nSubject: one\n\nfirst\n.dotted\n"
M2 = b"From: b@example.org\nSubject: two\n\nsecond\r\n"
M3 = b"Subject: three\n\nl1\nl2\nl3\nl4\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Base(unittest.TestCase):
    environ: dict = {}

    def setUp(self):
        self.pop = POP3Site(environ=dict(self.environ))
        self.addCleanup(self.pop.cleanup)

    def mailbox(self, *messages: bytes) -> None:
        for data in messages:
            self.pop.put(data)


class GreetingAndCapaTests(Base):
    def test_greeting_names_only_the_host(self):
        conn = self.pop.connect()
        greeting = conn.lines()
        self.assertEqual(greeting, ["+OK mx.example.com POP3 server ready."])

    def test_capa_before_and_after_login(self):
        self.mailbox(M1)
        conn = self.pop.connect()
        lines = conn.ask("CAPA")
        self.assertEqual(lines[0][:3], "+OK")
        self.assertEqual(lines[-1], ".")
        caps = lines[1:-1]
        for cap in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER",
                    "SASL PLAIN LOGIN CRAM-MD5", "STLS"):
            self.assertIn(cap, caps)
        conn.ask("USER alice@example.com")
        conn.ask(f"PASS {PASSWORD}")
        caps = conn.ask("CAPA")[1:-1]
        self.assertIn("UIDL", caps)
        self.assertNotIn("USER", caps)
        self.assertNotIn("STLS", caps)

    def test_capa_without_certificate_has_no_stls(self):
        conn = self.pop.connect(tls=False)
        self.assertNotIn("STLS", conn.ask("CAPA"))
        self.assertTrue(conn.first("STLS").startswith("-ERR [SYS/TEMP]"))

    def test_shutdown(self):
        self.pop.environ["SHUTDOWN"] = ""
        conn = self.pop.connect()
        self.assertTrue(conn.lines()[0].startswith("-ERR [SYS/TEMP]"))
        self.assertTrue(conn.closed)


class LoginTests(Base):
    def test_user_pass(self):
        self.mailbox(M1, M2)
        conn = self.pop.connect()
        self.assertEqual(conn.first("USER alice@example.com"), "+OK")
        reply = conn.first(f"PASS {PASSWORD}")
        self.assertTrue(reply.startswith("+OK"), reply)
        self.assertIn("2 messages", reply)
        cred = self.pop.login.seen[0]
        self.assertEqual(cred.service, "pop3")
        self.assertEqual(cred.remote_ip, "192.0.2.10")

    def test_password_with_spaces(self):
        self.pop.login.users["carol@example.com"] = "two words "
        conn = self.pop.connect()
        conn.ask("USER carol@example.com")
        self.assertTrue(conn.first("PASS two words ").startswith("+OK"))

    def test_unknown_user_and_wrong_password_read_the_same(self):
        conn = self.pop.connect()
        conn.ask("USER nobody@example.com")
        unknown = conn.first("PASS whatever")
        conn.ask("USER alice@example.com")
        wrong = conn.first("PASS whatever")
        self.assertEqual(unknown, wrong)
        self.assertEqual(unknown, "-ERR [AUTH] Authentication failed.")
        self.assertFalse(conn.closed)

    def test_failure_limit_closes(self):
        conn = self.pop.connect()
        for _ in range(2):
            conn.ask("USER alice@example.com")
            conn.ask("PASS bad")
        conn.ask("USER alice@example.com")
        self.assertTrue(conn.first("PASS bad").startswith("-ERR [AUTH]"))
        self.assertTrue(conn.closed)

    def test_temporary_failure(self):
        self.pop.login.temporary = True
        conn = self.pop.connect()
        conn.ask("USER alice@example.com")
        self.assertTrue(conn.first(f"PASS {PASSWORD}").startswith("-ERR [SYS/TEMP]"))

    def test_pass_without_user(self):
        conn = self.pop.connect()
        self.assertTrue(conn.first("PASS x").startswith("-ERR"))
        self.assertEqual(self.pop.login.seen, [])

    def test_user_is_forgotten_after_pass(self):
        conn = self.pop.connect()
        conn.ask("USER alice@example.com")
        conn.ask("PASS wrong")
        self.assertTrue(conn.first(f"PASS {PASSWORD}").startswith("-ERR"))

    def test_transaction_commands_before_login(self):
        conn = self.pop.connect()
        for command in ("STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 1", "RSET", "NOOP"):
            self.assertEqual(conn.first(command), "-ERR Command not valid in this state.")

    def test_login_commands_after_login(self):
        self.mailbox(M1)
        conn = self.pop.logged_in()
        for command in ("USER x", "PASS y", "AUTH PLAIN", "STLS"):
            self.assertTrue(conn.first(command).startswith("-ERR"), command)

    def test_postauth_message_and_end_session(self):
        self.pop.login.message = "Mailbox moved."
        conn = self.pop.logged_in()
        self.assertTrue(conn.first("STAT").startswith("+OK"))
        conn.ask("QUIT")
        self.pop.login.end_session = True
        conn = self.pop.connect()
        conn.ask("USER alice@example.com")
        self.assertEqual(conn.first(f"PASS {PASSWORD}"), "-ERR [SYS/PERM] Mailbox moved.")
        self.assertTrue(conn.closed)
        self.pop.login.end_session = False
        self.pop.logged_in()         # no lock is left behind

    def test_client_leaves_during_login(self):
        gate = self.pop.login.gate = defer.Deferred()
        conn = self.pop.connect()
        conn.ask("USER alice@example.com")
        conn.send(f"PASS {PASSWORD}\r\n")
        conn.lose()
        self.pop.login.gate = None
        gate.callback(None)
        # the login was cancelled or undone, and the maildrop is not left locked
        self.pop.logged_in()


class SecureAuthTests(Base):
    environ = {"SECURE_AUTH": "1"}

    def test_plaintext_refused_before_tls(self):
        conn = self.pop.connect()
        caps = conn.ask("CAPA")
        self.assertNotIn("USER", caps)
        self.assertIn("SASL CRAM-MD5", caps)
        self.assertIn("STLS", caps)
        reply = conn.first("USER alice@example.com")
        self.assertTrue(reply.startswith("-ERR [AUTH] Plaintext"), reply)
        self.assertTrue(conn.first("AUTH PLAIN " + b64(b"\0alice@example.com\0s3cret"))
                        .startswith("-ERR [AUTH]"))
        self.assertEqual(conn.ask("AUTH"), ["+OK", "CRAM-MD5", "."])
        self.assertEqual(self.pop.login.seen, [])

    def test_stls_then_login(self):
        self.mailbox(M1)
        conn = self.pop.connect()
        self.assertEqual(conn.first("STLS"), "+OK Begin TLS negotiation now.")
        self.assertIsNotNone(conn.transport.tls_started_at)
        caps = conn.ask("CAPA")
        self.assertIn("USER", caps)
        self.assertNotIn("STLS", caps)
        self.assertTrue(conn.first("STLS").startswith("-ERR"))
        conn.ask("USER alice@example.com")
        self.assertTrue(conn.first(f"PASS {PASSWORD}").startswith("+OK"))

    def test_stls_injection_is_discarded(self):
        self.mailbox(M1)
        conn = self.pop.connect()
        conn.output()
        conn.send(f"STLS\r\nUSER alice@example.com\r\nPASS {PASSWORD}\r\nQUIT\r\n")
        self.assertEqual(conn.lines(), ["+OK Begin TLS negotiation now."])
        self.assertEqual(self.pop.login.seen, [])
        self.assertFalse(conn.closed)
        self.assertTrue(conn.first(f"PASS {PASSWORD}").startswith("-ERR"))    # USER forgotten

    def test_implicit_tls(self):
        conn = self.pop.connect(service="pop3s", implicit_tls=True)
        caps = conn.ask("CAPA")
        self.assertIn("USER", caps)
        self.assertNotIn("STLS", caps)

    def test_tls_required(self):
        self.pop.environ["POP3_TLS_REQUIRED"] = "1"
        conn = self.pop.connect()
        self.assertNotIn("SASL CRAM-MD5", conn.ask("CAPA"))
        self.assertTrue(conn.first("AUTH CRAM-MD5").startswith("-ERR [AUTH]"))


class SASLTests(Base):
    def test_plain_initial_response(self):
        self.mailbox(M1)
        conn = self.pop.connect()
        reply = conn.first("AUTH PLAIN " + b64(b"\0alice@example.com\0" + PASSWORD.encode()))
        self.assertTrue(reply.startswith("+OK"), reply)
        self.assertTrue(conn.first("STAT").startswith("+OK 1 "))

    def test_plain_with_challenge(self):
        conn = self.pop.connect()
        self.assertEqual(conn.ask("AUTH PLAIN"), ["+ "])
        reply = conn.first(b64(b"\0alice@example.com\0" + PASSWORD.encode()))
        self.assertTrue(reply.startswith("+OK"), reply)

    def test_login(self):
        conn = self.pop.connect()
        self.assertEqual(conn.ask("AUTH LOGIN"), ["+ " + b64(b"Username:")])
        self.assertEqual(conn.ask(b64(b"alice@example.com")), ["+ " + b64(b"Password:")])
        self.assertTrue(conn.first(b64(PASSWORD.encode())).startswith("+OK"))

    def test_login_initial_response(self):
        conn = self.pop.connect()
        self.assertEqual(conn.ask("AUTH LOGIN " + b64(b"alice@example.com")),
                         ["+ " + b64(b"Password:")])
        self.assertTrue(conn.first(b64(PASSWORD.encode())).startswith("+OK"))

    def test_cram_md5(self):
        conn = self.pop.connect()
        line = conn.first("AUTH CRAM-MD5")
        self.assertTrue(line.startswith("+ "))
        challenge = base64.b64decode(line[2:])
        self.assertTrue(challenge.startswith(b"<") and challenge.endswith(b"@mx.example.com>"))
        digest = hmac.new(PASSWORD.encode(), challenge, "md5").hexdigest()
        self.assertTrue(conn.first(b64(b"alice@example.com " + digest.encode()))
                        .startswith("+OK"))

    def test_failures_read_like_user_pass(self):
        conn = self.pop.connect()
        self.assertEqual(conn.first("AUTH PLAIN " + b64(b"\0nobody@example.com\0x")),
                         "-ERR [AUTH] Authentication failed.")

    def test_cancel_bad_base64_unknown(self):
        conn = self.pop.connect()
        conn.ask("AUTH LOGIN")
        self.assertEqual(conn.first("*"), "-ERR Authentication cancelled.")
        conn.ask("AUTH LOGIN")
        self.assertEqual(conn.first("!!!"), "-ERR Invalid base64 data.")
        self.assertEqual(conn.first("AUTH GSSAPI"), "-ERR Unsupported authentication mechanism.")
        self.assertTrue(conn.first("AUTH PLAIN =").startswith("-ERR"))
        self.assertTrue(conn.first("AUTH PLAIN a b c").startswith("-ERR"))
        self.assertTrue(conn.first("NOOP").startswith("-ERR Command not valid"))

    def test_long_sasl_line(self):
        conn = self.pop.connect()
        conn.ask("AUTH PLAIN")
        conn.output()
        conn.send("A" * 20000 + "\r\n")
        self.assertEqual(conn.lines(), ["-ERR Authentication response too long."])
        self.assertEqual(conn.proto.parser.line_limit, p.COMMAND_LINE_LIMIT)

    def test_auth_without_argument_lists_mechanisms(self):
        conn = self.pop.connect()
        self.assertEqual(conn.ask("AUTH"), ["+OK", "PLAIN", "LOGIN", "CRAM-MD5", "."])

    def test_disabled_mechanism(self):
        self.pop.environ["DISABLE_AUTH_LOGIN"] = ""
        conn = self.pop.connect()
        self.assertIn("SASL PLAIN CRAM-MD5", conn.ask("CAPA"))
        self.assertTrue(conn.first("AUTH LOGIN").startswith("-ERR Unsupported"))


class TransactionTests(Base):
    def setUp(self):
        super().setUp()
        self.mailbox(M1, M2, M3)
        self.conn = self.pop.logged_in()

    def sizes(self) -> list[int]:
        return [len(m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")) for m in (M1, M2, M3)]

    def test_stat_and_list(self):
        sizes = self.sizes()
        self.assertEqual(self.conn.first("STAT"), f"+OK 3 {sum(sizes)}")
        lines = self.conn.ask("LIST")
        self.assertEqual(lines[1:], [f"{n} {s}" for n, s in enumerate(sizes, 1)] + ["."])
        self.assertEqual(self.conn.first("LIST 2"), f"+OK 2 {sizes[1]}")
        self.assertEqual(self.conn.first("LIST 4"), "-ERR There is no such message.")
        self.assertEqual(self.conn.first("LIST 0"), "-ERR There is no such message.")
        self.assertEqual(self.conn.first("LIST -1"), "-ERR Invalid arguments.")
        self.assertEqual(self.conn.first("LIST x"), "-ERR Invalid arguments.")
        self.assertEqual(self.conn.first("LIST 1 2"), "-ERR Invalid arguments.")

    def test_retr(self):
        self.conn.output()
        self.conn.send("RETR 1\r\n")
        out = self.conn.output()
        size = self.sizes()[0]
        self.assertEqual(out, f"+OK {size} octets\r\n".encode() + p.encode_message(M1))
        self.assertIn(b"\r\n..dotted\r\n", out)

    def test_retr_and_top_errors(self):
        for command in ("RETR", "RETR 9", "RETR 1 2", "TOP 1", "TOP 1 -1", "TOP 1 x",
                        "TOP 0 1", "TOP 1 1 1"):
            self.assertTrue(self.conn.first(command).startswith("-ERR"), command)

    def test_top(self):
        self.conn.output()
        self.conn.send("TOP 3 2\r\n")
        self.assertEqual(self.conn.output(),
                         f"+OK {self.sizes()[2]} octets\r\n".encode()
                         + b"Subject: three\r\n\r\nl1\r\nl2\r\n.\r\n")
        self.conn.send("TOP 3 0\r\n")
        self.assertTrue(self.conn.output().endswith(b"Subject: three\r\n\r\n.\r\n"))

    def test_dele_rset(self):
        sizes = self.sizes()
        self.assertEqual(self.conn.first("DELE 2"), "+OK Marked to be deleted.")
        self.assertEqual(self.conn.first("DELE 2"), "-ERR Message is deleted.")
        self.assertEqual(self.conn.first("RETR 2"), "-ERR Message is deleted.")
        self.assertEqual(self.conn.first("STAT"), f"+OK 2 {sizes[0] + sizes[2]}")
        self.assertEqual(self.conn.ask("LIST")[1:], [f"1 {sizes[0]}", f"3 {sizes[2]}", "."])
        self.assertEqual(len(self.conn.ask("UIDL")), 4)
        self.assertTrue(self.conn.first("RSET").startswith("+OK 3 messages"))
        self.assertEqual(self.conn.first("STAT"), f"+OK 3 {sum(sizes)}")

    def test_noop_and_syntax(self):
        self.assertEqual(self.conn.first("NOOP"), "+OK")
        self.assertEqual(self.conn.first("NOOP x"), "-ERR Invalid arguments.")
        self.assertEqual(self.conn.first("STAT x"), "-ERR Invalid arguments.")
        self.assertEqual(self.conn.first("XYZZY"), "-ERR Unknown command.")
        self.assertEqual(self.conn.first(""), "-ERR Unknown command.")

    def test_uidl_is_the_index_uid_and_uidvalidity(self):
        index = FolderIndex.open(self.pop.maildir())
        self.addCleanup(index.close)
        expected = [f"{r.uid:08X}{index.uidvalidity:08X}" for r in index.records()]
        lines = self.conn.ask("UIDL")
        self.assertEqual(lines[1:], [f"{n} {u}" for n, u in enumerate(expected, 1)] + ["."])
        self.assertEqual(self.conn.first("UIDL 2"), f"+OK 2 {expected[1]}")
        for uid in expected:
            self.assertRegex(uid, r"^[0-9A-F]{16}$")

    def test_quit_deletes_only_deleted(self):
        self.conn.ask("DELE 1")
        self.conn.ask("DELE 3")
        self.assertEqual(self.conn.first("QUIT"), "+OK Logging out, messages deleted.")
        self.assertTrue(self.conn.closed)
        conn = self.pop.logged_in()
        self.assertEqual(conn.first("STAT"), f"+OK 1 {self.sizes()[1]}")
        left = []
        for sub in ("new", "cur"):
            directory = os.path.join(self.pop.maildir(), sub)
            for name in os.listdir(directory):
                with open(os.path.join(directory, name), "rb") as f:
                    left.append(f.read())
        self.assertEqual(left, [M2])

    def test_dropped_connection_deletes_nothing(self):
        self.conn.ask("DELE 1")
        self.conn.lose()
        conn = self.pop.logged_in()
        self.assertTrue(conn.first("STAT").startswith("+OK 3 "))

    def test_timeout_deletes_nothing(self):
        self.conn.ask("DELE 1")
        self.conn.output()
        self.pop.clock.advance(599)
        self.assertFalse(self.conn.closed)
        self.pop.clock.advance(2)
        self.assertEqual(self.conn.lines(), ["-ERR Disconnected for inactivity."])
        self.assertTrue(self.conn.closed)
        self.conn.lose()
        conn = self.pop.logged_in()
        self.assertTrue(conn.first("STAT").startswith("+OK 3 "))

    def test_uidl_stable_across_sessions(self):
        first = self.conn.ask("UIDL")
        self.conn.ask("DELE 1")
        self.conn.ask("QUIT")
        self.pop.put(b"Subject: four\n\nnew\n")
        conn = self.pop.logged_in()
        second = conn.ask("UIDL")
        old = [line.split()[1] for line in first[1:-1]]
        new = [line.split()[1] for line in second[1:-1]]
        self.assertEqual(new[:2], old[1:])
        self.assertEqual(len(new), 3)
        self.assertNotIn(new[2], old)

    def test_pipelined_commands_answered_in_order(self):
        self.conn.output()
        self.conn.send("STAT\r\nRETR 2\r\nNOOP\r\nLIST 3\r\nQUIT\r\n")
        out = self.conn.output()
        size = self.sizes()
        self.assertEqual(out, (f"+OK 3 {sum(size)}\r\n+OK {size[1]} octets\r\n".encode()
                               + p.encode_message(M2) + b"+OK\r\n"
                               + f"+OK 3 {size[2]}\r\n".encode() + b"+OK Logging out.\r\n"))


class ConcurrencyTests(Base):
    def test_second_session_gets_in_use(self):
        self.mailbox(M1)
        first = self.pop.logged_in()
        second = self.pop.connect()
        second.ask("USER alice@example.com")
        self.assertEqual(second.first(f"PASS {PASSWORD}"),
                         "-ERR [IN-USE] Mailbox is locked by another POP3 session.")
        self.assertEqual(self.pop.login.logouts, ["alice@example.com"])
        self.assertFalse(second.closed)
        self.assertTrue(first.first("STAT").startswith("+OK 1 "))
        first.ask("QUIT")
        second.ask("USER alice@example.com")
        self.assertTrue(second.first(f"PASS {PASSWORD}").startswith("+OK"))
        self.assertTrue(os.path.exists(os.path.join(self.pop.maildir(), LOCK_NAME)))

    def test_other_users_are_not_blocked(self):
        self.mailbox(M1)
        self.pop.logged_in()
        self.pop.logged_in("bob@example.com", "hunter2")

    def test_new_mail_is_not_shown_until_next_session(self):
        self.mailbox(M1)
        conn = self.pop.logged_in()
        self.pop.put(M2)
        self.assertTrue(conn.first("STAT").startswith("+OK 1 "))
        self.assertEqual(conn.first("RETR 2"), "-ERR There is no such message.")

    def test_message_removed_by_another_session(self):
        self.mailbox(M1, M2)
        conn = self.pop.logged_in()
        index = FolderIndex.open(self.pop.maildir())
        index.expunge([index.records()[0].uid])
        index.close()
        self.assertEqual(conn.first("RETR 1"), "-ERR Message was removed by another session.")
        self.assertEqual(conn.first("TOP 1 0"), "-ERR Message was removed by another session.")
        self.assertTrue(conn.first("RETR 2").startswith("+OK"))
        self.assertEqual(conn.first("DELE 1"), "+OK Marked to be deleted.")
        self.assertEqual(conn.first("QUIT"), "+OK Logging out, messages deleted.")
        conn = self.pop.logged_in()
        self.assertTrue(conn.first("STAT").startswith("+OK 1 "))

    def test_message_renamed_by_another_session(self):
        self.mailbox(M1)
        conn = self.pop.logged_in()
        index = FolderIndex.open(self.pop.maildir())
        index.store_flags(index.records()[0].uid, frozenset({"\\Seen"}))
        index.close()
        self.assertTrue(conn.first("RETR 1").startswith("+OK"))


class BoundsTests(Base):
    def test_long_command_line(self):
        conn = self.pop.connect()
        conn.output()
        conn.send("USER " + "a" * 5000 + "\r\nNOOP\r\n")
        self.assertEqual(conn.lines(), ["-ERR Command line too long.",
                                        "-ERR Command not valid in this state."])

    def test_too_many_errors_close(self):
        conn = self.pop.connect()
        for _ in range(19):
            self.assertEqual(conn.first("BOGUS"), "-ERR Unknown command.")
        self.assertEqual(conn.first("BOGUS"), "-ERR Too many invalid commands.")
        self.assertTrue(conn.closed)

    def test_binary_garbage(self):
        conn = self.pop.connect()
        conn.output()
        conn.send(b"\x00\xff\xfe\r\n\x80 \x81\r\n")
        self.assertEqual(conn.lines(), ["-ERR Unknown command.", "-ERR Unknown command."])

    def test_idle_timeout_before_login(self):
        conn = self.pop.connect()
        self.pop.clock.advance(601)
        self.assertTrue(conn.closed)

    def test_configured_timeout_never_below_rfc(self):
        self.pop.environ["POP3_IDLE_TIMEOUT"] = "30"
        conn = self.pop.connect()
        self.pop.clock.advance(31)
        self.assertFalse(conn.closed)
        self.pop.environ["POP3_IDLE_TIMEOUT"] = "1200"
        conn = self.pop.connect()
        self.pop.clock.advance(1000)
        self.assertFalse(conn.closed)
        self.pop.clock.advance(201)
        self.assertTrue(conn.closed)

    def test_quit_before_login(self):
        conn = self.pop.connect()
        self.assertEqual(conn.first("QUIT"), "+OK Logging out.")
        self.assertTrue(conn.closed)

    def test_big_message_streams(self):
        body = b"".join(b".line %d of a big message\n" % i for i in range(40000))
        data = b"Subject: big\n\n" + body
        self.pop.put(data)
        conn = self.pop.logged_in()
        conn.output()
        conn.proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
        self.assertIsNotNone(conn.transport.producer)       # streaming, NOOP waits
        self.assertNotIn(b"+OK\r\n", conn.transport.value()[-10:])
        conn.drain()
        out = conn.output()
        expected = p.encode_message(data)
        self.assertEqual(out, f"+OK {len(expected) - 3 - 40000} octets\r\n".encode()
                         + expected + b"+OK\r\n")

    def test_message_bigger_than_the_index_says(self):
        path = self.pop.put(b"Subject: grows\n\nsmall\n")
        conn = self.pop.logged_in()
        with open(path, "ab") as f:            # no Maildir tool does this; still no truncation
            f.write(b".more\n" * 100000)
        conn.output()
        conn.send("RETR 1\r\n")
        out = conn.output()
        self.assertTrue(out.endswith(b"\r\n..more\r\n.\r\n"))
        self.assertEqual(out.count(b"..more\r\n"), 100000)

    def test_stream_closed_when_client_stops_reading(self):
        self.pop.put(b"Subject: big\n\n" + b"x" * 1000000 + b"\n")
        conn = self.pop.logged_in()
        conn.proto.dataReceived(b"RETR 1\r\n")
        self.pop.clock.advance(601)
        self.assertFalse(conn.closed)
        self.pop.clock.advance(601)
        self.assertTrue(conn.closed)


class RulesAndLimitsTests(Base):
    def rules(self, text: str):
        from indimail_tw.policy.tcprules import RulesFile
        with open(os.path.join(self.pop.site.paths.tcp, "tcp.pop3"), "w") as f:
            f.write(text)
        return RulesFile(self.pop.site.paths.tcp, "tcp.pop3", now=self.pop.clock.seconds)

    def test_deny(self):
        factory = self.pop.factory(rules=self.rules("192.0.2.:deny\n:allow\n"))
        from tests.pop3.support import Conn
        conn = Conn(factory)
        self.assertEqual(conn.output(), b"")
        self.assertTrue(conn.closed)
        conn = Conn(factory, ip="198.51.100.1")
        self.assertTrue(conn.output().startswith(b"+OK"))

    def test_environment_from_rule(self):
        factory = self.pop.factory(rules=self.rules(':allow,SECURE_AUTH="1"\n'))
        from tests.pop3.support import Conn
        conn = Conn(factory)
        self.assertTrue(conn.first("USER alice@example.com").startswith("-ERR [AUTH]"))

    def test_maxperip(self):
        factory = self.pop.factory(rules=self.rules(':allow,MAXPERIP="2"\n'))
        from tests.pop3.support import Conn
        conns = [Conn(factory) for _ in range(2)]
        third = Conn(factory)
        self.assertTrue(third.output().startswith(b"-ERR [SYS/TEMP]"))
        self.assertTrue(third.closed)
        third.lose()
        conns[0].lose()
        self.assertTrue(Conn(factory).output().startswith(b"+OK"))
        self.assertTrue(Conn(factory, ip="198.51.100.7").output().startswith(b"+OK"))


class CrossProcessLockTests(Base):
    def test_lock_held_by_another_process(self):
        import subprocess
        import sys

        self.mailbox(M1)
        maildir = self.pop.maildir()
        script = ("import fcntl, os, sys\n"
                  f"fd = os.open({os.path.join(maildir, LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
                  "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                  "print('locked', flush=True)\n"
                  "sys.stdin.read()\n")
        holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(holder.stdout.readline().strip(), "locked")
            conn = self.pop.connect()
            conn.ask("USER alice@example.com")
            self.assertTrue(conn.first(f"PASS {PASSWORD}").startswith("-ERR [IN-USE]"))
        finally:
            holder.stdin.close()
            holder.wait(30)
        self.pop.logged_in()                 # the other process is gone: so is its lock


class FuzzTests(Base):
    def test_random_commands_never_break_the_session(self):
        """Any input gets +OK, -ERR or a continuation, never an internal error."""
        import random

        rng = random.Random(1939)
        words = ["USER", "PASS", "AUTH", "APOP", "CAPA", "STLS", "STAT", "LIST", "RETR",
                 "TOP", "DELE", "RSET", "NOOP", "UIDL", "XTND", "PLAIN", "LOGIN", "*", "=",
                 "0", "1", "2", "-1", "99999999999", "alice@example.com", PASSWORD, "\xff",
                 "AGFsaWNlQGV4YW1wbGUuY29tAHMzY3JldA=="]
        self.mailbox(M1, M2, M3)
        for round_ in range(40):
            conn = self.pop.connect() if round_ % 2 else self.pop.logged_in()
            for _ in range(30):
                if conn.closed:
                    break
                line = " ".join(rng.choice(words) for _ in range(rng.randint(0, 3)))
                if line.upper().startswith(("STLS", "QUIT")):
                    continue
                for reply in conn.ask(line):
                    self.assertNotIn("Temporary failure", reply)
            conn.lose()


class QuitOrderTests(Base):
    def test_lock_is_free_before_quit_is_answered(self):
        import fcntl

        jobs: list = []

        def run(fn, *args):
            d = defer.Deferred()
            jobs.append((d, fn, args))
            return d

        def work():
            while jobs:
                d, fn, args = jobs.pop(0)
                try:
                    d.callback(fn(*args))
                except Exception:  # noqa: BLE001
                    d.errback()

        self.mailbox(M1)
        factory = self.pop.factory()
        factory.run = run
        from tests.pop3.support import Conn
        conn = Conn(factory)
        conn.ask("USER alice@example.com")
        conn.output()
        conn.send(f"PASS {PASSWORD}\r\n")
        work()
        self.assertTrue(conn.lines()[0].startswith("+OK"))
        conn.ask("DELE 1")
        conn.send("QUIT\r\n")
        self.assertEqual(conn.output(), b"")          # not before the job ran
        work()
        self.assertEqual(conn.lines(), ["+OK Logging out, messages deleted."])
        fd = os.open(os.path.join(self.pop.maildir(), LOCK_NAME), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # free
        finally:
            os.close(fd)
