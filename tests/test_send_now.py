"""The protocol's direct write: replies go straight to the socket only when nothing is
queued before them, and whatever the socket does not take is queued, in order."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.trial import unittest

from indimail_tw.lineserver import direct_socket, send_now


class FakeSocket:
    def __init__(self, takes: int | None = None, error: OSError | None = None) -> None:
        self.takes = takes
        self.error = error
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        n = len(data) if self.takes is None else min(self.takes, len(data))
        self.sent.append(bytes(data[:n]))
        return n


class FakeTransport:
    """The tcp.Connection attributes send_now reads; write() records what is queued."""

    def __init__(self) -> None:
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.offset = 0
        self.connected = True
        self.disconnecting = False
        self.producer = None
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class SendNowTests(unittest.TestCase):
    def test_nothing_queued_goes_to_the_socket(self):
        sock, transport = FakeSocket(), FakeTransport()
        send_now(transport, sock, b"+OK 3 octets\r\nabc\r\n.\r\n")
        self.assertEqual(sock.sent, [b"+OK 3 octets\r\nabc\r\n.\r\n"])
        self.assertEqual(transport.written, [])

    def test_the_rest_of_a_partial_send_is_queued(self):
        sock, transport = FakeSocket(takes=4), FakeTransport()
        send_now(transport, sock, b"+OK hello\r\n")
        self.assertEqual(sock.sent, [b"+OK "])
        self.assertEqual(transport.written, [b"hello\r\n"])

    def test_a_socket_error_leaves_it_to_the_transport(self):
        for error in (BlockingIOError(), ConnectionResetError(), BrokenPipeError()):
            sock, transport = FakeSocket(error=error), FakeTransport()
            send_now(transport, sock, b"+OK\r\n")
            self.assertEqual(transport.written, [b"+OK\r\n"])

    def test_queued_data_keeps_its_place(self):
        for queued in ({"_tempDataLen": 3}, {"dataBuffer": b"abc"},
                       {"dataBuffer": b"abc", "offset": 1}):
            sock, transport = FakeSocket(), FakeTransport()
            vars(transport).update(queued)
            send_now(transport, sock, b"+OK\r\n")
            self.assertEqual(sock.sent, [])
            self.assertEqual(transport.written, [b"+OK\r\n"])

    def test_not_while_closing_streaming_or_without_a_socket(self):
        for state in ({"disconnecting": True}, {"connected": False}, {"producer": object()}):
            sock, transport = FakeSocket(), FakeTransport()
            vars(transport).update(state)
            send_now(transport, sock, b"+OK\r\n")
            self.assertEqual(sock.sent, [])
            self.assertEqual(transport.written, [b"+OK\r\n"])
        transport = FakeTransport()
        send_now(transport, None, b"+OK\r\n")
        self.assertEqual(transport.written, [b"+OK\r\n"])

    def test_direct_socket_only_for_plain_tcp(self):
        self.assertIsNone(direct_socket(FakeTransport()))
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        connection = tcp.Connection(a, None)
        self.assertIs(direct_socket(connection), a)
        connection.TLS = True
        self.assertIsNone(direct_socket(connection))


class RealSocketTests(unittest.TestCase):
    """With a real socket the send keeps the interpreter lock (libc's send with
    MSG_DONTWAIT): what it takes, a full buffer and an error behave as sock.send."""

    def setUp(self):
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.peer.close)

    def test_sends_what_the_socket_takes_and_queues_the_rest(self):
        transport = FakeTransport()
        send_now(transport, self.ours, b"250 ok\r\n")
        self.assertEqual(self.peer.recv(100), b"250 ok\r\n")
        self.assertEqual(transport.written, [])
        big = b"x" * (8 * 1024 * 1024)               # more than the socket buffer holds
        send_now(transport, self.ours, big)
        (rest,) = transport.written
        self.assertTrue(0 < len(rest) < len(big))
        self.assertTrue(big.endswith(rest))

    def test_an_error_leaves_it_to_the_transport(self):
        self.peer.close()
        transport = FakeTransport()
        send_now(transport, self.ours, b"250 ok\r\n")
        send_now(transport, self.ours, b"250 ok\r\n")   # EPIPE by now, never SIGPIPE
        self.assertEqual(transport.written[-1], b"250 ok\r\n")
