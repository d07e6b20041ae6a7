"""The agent over real sockets on 127.0.0.0/8: a twisted.names DNS server and scripted peers."""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.remote.dnsfake import a, mx, start_dns_server
from tests.remote.peer import Harness, PeerFactory


class NetworkTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.close)

    def dns(self, records):
        port, listeners = start_dns_server(reactor, "remote.example", records)
        for listener in listeners:
            self.addCleanup(listener.stopListening)
        return [("127.0.0.1", port)]

    def two_mx(self, first: PeerFactory, second: PeerFactory, **kw):
        """remote.example: MX 10 mx1 (127.0.0.2), MX 20 mx2 (127.0.0.3), same port."""
        port = self.h.listen_pair(first, second)
        servers = self.dns({
            "remote.example": [mx(10, "mx1.remote.example"), mx(20, "mx2.remote.example")],
            "mx1.remote.example": [a("127.0.0.2")], "mx2.remote.example": [a("127.0.0.3")]})
        return self.h.agent(dns_servers=servers, port=port, **kw)

    @defer.inlineCallbacks
    def test_delivery_by_mx(self):
        peer = PeerFactory()
        agent = self.two_mx(peer, PeerFactory())
        results = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        (result,) = results
        self.assertTrue(result.is_ok, result)
        self.assertEqual(result.remote_mta, "dns; mx1.remote.example")
        self.assertEqual(result.diagnostic, "smtp; 250 2.0.0 ok queued")
        (msg,) = peer.messages
        self.assertEqual(msg.mail, b"MAIL FROM:<alice@me.example> SIZE=36")
        self.assertEqual(msg.rcpts, [b"RCPT TO:<bob@remote.example>"])
        self.assertEqual(msg.body, b"Subject: test\r\n\r\nhello\r\n..dot line\r\n")
        self.assertEqual(peer.connections[0].commands[0], b"EHLO me.example")

    @defer.inlineCallbacks
    def test_refused_connection_goes_to_the_next_mx(self):
        backup = PeerFactory()
        port = self.h.listen(backup, "127.0.0.3")
        servers = self.dns({
            "remote.example": [mx(10, "mx1.remote.example"), mx(20, "mx2.remote.example")],
            "mx1.remote.example": [a("127.0.0.4")], "mx2.remote.example": [a("127.0.0.3")]})
        agent = self.h.agent(dns_servers=servers, port=port)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok, result)
        self.assertEqual(result.remote_mta, "dns; mx2.remote.example")
        self.assertEqual(len(backup.messages), 1)
        self.assertEqual(agent.tcpto.table["127.0.0.4"].errors, 1)

    @defer.inlineCallbacks
    def test_4xx_greeting_goes_to_the_next_mx(self):
        busy, backup = PeerFactory(), PeerFactory()
        busy.greeting = b"421 4.3.2 too busy"
        agent = self.two_mx(busy, backup)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok, result)
        self.assertEqual(len(busy.messages), 0)
        self.assertEqual(len(backup.messages), 1)
        self.assertIn("127.0.0.2", agent.tcpto.table)

    @defer.inlineCallbacks
    def test_dropped_before_greeting_goes_to_the_next_mx(self):
        dead, backup = PeerFactory(), PeerFactory()
        dead.greeting = None
        agent = self.two_mx(dead, backup)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok, result)

    @defer.inlineCallbacks
    def test_all_exchangers_fail_temporarily(self):
        one, two = PeerFactory(), PeerFactory()
        one.greeting = two.greeting = b"421 4.3.2 busy"
        agent = self.two_mx(one, two)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_temporary)
        self.assertIn("mx2.remote.example but greeting failed", result.text)

    @defer.inlineCallbacks
    def test_a_host_in_the_tcpto_table_is_skipped_until_qmail_tcpok(self):
        import time

        from indimail_tw.remote import tcpto

        first, backup = PeerFactory(), PeerFactory()
        agent = self.two_mx(first, backup)
        tcpto.update_file(agent.tcpto.path, {"127.0.0.2": tcpto.Entry(2, time.time())})
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok)
        self.assertEqual((len(first.connections), len(backup.connections)), (0, 1))
        self.assertEqual(tcpto.main_tcpok(["--queue-base", self.h.queue]), 0)
        for proto in agent.cache.close_all():
            yield proto.closed
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok)
        self.assertEqual(len(first.connections), 1)

    @defer.inlineCallbacks
    def test_deliveries_waiting_for_a_host_that_fails_skip_it(self):
        self.h.write_control("concurrencyperhost", "1\n")
        dead, backup = PeerFactory(), PeerFactory()
        dead.drop_when = defer.Deferred()              # silent until the second one waits
        agent = self.two_mx(dead, backup)
        acquire = agent.slots.acquire

        def watching(ip):
            slot = acquire(ip)
            if ip == "127.0.0.2" and slot is not None and not slot.called:
                reactor.callLater(0, dead.drop_when.callback, None)
            return slot

        agent.slots.acquire = watching
        results = yield defer.gatherResults([
            self.h.deliver(agent, self.h.message(f"u{n}@remote.example")) for n in range(2)])
        self.assertTrue(all(r[0].is_ok for r in results))
        self.assertEqual(len(dead.connections), 1)     # the waiting delivery did not retry it
        self.assertEqual(len(backup.messages), 2)

    @defer.inlineCallbacks
    def test_5xx_greeting_is_permanent_without_trying_further(self):
        hostile, backup = PeerFactory(), PeerFactory()
        hostile.greeting = b"554 5.7.1 no mail from you"
        agent = self.two_mx(hostile, backup)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.enhanced, "5.7.1")
        self.assertEqual(backup.connections, [])

    @defer.inlineCallbacks
    def test_per_recipient_results_in_one_transaction(self):
        peer = PeerFactory()

        def rcpt(proto, line):
            if b"unknown" in line:
                return b"550 5.1.1 no such user"
            if b"later" in line:
                return b"451 4.2.0 greylisted"
            return None

        peer.replies[b"RCPT"] = rcpt
        agent = self.two_mx(peer, PeerFactory())
        message = self.h.message("bob@remote.example", "unknown@remote.example",
                                 "later@remote.example")
        ok, bad, later = yield self.h.deliver(agent, message)
        self.assertTrue(ok.is_ok)
        self.assertTrue(bad.is_permanent)
        self.assertEqual(bad.diagnostic, "smtp; 550 5.1.1 no such user")
        self.assertEqual(bad.remote_mta, "dns; mx1.remote.example")
        self.assertIn("mx1.remote.example does not like recipient.", bad.text)
        self.assertTrue(later.is_temporary)
        self.assertEqual(len(peer.connections), 1)
        self.assertEqual(len(peer.messages), 1)        # batched: one transaction, three RCPTs
        self.assertEqual(len(peer.connections[0].commands), 6)  # EHLO MAIL RCPT*3 DATA

    @defer.inlineCallbacks
    def test_message_rejected_after_data(self):
        peer = PeerFactory()
        peer.replies[b"DOT"] = b"554 5.7.1 looks like spam"
        agent = self.two_mx(peer, PeerFactory())
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.diagnostic, "smtp; 554 5.7.1 looks like spam")

    @defer.inlineCallbacks
    def test_several_messages_over_one_connection(self):
        peer = PeerFactory()
        agent = self.two_mx(peer, PeerFactory())
        for n in range(3):
            (result,) = yield self.h.deliver(agent, self.h.message(f"u{n}@remote.example"))
            self.assertTrue(result.is_ok)
        self.assertEqual(len(peer.connections), 1)
        self.assertEqual([m.connection for m in peer.messages], [1, 1, 1])

    @defer.inlineCallbacks
    def test_concurrent_messages_respect_the_per_host_limit(self):
        self.h.write_control("concurrencyperhost", "1\n")
        peer = PeerFactory()
        peer.greet_when = defer.Deferred()             # busy until the third is turned away
        agent = self.two_mx(peer, PeerFactory())
        acquire = agent.slots.acquire

        def watching(ip):
            slot = acquire(ip)
            if slot is None:
                reactor.callLater(0, peer.greet_when.callback, None)
            return slot

        agent.slots.acquire = watching
        results = yield defer.gatherResults([
            self.h.deliver(agent, self.h.message(f"u{n}@remote.example")) for n in range(3)])
        outcomes = sorted((r[0].status, r[0].enhanced) for r in results)
        # one delivery waits for the slot, then reuses the connection; one waiting
        # delivery per slot at most, so the last one is deferred at once
        self.assertEqual(outcomes, [("ok", "2.0.0"), ("ok", "2.0.0"), ("temporary", "4.4.5")])
        self.assertEqual(len(peer.connections), 1)
        self.assertEqual(len(peer.messages), 2)

    @defer.inlineCallbacks
    def test_a_reused_connection_that_dies_unanswered_is_replaced(self):
        peer = PeerFactory()

        def mail(proto, line):
            if proto is peer.connections[0] and peer.messages:
                proto.transport.abortConnection()      # gone before answering the reuse
                return b""
            return None

        peer.replies[b"MAIL"] = mail
        agent = self.two_mx(peer, PeerFactory())
        (first,) = yield self.h.deliver(agent, self.h.message("a@remote.example"))
        (second,) = yield self.h.deliver(agent, self.h.message("b@remote.example"))
        self.assertTrue(first.is_ok and second.is_ok, second)
        self.assertEqual([m.connection for m in peer.messages], [1, 2])

    @defer.inlineCallbacks
    def test_an_idle_connection_closed_by_the_peer_is_forgotten(self):
        peer = PeerFactory()
        agent = self.two_mx(peer, PeerFactory())
        yield self.h.deliver(agent, self.h.message("a@remote.example"))
        self.assertEqual(len(agent.cache), 1)
        (idle,) = list(agent._open)
        peer.connections[0].transport.loseConnection()
        yield idle.closed
        self.assertEqual(len(agent.cache), 0)
        (result,) = yield self.h.deliver(agent, self.h.message("b@remote.example"))
        self.assertTrue(result.is_ok)

    @defer.inlineCallbacks
    def test_outgoingip_and_helohost(self):
        self.h.write_control("outgoingip", "127.0.0.9\n")
        self.h.write_control("helohost", "helo.me.example\n")
        self.h.reload()
        peer = PeerFactory()
        agent = self.two_mx(peer, PeerFactory())
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok, result)
        (conn,) = peer.connections
        self.assertEqual(conn.transport.getPeer().host, "127.0.0.9")
        self.assertEqual(conn.commands[0], b"EHLO helo.me.example")

    @defer.inlineCallbacks
    def test_outgoingip_per_domain_wins(self):
        self.h.write_control("outgoingip", "127.0.0.9\n")
        self.h.write_control("outgoingip.remote.example", "127.0.0.10\n")
        self.h.reload()
        peer = PeerFactory()
        agent = self.two_mx(peer, PeerFactory())
        yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertEqual(peer.connections[0].transport.getPeer().host, "127.0.0.10")

    @defer.inlineCallbacks
    def test_we_are_the_best_mx(self):
        peer = PeerFactory()
        agent = self.two_mx(peer, PeerFactory(), ipme=frozenset({"127.0.0.2"}))
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_permanent)
        self.assertEqual(result.enhanced, "5.4.6")
        self.assertIn("Although I'm listed as a best-preference MX", result.text)
        self.assertEqual(peer.connections, [])

    @defer.inlineCallbacks
    def test_a_lower_preference_mx_than_ours_is_used(self):
        backup = PeerFactory()
        agent = self.two_mx(PeerFactory(), backup, ipme=frozenset({"127.0.0.3"}))
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok)
        self.assertEqual(backup.connections, [])

    @defer.inlineCallbacks
    def test_null_mx_and_nxdomain_over_real_dns(self):
        servers = self.dns({"nomail.remote.example": [mx(0, "")]})
        agent = self.h.agent(dns_servers=servers, port=9)
        (null,) = yield self.h.deliver(agent, self.h.message("x@nomail.remote.example"))
        self.assertEqual((null.status, null.enhanced), ("permanent", "5.1.10"))
        (nx,) = yield self.h.deliver(agent, self.h.message("x@missing.remote.example"))
        self.assertEqual((nx.status, nx.enhanced), ("permanent", "5.1.2"))

    @defer.inlineCallbacks
    def test_smtproutes_with_ip_literal_and_port(self):
        peer = PeerFactory()
        port = self.h.listen(peer)
        self.h.write_control("smtproutes", f"routed.example:[127.0.0.1]:{port}\n")
        self.h.reload()
        agent = self.h.agent(resolver=object(), ipme=frozenset({"127.0.0.1"}))
        (result,) = yield self.h.deliver(agent, self.h.message("bob@routed.example"))
        self.assertTrue(result.is_ok, result)          # a route to ourselves is allowed
        self.assertEqual(result.remote_mta, "dns; [127.0.0.1]")

    @defer.inlineCallbacks
    def test_address_literal_recipient(self):
        peer = PeerFactory()
        port = self.h.listen(peer, "127.0.0.5")
        agent = self.h.agent(resolver=object(), port=port)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@[127.0.0.5]"))
        self.assertTrue(result.is_ok, result)
        self.assertEqual(peer.messages[0].rcpts, [b"RCPT TO:<bob@[127.0.0.5]>"])

    @defer.inlineCallbacks
    def test_size_limit_of_the_peer(self):
        peer = PeerFactory()
        peer.keywords = [b"PIPELINING", b"SIZE 10"]
        agent = self.two_mx(peer, PeerFactory())
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertEqual((result.status, result.enhanced), ("permanent", "5.3.4"))
        self.assertEqual(peer.messages, [])

    @defer.inlineCallbacks
    def test_smtputf8_needed_but_missing(self):
        peer = PeerFactory()
        agent = self.two_mx(peer, PeerFactory())
        (result,) = yield self.h.deliver(agent, self.h.message("bjørn@remote.example",
                                                               smtputf8=True))
        self.assertEqual((result.status, result.enhanced), ("permanent", "5.6.7"))
        peer.keywords.append(b"SMTPUTF8")
        for proto in agent.cache.close_all():          # the next connection sees the keyword
            yield proto.closed
        (result,) = yield self.h.deliver(agent, self.h.message("bjørn@remote.example",
                                                               smtputf8=True))
        self.assertTrue(result.is_ok)
        self.assertTrue(peer.messages[0].mail.endswith(b" SMTPUTF8"))

    @defer.inlineCallbacks
    def test_8bit_message_declares_8bitmime(self):
        peer = PeerFactory()
        agent = self.two_mx(peer, PeerFactory())
        body = "Subject: x\n\ncafé\n".encode()
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example",
                                                               body=body))
        self.assertTrue(result.is_ok)
        self.assertIn(b" BODY=8BITMIME", peer.messages[0].mail)

    @defer.inlineCallbacks
    def test_unreadable_message_is_temporary(self):
        agent = self.two_mx(PeerFactory(), PeerFactory())
        message = self.h.message("bob@remote.example")
        import os
        os.unlink(message.path)
        (result,) = yield self.h.deliver(agent, message)
        self.assertTrue(result.is_temporary)
        self.assertIn("Unable to read message", result.text)


