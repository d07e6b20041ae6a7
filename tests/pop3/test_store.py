"""The POP3 listener with the real server context: SQLite user store, portal, MailLogin.

The server runs in-process on the real reactor (trial) on a loopback port;
Python's poplib talks to it from a thread.  Users are made with the admin
code (vadddomain/vadduser's), mail is put in place with maildir/deliver.py.
"""

from __future__ import annotations

import base64
import os
import poplib
import shutil
import tempfile
import time

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from indimail_tw.admin.ops_domain import add_domain
from indimail_tw.admin.ops_user import UserChanges, add_user, modify_user
from indimail_tw.admin.site import Site
from indimail_tw.auth.flags import Flags
from indimail_tw.listeners import PROTOCOLS
from indimail_tw.paths import Paths
from indimail_tw.pop3 import service
from indimail_tw.service import build_context
from tests.pop3.support import put

DOMAIN = "store.test"
PASSWORD = "alice-Pw-1"


class StoreTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="itw-pop3-store-")
        self.addCleanup(shutil.rmtree, self.root, True)
        env = {"SECURE_AUTH": "0", "LOGIN_FAILURE_DELAY": "0", "MAX_LOGIN_FAILURES": "2"}
        site = Site.resolve(self.root, env)
        site.paths.ensure()
        add_domain(site, DOMAIN, "postmaster-Pw-0")
        self.maildir = add_user(site, f"alice@{DOMAIN}", PASSWORD).maildir
        add_user(site, f"nopop@{DOMAIN}", PASSWORD)
        modify_user(site, f"nopop@{DOMAIN}", UserChanges(flags=Flags.NO_POP))
        site.close()
        self.context = build_context(Paths.resolve(self.root, env), env, reactor=reactor)
        self.context.io_pool.start()
        self.addCleanup(self.context.engine.close)
        self.addCleanup(self.context.io_pool.stop)
        factory, _ = service.listener(self.context, PROTOCOLS["pop3"], "tcp:0")
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    def tearDown(self):
        return defer.maybeDeferred(self.listening.stopListening)

    def pop(self) -> poplib.POP3:
        return poplib.POP3("127.0.0.1", self.port, timeout=30)

    @defer.inlineCallbacks
    def test_login_retr_dele_quit(self):
        data = b"Subject: store\n\n.dot\nbody\n"
        put(self.maildir, data)

        def session():
            pop = self.pop()
            pop.user(f"alice@{DOMAIN}")
            pop.pass_(PASSWORD)
            stat = pop.stat()
            _, lines, _ = pop.retr(1)
            pop.dele(1)
            pop.quit()
            return stat, lines

        stat, lines = yield threads.deferToThread(session)
        self.assertEqual(stat, (1, len(data) + 4))
        self.assertEqual(lines, [b"Subject: store", b"", b".dot", b"body"])
        self.assertEqual(os.listdir(os.path.join(self.maildir, "new"))
                         + os.listdir(os.path.join(self.maildir, "cur")), [])
        # POP-before-SMTP: the login left a relay row for the client address
        allowed = yield self.context.store.relay_allowed("127.0.0.1", int(time.time()) - 60,
                                                         f"alice@{DOMAIN}")
        self.assertTrue(allowed)

    @defer.inlineCallbacks
    def test_sasl_plain_with_initial_response(self):
        def session():
            pop = self.pop()
            token = base64.b64encode(f"\0alice@{DOMAIN}\0{PASSWORD}".encode()).decode()
            reply = pop._shortcmd(f"AUTH PLAIN {token}")
            pop.quit()
            return reply

        reply = yield threads.deferToThread(session)
        self.assertTrue(reply.startswith(b"+OK"))

    @defer.inlineCallbacks
    def test_no_pop_unknown_and_wrong_password_read_the_same(self):
        def attempt(user, password):
            pop = self.pop()
            try:
                pop.user(user)
                pop.pass_(password)
            except poplib.error_proto as e:
                return e.args[0]
            finally:
                pop.close()
            return b"+OK"

        replies = []
        for user, password in ((f"nopop@{DOMAIN}", PASSWORD), (f"ghost@{DOMAIN}", PASSWORD),
                               (f"alice@{DOMAIN}", "wrong")):
            replies.append((yield threads.deferToThread(attempt, user, password)))
        self.assertEqual(set(replies), {b"-ERR [AUTH] Authentication failed."})

    @defer.inlineCallbacks
    def test_failure_limit_closes_the_connection(self):
        def session():
            pop = self.pop()
            replies = []
            for _ in range(2):
                pop.user(f"alice@{DOMAIN}")
                try:
                    pop.pass_("wrong")
                except poplib.error_proto as e:
                    replies.append(e.args[0])
            try:
                pop.noop()
            except (poplib.error_proto, OSError, EOFError) as e:
                replies.append(type(e).__name__)
            pop.close()
            return replies

        replies = yield threads.deferToThread(session)
        self.assertEqual(replies[0], b"-ERR [AUTH] Authentication failed.")
        self.assertEqual(replies[1], b"-ERR [AUTH] Too many authentication failures.")
        self.assertEqual(len(replies), 3)        # the connection was closed after the limit
