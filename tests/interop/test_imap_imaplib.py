"""Python's imaplib and imapclient against a listening IMAP server over loopback.

The server runs in-process on the real reactor (trial) with the real user
store (SQLite), checker, realm, MailLogin with its post-login tasks, the
Maildir index in threads and certificate handling -- everything but the
listening port description is what ``twistd indimail --imap`` builds.
The clients run in threads so the reactor keeps serving them.
"""

from __future__ import annotations

import imaplib
import os
import ssl

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from indimail_tw.imap4.service import IMAPFactory
from indimail_tw.maildir import deliver
from indimail_tw.smtp.service import CertificateSource
from tests.imap4.conformance_support import live_site

USER, PASSWORD = "alice@example.com", "s3cret-Pw"
MESSAGE = b"From: bob@example.com\r\nTo: alice@example.com\r\nSubject: hello\r\n\r\nhi there\r\n"


class IMAPInteropTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.root, self.context, self.home, self.cert = live_site(self, "itw-imap-",
                                                                  PASSWORD)
        self.ports = []

    def tearDown(self):
        for factory in getattr(self, "factories", []):
            factory.shutdown()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    def listen(self, tls_on_connect: bool = False) -> int:
        factory = IMAPFactory(self.context, tls_on_connect=tls_on_connect,
                              certificate=CertificateSource(self.cert, reactor.seconds),
                              clock=reactor)
        self.factories = [*getattr(self, "factories", []), factory]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return port.getHost().port

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cert)
        context.check_hostname = False
        return context

    def deliver(self, data: bytes = MESSAGE) -> None:
        maildir = deliver.prepare(os.path.join(self.home, "Maildir"))
        path = os.path.join(self.root, "msg")
        with open(path, "wb") as f:
            f.write(data)
        deliver.deliver(maildir, path)

    @defer.inlineCallbacks
    def test_imaplib_starttls_session(self):
        port = self.listen()
        self.deliver()

        def session():
            client = imaplib.IMAP4("127.0.0.1", port)
            try:
                assert "LOGINDISABLED" in client.capabilities
                try:
                    client.login(USER, PASSWORD)
                except imaplib.IMAP4.error as e:
                    assert "PRIVACYREQUIRED" in str(e)
                else:
                    raise AssertionError("plaintext LOGIN accepted")
                client.starttls(self.tls())
                assert "AUTH=PLAIN" in client.capabilities
                typ, _ = client.login(USER, PASSWORD)
                assert typ == "OK"
                typ, folders = client.list()
                listed = [f.decode() for f in folders]
                assert any(f.endswith('"." INBOX') for f in listed), listed
                assert any("\\Sent" in f for f in listed), listed
                assert client.create("Work")[0] == "OK"
                typ, data = client.append("Work", "(\\Seen)", None, MESSAGE)
                assert typ == "OK", data
                typ, data = client.status("Work", "(MESSAGES UNSEEN)")
                assert data[0].decode() == "Work (MESSAGES 1 UNSEEN 0)", data
                typ, data = client.select("INBOX")
                assert typ == "OK" and data == [b"1"], data
                typ, data = client.fetch("1", "(FLAGS BODY[HEADER.FIELDS (SUBJECT)])")
                assert b"Subject: hello" in data[0][1], data
                assert client.store("1", "+FLAGS", "\\Deleted")[0] == "OK"
                typ, data = client.search(None, "DELETED")
                assert data == [b"1"], data
                typ, data = client.expunge()
                assert data == [b"1"], data
                assert client.rename("Work", "Play")[0] == "OK"
                assert client.delete("Play")[0] == "OK"
                typ, data = client.namespace()
                assert data == [b'(("" ".")) NIL NIL'], data
                client.close()
            finally:
                client.logout()

        yield threads.deferToThread(session)

    @defer.inlineCallbacks
    def test_imaps_and_wrong_password(self):
        port = self.listen(tls_on_connect=True)

        def session():
            client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=self.tls())
            try:
                assert "LOGINDISABLED" not in client.capabilities
                try:
                    client.login(USER, "wrong")
                except imaplib.IMAP4.error as e:
                    assert "AUTHENTICATIONFAILED" in str(e)
                else:
                    raise AssertionError("wrong password accepted")
                client.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
                assert client.state == "AUTH"
            finally:
                client.logout()

        yield threads.deferToThread(session)

    @defer.inlineCallbacks
    def test_imapclient_idle_sees_a_delivery(self):
        from imapclient import IMAPClient

        port = self.listen(tls_on_connect=True)
        self.deliver()

        def session():
            client = IMAPClient("127.0.0.1", port, ssl=True, ssl_context=self.tls())
            try:
                client.login(USER, PASSWORD)
                caps = client.capabilities()
                assert b"IDLE" in caps and b"UIDPLUS" in caps, caps
                assert b"\\Trash" in [f for flags, _d, name in client.list_folders()
                                      for f in flags if name == "Trash"]
                info = client.select_folder("INBOX")
                assert info[b"EXISTS"] == 1, info
                client.idle()
                reactor.callFromThread(self.deliver)
                responses = client.idle_check(timeout=10)
                client.idle_done()
                assert (2, b"EXISTS") in responses, responses
                fetched = client.fetch([1, 2], ["ENVELOPE", "FLAGS"])
                assert fetched[1][b"ENVELOPE"].subject == b"hello", fetched
                client.set_flags([2], [b"\\Flagged"])
                assert b"\\Flagged" in client.get_flags([2])[2]
                client.create_folder("Archive.2024")
                assert client.folder_exists("Archive.2024")
                client.copy([1], "Archive.2024")
                assert client.folder_status("Archive.2024", ["MESSAGES"])[b"MESSAGES"] == 1
                quota = client.get_quota_root("INBOX")
                assert quota[0].mailbox == "INBOX", quota
            finally:
                client.logout()

        yield threads.deferToThread(session)

    @defer.inlineCallbacks
    def test_server_stop_says_bye(self):
        import socket

        port = self.listen()
        sock = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(sock.close)
        reader = sock.makefile("rb")
        greeting = yield threads.deferToThread(reader.readline)
        self.assertTrue(greeting.startswith(b"* OK [CAPABILITY "))
        listening = self.ports.pop()
        yield listening.stopListening()
        bye = yield threads.deferToThread(reader.readline)
        self.assertEqual(bye, b"* BYE Server shutting down\r\n")
        self.assertEqual((yield threads.deferToThread(reader.readline)), b"")
