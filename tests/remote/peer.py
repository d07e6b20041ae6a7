"""A scripted SMTP server for the client's tests, and a harness around the agent.

:class:`PeerFactory` answers like a small ESMTP server; a test changes any
reply (``replies``), the greeting (``None``: close without a word), the
EHLO keywords, or makes the server stall after the message (``hang_after_data``)
or break the TLS handshake (``break_tls``).  Everything it receives is kept.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from types import SimpleNamespace

from twisted.internet import defer, protocol, reactor
from twisted.protocols.basic import LineReceiver

from indimail_tw.config import Config, ControlDir
from indimail_tw.queue import records
from indimail_tw.queue.envelope import Envelope
from indimail_tw.queue.message import QueuedMessage
from indimail_tw.remote.agent import RemoteDeliveryAgent
from indimail_tw.smtp.service import load_certificate
from indimail_tw.tlsutil import make_self_signed

Reply = bytes | Callable[["PeerProtocol", bytes], bytes | None]


class PeerProtocol(LineReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 100_000

    def connectionMade(self):  # noqa: N802
        self.factory.connections.append(self)
        self.commands: list[bytes] = []
        self.data: list[bytes] | None = None
        self.mail: bytes | None = None
        self.rcpts: list[bytes] = []
        self.tls = False
        if self.factory.drop_when is not None:          # say nothing, drop on a signal
            self.factory.drop_when.addCallback(lambda _: self.transport.loseConnection())
        elif self.factory.greet_when is not None:       # greet on a signal
            self.factory.greet_when.addCallback(lambda _: self.sendLine(self.factory.greeting))
        elif self.factory.greeting is None:
            self.transport.loseConnection()
        else:
            self.sendLine(self.factory.greeting)

    def lineReceived(self, line):  # noqa: N802
        if self.data is not None:
            if line != b".":
                self.data.append(line)
                return
            body, self.data = b"\r\n".join(self.data) + b"\r\n", None
            self.factory.messages.append(SimpleNamespace(
                mail=self.mail, rcpts=list(self.rcpts), body=body, tls=self.tls,
                connection=len(self.factory.connections),
                client_cert=self.transport.getPeerCertificate() if self.tls else None))
            self.mail, self.rcpts = None, []
            if self.factory.hang_after_data:
                self.factory.hung.callback(self)
                return
            self.reply(b"DOT", line, b"250 2.0.0 ok queued")
            return
        self.commands.append(line)
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
        if verb == b"EHLO":
            self.reply(verb, line, b"\r\n".join(
                b"250-" + k for k in [b"peer.example"] + self.keywords()[:-1])
                + b"\r\n250 " + self.keywords()[-1])
        elif verb == b"STARTTLS":
            self.starttls(line)
        elif verb == b"MAIL":
            self.mail = line
            self.reply(verb, line, b"250 2.1.0 ok")
        elif verb == b"RCPT":
            sent = self.reply(verb, line, b"250 2.1.5 ok")
            if sent.startswith(b"2"):
                self.rcpts.append(line)
        elif verb == b"DATA":
            sent = self.reply(verb, line, b"354 go ahead" if self.rcpts else b"554 no rcpts")
            if sent.startswith(b"354"):
                self.data = []
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.reply(verb, line, b"250 ok")

    def keywords(self) -> list[bytes]:
        keys = list(self.factory.keywords)
        if self.factory.tls_options is not None and not self.tls:
            keys.append(b"STARTTLS")
        return keys

    def reply(self, verb: bytes, line: bytes, default: bytes) -> bytes:
        answer = self.factory.replies.get(verb, default)
        if callable(answer):
            answer = answer(self, line)
        if answer is None:
            answer = default
        self.transport.write(answer + b"\r\n")
        return answer

    def starttls(self, line: bytes) -> None:
        self.sendLine(b"220 ready for tls")
        if self.factory.break_tls:
            self.transport.write(b"this is not a TLS handshake\r\n" * 10)
            self.transport.loseConnection()
            return
        self.transport.startTLS(self.factory.tls_options)
        self.tls = True


class PeerFactory(protocol.Factory):
    protocol = PeerProtocol

    def __init__(self) -> None:
        self.greeting: bytes | None = b"220 peer.example ESMTP"
        self.keywords: list[bytes] = [b"PIPELINING", b"8BITMIME", b"SIZE 1000000",
                                      b"ENHANCEDSTATUSCODES"]
        self.replies: dict[bytes, Reply] = {}
        self.connections: list[PeerProtocol] = []
        self.messages: list[SimpleNamespace] = []
        self.hang_after_data = False
        self.hung: defer.Deferred = defer.Deferred()
        self.tls_options = None
        self.break_tls = False
        self.drop_when: defer.Deferred | None = None
        self.greet_when: defer.Deferred | None = None

    def use_tls(self, pem: str) -> None:
        self.tls_options = load_certificate(pem)


class Harness:
    """A temporary root (control, certs, queue), message files, listeners and the agent."""

    def __init__(self, control: dict[str, str] | None = None) -> None:
        self.root = tempfile.mkdtemp(prefix="itw-remote-")
        for sub in ("control", "certs", "queue", "msgs"):
            os.makedirs(os.path.join(self.root, sub))
        self.control = os.path.join(self.root, "control")
        self.certs = os.path.join(self.root, "certs")
        self.queue = os.path.join(self.root, "queue")
        files = {"me": "me.example\n", "locals": "me.example\n"}
        files.update(control or {})
        for name, text in files.items():
            self.write_control(name, text)
        self.config = Config(ControlDir(self.control, {}), fqdn=lambda: "me.example")
        self.ports: list = []
        self.agents: list[RemoteDeliveryAgent] = []
        self._ids = 0

    def write_control(self, name: str, text: str) -> None:
        with open(os.path.join(self.control, name), "w") as f:
            f.write(text)

    def reload(self) -> None:
        self.config.reload()

    def certificate(self, name: str, hostname: str) -> str:
        path = os.path.join(self.root, name)
        make_self_signed(path, hostname)
        return path

    def listen(self, factory: protocol.Factory, interface: str = "127.0.0.1",
               port: int = 0) -> int:
        listening = reactor.listenTCP(port, factory, interface=interface)
        self.ports.append(listening)
        return listening.getHost().port

    def listen_pair(self, first: protocol.Factory, second: protocol.Factory,
                    ips: tuple[str, str] = ("127.0.0.2", "127.0.0.3")) -> int:
        """Two servers on the same (random) port at two loopback addresses."""
        for _ in range(20):
            port = self.listen(first, ips[0])
            try:
                self.listen(second, ips[1], port)
                return port
            except OSError:
                self.ports.pop().stopListening()
        raise RuntimeError("no common free port")

    def agent(self, **kw) -> RemoteDeliveryAgent:
        kw.setdefault("ipme", frozenset({"127.0.0.1"}))
        kw.setdefault("environ", {})
        agent = RemoteDeliveryAgent(self.config, certs=self.certs, queue_base=self.queue,
                                    reactor=reactor, **kw)
        self.agents.append(agent)
        return agent

    def message(self, *recipients: str, sender: str = "alice@me.example",
                body: bytes = b"Subject: test\n\nhello\n.dot line\n", **kw) -> QueuedMessage:
        self._ids += 1
        path = os.path.join(self.root, "msgs", str(self._ids))
        envelope = Envelope.simple(sender, *recipients, **kw)
        record = records.encode_envelope(envelope, len(body))
        with open(path, "wb") as f:       # a queue file: its envelope after the message
            f.write(body + record + records.encode_trailer(len(record)))
        return QueuedMessage(str(self._ids), envelope, path, len(body))

    def deliver(self, agent: RemoteDeliveryAgent, message: QueuedMessage) -> defer.Deferred:
        """Deferred[list of DeliveryResult], one per recipient of ``message``."""
        return defer.gatherResults([agent.deliver(message, r)
                                    for r in message.envelope.recipients])

    @defer.inlineCallbacks
    def close(self):
        for agent in self.agents:
            yield agent.stop()
        for port in self.ports:
            yield port.stopListening()
        import shutil
        shutil.rmtree(self.root, ignore_errors=True)
