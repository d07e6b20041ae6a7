"""``twistd indimail``: options, the service tree, startup refusals, reload on SIGHUP."""

from __future__ import annotations

import os
import signal
import threading
import subprocess
import sys

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer
from twisted.python import usage
from twisted.trial import unittest

from indimail_tw import listeners
from indimail_tw.auth.checkers import ChainChecker, CheckpasswordChecker, StoreChecker
from indimail_tw.paths import Paths
from indimail_tw.storage.engine import SCHEMA_VERSION, open_engine
from indimail_tw.tap import Options, makeService

TWISTD = os.path.join(sys.prefix, "bin", "twistd")


class OptionsTests(unittest.SynchronousTestCase):
    def test_help_lists_every_option_with_default(self):
        text = str(Options())
        for spec in listeners.PROTOCOLS.values():
            self.assertIn(f"--{spec.name}=", text)
        self.assertIn("[default: tcp:25]", " ".join(text.split()))
        self.assertIn("--root", text)
        self.assertIn("--auth", text)

    def test_unbuilt_protocol_is_a_clear_error(self):
        unbuilt = [s.name for s in listeners.PROTOCOLS.values() if s.build is None]
        if not unbuilt:
            raise unittest.SkipTest("every protocol is built")
        options = Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions,
                                  [f"--{unbuilt[0]}", "tcp:2525"])
        self.assertIn("not available", str(error))

    def test_listener_options_repeat(self):
        options = Options()
        options._listener("smtp", "tcp:1")
        options._listener("smtp", "tcp:2")
        self.assertEqual(listeners.selected(options["listeners"]),
                         [("smtp", "tcp:1"), ("smtp", "tcp:2")])

    def test_no_listener_means_defaults_of_built_protocols(self):
        built = [(s.name, s.default) for s in listeners.PROTOCOLS.values() if s.build]
        self.assertEqual(listeners.selected([]), built)

    def test_auth_plugins(self):
        options = Options()
        options.parseOptions(["--auth", "indimail", "--auth",
                              "checkpassword:/usr/sbin/vchkpass /bin/false"])
        first, second = options["credCheckers"]
        self.assertIsInstance(first, StoreChecker)
        self.assertIsInstance(second, CheckpasswordChecker)
        self.assertEqual(second.argv, ["/usr/sbin/vchkpass", "/bin/false"])
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--auth", "checkpassword:"])


