"""IMAP LOGIN and AUTHENTICATE through the real SQLite store, checker, realm and MailLogin.

The connection is in memory (StringTransport); the login tasks run in
threads on trial's reactor, so each command waits for its tagged line.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from types import SimpleNamespace

from twisted.cred.portal import Portal
from twisted.internet import address, defer, reactor, task
from twisted.trial import unittest

from indimail_tw.auth import passwords
from indimail_tw.auth.checkers import AuthPolicy, StoreChecker
from indimail_tw.auth.flags import Flags
from indimail_tw.auth.maillogin import MailLogin
from indimail_tw.auth.realm import MaildirRealm
from indimail_tw.imap4.service import IMAPFactory
from indimail_tw.storage import User, UserStore
from indimail_tw.storage.store import REPOS
from tests.smtp.support import FakeCertificate, Site, TLSStringTransport
from tests.support import EngineMixin

PASSWORD = "Corr3ct-horse"


class StoreLoginTests(EngineMixin, unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="itw-imap-store-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.site = Site()
        self.addCleanup(self.site.cleanup)
        engine = self.make_engine()
        engine.run_sync(engine.prepare)
        secret = passwords.make_hash(PASSWORD, "SHA-512")

        def add(txn):
            for name, gid in (("alice", 0), ("noimap", Flags.NO_IMAP)):
                REPOS.users.add(txn, User(name=name, domain="example.com", passwd=secret,
                                          dir=os.path.join(self.root, name), gid=gid))
        engine.run_sync(add)
        store = UserStore(engine)
        environ = {"MIGRATEUSER": os.path.join(self.root, "absent"), "NORELAY": "1",
                   "LOGIN_FAILURE_DELAY": "0"}
        context = SimpleNamespace(
            store=store, engine=engine, environ=environ, reactor=reactor, io_pool=None,
            portal=Portal(MaildirRealm(store), [StoreChecker(engine, AuthPolicy(environ))]),
            config=self.site.config, paths=self.site.paths)
        self.clock = task.Clock()
        self.factory = IMAPFactory(context, certificate=FakeCertificate(True),
                                   clock=self.clock,
                                   login=MailLogin(context, "imap", self.clock),
                                   resolve=lambda ip: defer.succeed(None))

    def connect(self):
        transport = TLSStringTransport(peerAddress=address.IPv4Address("TCP", "192.0.2.9", 4000),
                                       hostAddress=address.IPv4Address("TCP", "192.0.2.25", 143))
        proto = self.factory.buildProtocol(None)
        proto.makeConnection(transport)
        proto.session.tls = True
        transport.clear()
        self.addCleanup(lambda: proto.connectionLost(None) if not proto._closing else None)
        return proto, transport

    @defer.inlineCallbacks
    def ask(self, proto, transport, line: str) -> defer.Deferred:
        tag = line.split(" ", 1)[0].encode()
        transport.clear()
        proto.dataReceived(line.encode() + b"\r\n")
        for _ in range(2000):
            lines = transport.value().split(b"\r\n")
            if any(x.startswith(tag + b" ") for x in lines):
                return [x.decode() for x in lines if x]
            yield task.deferLater(reactor, 0.005, lambda: None)
        raise AssertionError(f"no answer to {line!r}: {transport.value()!r}")

    @defer.inlineCallbacks
    def test_login_and_failures_look_the_same(self):
        proto, transport = self.connect()
        wrong = yield self.ask(proto, transport, "a LOGIN alice@example.com wrong")
        unknown = yield self.ask(proto, transport, f"b LOGIN nobody@example.com {PASSWORD}")
        flagged = yield self.ask(proto, transport, f"c LOGIN noimap@example.com {PASSWORD}")
        self.assertEqual([wrong[-1][2:], unknown[-1][2:]],
                         ["NO [AUTHENTICATIONFAILED] Authentication failed."] * 2)
        self.assertEqual(flagged, ["c NO [AUTHENTICATIONFAILED] Authentication failed.",
                                   "* BYE Too many authentication failures"])
        proto, transport = self.connect()
        ok = yield self.ask(proto, transport, f"d LOGIN alice@example.com {PASSWORD}")
        self.assertTrue(ok[-1].startswith("d OK [CAPABILITY IMAP4rev1"), ok)
        self.assertTrue(os.path.isdir(os.path.join(self.root, "alice", "Maildir", ".Sent")))
        listed = yield self.ask(proto, transport, 'e LIST "" "*"')
        self.assertIn('* LIST (\\HasNoChildren \\Sent) "." Sent', listed)

    @defer.inlineCallbacks
    def test_authenticate_plain(self):
        proto, transport = self.connect()
        token = base64.b64encode(f"\0alice@example.com\0{PASSWORD}".encode()).decode()
        ok = yield self.ask(proto, transport, f"a AUTHENTICATE PLAIN {token}")
        self.assertTrue(ok[-1].startswith("a OK [CAPABILITY"), ok)
        self.assertEqual(proto.session.user.address, "alice@example.com")
