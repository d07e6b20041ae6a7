"""djbdns's DNSCACHEIP: the DNS caches the remote agent asks instead of /etc/resolv.conf."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

from twisted.internet import reactor, task
from twisted.names import cache, client, hosts, resolve
from twisted.trial import unittest

from indimail_tw.errors import ConfigError
from indimail_tw.remote.agent import build_remote_agent, dnscache_servers, system_resolver
from tests.remote.dnsfake import a, start_dns_server

TWISTD = os.path.join(sys.prefix, "bin", "twistd")


class ParseTests(unittest.TestCase):
    def test_unset_or_blank_means_resolv_conf(self):
        for environ in ({}, {"DNSCACHEIP": ""}, {"DNSCACHEIP": "  \t"}, {"DNSCACHEIP": " , "}):
            self.assertIsNone(dnscache_servers(environ), environ)

    def test_one_address_on_port_53(self):
        self.assertEqual(dnscache_servers({"DNSCACHEIP": "127.0.0.60"}), [("127.0.0.60", 53)])

    def test_spaces_and_commas_ipv4_and_ipv6_in_order_without_repeats(self):
        self.assertEqual(
            dnscache_servers({"DNSCACHEIP": " 10.0.0.1, 2001:DB8::0:1  10.0.0.2,,10.0.0.1\n"}),
            [("10.0.0.1", 53), ("2001:db8::1", 53), ("10.0.0.2", 53)])

    def test_anything_else_is_a_config_error_naming_the_variable_and_item(self):
        for value, item in (("nonsense", "'nonsense'"), ("10.0.0.1 10.0.0.256", "'10.0.0.256'"),
                            ("10.0.0.1:53", "'10.0.0.1:53'"), ("[::1]", "'[::1]'"),
                            ("10.0.0.1;10.0.0.2", "'10.0.0.1;10.0.0.2'")):
            with self.assertRaises(ConfigError) as caught:
                dnscache_servers({"DNSCACHEIP": value})
            text = str(caught.exception)
            self.assertIn("DNSCACHEIP", text)
            self.assertIn(f"not an IPv4 or IPv6 address: {item}", text)


class ResolverTests(unittest.TestCase):
    timeout = 30

    def test_with_servers_a_cache_and_just_those_no_hosts_file(self):
        chain = system_resolver(task.Clock(), [("127.0.0.60", 53), ("::1", 53)])
        self.assertIsInstance(chain, resolve.ResolverChain)
        kinds = [type(r) for r in chain.resolvers]
        self.assertEqual(kinds, [cache.CacheResolver, client.Resolver])
        self.assertEqual(chain.resolvers[1].servers, [("127.0.0.60", 53), ("::1", 53)])

    def test_without_servers_hosts_first_then_resolv_conf(self):
        chain = system_resolver(task.Clock())      # it re-reads resolv.conf on a timer
        kinds = [type(r) for r in chain.resolvers]
        self.assertEqual(kinds, [hosts.Resolver, cache.CacheResolver, client.Resolver])

    async def test_names_come_from_the_servers_not_etc_hosts(self):
        # the DNS server says localhost is 127.0.0.9; /etc/hosts would say 127.0.0.1
        port, listeners = start_dns_server(reactor, "localhost", {"localhost": [a("127.0.0.9")]})
        for listener in listeners:
            self.addCleanup(listener.stopListening)
        chain = system_resolver(reactor, [("127.0.0.1", port)])
        answers, _authority, _additional = await chain.lookupAddress("localhost")
        self.assertEqual([r.payload.dottedQuad() for r in answers], ["127.0.0.9"])


class BuildTests(unittest.TestCase):
    def context(self, environ):
        base = tempfile.mkdtemp(prefix="itw-dnscacheip-")
        self.addCleanup(shutil.rmtree, base, True)
        settings = SimpleNamespace(queue_base=base)
        return SimpleNamespace(reactor=task.Clock(), config=SimpleNamespace(current=settings),
                               paths=SimpleNamespace(certs=base, queue=base), environ=environ)

    def test_dnscacheip_gives_the_agent_its_servers(self):
        agent = build_remote_agent(self.context({"DNSCACHEIP": "127.0.0.60,127.0.0.61"}))
        self.assertEqual(agent._dns_servers, [("127.0.0.60", 53), ("127.0.0.61", 53)])

    def test_without_dnscacheip_resolv_conf(self):
        self.assertIsNone(build_remote_agent(self.context({}))._dns_servers)

    def test_explicit_servers_or_resolver_win(self):
        environ = {"DNSCACHEIP": "127.0.0.60"}
        agent = build_remote_agent(self.context(environ), dns_servers=[("127.0.0.1", 5353)])
        self.assertEqual(agent._dns_servers, [("127.0.0.1", 5353)])
        resolver = object()
        agent = build_remote_agent(self.context(environ), resolver=resolver)
        self.assertIs(agent._resolver, resolver)
        self.assertIsNone(agent._dns_servers)

    def test_invalid_dnscacheip_is_one_line_at_start(self):
        with self.assertRaises(SystemExit) as caught:
            build_remote_agent(self.context({"DNSCACHEIP": "dnscache.local"}))
        self.assertEqual(str(caught.exception.code),
                         "indimail: cannot start: environment variable DNSCACHEIP: not an IPv4 "
                         "or IPv6 address: 'dnscache.local' (in 'dnscache.local')")


class TwistdTests(unittest.TestCase):
    timeout = 120

    def test_twistd_refuses_to_start_with_one_line_and_no_traceback(self):
        root = tempfile.mkdtemp(prefix="itw-dnscacheip-")
        self.addCleanup(shutil.rmtree, root, True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MYSQL_", "INDIMAIL", "QUEUE", "CONTROLDIR", "BASE_PATH"))}
        env["DNSCACHEIP"] = "127.0.0.1 bogus"
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(root, "twistd.log"),
             "indimail", "--root", root, "--smtp", "tcp:0:interface=127.0.0.1"],
            env=env, capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        self.assertIn("indimail: cannot start: environment variable DNSCACHEIP: not an IPv4 or "
                      "IPv6 address: 'bogus'", result.stderr)
