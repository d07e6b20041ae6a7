"""Real clients over loopback: Python's smtplib and swaks against a listening server.

The server runs in-process on the real reactor (trial), with the real user
store (SQLite), checker, realm and certificate handling; the queue is the
in-memory fake.  swaks must run in CI (CI=true); elsewhere it is skipped when
absent.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import ssl

from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, threads, utils
from twisted.trial import unittest

from indimail_tw.auth import passwords
from indimail_tw.auth.checkers import AuthPolicy, StoreChecker
from indimail_tw.auth.realm import MaildirRealm
from indimail_tw.listeners import PROTOCOLS
from indimail_tw.policy import default_checks
from indimail_tw.policy.base import SMTPPolicy
from indimail_tw.smtp.service import CertificateSource, SMTPFactory, build
from indimail_tw.storage import User, UserStore
from indimail_tw.storage.store import REPOS
from indimail_tw.tlsutil import make_self_signed
from tests.smtp.support import Site
from tests.support import IN_CI, EngineMixin

USER, PASSWORD = "alice@example.com", "s3cret-Pw"
MESSAGE = b"From: alice@example.com\r\nTo: friend@remote.example\r\nSubject: hi\r\n\r\nhello\r\n"


class LoopbackServer:
    """A listening SMTP server on the real reactor, with the real store and checker."""

    timeout = 60

    def setUp(self):
        self.site = Site()
        self.addCleanup(self.site.cleanup)
        engine = self.make_engine()
        engine.run_sync(engine.prepare)

        def add(txn):
            REPOS.users.add(txn, User(name="alice", domain="example.com",
                                      passwd=passwords.make_cram_record(PASSWORD),
                                      dir="/nonexistent/alice"))
        engine.run_sync(add)
        store = UserStore(engine)
        self.site.store = store
        self.site.portal = Portal(MaildirRealm(store),
                                  [StoreChecker(engine, AuthPolicy(environ={}))])
        self.cert = os.path.join(self.site.paths.certs, "servercert.pem")
        make_self_signed(self.cert, "mx.example.com")
        self.ports = []

    def tearDown(self):
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    def factory(self, service="smtp", implicit_tls=False):
        return SMTPFactory(self.site.context(), service, implicit_tls=implicit_tls,
                           certificate=CertificateSource(self.cert, reactor.seconds),
                           policy=SMTPPolicy(default_checks(self.site.store,
                                                            self.site.paths.domains)),
                           clock=reactor, resolve=lambda ip: defer.succeed(None))

    def listen(self, service="smtp"):
        port = reactor.listenTCP(0, self.factory(service), interface="127.0.0.1")
        self.ports.append(port)
        return port.getHost().port

    def client_tls(self):
        context = ssl.create_default_context(cafile=self.cert)
        context.check_hostname = False
        return context


class InteropTests(LoopbackServer, EngineMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_plain_smtplib_to_a_local_user(self):
        port = self.listen()

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.example.org")
                assert s.has_extn("pipelining") and s.has_extn("chunking")
                assert not s.has_extn("auth")
                refused = s.sendmail("sender@remote.example", [USER, "nobody@example.com"],
                                     MESSAGE)
                return refused

        refused = yield threads.deferToThread(send)
        self.assertEqual(list(refused), ["nobody@example.com"])
        envelope, data = self.site.queue.messages[0]
        self.assertEqual([r.address for r in envelope.recipients], [USER])
        self.assertTrue(data.endswith(MESSAGE.replace(b"\r\n", b"\n")))

    @defer.inlineCallbacks
    def test_starttls_and_every_auth_mechanism(self):
        port = self.listen("submission")
        tls = self.client_tls()

        def send(mechanism):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.example.org")
                s.starttls(context=tls)
                s.ehlo("client.example.org")
                assert "PLAIN" in s.esmtp_features["auth"]
                s.user, s.password = USER, PASSWORD
                method = {"PLAIN": s.auth_plain, "LOGIN": s.auth_login,
                          "CRAM-MD5": s.auth_cram_md5}[mechanism]
                code, _ = s.auth(mechanism, method, initial_response_ok=True)
                assert code == 235, code
                s.sendmail(USER, ["friend@remote.example"], MESSAGE)
                try:
                    s.auth(mechanism, method)
                except smtplib.SMTPException as e:
                    return str(e)

        for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
            yield threads.deferToThread(send, mechanism)
        self.assertEqual(len(self.site.queue.messages), 3)
        envelope, data = self.site.queue.messages[0]
        self.assertEqual(envelope.protocol, "ESMTPSA")
        self.assertEqual(envelope.auth_user, USER)
        self.assertIn(b"(authenticated user alice@example.com)", data)
        self.assertIn(b"with ESMTPSA (TLSv1.", data)

    @defer.inlineCallbacks
    def test_wrong_password(self):
        port = self.listen("submission")
        tls = self.client_tls()

        def attempt():
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.starttls(context=tls)
                try:
                    s.login(USER, "wrong")
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code
        code = yield threads.deferToThread(attempt)
        self.assertEqual(code, 535)

    @defer.inlineCallbacks
    def test_raw_pipelining(self):
        port = self.listen()

        def talk():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                f = sock.makefile("rb")
                f.readline()
                sock.sendall(b"EHLO c.example\r\nMAIL FROM:<s@remote.example>\r\n"
                             b"RCPT TO:<nobody@example.com>\r\nRCPT TO:<alice@example.com>\r\n"
                             b"DATA\r\n")
                lines = []
                while len([x for x in lines if x[3:4] == b" "]) < 5:
                    lines.append(f.readline())
                sock.sendall(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
                lines += [f.readline(), f.readline()]
                return [int(x[:3]) for x in lines if x[3:4] == b" "]

        codes = yield threads.deferToThread(talk)
        self.assertEqual(codes, [250, 250, 550, 250, 354, 250, 221])

    @defer.inlineCallbacks
    def test_smtps_through_build(self):
        context = self.site.context()
        context.reactor = reactor
        service = build(context, PROTOCOLS["smtps"], "ssl:0:interface=127.0.0.1")
        self.assertTrue(service.factory.implicit_tls and service.factory.tls_on_connect)
        listening = yield service.endpoint.listen(service.factory)
        self.ports.append(listening)
        port = listening.getHost().port
        tls = self.client_tls()

        def send():
            with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=tls) as s:
                s.ehlo("client.example.org")
                assert not s.has_extn("starttls")
                s.login(USER, PASSWORD)
                s.sendmail(USER, ["friend@remote.example"], MESSAGE)

        yield threads.deferToThread(send)
        self.assertEqual(self.site.queue.messages[0][0].protocol, "ESMTPSA")

    @defer.inlineCallbacks
    def test_smtps_with_explicit_key_and_without_certificate(self):
        context = self.site.context()
        context.reactor = reactor
        spec = PROTOCOLS["smtps"]
        service = build(context, spec, spec.demo_description(self.cert).replace("2465", "0"))
        self.assertFalse(service.factory.tls_on_connect)
        listening = yield service.endpoint.listen(service.factory)
        self.ports.append(listening)
        tls = self.client_tls()

        def send(port):
            with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=tls) as s:
                s.login(USER, PASSWORD)
                s.sendmail(USER, ["friend@remote.example"], MESSAGE)

        yield threads.deferToThread(send, listening.getHost().port)
        self.assertEqual(len(self.site.queue.messages), 1)
        os.unlink(self.cert)
        service = build(context, spec, "ssl:0:interface=127.0.0.1")
        listening = yield service.endpoint.listen(service.factory)
        self.ports.append(listening)

        def refused(port):
            try:
                smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=tls)
            except (OSError, smtplib.SMTPException) as e:
                return e
        error = yield threads.deferToThread(refused, listening.getHost().port)
        self.assertIsNotNone(error)
        self.flushLoggedErrors()

    def test_implicit_tls_description(self):
        from indimail_tw.smtp.service import implicit_tls_description
        self.assertEqual(implicit_tls_description("ssl:465"), "tcp:465")
        self.assertEqual(implicit_tls_description("ssl:465:interface=\\:\\:1"),
                         "tcp:465:interface=\\:\\:1")
        self.assertIsNone(implicit_tls_description("ssl:465:privateKey=k.pem"))
        self.assertIsNone(implicit_tls_description("tcp:25"))

    def test_build_every_smtp_listener(self):
        context = self.site.context()
        context.reactor = reactor
        for name in ("smtp", "submission", "smtps"):
            spec = PROTOCOLS[name]
            service = build(context, spec, spec.demo_description(self.cert).replace(
                str(spec.demo_port), "0"))
            self.assertEqual(service.factory.service, name)
            self.assertEqual(service.factory.implicit_tls, name == "smtps")

    @defer.inlineCallbacks
    def test_swaks_starttls_auth_pipelining(self):
        swaks = shutil.which("swaks")
        if swaks is None:
            if IN_CI:
                self.fail("swaks is required in CI (apt-get install -y swaks)")
            raise unittest.SkipTest("swaks is not installed")
        port = self.listen("submission")
        out, err, code = yield utils.getProcessOutputAndValue(swaks, [
            "--server", "127.0.0.1", "--port", str(port), "--tls", "--pipeline",
            "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
            "--from", USER, "--to", "friend@remote.example", "--ehlo", "swaks.example",
            "--header", "Subject: via swaks", "--body", "dot line follows\n.\nend"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self.assertEqual(code, 0, out + err)
        envelope, data = self.site.queue.messages[0]
        self.assertEqual(envelope.auth_user, USER)
        self.assertIn(b"Subject: via swaks", data)
        self.assertIn(b"\n.\nend", data)

    @defer.inlineCallbacks
    def test_swaks_cram_md5(self):
        swaks = shutil.which("swaks")
        if swaks is None:
            if IN_CI:
                self.fail("swaks is required in CI (apt-get install -y swaks)")
            raise unittest.SkipTest("swaks is not installed")
        port = self.listen("submission")
        out, err, code = yield utils.getProcessOutputAndValue(swaks, [
            "--server", "127.0.0.1", "--port", str(port), "--tls",
            "--auth", "CRAM-MD5", "--auth-user", USER, "--auth-password", PASSWORD,
            "--from", USER, "--to", "friend@remote.example"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self.assertEqual(code, 0, out + err)
        self.assertEqual(len(self.site.queue.messages), 1)


class DirectSendTests(LoopbackServer, EngineMixin, unittest.TestCase):
    """Replies on plain TCP go straight to the socket (lineserver.send_now); after
    STARTTLS every byte goes through the TLS transport."""

    def listen_watched(self, service):
        factory = self.factory(service)
        writes = self.writes = []
        build_protocol = factory.buildProtocol

        def build(addr):
            proto = build_protocol(addr)
            made = proto.connectionMade

            def connection_made():
                real = proto.transport.write
                proto.transport.write = lambda data: (writes.append(data), real(data))
                made()

            proto.connectionMade = connection_made
            return proto

        factory.buildProtocol = build
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_plain_replies_bypass_the_transport_buffer(self):
        port = self.listen_watched("smtp")

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.example.org")
                return s.sendmail("sender@remote.example", [USER], MESSAGE)

        self.assertEqual((yield threads.deferToThread(send)), {})
        self.assertEqual(len(self.site.queue.messages), 1)
        self.assertEqual(self.writes, [])     # greeting, EHLO, MAIL..DATA, QUIT: all direct

    @defer.inlineCallbacks
    def test_after_starttls_replies_go_through_tls(self):
        port = self.listen_watched("submission")
        tls = self.client_tls()

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.example.org")
                s.starttls(context=tls)
                return s.ehlo("client.example.org")[0]

        self.assertEqual((yield threads.deferToThread(send)), 250)
        self.assertTrue(self.writes)          # the TLS transport carried the replies
