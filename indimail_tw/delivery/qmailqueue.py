"""An IQueue that hands messages to a real qmail's ``qmail-queue`` program.

vdelivermail running under qmail/IndiMail must forward through that MTA's
queue, not ours: the message goes to the program's fd 0, the envelope
(``F<sender>\\0T<rcpt>\\0...\\0``) to its fd 1.  Exit 0 means queued; 11 to 40
are permanent refusals (qmail-queue(8)); anything else is temporary.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer, error, protocol, threads
from zope.interface import implementer

from indimail_tw.errors import MailError
from indimail_tw.interfaces import IQueue
from indimail_tw.queue.envelope import Envelope

CANDIDATES = ("/usr/sbin/qmail-queue", "/var/indimail/bin/qmail-queue",
              "/var/qmail/bin/qmail-queue")


def find_qmail_queue(environ: Mapping[str, str]) -> str:
    """``QMAILQUEUE`` if set, else the first installed qmail-queue (or IndiMail's path)."""
    if environ.get("QMAILQUEUE"):
        return environ["QMAILQUEUE"]
    return next((p for p in CANDIDATES if os.access(p, os.X_OK)), CANDIDATES[0])


def envelope_bytes(envelope: Envelope) -> bytes:
    out = b"F" + envelope.sender.encode("utf-8", "surrogateescape") + b"\0"
    for rcpt in envelope.recipients:
        out += b"T" + rcpt.address.encode("utf-8", "surrogateescape") + b"\0"
    return out + b"\0"


class _QueueProtocol(protocol.ProcessProtocol):
    def __init__(self, data: bytes, env_data: bytes, done: defer.Deferred) -> None:
        self.data, self.env_data, self.done = data, env_data, done

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.writeToChild(0, self.data)
        self.transport.closeChildFD(0)
        self.transport.writeToChild(1, self.env_data)
        self.transport.closeChildFD(1)

    def processEnded(self, reason) -> None:  # noqa: N802
        code = getattr(reason.value, "exitCode", None)
        if isinstance(reason.value, error.ProcessDone) or code == 0:
            self.done.callback("qmail-queue")
        elif code is not None and 11 <= code <= 40:
            self.done.errback(MailError(554, "5.3.0", f"qmail-queue refused the message "
                                                      f"(exit {code})"))
        else:
            self.done.errback(MailError(451, "4.3.0", f"qmail-queue failed (exit {code})"))


@implementer(IQueue)
class QmailQueueClient:
    """Enqueue by running ``program`` (qmail-queue)."""

    def __init__(self, program: str, reactor: Any,
                 environ: Mapping[str, str] | None = None) -> None:
        self.program = program
        self.reactor = reactor
        self.environ = dict(os.environ if environ is None else environ)

    def enqueue(self, envelope: Envelope, message: Any) -> defer.Deferred:
        d = defer.succeed(message) if isinstance(message, bytes) else \
            threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), message.read)
        return d.addCallback(self._run, envelope)

    def _run(self, data: bytes, envelope: Envelope) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        proto = _QueueProtocol(data, envelope_bytes(envelope), done)
        try:
            self.reactor.spawnProcess(proto, self.program, [self.program], env=self.environ,
                                      childFDs={0: "w", 1: "w", 2: 2})
        except OSError as e:
            return defer.fail(MailError(451, "4.3.0", f"cannot run {self.program}: {e}"))
        return done

    def writer(self, envelope: Envelope) -> Any:
        raise NotImplementedError("QmailQueueClient only enqueues whole messages")

    def flush(self, domain: str | None = None) -> None:
        return None