class MakeServiceTests(unittest.TestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if k not in ("CONTROLDIR", "BASE_PATH", "QUEUEDIR",
                                                "INDIMAIL_ROOT", "SYSCONFDIR")})

    def options(self, *args):
        options = Options()
        options.parseOptions(["--root", self.root, *args])
        return options

    def test_builds_tree_and_root(self):
        service = makeService(self.options())
        self.assertEqual(service.name, "indimail")
        for sub in ("control", "tcp", "certs", "domains", "queue", "mail", "db"):
            self.assertTrue(os.path.isdir(os.path.join(self.root, sub)), sub)
        self.assertTrue(os.path.exists(os.path.join(self.root, "db", "indimail.sqlite")))
        self.assertIsInstance(service.context.checker, StoreChecker)
        service.context.engine.close()

    def test_log_debug_reaches_the_schedulers(self):
        quiet = makeService(self.options())
        self.assertFalse(quiet.context.log_debug)
        self.assertFalse(any(q.scheduler.debug for q in quiet.context.queue.queues))
        quiet.context.engine.close()
        loud = makeService(self.options("--log-debug"))
        self.assertTrue(loud.context.log_debug)
        self.assertTrue(all(q.scheduler.debug for q in loud.context.queue.queues))
        loud.context.engine.close()
        self.assertIn("--log-debug", str(Options()))

    def test_auth_chain_is_bound(self):
        options = self.options("--auth", "indimail", "--auth", "memory:a:b")
        service = makeService(options)
        checker = service.context.checker
        self.assertIsInstance(checker, ChainChecker)
        self.assertIs(checker.checkers[0].engine, service.context.engine)
        self.assertIsInstance(checker.checkers[1], InMemoryUsernamePasswordDatabaseDontUse)
        service.context.engine.close()

    def test_refuses_newer_schema(self):
        paths = Paths.resolve(self.root, {})
        paths.ensure()
        engine = open_engine(paths, {})
        engine.run_sync(engine.prepare)
        engine.run_sync(lambda txn: txn.execute("UPDATE indimail_tw_schema SET version = ?",
                                                (SCHEMA_VERSION + 1,)))
        error = self.assertRaises(SystemExit, makeService, self.options())
        self.assertIn("newer", str(error))

    def test_bad_control_file_refuses_start(self):
        os.makedirs(os.path.join(self.root, "control"))
        with open(os.path.join(self.root, "control", "databytes"), "w") as f:
            f.write("lots\n")
        error = self.assertRaises(SystemExit, makeService, self.options())
        self.assertIn("databytes", str(error))

    @defer.inlineCallbacks
    def test_sighup_reloads_and_bad_reload_keeps_settings(self):
        service = makeService(self.options())
        databytes = os.path.join(self.root, "control", "databytes")
        with open(databytes, "w") as f:
            f.write("1000\n")
        service.startService()
        try:
            self.assertIsNot(signal.getsignal(signal.SIGHUP), signal.SIG_DFL)
            reloaded = defer.Deferred()
            service.context.config.subscribe(lambda s: reloaded.callback(s))
            os.kill(os.getpid(), signal.SIGHUP)
            settings = yield reloaded
            self.assertEqual(settings.databytes, 1000)
            with open(databytes, "w") as f:
                f.write("garbage\n")
            self.assertFalse(service.reload())
            self.assertEqual(service.context.config.current.databytes, 1000)
        finally:
            yield service.stopService()


    @defer.inlineCallbacks
    def test_one_small_pool_for_the_hot_paths_blocking_work(self):
        from indimail_tw.policy.recipients import RecipientExists

        self.assertRaises(usage.UsageError, self.options, "--io-threads", "0")
        service = makeService(self.options("--io-threads", "3", "--smtp", "tcp:0",
                                           "--local-delivery", "inline"))
        context = service.context
        pool = context.io_pool
        self.assertEqual((pool.max, pool.name), (3, "indimail-io"))
        queue_service = service.getServiceNamed("queue")
        self.assertIsNone(queue_service.pool)                    # the server owns it
        self.assertIs(context.queue.queues[0].run.pool, pool)
        self.assertIs(context.local_agent._pool, pool)
        smtp = [s for s in service if s is not queue_service][0]
        (check,) = [c for c in smtp.factory.policy.checks if isinstance(c, RecipientExists)]
        self.assertFalse(pool.started)
        service.startService()
        try:
            self.assertTrue(pool.started)
            ran = yield check.blocking(lambda: threading.current_thread().name)
            self.assertTrue(ran.startswith("PoolThread-indimail-io"), ran)
        finally:
            yield service.stopService()
        self.assertFalse(pool.started)

    @defer.inlineCallbacks
    def test_local_delivery_runs_in_a_helper_process_by_default(self):
        from indimail_tw.admin.ops_domain import add_domain
        from indimail_tw.admin.ops_user import add_user
        from indimail_tw.admin.site import Site
        from indimail_tw.delivery.local import LocalDeliveryAgent
        from indimail_tw.delivery.lspawn import LocalSpawn
        from indimail_tw.queue.envelope import Envelope

        self.assertRaises(usage.UsageError, self.options, "--local-delivery", "thread")
        self.assertRaises(usage.UsageError, self.options, "--local-delivery-nice", "20")
        inline = makeService(self.options("--local-delivery", "inline"))
        self.assertIsInstance(inline.context.local_agent, LocalDeliveryAgent)
        inline.context.engine.close()

        site = Site.resolve(self.root, {})
        add_domain(site, "example.com", "pm-secret")
        add_user(site, "alice@example.com", "pw")
        site.close()
        service = makeService(self.options("--smtp", "tcp:0:interface=127.0.0.1"))
        spawn = service.context.local_agent
        self.assertIsInstance(spawn, LocalSpawn)
        self.assertEqual(spawn.command[spawn.command.index("--root") + 1], self.root)
        self.assertEqual(spawn.command[spawn.command.index("--nice") + 1], "10")
        new = os.path.join(self.root, "mail")
        service.startService()
        try:
            self.assertIsNotNone(spawn.process)
            yield service.context.queue.enqueue(
                Envelope.simple("s@remote.test", "alice@example.com"),
                b"Subject: hi\r\n\r\nhello\r\n")
            from twisted.internet import reactor, task

            for _ in range(500):
                delivered = [f for d, _, files in os.walk(new) if d.endswith("/new")
                             for f in files]
                if delivered:
                    break
                yield task.deferLater(reactor, 0.02, lambda: None)
            self.assertEqual(len(delivered), 1)
        finally:
            yield service.stopService()
        self.assertIsNone(spawn.process)

    @defer.inlineCallbacks
    def test_sigalrm_flushes_the_queues(self):
        service = makeService(self.options())
        flushed = defer.Deferred()
        self.patch(service.context.queue, "flush",
                   lambda domain=None: flushed.callback(domain) or 0)
        previous = signal.getsignal(signal.SIGALRM)
        service.startService()
        try:
            os.kill(os.getpid(), signal.SIGALRM)
            self.assertIsNone((yield flushed))
        finally:
            yield service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGALRM), previous)


class TwistdTests(unittest.TestCase):
    """The real command line."""

    def test_help_and_unbuilt_listener(self):
        result = subprocess.run([TWISTD, "indimail", "--help"], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--submission=", result.stdout)
        unbuilt = [s.name for s in listeners.PROTOCOLS.values() if s.build is None]
        if unbuilt:
            result = subprocess.run([TWISTD, "-n", "indimail", "--root", self.mktemp(),
                                     f"--{unbuilt[0]}", "tcp:0"], capture_output=True, text=True)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("not available", result.stdout + result.stderr)
            self.assertNotIn("Traceback", result.stdout + result.stderr)
