"""IMAP conformance, checked the way an independent compliance suite checks it.

A real listener (the factory ``twistd indimail --imap`` builds, with the real
user store, checker, realm, MailLogin and Maildir index) runs on loopback; a
raw-socket client sends commands byte for byte and compares the responses with
RFC 9051 / RFC 3501 (grammar and examples).  Every response line any test
receives also passes the strict syntax checker of
:mod:`tests.imap4.conformance_support`.

The client code of each test runs in a thread (``threaded``) so the reactor
keeps serving the server side.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import ssl
import tempfile

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from indimail_tw.imap4.service import IMAPFactory
from indimail_tw.maildir import deliver
from indimail_tw.smtp.service import CertificateSource
from tests.imap4.conformance_support import (
    Client,
    SyntaxViolation,
    check_response,
    live_site,
    parse_list,
)

USER, PASSWORD = "alice@example.com", "s3cret-Pw"


def crlf(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


# RFC 3501 7.4.2's example message (its ENVELOPE and BODY are given there).
RFC_EXAMPLE = crlf(
    "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)",
    "From: Terry Gray <gray@cac.washington.edu>",
    "Subject: IMAP4rev1 WG mtg summary and minutes",
    "To: imap@cac.washington.edu",
    "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>",
    "Message-Id: <B27397-0100000@cac.washington.edu>",
    "MIME-Version: 1.0",
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII",
    "",
    "Minutes of the meeting.",
    "Second line.",
)
RFC_EXAMPLE_ENVELOPE = (
    b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'((NIL NIL "imap" "cac.washington.edu")) '
    b'((NIL NIL "minutes" "CNRI.Reston.VA.US") ("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
    b'NIL NIL "<B27397-0100000@cac.washington.edu>")')

INNER = crlf(
    "From: Carol <carol@example.org>",
    "To: dave@example.org",
    "Subject: inner",
    "Date: Tue, 02 Jan 2024 10:00:00 +0000",
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="inner"',
    "",
    "--inner",
    "Content-Type: text/plain; charset=utf-8",
    "",
    "inner text",
    "",
    "--inner",
    'Content-Type: application/octet-stream; name="x.bin"',
    "Content-Transfer-Encoding: base64",
    'Content-Disposition: attachment; filename="x.bin"; size=5',
    "Content-Language: en, de",
    "Content-Location: http://example.com/x.bin",
    "Content-ID: <part2@example.org>",
    "Content-Description: some bytes",
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==",
    "",
    "AAECAwQ=",
    "",
    "--inner",
    "Content-Type: message/rfc822",
    "",
    "From: eve@example.net",
    "Subject: deepest",
    "",
    "deep body",
    "",
    "--inner--",
    "",
)

NESTED = crlf(
    "From: Alice <alice@example.com>",
    "To: bob@example.com",
    "Subject: nested",
    "Date: Mon, 01 Jan 2024 12:00:00 +0000",
    "Message-ID: <nested@example.com>",
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="outer"',
    "",
    "This is a preamble.",
    "--outer",
    'Content-Type: multipart/alternative; boundary="alt"',
    "",
    "--alt",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "plain text",
    "",
    "--alt",
    "Content-Type: text/html; charset=us-ascii",
    "",
    "<p>html</p>",
    "",
    "--alt--",
    "",
    "--outer",
    "Content-Type: message/rfc822",
    "Content-Description: forwarded",
    "",
) + INNER + crlf(
    "--outer",
    'Content-Type: image/png; name="a.png"',
    "Content-Disposition: inline; filename=a.png",
    "Content-Transfer-Encoding: base64",
    "",
    "iVBORw==",
    "",
    "--outer--",
    "epilogue",
)

GROUPS = crlf(
    "From: \"Doe, John\" <john@example.com>",
    "Sender: Secretary <sec@example.com>",
    "Reply-To: ",
    "To: A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",
    "Cc: Undisclosed recipients:;",
    'Subject: say "hi" \\o/',
    "In-Reply-To: <parent@example.com>",
    "",
    "x",
)


def simple(subject: str, body: str = "hello", extra: tuple[str, ...] = (),
           date: str = "Mon, 01 Jan 2024 12:00:00 +0000") -> bytes:
    return crlf("From: bob@example.com", "To: alice@example.com", f"Subject: {subject}",
                f"Date: {date}", *extra, "", body)


def threaded(fn):
    """Run the (blocking, socket-using) test body in a thread; the reactor serves."""
    @functools.wraps(fn)
    def wrapper(self):
        return threads.deferToThread(fn, self)
    return wrapper


def sorted_flags(line: bytes) -> bytes:
    """``line`` with every ``FLAGS (...)`` list in sorted order (flag order is free)."""
    return re.sub(rb"FLAGS \(([^)]*)\)",
                  lambda m: b"FLAGS (" + b" ".join(sorted(m.group(1).split())) + b")", line)


def fetch_items(line: bytes) -> dict[bytes, object]:
    """``* n FETCH (...)`` as {NAME: value}."""
    m = re.match(rb"\* [0-9]+ FETCH ", line)
    assert m, line
    atts = parse_list(line[m.end():-2])
    return {k.upper(): v for k, v in zip(atts[::2], atts[1::2], strict=True)}


def raw_item(line: bytes, name: bytes) -> bytes:
    """The bytes of one FETCH item's value as sent (e.g. ``BODYSTRUCTURE``)."""
    start = line.index(name + b" ") + len(name) + 1
    depth, i, quoted = 0, start, False
    while True:
        c = line[i:i + 1]
        if quoted:
            if c == b"\\":
                i += 1
            elif c == b'"':
                quoted = False
        elif c == b'"':
            quoted = True
        elif c == b"(":
            depth += 1
        elif c == b")":
            depth -= 1
            if depth == 0:
                return line[start:i + 1]
        i += 1


class ConformanceCase(unittest.TestCase):
    timeout = 60
    environ = {"SECURE_AUTH": "0"}

    def setUp(self):
        self.root, self.context, self.home, self.cert = live_site(
            self, "itw-imapc-", PASSWORD, self.environ)
        self.maildir = os.path.join(self.home, "Maildir")
        self.factory = IMAPFactory(self.context,
                                   certificate=CertificateSource(self.cert, reactor.seconds),
                                   clock=reactor)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.clients: list[Client] = []

    def tearDown(self):
        for c in self.clients:
            c.close()
        self.factory.shutdown()
        return defer.maybeDeferred(self.port.stopListening)

    # -- helpers (called from the test thread) --------------------------------------------

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cert)
        context.check_hostname = False
        return context

    def connect(self, login: bool = True, select: str | None = None) -> Client:
        c = Client(self.port.getHost().port)
        self.clients.append(c)
        if login:
            c.login(USER, PASSWORD)
        if select:
            c.cmd(f"SELECT {select}")
        return c

    def deliver(self, data: bytes, folder: str | None = None) -> None:
        target = deliver.prepare(self.maildir, folder)
        fd, path = tempfile.mkstemp(dir=self.root)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            deliver.deliver(target, path)
        finally:
            os.unlink(path)

    def fill(self, *messages: bytes) -> None:
        """Deliver, then let a throw-away session see them (so they are no longer
        \\Recent for the test's sessions)."""
        deliver.prepare(self.maildir)
        for m in messages:
            self.deliver(m)
        c = self.connect(select="INBOX")
        c.cmd("LOGOUT")
        c.close()

    def fetch1(self, c: Client, command: str) -> bytes:
        """The one FETCH response of ``command`` (flag lists sorted)."""
        untagged, _ = c.cmd(command)
        fetches = [u for u in untagged if re.match(rb"\* [0-9]+ FETCH", u)]
        assert len(fetches) == 1, untagged
        return sorted_flags(fetches[0])


