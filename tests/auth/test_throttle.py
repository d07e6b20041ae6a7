"""Failed-login throttling: growing, capped, decaying delays; bounded table; per connection."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial import unittest

from indimail_tw.auth.throttle import ConnectionAttempts, LoginThrottle, address_key


class ThrottleTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.throttle = LoginThrottle(self.clock)

    def test_no_failures_no_delay(self):
        self.assertEqual(self.throttle.delay("192.0.2.1"), 0)
        self.assertEqual(len(self.throttle), 0)

    def test_delay_doubles_up_to_the_cap(self):
        delays = [self.throttle.failed("192.0.2.1") for _ in range(8)]
        self.assertEqual(delays, [1, 2, 4, 8, 15, 15, 15, 15])
        self.assertEqual(self.throttle.delay("192.0.2.1"), 15)
        # other addresses are not affected
        self.assertEqual(self.throttle.delay("192.0.2.2"), 0)

    def test_quiet_periods_forget_failures(self):
        for _ in range(3):
            self.throttle.failed("192.0.2.1")
        self.assertEqual(self.throttle.delay("192.0.2.1"), 4)
        self.clock.advance(59)
        self.assertEqual(self.throttle.failures("192.0.2.1"), 3)
        self.clock.advance(1)
        self.assertEqual(self.throttle.failures("192.0.2.1"), 2)
        self.assertEqual(self.throttle.delay("192.0.2.1"), 2)
        self.clock.advance(120)
        self.assertEqual(self.throttle.delay("192.0.2.1"), 0)
        self.assertEqual(len(self.throttle), 0)     # fully decayed entries are dropped

    def test_a_failure_restarts_the_quiet_period(self):
        self.throttle.failed("192.0.2.1")
        self.clock.advance(50)
        self.throttle.failed("192.0.2.1")
        self.clock.advance(50)
        self.assertEqual(self.throttle.failures("192.0.2.1"), 2)

    def test_table_is_bounded_oldest_evicted(self):
        throttle = LoginThrottle(self.clock, max_entries=3)
        for n in range(1, 5):
            throttle.failed(f"192.0.2.{n}")
            self.clock.advance(1)
        self.assertEqual(len(throttle), 3)
        self.assertEqual(throttle.failures("192.0.2.1"), 0)
        self.assertEqual(throttle.failures("192.0.2.4"), 1)
        # a new failure makes an address the youngest again
        throttle.failed("192.0.2.2")
        throttle.failed("192.0.2.5")
        self.assertEqual(throttle.failures("192.0.2.2"), 2)
        self.assertEqual(throttle.failures("192.0.2.3"), 0)

    def test_ipv6_counted_per_64_and_mapped_ipv4_as_ipv4(self):
        self.throttle.failed("2001:db8:1:2::1")
        self.assertEqual(self.throttle.failures("2001:db8:1:2:ffff::9"), 1)
        self.assertEqual(self.throttle.failures("2001:db8:1:3::1"), 0)
        self.throttle.failed("::ffff:192.0.2.9")
        self.assertEqual(self.throttle.failures("192.0.2.9"), 1)
        self.assertEqual(address_key("not an address"), "not an address")

    def test_environment_knobs(self):
        throttle = LoginThrottle.from_environ(self.clock, {
            "LOGIN_FAILURE_DELAY": "2", "LOGIN_FAILURE_DELAY_MAX": "5",
            "LOGIN_FAILURE_DECAY": "10", "LOGIN_THROTTLE_SIZE": "2",
            "MAX_LOGIN_FAILURES": "5"})
        self.assertEqual([throttle.failed("192.0.2.1") for _ in range(3)], [2, 4, 5])
        self.assertEqual(throttle.per_connection, 5)
        self.assertEqual(throttle.max_entries, 2)
        self.clock.advance(10)
        self.assertEqual(throttle.failures("192.0.2.1"), 2)
        # bad values fall back to the defaults; 0 disables the delay
        throttle = LoginThrottle.from_environ(self.clock, {
            "LOGIN_FAILURE_DELAY": "x", "MAX_LOGIN_FAILURES": "-1"})
        self.assertEqual(throttle.base_delay, 1)
        self.assertEqual(throttle.per_connection, 3)
        throttle = LoginThrottle.from_environ(self.clock, {"LOGIN_FAILURE_DELAY": "0"})
        self.assertEqual(throttle.failed("192.0.2.1"), 0)


class ConnectionAttemptsTests(unittest.SynchronousTestCase):
    def test_limit(self):
        attempts = LoginThrottle(task.Clock()).connection()
        self.assertEqual([attempts.failed() for _ in range(3)], [False, False, True])
        self.assertTrue(attempts.exhausted)
        self.assertEqual(attempts.failures, 3)
        one = ConnectionAttempts(1)
        self.assertTrue(one.failed())
