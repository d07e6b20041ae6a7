"""The agent delivering to our own SMTP server (indimail_tw.smtp), in-process on 127.0.0.1."""

from __future__ import annotations

import os
import re

from twisted.internet import defer, reactor
from twisted.trial import unittest

from indimail_tw.policy import default_checks
from indimail_tw.policy.base import SMTPPolicy
from indimail_tw.smtp.service import CertificateSource, SMTPFactory
from indimail_tw.tlsutil import make_self_signed
from tests.remote.dnsfake import a, mx, start_dns_server
from tests.remote.peer import Harness
from tests.remote.test_queue_integration import Watched, queue_settings
from tests.smtp.support import Site


class OwnServerTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.site = Site()
        self.addCleanup(self.site.cleanup)
        self.site.store.add_user("bob@example.com")
        self.cert = os.path.join(self.site.paths.certs, "servercert.pem")
        make_self_signed(self.cert, "mx.example.com")
        self.h = Harness()
        self.addCleanup(self.h.close)

    def listen(self, service: str = "smtp", interface: str = "127.0.0.1") -> int:
        factory = SMTPFactory(
            self.site.context(), service, certificate=CertificateSource(self.cert,
                                                                        reactor.seconds),
            policy=SMTPPolicy(default_checks(self.site.store, self.site.paths.domains,
                                             blocking=defer.maybeDeferred)),
            clock=reactor, resolve=lambda ip: defer.succeed(None))
        return self.h.listen(factory, interface)

    def route(self, line: str) -> None:
        self.h.write_control("smtproutes", line + "\n")
        self.h.reload()

    @defer.inlineCallbacks
    def test_delivery_with_starttls(self):
        port = self.listen()
        self.route(f"example.com:[127.0.0.1]:{port}")
        agent = self.h.agent(resolver=object())
        body = b"Subject: hello\n\nline one\n.leading dot\n"
        message = self.h.message("bob@example.com", "nobody@example.com", body=body,
                                 sender="alice@me.example")
        bob, nobody = yield self.h.deliver(agent, message)
        self.assertTrue(bob.is_ok, bob)
        self.assertTrue(nobody.is_permanent, nobody)
        self.assertTrue(nobody.diagnostic.startswith("smtp; 550"), nobody)
        ((envelope, data),) = self.site.queue.messages
        self.assertEqual(envelope.protocol, "ESMTPS")        # STARTTLS between the two
        self.assertEqual(envelope.sender, "alice@me.example")
        self.assertEqual([r.address for r in envelope.recipients], ["bob@example.com"])
        self.assertEqual(envelope.helo, "me.example")
        self.assertTrue(data.endswith(body), data)

    @defer.inlineCallbacks
    def test_two_messages_one_connection(self):
        port = self.listen()
        self.route(f"example.com:[127.0.0.1]:{port}")
        agent = self.h.agent(resolver=object())
        for n in range(2):
            (result,) = yield self.h.deliver(agent, self.h.message("bob@example.com",
                                                                   body=b"n: %d\n\nx\n" % n))
            self.assertTrue(result.is_ok, result)
        self.assertEqual(len(self.site.queue.messages), 2)
        self.assertEqual(len(agent._open), 1)

    @defer.inlineCallbacks
    def test_auth_over_tls_to_the_submission_port(self):
        port = self.listen("submission")
        self.route(f"elsewhere.example:[127.0.0.1]:{port} alice@example.com secret")
        agent = self.h.agent(resolver=object())
        (result,) = yield self.h.deliver(agent, self.h.message("friend@elsewhere.example",
                                                               sender="alice@example.com"))
        self.assertTrue(result.is_ok, result)
        ((envelope, _data),) = self.site.queue.messages
        self.assertEqual(envelope.protocol, "ESMTPSA")
        self.assertEqual(envelope.auth_user, "alice@example.com")

    @defer.inlineCallbacks
    def test_wrong_password_is_permanent(self):
        port = self.listen("submission")
        self.route(f"elsewhere.example:[127.0.0.1]:{port} alice@example.com wrong")
        agent = self.h.agent(resolver=object())
        (result,) = yield self.h.deliver(agent, self.h.message("friend@elsewhere.example"))
        self.assertTrue(result.is_permanent, result)
        self.assertEqual(result.enhanced, "5.7.8")
        self.assertEqual(self.site.queue.messages, [])

    @defer.inlineCallbacks
    def test_queue_to_queue_by_mx_from_a_real_dns_server_with_verified_tls(self):
        from indimail_tw.queue import Envelope, Queue, SyncRunner

        port = self.listen(interface="127.0.0.2")
        dns_port, listeners = start_dns_server(reactor, "example.com", {
            "example.com": [mx(10, "mx.example.com")],
            "mx.example.com": [a("127.0.0.2")]})
        for listener in listeners:
            self.addCleanup(listener.stopListening)
        # TLS is required with mx.example.com and its certificate must verify
        with open(self.cert, "rb") as f:
            (certificate,) = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                                        f.read(), re.S)
        os.makedirs(os.path.join(self.h.certs, "tlshosts"))
        with open(os.path.join(self.h.certs, "tlshosts", "mx.example.com.pem"), "wb") as f:
            f.write(certificate + b"\n")
        agent = Watched(self.h.agent(dns_servers=[("127.0.0.1", dns_port)], port=port),
                        expected=1)
        queue = Queue(os.path.join(self.h.queue, "queue1"), clock=reactor, run=SyncRunner(),
                      agents={"local": None, "remote": agent},
                      router=lambda address: "remote", settings=queue_settings)
        yield queue.start()
        self.addCleanup(queue.stop)
        body = b"Subject: by mx\n\nfrom one of our queues to the other server\n"
        yield queue.enqueue(Envelope.simple("alice@me.example", "bob@example.com"), body)
        yield agent.all_done
        ((address, result),) = agent.results
        self.assertTrue(result.is_ok, result)
        self.assertEqual(result.remote_mta, "dns; mx.example.com")
        ((envelope, data),) = self.site.queue.messages
        self.assertEqual(envelope.protocol, "ESMTPS")
        self.assertEqual([r.address for r in envelope.recipients], ["bob@example.com"])
        self.assertEqual(envelope.remote_ip, "127.0.0.1")
        self.assertTrue(data.endswith(body), data)

    @defer.inlineCallbacks
    def test_auth_with_credentials_from_remote_auth_cdb_by_sender(self):
        import cdbx

        port = self.listen("submission")
        self.route(f"elsewhere.example:[127.0.0.1]:{port} /s")
        with open(os.path.join(self.h.control, "remote_auth.cdb"), "wb") as f:
            maker = cdbx.CDB.make(f)
            maker.add(b"!alice@example.com", b"alice@example.com secret")
            maker.commit().close()
        agent = self.h.agent(resolver=object())
        (result,) = yield self.h.deliver(agent, self.h.message("friend@elsewhere.example",
                                                               sender="alice@example.com"))
        self.assertTrue(result.is_ok, result)
        ((envelope, _data),) = self.site.queue.messages
        self.assertEqual(envelope.protocol, "ESMTPSA")
        self.assertEqual(envelope.auth_user, "alice@example.com")
        # a sender without an entry goes without AUTH, which the submission port refuses
        (refused,) = yield self.h.deliver(agent, self.h.message("friend@elsewhere.example",
                                                                sender="carol@example.com"))
        self.assertFalse(refused.is_ok, refused)
        self.assertEqual(len(self.site.queue.messages), 1)