class SyntaxCheckerTests(unittest.SynchronousTestCase):
    """The checker itself rejects what the grammar forbids."""

    def test_accepts(self):
        for line in [
            b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n",
            b'* 1 FETCH (FLAGS (\\Seen) BODY[HEADER.FIELDS (A B)]<0> {2}\r\nab UID 4)\r\n',
            b'* LIST (\\HasNoChildren) "." "a \\"b\\""\r\n',
            b"+ \r\n",
            b"a1 OK [READ-WRITE] done\r\n",
            b'* 2 FETCH (BODY ("TEXT" "PLAIN" NIL NIL NIL "7BIT" 3 1))\r\n',
        ]:
            check_response(line)

    def test_rejects(self):
        for line in [
            b"* OK ready",                                         # no CRLF
            b'* 1 FETCH (ENVELOPE (NIL NIL () NIL NIL NIL NIL NIL NIL NIL))\r\n',
            b'* 1 FETCH (BODY ("TEXT" "PLAIN" NIL NIL NIL "7BIT" 3 1 NIL))\r\n',
            b'* 1 FETCH (BODY (TEXT "PLAIN" NIL NIL NIL "7BIT" 3 1))\r\n',
            b'* 1 FETCH (FLAGS (\\Seen)\r\n',
            b'* LIST () ".." INBOX\r\n',
            b'* 1 FETCH (X "a\\b")\r\n',
            b"a1 MAYBE x\r\n",
            b"* 0 EXPUNGE\r\n",
            b'* 1 FETCH (BODY[1.0] "x")\r\n',
            b'* 1 FETCH (INTERNALDATE "1-Jan-2024 00:00:00 +0000")\r\n',
        ]:
            with self.assertRaises(SyntaxViolation, msg=line):
                check_response(line)


class ConnectionTests(ConformanceCase):
    @threaded
    def test_greeting_and_capability_before_and_after_login(self):
        c = self.connect(login=False)
        self.assertRegex(c.greeting, rb"\A\* OK \[CAPABILITY IMAP4rev1 [^\]]*\] ")
        untagged, done = c.cmd("CAPABILITY")
        self.assertEqual(len(untagged), 1)
        before = untagged[0].split()[2:]
        self.assertIn(b"STARTTLS", before)
        self.assertIn(b"AUTH=PLAIN", before)
        self.assertEqual(untagged[0][2:-2], c.greeting[6:c.greeting.index(b"]")])
        self.assertEqual(done, b"t1 OK CAPABILITY completed\r\n")
        _u, done = c.cmd(f'LOGIN {USER} "{PASSWORD}"')
        # RFC 9051 6.2.3: a CAPABILITY response code may ride on the tagged OK
        m = re.match(rb"t2 OK \[CAPABILITY ([^\]]*)\]", done)
        after = m.group(1).split() if m else c.cmd("CAPABILITY")[0][0].split()[2:]
        self.assertNotIn(b"STARTTLS", after)
        self.assertNotIn(b"LOGINDISABLED", after)
        self.assertFalse([a for a in after if a.startswith(b"AUTH=")])
        for cap in (b"IMAP4rev1", b"IDLE", b"UIDPLUS", b"MOVE", b"NAMESPACE", b"LITERAL+"):
            self.assertIn(cap, after)

    @threaded
    def test_starttls_capability_changes(self):
        c = self.connect(login=False)
        c.cmd("STARTTLS")
        c.starttls(self.tls())
        untagged, _ = c.cmd("CAPABILITY")
        caps = untagged[0].split()[2:]
        self.assertNotIn(b"STARTTLS", caps)
        self.assertIn(b"AUTH=PLAIN", caps)
        # RFC 9051 6.2.1: STARTTLS after TLS is not valid
        _u, done = c.cmd("STARTTLS", ok=False)
        self.assertRegex(done, rb"\At[0-9]+ (BAD|NO) ")
        c.login(USER, PASSWORD)

    @threaded
    def test_logout_bye_before_tagged_ok(self):
        c = self.connect()
        untagged, done = c.cmd("LOGOUT")
        self.assertEqual(len(untagged), 1)
        self.assertTrue(untagged[0].startswith(b"* BYE "), untagged)
        self.assertEqual(done, b"t2 OK LOGOUT completed\r\n")
        self.assertTrue(c.at_eof())

    @threaded
    def test_logout_before_login(self):
        c = self.connect(login=False)
        untagged, done = c.cmd("LOGOUT")
        self.assertTrue(untagged[0].startswith(b"* BYE "))
        self.assertTrue(c.at_eof())

    @threaded
    def test_authenticate_plain_with_continuation_and_sasl_ir(self):
        c = self.connect(login=False)
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        tag = c.tag()
        c.send(tag + b" AUTHENTICATE PLAIN\r\n")
        cont = c.response()
        self.assertEqual(cont, b"+ \r\n")
        c.send(token + b"\r\n")
        _u, done = c.until_tagged(tag)
        self.assertRegex(done, rb"\At1 OK ")
        c2 = self.connect(login=False)
        c2.cmd(b"AUTHENTICATE PLAIN " + token)
        # a cancelled exchange: BAD (RFC 9051 6.2.2)
        c3 = self.connect(login=False)
        tag = c3.tag()
        c3.send(tag + b" AUTHENTICATE PLAIN\r\n")
        self.assertEqual(c3.response(), b"+ \r\n")
        c3.send(b"*\r\n")
        _u, done = c3.until_tagged(tag)
        self.assertRegex(done, rb"\At1 BAD ")
        # bad credentials: NO [AUTHENTICATIONFAILED], never BAD
        _u, done = c3.cmd(b"AUTHENTICATE PLAIN " + base64.b64encode(
            f"\0{USER}\0wrong".encode()), ok=False)
        self.assertRegex(done, rb"\At2 NO \[AUTHENTICATIONFAILED\] ")

    @threaded
    def test_login_failures(self):
        c = self.connect(login=False)
        _u, done = c.cmd(f"LOGIN {USER} wrong", ok=False)
        self.assertRegex(done, rb"\At1 NO \[AUTHENTICATIONFAILED\] ")
        _u, done = c.cmd("LOGIN onlyone", ok=False)
        self.assertRegex(done, rb"\At2 BAD ")

    @threaded
    def test_commands_in_the_wrong_state(self):
        c = self.connect(login=False)
        for cmd in ("SELECT INBOX", "LIST \"\" *", "FETCH 1 FLAGS", "CLOSE", "IDLE"):
            _u, done = c.cmd(cmd, ok=False)
            self.assertRegex(done, rb"\At[0-9]+ BAD ", cmd)
        c.login(USER, PASSWORD)
        for cmd in ("FETCH 1 FLAGS", "STORE 1 +FLAGS (\\Seen)", "SEARCH ALL", "EXPUNGE",
                    "CLOSE", "UNSELECT", "UID FETCH 1 FLAGS", "COPY 1 INBOX"):
            _u, done = c.cmd(cmd, ok=False)
            self.assertRegex(done, rb"\At[0-9]+ BAD ", cmd)
        for cmd in (f"LOGIN {USER} {PASSWORD}", "AUTHENTICATE PLAIN", "STARTTLS"):
            _u, done = c.cmd(cmd, ok=False)
            self.assertRegex(done, rb"\At[0-9]+ BAD ", cmd)

    @threaded
    def test_syntax_errors_are_bad(self):
        c = self.connect()
        for cmd in ("FROBNICATE", "SELECT", "FETCH", "SELECT INBOX extra junk ()",
                    'STATUS INBOX (MESSAGES', "LIST", "CREATE", "SEARCH"):
            _u, done = c.cmd(cmd, ok=False)
            self.assertRegex(done, rb"\At[0-9]+ BAD ", cmd)
        c.cmd("SELECT INBOX")
        for cmd in ("FETCH 0 FLAGS", "FETCH 1 (FLAGS", "FETCH 1 BODY[1.0]", "FETCH 1 NOSUCH",
                    "FETCH a FLAGS", "STORE 1 FLAGS", "STORE 1 FROB (\\Seen)",
                    "SEARCH NOSUCHKEY", "SEARCH BEFORE 32-Jan-2024", "SEARCH (ALL",
                    "COPY 1", "UID FROB 1", "FETCH 1 BODY[]<1.0>"):
            _u, done = c.cmd(cmd, ok=False)
            self.assertRegex(done, rb"\At[0-9]+ BAD ", cmd)
        # an untagged BAD for a line with no usable tag (RFC 9051 7.1.3)
        c.send(b"\r\n")
        self.assertRegex(c.response(), rb"\A\* BAD ")
        c.cmd("NOOP")

    @threaded
    def test_semantic_failures_are_no(self):
        c = self.connect()
        for cmd in ("SELECT nosuch", "EXAMINE nosuch", "STATUS nosuch (MESSAGES)",
                    "DELETE nosuch", "RENAME nosuch other", "CREATE INBOX",
                    "DELETE INBOX"):
            _u, done = c.cmd(cmd, ok=False)
            self.assertRegex(done, rb"\At[0-9]+ NO ", cmd)
        _u, done = c.cmd('APPEND nosuch {1+}\r\nx', ok=False)
        self.assertRegex(done, rb"\At[0-9]+ NO \[TRYCREATE\] ")
        c.cmd("SELECT INBOX")
        self.deliver(simple("one"))
        c.cmd("NOOP")
        _u, done = c.cmd("COPY 1 nosuch", ok=False)
        self.assertRegex(done, rb"\At[0-9]+ NO \[TRYCREATE\] ")

    @threaded
    def test_literals_sync_and_nonsync(self):
        c = self.connect(login=False)
        tag = c.tag()
        c.send(tag + b" LOGIN {%d}\r\n" % len(USER))
        self.assertTrue(c.response().startswith(b"+ "))
        c.send(USER.encode() + b" {%d+}\r\n" % len(PASSWORD) + PASSWORD.encode() + b"\r\n")
        _u, done = c.until_tagged(tag)
        self.assertRegex(done, rb"\At1 OK ")
        _u, done = c.cmd_literal(b"CREATE", b"with space")
        self.assertRegex(done, rb"\At2 OK ")
        untagged, _ = c.cmd('LIST "" "with space"')
        self.assertEqual(untagged, [b'* LIST (\\HasNoChildren) "." "with space"\r\n'])
        # a literal too big for the server is refused before the client sends it
        tag = c.tag()
        c.send(tag + b" APPEND INBOX {99999999999}\r\n")
        _u, done = c.until_tagged(tag)
        self.assertRegex(done, rb"\At4 (BAD|NO) ")
        c.cmd("NOOP")

    @threaded
    def test_pipelined_commands_answer_in_order(self):
        self.fill(simple("one"))
        c = self.connect()
        c.send(b"p1 SELECT INBOX\r\np2 FETCH 1 FLAGS\r\np3 NOOP\r\np4 STATUS Trash (MESSAGES)\r\n")
        tags = []
        while len(tags) < 4:
            line = c.response()
            if not line.startswith(b"* "):
                tags.append(line.split()[0])
        self.assertEqual(tags, [b"p1", b"p2", b"p3", b"p4"])


