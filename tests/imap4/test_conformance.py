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
import shutil
import ssl
import tempfile
import time

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from indimail_tw.auth import passwords
from indimail_tw.imap4.service import IMAPFactory
from indimail_tw.maildir import deliver
from indimail_tw.paths import Paths
from indimail_tw.service import build_context
from indimail_tw.smtp.service import CertificateSource
from indimail_tw.storage import User
from indimail_tw.storage.store import REPOS
from indimail_tw.tlsutil import make_self_signed
from tests.imap4.conformance_support import (
    NIL,
    Client,
    Str,
    SyntaxViolation,
    check_response,
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
        self.root = tempfile.mkdtemp(prefix="itw-imapc-")
        self.addCleanup(shutil.rmtree, self.root, True)
        environ = {"MIGRATEUSER": os.path.join(self.root, "absent"), "NORELAY": "1",
                   **self.environ}
        self.context = build_context(Paths.resolve(self.root, environ={}), environ,
                                     reactor=reactor)
        self.addCleanup(self.context.engine.close)
        self.home = os.path.join(self.root, "home", "alice")
        self.maildir = os.path.join(self.home, "Maildir")

        def add(txn):
            REPOS.users.add(txn, User(name="alice", domain="example.com",
                                      passwd=passwords.make_hash(PASSWORD, "SHA-512"),
                                      dir=self.home))
        self.context.engine.run_sync(add)
        self.cert = os.path.join(self.context.paths.certs, "servercert.pem")
        make_self_signed(self.cert, "imap.example.com")
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