class TimeoutTests(unittest.TestCase):
    """The read timeout runs on a Clock; the sockets on the real reactor."""

    timeout = 30

    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.close)

    @defer.inlineCallbacks
    def test_timeout_mid_data(self):
        peer = PeerFactory()
        peer.hang_after_data = True
        port = self.h.listen(peer)
        self.h.write_control("smtproutes", f"remote.example:[127.0.0.1]:{port}\n")
        self.h.reload()
        clock = task.Clock()
        agent = self.h.agent(resolver=object(), clock=clock)
        d = agent.deliver(self.h.message("bob@remote.example"),
                          self.h.message("bob@remote.example").envelope.recipients[0])
        clock.advance(0)                             # the batch starts on the next turn
        yield peer.hung                              # the server has the message and stalls
        self.assertNoResult(d)
        clock.advance(1200)                          # timeoutremote
        result = yield d
        self.assertTrue(result.is_temporary)
        self.assertIn("timed out", result.text)


class TLSTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.h = Harness()
        self.addCleanup(self.h.close)

    def one_mx(self, peer: PeerFactory, ip: str = "127.0.0.2", **kw):
        port = self.h.listen(peer, ip)
        dns_port, listeners = start_dns_server(reactor, "remote.example", {
            "remote.example": [mx(10, "mx1.remote.example")],
            "mx1.remote.example": [a(ip)]})
        for listener in listeners:
            self.addCleanup(listener.stopListening)
        return self.h.agent(dns_servers=[("127.0.0.1", dns_port)], port=port, **kw)

    def tls_peer(self, name: str = "mx1.remote.example") -> PeerFactory:
        peer = PeerFactory()
        peer.use_tls(self.h.certificate(f"{name}.server.pem", name))
        return peer

    def trust(self, host: str, pem_of: str) -> None:
        import os
        import shutil
        os.makedirs(os.path.join(self.h.certs, "tlshosts"), exist_ok=True)
        shutil.copy(pem_of, os.path.join(self.h.certs, "tlshosts", f"{host}.pem"))

    @defer.inlineCallbacks
    def test_opportunistic_starttls(self):
        peer = self.tls_peer()
        agent = self.one_mx(peer)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok, result)
        self.assertTrue(peer.messages[0].tls)
        self.assertEqual(peer.connections[0].commands[:3],
                         [b"EHLO me.example", b"STARTTLS", b"EHLO me.example"])

    @defer.inlineCallbacks
    def test_client_certificate_from_clientcert_pem(self):
        import os

        from twisted.internet import ssl as tssl

        from indimail_tw.tlsutil import make_self_signed

        client_pem = os.path.join(self.h.certs, "clientcert.pem")
        make_self_signed(client_pem, "me.example")
        with open(self.h.certificate("s.pem", "mx1.remote.example"), "rb") as f:
            server = tssl.PrivateCertificate.loadPEM(f.read())
        with open(client_pem, "rb") as f:
            client_cert = tssl.Certificate.loadPEM(f.read())
        peer = PeerFactory()
        peer.tls_options = tssl.CertificateOptions(
            privateKey=server.privateKey.original.to_cryptography_key(),
            certificate=server.original.to_cryptography(), verify=True,
            caCerts=[client_cert.original], requireCertificate=True)
        agent = self.one_mx(peer)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok, result)
        presented = peer.messages[0].client_cert
        self.assertIn("CN=me.example", presented.to_cryptography().subject.rfc4514_string())

    @defer.inlineCallbacks
    def test_notlshosts_means_plaintext(self):
        import os
        os.makedirs(os.path.join(self.h.certs, "notlshosts"))
        open(os.path.join(self.h.certs, "notlshosts", "remote.example"), "w").close()
        peer = self.tls_peer()
        agent = self.one_mx(peer)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok)
        self.assertNotIn(b"STARTTLS", peer.connections[0].commands)

    @defer.inlineCallbacks
    def test_failed_opportunistic_handshake_retries_in_the_clear(self):
        # qmail-remote "will revert to non-encrypted session if the TLS connection fails"
        peer = self.tls_peer()
        peer.break_tls = True
        agent = self.one_mx(peer)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok, result)
        first, second = peer.connections
        self.assertIn(b"STARTTLS", first.commands)
        self.assertNotIn(b"STARTTLS", second.commands)
        self.assertFalse(peer.messages[0].tls)
        self.assertIn("127.0.0.2", agent._tls_broken)      # and the next time, no STARTTLS

    @defer.inlineCallbacks
    def test_required_tls_verified_against_tlshosts(self):
        peer = PeerFactory()
        pem = self.h.certificate("mx1.pem", "mx1.remote.example")
        peer.use_tls(pem)
        self.trust("mx1.remote.example", pem)
        agent = self.one_mx(peer)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok, result)
        self.assertTrue(peer.messages[0].tls)

    @defer.inlineCallbacks
    def test_required_tls_with_the_wrong_certificate_never_falls_back(self):
        peer = self.tls_peer("impostor.example")
        self.trust("mx1.remote.example", self.h.certificate("real.pem", "mx1.remote.example"))
        agent = self.one_mx(peer)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_temporary)
        self.assertIn("TLS handshake failed", result.text)
        self.assertEqual(result.enhanced, "4.7.5")
        self.assertEqual(peer.messages, [])
        self.assertEqual(len(peer.connections), 1)

    @defer.inlineCallbacks
    def test_required_tls_but_not_offered(self):
        peer = PeerFactory()                                  # no STARTTLS
        self.trust("mx1.remote.example", self.h.certificate("c.pem", "mx1.remote.example"))
        agent = self.one_mx(peer)
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_temporary)
        self.assertIn("TLS is required", result.text)
        self.assertEqual(peer.messages, [])

    @defer.inlineCallbacks
    def test_implicit_tls_on_port_465(self):
        import os
        if os.geteuid() != 0:
            raise unittest.SkipTest("port 465 needs root")
        from twisted.internet import ssl as tssl
        peer = PeerFactory()
        pem = self.h.certificate("smtps.pem", "relay.example")
        from indimail_tw.smtp.service import load_certificate
        listening = reactor.listenSSL(465, peer, load_certificate(pem), interface="127.0.0.6")
        self.h.ports.append(listening)
        self.h.write_control("smtproutes", "remote.example:[127.0.0.6]:465\n")
        self.h.reload()
        agent = self.h.agent(resolver=object())
        (result,) = yield self.h.deliver(agent, self.h.message("bob@remote.example"))
        self.assertTrue(result.is_ok, result)
        self.assertNotIn(b"STARTTLS", peer.connections[0].commands)
        del tssl