class SelectTests(ConformanceCase):
    @threaded
    def test_select_untagged_set(self):
        self.fill(simple("one"), simple("two"))
        self.deliver(simple("three"))
        c = self.connect()
        c.cmd("STORE 1 +FLAGS (\\Seen)", ok=False)
        untagged, done = c.cmd("SELECT INBOX")
        self.assertIn(b"* 1 RECENT\r\n", untagged)       # "three" arrived after fill()
        c.cmd("STORE 1 +FLAGS (\\Seen)")
        c.cmd("UNSELECT")
        untagged, done = c.cmd("SELECT INBOX")
        self.assertIn(b"* 0 RECENT\r\n", untagged)
        kinds = [re.sub(rb"[0-9]+", b"n", u.split(b"]")[0]) for u in untagged]
        self.assertEqual(sorted(kinds), sorted([
            b"* n EXISTS\r\n", b"* n RECENT\r\n", b"* OK [UNSEEN n",
            b"* OK [UIDVALIDITY n", b"* OK [UIDNEXT n",
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\r\n",
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
            b"$Forwarded \\*)"]))
        self.assertIn(b"* 3 EXISTS\r\n", untagged)
        self.assertTrue([u for u in untagged if u.startswith(b"* OK [UNSEEN 2] ")])
        self.assertRegex(done, rb"\At[0-9]+ OK \[READ-WRITE\] ")

    @threaded
    def test_examine_is_read_only_and_keeps_recent(self):
        self.fill(simple("one"))
        self.deliver(simple("two"))
        c = self.connect()
        untagged, done = c.cmd("EXAMINE INBOX")
        self.assertRegex(done, rb"\At[0-9]+ OK \[READ-ONLY\] ")
        self.assertIn(b"* OK [PERMANENTFLAGS ()] No permanent flags permitted\r\n", untagged)
        # RFC 3501 6.3.2: EXAMINE shows the RECENT count; the session does not
        # claim the messages, so a later SELECT sees them \Recent too.
        self.assertIn(b"* 1 RECENT\r\n", untagged)
        line = self.fetch1(c, "FETCH 2 FLAGS")
        self.assertEqual(line, b"* 2 FETCH (FLAGS (\\Recent))\r\n")
        _u, done = c.cmd("STORE 1 +FLAGS (\\Seen)", ok=False)
        self.assertRegex(done, rb"\At[0-9]+ NO ")
        # BODY[] on a read-only mailbox does not set \Seen
        untagged, _ = c.cmd("FETCH 1 BODY[]")
        self.assertNotIn(b"FLAGS", b"".join(untagged))
        c2 = self.connect()
        untagged, _ = c2.cmd("SELECT INBOX")
        self.assertIn(b"* 1 RECENT\r\n", untagged)
        self.assertEqual(self.fetch1(c2, "FETCH 1 FLAGS"), b"* 1 FETCH (FLAGS ())\r\n")

    @threaded
    def test_recent_belongs_to_exactly_one_session(self):
        deliver.prepare(self.maildir)
        a = self.connect(select="INBOX")
        b = self.connect(select="INBOX")
        self.deliver(simple("new"))
        ua, _ = a.cmd("NOOP")
        ub, _ = b.cmd("NOOP")
        self.assertIn(b"* 1 EXISTS\r\n", ua)
        self.assertIn(b"* 1 EXISTS\r\n", ub)
        recent = [u for u in ua + ub if u.endswith(b" RECENT\r\n")]
        self.assertEqual(sorted(recent), [b"* 0 RECENT\r\n", b"* 1 RECENT\r\n"])
        holder, other = (a, b) if b"* 1 RECENT\r\n" in ua else (b, a)
        self.assertEqual(self.fetch1(holder, "FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS (\\Recent))\r\n")
        self.assertEqual(self.fetch1(other, "FETCH 1 FLAGS"), b"* 1 FETCH (FLAGS ())\r\n")
        self.assertEqual(holder.cmd("SEARCH RECENT")[0], [b"* SEARCH 1\r\n"])
        self.assertEqual(holder.cmd("SEARCH NEW")[0], [b"* SEARCH 1\r\n"])
        self.assertEqual(holder.cmd("SEARCH OLD")[0], [b"* SEARCH\r\n"])
        self.assertEqual(other.cmd("SEARCH RECENT")[0], [b"* SEARCH\r\n"])
        self.assertEqual(other.cmd("SEARCH OLD")[0], [b"* SEARCH 1\r\n"])
        # \Recent cannot be stored (RFC 3501 2.3.2) and survives STORE FLAGS
        holder.cmd("STORE 1 FLAGS (\\Seen)")
        self.assertEqual(self.fetch1(holder, "FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS (\\Recent \\Seen))\r\n")
        self.assertEqual(holder.cmd("SEARCH NEW")[0], [b"* SEARCH\r\n"])
        # STATUS RECENT from a third session: already claimed
        c = self.connect()
        self.assertEqual(c.cmd("STATUS INBOX (RECENT)")[0],
                         [b"* STATUS INBOX (RECENT 0)\r\n"])
        # a new session does not see it \Recent any more
        holder.cmd("LOGOUT")
        c.cmd("SELECT INBOX")
        self.assertEqual(self.fetch1(c, "FETCH 1 FLAGS"), b"* 1 FETCH (FLAGS (\\Seen))\r\n")

    @threaded
    def test_status_recent_before_anyone_claims(self):
        self.fill(simple("old"))
        self.deliver(simple("new"))
        c = self.connect()
        self.assertEqual(c.cmd("STATUS INBOX (MESSAGES RECENT UNSEEN)")[0],
                         [b"* STATUS INBOX (MESSAGES 2 RECENT 1 UNSEEN 2)\r\n"])

    @threaded
    def test_select_other_mailbox_closes_the_first(self):
        self.fill(simple("one"))
        c = self.connect(select="INBOX")
        c.cmd("STORE 1 +FLAGS (\\Deleted)")
        untagged, done = c.cmd("SELECT Trash")
        # no EXPUNGE: SELECT does not expunge (and rev2 CLOSED code is optional)
        self.assertFalse([u for u in untagged if b"EXPUNGE" in u])
        self.assertIn(b"* 0 EXISTS\r\n", untagged)
        c.cmd("SELECT INBOX")
        self.assertEqual(self.fetch1(c, "FETCH 1 FLAGS"), b"* 1 FETCH (FLAGS (\\Deleted))\r\n")
        # a failed SELECT leaves no mailbox selected (RFC 9051 6.3.2)
        c.cmd("SELECT nosuch", ok=False)
        _u, done = c.cmd("FETCH 1 FLAGS", ok=False)
        self.assertRegex(done, rb"\At[0-9]+ BAD ")

    @threaded
    def test_close_unselect_expunge(self):
        self.fill(simple("one"), simple("two"), simple("three"))
        c = self.connect(select="INBOX")
        c.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
        untagged, done = c.cmd("UNSELECT")
        self.assertEqual(untagged, [])
        c.cmd("SELECT INBOX")
        self.assertEqual(c.cmd("SEARCH DELETED")[0], [b"* SEARCH 2\r\n"])
        untagged, done = c.cmd("CLOSE")
        self.assertEqual(untagged, [])        # CLOSE expunges silently
        untagged, _ = c.cmd("SELECT INBOX")
        self.assertIn(b"* 2 EXISTS\r\n", untagged)
        # CLOSE on EXAMINE does not expunge
        c.cmd("STORE 1 +FLAGS (\\Deleted)")
        c.cmd("EXAMINE INBOX")
        c.cmd("CLOSE")
        untagged, _ = c.cmd("SELECT INBOX")
        self.assertIn(b"* 2 EXISTS\r\n", untagged)
        untagged, done = c.cmd("EXPUNGE")
        self.assertEqual(untagged, [b"* 1 EXPUNGE\r\n"])
        # EXPUNGE in a read-only mailbox: NO
        c.cmd("EXAMINE INBOX")
        _u, done = c.cmd("EXPUNGE", ok=False)
        self.assertRegex(done, rb"\At[0-9]+ NO ")


NESTED_BODYSTRUCTURE = (
    b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1 NIL NIL NIL NIL)'
    b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 13 1 NIL NIL NIL NIL)'
    b' "alternative" ("boundary" "alt") NIL NIL NIL)'
    b'("message" "rfc822" NIL NIL "forwarded" "7bit" 700 ("Tue, 02 Jan 2024 10:00:00 +0000"'
    b' "inner" (("Carol" NIL "carol" "example.org")) (("Carol" NIL "carol" "example.org"))'
    b' (("Carol" NIL "carol" "example.org")) ((NIL NIL "dave" "example.org")) NIL NIL NIL NIL)'
    b' (("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 12 1 NIL NIL NIL NIL)'
    b'("application" "octet-stream" ("name" "x.bin") "<part2@example.org>" "some bytes"'
    b' "base64" 10 "Q2hlY2sgSW50ZWdyaXR5IQ==" ("attachment" ("filename" "x.bin" "size" "5"))'
    b' ("en" "de") "http://example.com/x.bin")'
    b'("message" "rfc822" NIL NIL NIL "7bit" 54 (NIL "deepest" ((NIL NIL "eve" "example.net"))'
    b' ((NIL NIL "eve" "example.net")) ((NIL NIL "eve" "example.net")) NIL NIL NIL NIL NIL)'
    b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 11 1 NIL NIL NIL NIL) 4'
    b' NIL NIL NIL NIL) "mixed" ("boundary" "inner") NIL NIL NIL) 33 NIL NIL NIL NIL)'
    b'("image" "png" ("name" "a.png") NIL NIL "base64" 10 NIL ("inline" ("filename" "a.png"))'
    b' NIL NIL) "mixed" ("boundary" "outer") NIL NIL NIL)')


def strip_extensions(body: bytes) -> bytes:
    """What FETCH BODY must be: BODYSTRUCTURE without extension data."""
    def strip(b):
        if isinstance(b[0], list):
            i = next(i for i, x in enumerate(b) if not isinstance(x, list))
            return [strip(x) for x in b[:i]] + [b[i]]
        if bytes(b[0]).lower() == b"message" and bytes(b[1]).lower() == b"rfc822":
            return b[:7] + [b[7], strip(b[8]), b[9]]
        if bytes(b[0]).lower() == b"text":
            return b[:8]
        return b[:7]
    return strip(parse_list(body))


class FetchTests(ConformanceCase):
    @threaded
    def test_rfc3501_example_envelope_and_body(self):
        self.fill(RFC_EXAMPLE)
        c = self.connect(select="INBOX")
        line = self.fetch1(c, "FETCH 1 (ENVELOPE BODY RFC822.SIZE)")
        self.assertEqual(raw_item(line, b"ENVELOPE"), RFC_EXAMPLE_ENVELOPE)
        self.assertEqual(raw_item(line, b"BODY").upper(),
                         b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 39 2)')
        self.assertTrue(line.endswith(b" RFC822.SIZE %d)\r\n" % len(RFC_EXAMPLE)))

    @threaded
    def test_envelope_groups_quoting_nil(self):
        self.fill(GROUPS, crlf("X-Nothing: here", "", "body"),
                  crlf("Subject: =?utf-8?q?caf=C3=A9?=", "From: <>", "", "x"))
        c = self.connect(select="INBOX")
        line = self.fetch1(c, "FETCH 1 ENVELOPE")
        self.assertEqual(raw_item(line, b"ENVELOPE"), (
            b'(NIL "say \\"hi\\" \\\\o/" (("Doe, John" NIL "john" "example.com"))'
            b' (("Secretary" NIL "sec" "example.com")) (("Doe, John" NIL "john" "example.com"))'
            b' ((NIL NIL "A Group" NIL) ("Ed Jones" NIL "c" "a.test") (NIL NIL "joe" "where.test")'
            b' ("John" NIL "jdoe" "one.test") (NIL NIL NIL NIL))'
            b' ((NIL NIL "Undisclosed recipients" NIL) (NIL NIL NIL NIL))'
            b' NIL "<parent@example.com>" NIL)'))
        line = self.fetch1(c, "FETCH 2 ENVELOPE")
        self.assertEqual(line, b"* 2 FETCH (ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL))"
                               b"\r\n")
        env = fetch_items(self.fetch1(c, "FETCH 3 ENVELOPE"))[b"ENVELOPE"]
        self.assertEqual(env[1], b"=?utf-8?q?caf=C3=A9?=")     # encoded words untouched

    @threaded
    def test_nested_bodystructure_and_body(self):
        self.fill(NESTED)
        c = self.connect(select="INBOX")
        line = self.fetch1(c, "FETCH 1 (BODYSTRUCTURE BODY)")
        self.assertEqual(raw_item(line, b"BODYSTRUCTURE"), NESTED_BODYSTRUCTURE)
        body = fetch_items(line)[b"BODY"]
        self.assertEqual(body, strip_extensions(NESTED_BODYSTRUCTURE))
        self.assertEqual(len(NESTED), int(fetch_items(
            self.fetch1(c, "FETCH 1 RFC822.SIZE"))[b"RFC822.SIZE"]))

    @threaded
    def test_sections_of_nested_parts(self):
        self.fill(NESTED)
        c = self.connect(select="INBOX")
        items = fetch_items(self.fetch1(c, "FETCH 1 (BODY.PEEK[2.HEADER] BODY.PEEK[2.MIME] "
                                           "BODY.PEEK[2.TEXT] BODY.PEEK[2.3.HEADER] "
                                           "BODY.PEEK[1.2] BODY.PEEK[1.1.MIME] BODY.PEEK[3])"))
        inner_head, inner_text = INNER.split(b"\r\n\r\n", 1)
        self.assertEqual(items[b"BODY[2.HEADER]"], inner_head + b"\r\n\r\n")
        self.assertEqual(items[b"BODY[2.MIME]"],
                         b"Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n")
        self.assertEqual(items[b"BODY[2.TEXT]"], inner_text[:-2])
        self.assertEqual(items[b"BODY[2.3.HEADER]"],
                         b"From: eve@example.net\r\nSubject: deepest\r\n\r\n")
        self.assertEqual(items[b"BODY[1.2]"], b"<p>html</p>\r\n")
        self.assertEqual(items[b"BODY[1.1.MIME]"],
                         b"Content-Type: text/plain; charset=us-ascii\r\n\r\n")
        self.assertEqual(items[b"BODY[3]"], b"iVBORw==\r\n")
        # a message/rfc822 part inside a multipart at 1.2: BODY[1.2.HEADER]
        outer = crlf("Subject: wrap", 'Content-Type: multipart/mixed; boundary="b"', "", "--b",
                     'Content-Type: multipart/mixed; boundary="c"', "", "--c", "", "first", "",
                     "--c", "Content-Type: message/rfc822", "", "Subject: in", "", "text", "",
                     "--c--", "", "--b--")
        self.deliver(outer)
        c.cmd("NOOP")
        items = fetch_items(self.fetch1(c, "FETCH 2 (BODY.PEEK[1.2.HEADER] BODY.PEEK[1.2.TEXT]"
                                           " BODY.PEEK[1.1])"))
        self.assertEqual(items[b"BODY[1.2.HEADER]"], b"Subject: in\r\n\r\n")
        self.assertEqual(items[b"BODY[1.2.TEXT]"], b"text\r\n")
        self.assertEqual(items[b"BODY[1.1]"], b"first\r\n")

    @threaded
    def test_header_fields(self):
        self.fill(RFC_EXAMPLE)
        c = self.connect(select="INBOX")
        line = self.fetch1(c, "FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject cc X-Absent)])")
        self.assertRegex(line, rb"BODY\[HEADER\.FIELDS \((?i:Subject cc X-Absent)\)\] \{")
        value = list(fetch_items(line).values())[0]
        self.assertEqual(value, b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
                                b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>"
                                b"\r\n\r\n")
        line = self.fetch1(c, "FETCH 1 (BODY.PEEK[HEADER.FIELDS (X-Absent)])")
        self.assertEqual(list(fetch_items(line).values())[0], b"\r\n")
        line = self.fetch1(c, "FETCH 1 (BODY.PEEK[HEADER.FIELDS.NOT (Date From Subject To cc "
                              "Message-Id)])")
        self.assertEqual(list(fetch_items(line).values())[0],
                         b"MIME-Version: 1.0\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII"
                         b"\r\n\r\n")
        # an astring list with a quoted name
        line = self.fetch1(c, 'FETCH 1 (BODY.PEEK[HEADER.FIELDS ("Subject")])')
        self.assertIn(b"Subject: IMAP4rev1", line)

    @threaded
    def test_partial_fetch(self):
        self.fill(RFC_EXAMPLE)
        c = self.connect(select="INBOX")
        items = fetch_items(self.fetch1(c, "FETCH 1 (BODY.PEEK[]<0.10> BODY.PEEK[TEXT]<3.4>)"))
        # RFC 9051 7.5.2: the response names only the origin
        self.assertEqual(items[b"BODY[]<0>"], RFC_EXAMPLE[:10])
        self.assertEqual(items[b"BODY[TEXT]<3>"], b"utes")
        line = self.fetch1(c, "FETCH 1 (BODY.PEEK[]<375.100>)")
        self.assertEqual(line, b"* 1 FETCH (BODY[]<375> {6}\r\nine.\r\n)\r\n")
        # a partial starting past the end is the empty string
        line = self.fetch1(c, "FETCH 1 (BODY.PEEK[]<100000.5>)")
        self.assertEqual(line, b'* 1 FETCH (BODY[]<100000> "")\r\n')
        line = self.fetch1(c, "FETCH 1 (BODY.PEEK[1]<0.7>)")
        self.assertEqual(fetch_items(line)[b"BODY[1]<0>"], b"Minutes")

    @threaded
    def test_whole_message_size_and_seen(self):
        self.fill(NESTED, RFC_EXAMPLE)
        c = self.connect(select="INBOX")
        untagged, _ = c.cmd("FETCH 1 (BODY.PEEK[] RFC822.SIZE)")
        items = fetch_items(untagged[0])
        self.assertEqual(items[b"BODY[]"], NESTED)
        self.assertEqual(int(items[b"RFC822.SIZE"]), len(items[b"BODY[]"]))
        self.assertNotIn(b"FLAGS", untagged[0])       # PEEK: \Seen not set
        self.assertEqual(self.fetch1(c, "FETCH 1 FLAGS"), b"* 1 FETCH (FLAGS ())\r\n")
        # BODY[] sets \Seen and the FLAGS come in the same response
        untagged, _ = c.cmd("FETCH 2 BODY[]")
        self.assertEqual(len(untagged), 1)
        items = fetch_items(untagged[0])
        self.assertEqual(items[b"BODY[]"], RFC_EXAMPLE)
        self.assertEqual(items[b"FLAGS"], [b"\\Seen"])
        # already \Seen: no FLAGS needed, the data is the same
        untagged, _ = c.cmd("FETCH 2 RFC822")
        self.assertEqual(fetch_items(untagged[0])[b"RFC822"], RFC_EXAMPLE)
        untagged, _ = c.cmd("FETCH 1 BODY[TEXT]")
        self.assertEqual(fetch_items(untagged[0])[b"FLAGS"], [b"\\Seen"])

    @threaded
    def test_every_item_and_macros(self):
        self.fill(RFC_EXAMPLE)
        c = self.connect(select="INBOX")
        items = fetch_items(self.fetch1(c, "FETCH 1 ALL"))
        self.assertEqual(sorted(items), [b"ENVELOPE", b"FLAGS", b"INTERNALDATE",
                                         b"RFC822.SIZE"])
        items = fetch_items(self.fetch1(c, "FETCH 1 FAST"))
        self.assertEqual(sorted(items), [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"])
        items = fetch_items(self.fetch1(c, "FETCH 1 FULL"))
        self.assertEqual(sorted(items), [b"BODY", b"ENVELOPE", b"FLAGS", b"INTERNALDATE",
                                         b"RFC822.SIZE"])
        items = fetch_items(self.fetch1(
            c, "FETCH 1 (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE "
               "RFC822.HEADER BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[1] BODY.PEEK[1.MIME])"))
        head, text = RFC_EXAMPLE.split(b"\r\n\r\n", 1)
        self.assertEqual(items[b"RFC822.HEADER"], head + b"\r\n\r\n")
        self.assertEqual(items[b"BODY[HEADER]"], head + b"\r\n\r\n")
        self.assertEqual(items[b"BODY[TEXT]"], text)
        self.assertEqual(items[b"BODY[1]"], text)
        self.assertEqual(items[b"UID"], b"1")
        # UID FETCH always includes UID (RFC 9051 6.4.9)
        line = self.fetch1(c, "UID FETCH 1 FLAGS")
        self.assertEqual(fetch_items(line)[b"UID"], b"1")

    @threaded
    def test_bodystructure_of_simple_parts(self):
        plain = crlf("Subject: p", "", "one", "two", "three")
        mixed = crlf("Subject: m", "Content-Type: multipart/mixed; boundary=XX", "", "--XX",
                     "", "implicit text/plain", "--XX", "Content-Type: text/plain; format=flowed;"
                     " charset=\"iso-8859-1\"", "Content-Transfer-Encoding: quoted-printable",
                     "", "caf=E9", "--XX--")
        self.fill(plain, mixed)
        c = self.connect(select="INBOX")
        line = self.fetch1(c, "FETCH 1 BODYSTRUCTURE")
        self.assertEqual(raw_item(line, b"BODYSTRUCTURE").upper(),
                         b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 17 3 NIL NIL'
                         b' NIL NIL)')
        line = self.fetch1(c, "FETCH 2 BODYSTRUCTURE")
        self.assertEqual(raw_item(line, b"BODYSTRUCTURE").upper(),
                         b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 19 1 NIL NIL NIL'
                         b' NIL)("TEXT" "PLAIN" ("FORMAT" "FLOWED" "CHARSET" "ISO-8859-1") NIL NIL'
                         b' "QUOTED-PRINTABLE" 6 1 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "XX") NIL'
                         b' NIL NIL)')


SEARCH_MESSAGES = [
    ("(\\Seen \\Answered)", "01-Jan-2024 10:00:00 +0000",
     simple("alpha", "the quick brown fox", extra=("Cc: dan@example.com",
                                                   "Bcc: secret@example.com"))),
    ("(\\Flagged \\Deleted $Work)", "15-Feb-2024 10:00:00 +0000",
     crlf("From: Carol <carol@example.org>", "To: alice@example.com", "Subject: beta",
          "Date: Thu, 15 Feb 2024 08:00:00 +0000", "X-Empty: something", "", "x" * 2000)),
    ("(\\Draft)", "10-Mar-2024 10:00:00 +0000",
     crlf("From: bob@example.com", "Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=",
          "Date: Sun, 10 Mar 2024 13:30:00 +0000", "", "body three")),
    ("()", "10-Mar-2024 11:00:00 +0000",
     crlf("From: zed@example.net", "X-Empty:", "Date: Mon, 11 Mar 2024 09:00:00 +0000", "",
          "no subject")),
]


class SearchTests(ConformanceCase):
    def setup_search(self) -> Client:
        deliver.prepare(self.maildir)
        a = self.connect()
        for flags, date, data in SEARCH_MESSAGES:
            _u, done = a.cmd_literal(f'APPEND INBOX {flags} "{date}"'.encode(), data)
            self.assertRegex(done, rb"\At[0-9]+ OK \[APPENDUID [0-9]+ [0-9]+\] ")
        a.cmd("LOGOUT")
        self.connect(select="INBOX")
        c = self.connect(select="INBOX")       # the first took \Recent: c sees none
        return c

    def search(self, c: Client, criteria: str | bytes, uid: bool = False) -> list[int]:
        if isinstance(criteria, str):
            criteria = criteria.encode()
        untagged, _ = c.cmd((b"UID SEARCH " if uid else b"SEARCH ") + criteria)
        lines = [u for u in untagged if u.startswith(b"* SEARCH")]
        self.assertEqual(len(lines), 1, untagged)
        return [int(n) for n in lines[0].split()[2:]]

    @threaded
    def test_every_key(self):
        c = self.setup_search()
        cases = {
            "ALL": [1, 2, 3, 4], "ANSWERED": [1], "UNANSWERED": [2, 3, 4],
            "DELETED": [2], "UNDELETED": [1, 3, 4], "DRAFT": [3], "UNDRAFT": [1, 2, 4],
            "FLAGGED": [2], "UNFLAGGED": [1, 3, 4], "SEEN": [1], "UNSEEN": [2, 3, 4],
            "KEYWORD $Work": [2], "UNKEYWORD $Work": [1, 3, 4], "KEYWORD $Nope": [],
            "RECENT": [], "NEW": [], "OLD": [1, 2, 3, 4],
            "BCC secret": [1], "CC dan@": [1], "TO alice": [1, 2], "FROM CAROL": [2],
            "FROM bob@example.com": [1, 3], "SUBJECT alp": [1], 'SUBJECT ""': [1, 2, 3],
            "BODY fox": [1], "BODY carol": [], "TEXT carol": [2], "TEXT FOX": [1],
            "HEADER X-Empty something": [2], 'HEADER X-Empty ""': [2, 4],
            'HEADER "X-Absent" ""': [], "HEADER subject BETA": [2],
            "LARGER 1000": [2], "SMALLER 1000": [1, 3, 4], "LARGER 100000": [],
            "BEFORE 15-Feb-2024": [1], "ON 15-Feb-2024": [2], "SINCE 15-Feb-2024": [2, 3, 4],
            "SINCE 1-Mar-2024": [3, 4], "ON 10-Mar-2024": [3, 4],
            "SENTBEFORE 15-Feb-2024": [1], "SENTON 15-Feb-2024": [2],
            "SENTSINCE 10-Mar-2024": [3, 4], "SENTON 11-Mar-2024": [4],
            "1": [1], "2:*": [2, 3, 4], "*": [4], "*:3": [3, 4], "1,3:4": [1, 3, 4],
            "5:*": [4],          # RFC 9051 6.4.4: * is the largest number in use
            "UID 2:3": [2, 3], "UID 3:*": [3, 4], "UID 100:*": [4], "UID 100:200": [],
            "OR SEEN FLAGGED": [1, 2], "NOT SEEN": [2, 3, 4],
            "NOT (OR SEEN OR DRAFT DELETED)": [4],
            "NOT (SEEN OR DRAFT DELETED)": [1, 2, 3, 4], "(FROM bob SUBJECT alpha)": [1],
            "OR (SEEN ANSWERED) (DRAFT NOT FLAGGED)": [1, 3], "SEEN UNSEEN": [],
            "NOT NOT SEEN": [1], "OR OR SEEN DRAFT DELETED": [1, 2, 3],
            "CHARSET US-ASCII SUBJECT beta": [2], "CHARSET UTF-8 ALL": [1, 2, 3, 4],
        }
        for criteria, expected in cases.items():
            self.assertEqual(self.search(c, criteria), expected, criteria)

    @threaded
    def test_uid_search_and_out_of_range(self):
        c = self.setup_search()
        uids = [int(fetch_items(u)[b"UID"]) for u in c.cmd("FETCH 1:* UID")[0]]
        self.assertEqual(self.search(c, "SEEN", uid=True), [uids[0]])
        self.assertEqual(self.search(c, "1:2", uid=True), uids[:2])
        self.assertEqual(self.search(c, "UID 900:999", uid=True), [])
        # out-of-range UIDs in UID commands: no error, no data (RFC 9051 6.4.9)
        untagged, done = c.cmd("UID FETCH 900:999 FLAGS")
        self.assertEqual(untagged, [])
        untagged, done = c.cmd("UID STORE 900 +FLAGS (\\Seen)")
        self.assertEqual(untagged, [])
        untagged, done = c.cmd("UID COPY 900:999 Trash")
        self.assertEqual(untagged, [])
        untagged, done = c.cmd("UID MOVE 900:999 Trash")
        self.assertEqual(untagged, [])
        untagged, done = c.cmd("UID EXPUNGE 900")
        self.assertEqual(untagged, [])
        # UID 999:* covers the largest UID (its range is 999:max -> max:999)
        untagged, _ = c.cmd("UID FETCH 999:* FLAGS")
        self.assertEqual(len(untagged), 1)
        self.assertIn(b"UID %d" % uids[-1], untagged[0])
        # a message sequence number out of range is an error (RFC 9051 6.4.5)
        _u, done = c.cmd("FETCH 9 FLAGS", ok=False)
        self.assertRegex(done, rb"\At[0-9]+ BAD ")

    @threaded
    def test_charset_and_literals(self):
        c = self.setup_search()
        word = "grüße".encode()
        tag = c.tag()
        c.send(tag + b" SEARCH CHARSET UTF-8 SUBJECT {%d}\r\n" % len(word))
        self.assertTrue(c.response().startswith(b"+ "))
        c.send(word + b"\r\n")
        untagged, done = c.until_tagged(tag)
        self.assertEqual(untagged, [b"* SEARCH 3\r\n"])
        _u, done = c.cmd("SEARCH CHARSET X-NOSUCH SUBJECT x", ok=False)
        self.assertRegex(done, rb"\At[0-9]+ NO \[BADCHARSET( \([^)]*\))?\] ")
        untagged, _ = c.cmd("SEARCH RETURN (MIN MAX COUNT) UNSEEN")
        self.assertEqual(untagged, [b'* ESEARCH (TAG "%s") MIN 2 MAX 4 COUNT 3\r\n'
                                    % (b"t%d" % c._tag)])
        untagged, _ = c.cmd("SEARCH RETURN () NOT ALL")
        self.assertEqual(untagged, [b'* ESEARCH (TAG "%s")\r\n' % (b"t%d" % c._tag)])

    @threaded
    def test_recent_new_in_the_claiming_session(self):
        deliver.prepare(self.maildir)
        a = self.connect()
        for flags, date, data in SEARCH_MESSAGES:
            a.cmd_literal(f'APPEND INBOX {flags} "{date}"'.encode(), data)
        b = self.connect(select="INBOX")
        self.assertEqual(self.search(b, "RECENT"), [1, 2, 3, 4])
        self.assertEqual(self.search(b, "NEW"), [2, 3, 4])
        self.assertEqual(self.search(b, "OLD"), [])
        self.assertEqual(self.search(b, "NOT RECENT"), [])


class MailboxChangeTests(ConformanceCase):
    @threaded
    def test_store_variants(self):
        self.fill(simple("one"), simple("two"), simple("three"))
        c = self.connect(select="INBOX")
        f = [sorted_flags(u) for u in c.cmd("STORE 1:2 +FLAGS (\\Seen $Work)")[0]]
        self.assertEqual(f[0:1], [sorted_flags(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen "
                                               b"\\Draft $Forwarded $Work)\r\n")])
        self.assertTrue(f[1].startswith(b"* OK [PERMANENTFLAGS ("), f)
        self.assertEqual(f[2:], [b"* 1 FETCH (FLAGS ($Work \\Seen))\r\n",
                                 b"* 2 FETCH (FLAGS ($Work \\Seen))\r\n"])
        self.assertEqual([sorted_flags(u) for u in c.cmd("STORE 2 -FLAGS ($Work)")[0]],
                         [b"* 2 FETCH (FLAGS (\\Seen))\r\n"])
        self.assertEqual(c.cmd("STORE 3 FLAGS (\\Flagged)")[0],
                         [b"* 3 FETCH (FLAGS (\\Flagged))\r\n"])
        self.assertEqual(c.cmd("STORE 1:3 +FLAGS.SILENT (\\Answered)")[0], [])
        self.assertEqual(c.cmd("STORE 3 -FLAGS.SILENT (\\Answered)")[0], [])
        self.assertEqual([sorted_flags(u) for u in c.cmd("FETCH 1:3 FLAGS")[0]], [
            b"* 1 FETCH (FLAGS ($Work \\Answered \\Seen))\r\n",
            b"* 2 FETCH (FLAGS (\\Answered \\Seen))\r\n",
            b"* 3 FETCH (FLAGS (\\Flagged))\r\n"])
        # UID STORE answers with UID in each FETCH (RFC 9051 6.4.9)
        untagged, _ = c.cmd("UID STORE 3 FLAGS ()")
        self.assertEqual(sorted(fetch_items(untagged[0])), [b"FLAGS", b"UID"])
        # a flag list without parentheses is allowed
        self.assertEqual(c.cmd("STORE 3 +FLAGS \\Draft")[0], [b"* 3 FETCH (FLAGS (\\Draft))\r\n"])
        # \Recent cannot be stored
        c.cmd("STORE 3 +FLAGS (\\Recent)", ok=False)

    @threaded
    def test_expunge_sequence_numbering(self):
        self.fill(*[simple(f"m{i}") for i in range(1, 7)])
        c = self.connect(select="INBOX")
        c.cmd("STORE 2,3,5 +FLAGS.SILENT (\\Deleted)")
        untagged, done = c.cmd("EXPUNGE")
        # each EXPUNGE renumbers the rest: 2, then old 3 is 2, then old 5 is 3
        self.assertEqual(untagged, [b"* 2 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n"])
        subjects = [fetch_items(u)[b"BODY[HEADER.FIELDS (SUBJECT)]"]
                    for u in c.cmd("FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]")[0]]
        self.assertEqual(subjects, [b"Subject: m1\r\n\r\n", b"Subject: m4\r\n\r\n",
                                    b"Subject: m6\r\n\r\n"])
        # UID EXPUNGE removes only the given UIDs that are \Deleted
        c.cmd("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        untagged, done = c.cmd("UID EXPUNGE 4:6")
        self.assertEqual(untagged, [b"* 2 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"])

    @threaded
    def test_copy_and_move(self):
        self.fill(*[simple(f"m{i}") for i in range(1, 5)])
        c = self.connect(select="INBOX")
        c.cmd("STORE 2 +FLAGS (\\Flagged)")
        c.cmd("CREATE Dest")
        untagged, done = c.cmd("COPY 2:3 Dest")
        self.assertEqual(untagged, [])
        self.assertRegex(done, rb"\At[0-9]+ OK \[COPYUID [0-9]+ 2:3 1:2\] ")
        untagged, done = c.cmd("MOVE 1,3 Dest")
        # RFC 6851: COPYUID in an untagged OK before the EXPUNGEs
        self.assertRegex(untagged[0], rb"\A\* OK \[COPYUID [0-9]+ 1,3 3:4\] ")
        self.assertEqual(untagged[1:], [b"* 1 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"])
        untagged, _ = c.cmd("UID MOVE 4 Dest")
        self.assertEqual(untagged[1:], [b"* 2 EXPUNGE\r\n"])
        c.cmd("SELECT Dest")
        self.assertEqual([sorted_flags(u) for u in c.cmd("FETCH 1:* FLAGS")[0]], [
            b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n", b"* 2 FETCH (FLAGS (\\Recent))\r\n",
            b"* 3 FETCH (FLAGS (\\Recent))\r\n", b"* 4 FETCH (FLAGS (\\Recent))\r\n",
            b"* 5 FETCH (FLAGS (\\Recent))\r\n"])

    @threaded
    def test_append_flags_and_date(self):
        deliver.prepare(self.maildir)
        c = self.connect()
        data = simple("appended")
        _u, done = c.cmd_literal(b'APPEND INBOX (\\Seen $Tag) "05-Jul-2023 14:03:09 +0200"',
                                 data)
        m = re.match(rb"t2 OK \[APPENDUID ([0-9]+) ([0-9]+)\] ", done)
        self.assertTrue(m, done)
        _u, done = c.cmd_literal(b"APPEND INBOX", data, plus=True)
        self.assertRegex(done, rb"\At3 OK \[APPENDUID [0-9]+ 2\] ")
        _u, done = c.cmd_literal(b'APPEND INBOX " 5-Jul-2023 14:03:09 +0200"', data)
        c.cmd("SELECT INBOX")
        uid = m.group(2).decode()
        line = sorted_flags(self.fetch1(c, f"UID FETCH {uid} (FLAGS INTERNALDATE RFC822.SIZE "
                                           "BODY.PEEK[])"))
        items = fetch_items(line)
        self.assertEqual(items[b"FLAGS"], [b"$Tag", b"\\Recent", b"\\Seen"])
        # the same instant (the zone the server answers in is its choice)
        self.assertIn(items[b"INTERNALDATE"], (b"05-Jul-2023 14:03:09 +0200",
                                               b"05-Jul-2023 12:03:09 +0000"))
        self.assertEqual(items[b"BODY[]"], data)
        self.assertEqual(int(items[b"RFC822.SIZE"]), len(data))
        self.assertIn(fetch_items(self.fetch1(c, "FETCH 3 INTERNALDATE"))[b"INTERNALDATE"],
                      (b"05-Jul-2023 14:03:09 +0200", b"05-Jul-2023 12:03:09 +0000"))
        # bad date or flags: BAD
        _u, done = c.cmd(b'APPEND INBOX "31-Foo-2023 14:03:09 +0200" {1+}\r\nx', ok=False)
        self.assertRegex(done, rb"\At[0-9]+ BAD ")
        _u, done = c.cmd(b'APPEND INBOX (\\Recent) {1+}\r\nx', ok=False)
        self.assertRegex(done, rb"\At[0-9]+ (BAD|NO) ")
        # APPEND to the selected mailbox: EXISTS before the tagged OK
        untagged, done = c.cmd_literal(b"APPEND INBOX", data, plus=True)
        self.assertIn(b"* 4 EXISTS\r\n", untagged)

    @threaded
    def test_other_session_changes_arrive_between_commands(self):
        self.fill(simple("one"), simple("two"), simple("three"))
        a = self.connect(select="INBOX")
        b = self.connect(select="INBOX")
        b.cmd("STORE 2 +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(a.cmd("NOOP")[0], [b"* 2 FETCH (FLAGS (\\Flagged))\r\n"])
        b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        b.cmd("EXPUNGE")
        self.deliver(simple("four"))
        # no EXPUNGE during FETCH, STORE, SEARCH (RFC 9051 7.5.1)
        untagged, _ = a.cmd("FETCH 3 FLAGS")
        self.assertFalse([u for u in untagged if u.endswith(b"EXPUNGE\r\n")], untagged)
        untagged, _ = a.cmd("SEARCH ALL")
        self.assertFalse([u for u in untagged if u.endswith(b"EXPUNGE\r\n")], untagged)
        untagged, _ = a.cmd("NOOP")
        self.assertIn(b"* 1 EXPUNGE\r\n", untagged)
        exists = [u for u in a.seen if u.endswith(b" EXISTS\r\n")]
        self.assertEqual(exists[-1], b"* 4 EXISTS\r\n")   # announced before the EXPUNGE
        self.assertEqual(len(a.cmd("FETCH 1:* UID")[0]), 3)

    @threaded
    def test_idle(self):
        self.fill(simple("one"))
        a = self.connect(select="INBOX")
        b = self.connect(select="INBOX")
        tag = a.tag()
        a.send(tag + b" IDLE\r\n")
        self.assertTrue(a.response().startswith(b"+ "))
        self.deliver(simple("two"))
        self.assertEqual(a.response(), b"* 2 EXISTS\r\n")
        self.assertEqual(a.response(), b"* 1 RECENT\r\n")
        b.cmd("STORE 1 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(a.response(), b"* 1 FETCH (FLAGS (\\Seen))\r\n")
        b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.response()
        b.cmd("EXPUNGE")
        self.assertEqual(a.response(), b"* 1 EXPUNGE\r\n")
        a.send(b"DONE\r\n")
        _u, done = a.until_tagged(tag)
        self.assertRegex(done, rb"\At[0-9]+ OK ")
        # anything but DONE ends IDLE with BAD
        tag = a.tag()
        a.send(tag + b" IDLE\r\n")
        a.response()
        a.send(b"NOOP\r\n")
        _u, done = a.until_tagged(tag)
        self.assertRegex(done, rb"\At[0-9]+ BAD ")
        a.cmd("NOOP")


class ListTests(ConformanceCase):
    @threaded
    def test_list_lsub_and_delimiter(self):
        c = self.connect()
        c.cmd("CREATE Work.Projects")
        c.cmd('CREATE "Quote\\"d"')
        untagged, _ = c.cmd('LIST "" ""')
        self.assertEqual(untagged, [b'* LIST (\\Noselect) "." ""\r\n'])
        untagged, _ = c.cmd('LIST "" *')
        names = {u.rsplit(b'" ', 1)[1][:-2]: u for u in untagged}
        self.assertEqual(sorted(names), sorted([b"INBOX", b"Drafts", b"Sent", b"Trash", b"Junk",
                                                b"Archive", b"Work", b"Work.Projects",
                                                b'"Quote\\"d"']))
        self.assertRegex(names[b"Work"], rb"\A\* LIST \(\\HasChildren\) \".\" Work\r\n")
        self.assertRegex(names[b"Work.Projects"], rb"\\HasNoChildren")
        untagged, _ = c.cmd('LIST "" %')
        self.assertNotIn(b"Work.Projects", b"".join(untagged))
        untagged, _ = c.cmd('LIST Work. %')
        self.assertEqual(untagged, [b'* LIST (\\HasNoChildren) "." Work.Projects\r\n'])
        untagged, _ = c.cmd('LIST "" inbox')
        self.assertEqual(len(untagged), 1)
        self.assertTrue(untagged[0].endswith(b' "." INBOX\r\n'))
        c.cmd("SUBSCRIBE Work.Projects")
        untagged, _ = c.cmd('LSUB "" *')
        self.assertIn(b'* LSUB () "." Work.Projects\r\n', untagged)
        untagged, _ = c.cmd('LSUB "" Work')
        self.assertEqual(untagged, [])
        # LSUB with % shows an unsubscribed parent as \Noselect (RFC 3501 6.3.9)
        untagged, _ = c.cmd('LSUB "" %')
        self.assertIn(b'* LSUB (\\Noselect) "." Work\r\n', untagged)
        c.cmd("UNSUBSCRIBE Work.Projects")
        self.assertEqual(c.cmd('LSUB "" Work.*')[0], [])

    @threaded
    def test_status_and_namespace(self):
        self.fill(simple("one"), simple("two"))
        c = self.connect(select="INBOX")
        c.cmd("STORE 1 +FLAGS (\\Seen)")
        untagged, _ = c.cmd("STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
        self.assertRegex(untagged[0], rb"\A\* STATUS INBOX \(MESSAGES 2 RECENT 0 UIDNEXT 3 "
                                      rb"UIDVALIDITY [0-9]+ UNSEEN 1\)\r\n\Z")
        untagged, _ = c.cmd('STATUS "Trash" (MESSAGES)')
        self.assertEqual(untagged, [b"* STATUS Trash (MESSAGES 0)\r\n"])
        _u, done = c.cmd("STATUS INBOX (BOGUS)", ok=False)
        self.assertRegex(done, rb"\At[0-9]+ BAD ")
        untagged, _ = c.cmd("NAMESPACE")
        self.assertEqual(untagged, [b'* NAMESPACE (("" ".")) NIL NIL\r\n'])

    @threaded
    def test_delete_and_rename(self):
        c = self.connect()
        c.cmd("CREATE A.B")
        # deleting a parent with children: it becomes \Noselect (RFC 3501 6.3.4)
        c.cmd("DELETE A")
        untagged, _ = c.cmd('LIST "" A')
        self.assertEqual(untagged, [b'* LIST (\\Noselect \\HasChildren) "." A\r\n'])
        # extended LIST computes \NonExistent (RFC 5258 3, RFC 9051 7.3.1)
        untagged, _ = c.cmd('LIST "" A RETURN (CHILDREN)')
        self.assertEqual(untagged, [b'* LIST (\\NonExistent \\HasChildren) "." A\r\n'])
        c.cmd("RENAME A.B C")
        untagged, _ = c.cmd('LIST "" C*')
        self.assertEqual(untagged, [b'* LIST (\\HasNoChildren) "." C\r\n'])
        # RENAME INBOX moves its messages, INBOX stays (RFC 9051 6.3.6)
        self.deliver(simple("x"))
        c.cmd("RENAME INBOX Old")
        self.assertEqual(c.cmd("STATUS INBOX (MESSAGES)")[0],
                         [b"* STATUS INBOX (MESSAGES 0)\r\n"])
        self.assertEqual(c.cmd("STATUS Old (MESSAGES)")[0], [b"* STATUS Old (MESSAGES 1)\r\n"])
        c.cmd("CREATE Old", ok=False)
        c.cmd("RENAME C Old", ok=False)
