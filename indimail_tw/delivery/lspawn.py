"""Local delivery in a helper process, as qmail-send hands it to qmail-lspawn.

The scheduler stays in the server: it decides what to deliver when, records the
outcome and removes finished messages.  :class:`LocalSpawn` is the local
channel's :class:`IDeliveryAgent`: each delivery is one request to a helper
process (:mod:`indimail_tw.delivery.lhelper`) that runs the
:class:`~indimail_tw.delivery.local.LocalDeliveryAgent` with its own store
connection, settings and threads, and answers with the result
(:mod:`indimail_tw.delivery.wire`).  A forward the helper makes comes back as a
request to queue a new message, which the server commits into its queue.

Why a process: in one process receiving and delivering take turns on one core
(one interpreter lock), so under load each waits for the other.  With the
helper, deliveries run on another core while the server receives.  The helper
runs ``nice``d (``--local-delivery-nice``, default 10): where the two compete
for a CPU, receiving (whose latency the sending MTA sees) goes first and
delivery takes what is left; under a sustained overload the queue grows
instead of receiving slowing down.

The helper is started with the service and started again when it dies (after
:data:`RESTART_DELAYS`); deliveries it had not answered get a temporary failure
(their recipients stay queued and are retried: delivery is at-least-once), and
requests made while it is down wait for the next one.  SIGHUP reaches it from the
server (:meth:`LocalSpawn.reload`).  It logs through its fd 3, as JSON events that
the server logs as its own, and it stops when its stdin reaches its end.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer, protocol
from twisted.logger import Logger
from zope.interface import implementer

from indimail_tw.backoff import Backoff
from indimail_tw.delivery import wire
from indimail_tw.delivery.local import enqueue_copy
from indimail_tw.delivery.result import OK, PERMANENT, TEMPORARY, DeliveryResult
from indimail_tw.interfaces import IDeliveryAgent
from indimail_tw.logjson import JSONEventReader, StderrLines

log = Logger(namespace="indimail_tw.delivery")

RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER = 60.0      # a helper that ran this long restarts without the delay growing
STOP_GRACE = 30.0        # after closing its stdin, SIGKILL
LOG_FD = 3
_STATUSES = frozenset((OK, TEMPORARY, PERMANENT))
LOST = DeliveryResult.temporary(
    "The local delivery process exited before answering. (#4.3.0)", "4.3.0")


def helper_command(root: str, control_dir: str, *, nice: int = 0,
                   parent: int | None = None) -> list[str]:
    """The argv of the helper for the installation at ``root``, started by the
    process ``parent`` (it dies with it)."""
    argv = [sys.executable, "-m", "indimail_tw.delivery.lhelper", "--root", root,
            "--control-dir", control_dir]
    if nice:
        argv += ["--nice", str(nice)]
    return [*argv, "--parent", str(parent)] if parent else argv


@implementer(IDeliveryAgent)
class LocalSpawn:
    """The local channel's agent: deliveries run in a helper process (module docstring).

    ``queue`` returns the IQueue forwards go into; ``command`` and ``env`` start the
    helper (:func:`helper_command`)."""

    def __init__(self, reactor: Any, command: list[str], env: Mapping[str, str],
                 queue: Callable[[], Any]) -> None:
        self.reactor = reactor
        self.command = list(command)
        self.env = dict(env)
        self._queue = queue
        self._numbers = 0
        self._waiting: dict[int, defer.Deferred] = {}   # sent to the helper, unanswered
        self._unsent: list[bytes] = []                   # made while no helper ran
        self.process: Any = None
        self._proto: _HelperProtocol | None = None
        self._started_at = 0.0
        self._backoff = Backoff(RESTART_DELAYS, STABLE_AFTER)
        self._restart: Any = None
        self._running = False
        self._ended: list[defer.Deferred] = []
        self._kill: Any = None

    # -- IDeliveryAgent ---------------------------------------------------------------

    def deliver(self, message: Any, recipient: Any) -> defer.Deferred:
        """Deferred[DeliveryResult], from the helper; never fails."""
        self._numbers += 1
        number = self._numbers
        record = wire.line({"n": number, "m": message.id, "p": message.path,
                            "z": message.size, "q": message.queue,
                            "e": wire.envelope_out(message.envelope, recipients=False),
                            "r": wire.recipient_out(recipient)})
        d: defer.Deferred = defer.Deferred()
        self._waiting[number] = d
        if self.process is not None:
            self.process.write(record)
        else:
            self._unsent.append(record)
            if self._running and self._restart is None:
                self._spawn()
        return d

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        if self.process is None and self._restart is None:
            self._spawn()

    def reload(self) -> None:
        """Pass SIGHUP on: the helper reloads its settings and forgets cached users."""
        if self.process is not None:
            with contextlib.suppress(OSError):   # exited: its successor reads the new files
                self.process.signalProcess("HUP")

    def stop(self) -> defer.Deferred:
        """Start no new helper; close the running one's stdin and fire once it exited
        (SIGKILL after :data:`STOP_GRACE` seconds)."""
        self._running = False
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        if self.process is None:
            # requests made while no helper ran will not be sent now
            self._unsent = []
            waiting, self._waiting = self._waiting, {}
            for d in waiting.values():
                d.callback(LOST)
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._ended.append(d)
        self.process.closeStdin()
        if self._kill is None:
            self._kill = self.reactor.callLater(STOP_GRACE, self._signal, "KILL")
        return d

    def _signal(self, name: str) -> None:
        self._kill = None
        if self.process is not None:
            with contextlib.suppress(OSError):
                self.process.signalProcess(name)

    def _spawn(self) -> None:
        self._restart = None
        self._proto = _HelperProtocol(self)
        self.process = self.reactor.spawnProcess(
            self._proto, self.command[0], self.command, env=self.env,
            childFDs={0: "w", 1: "r", 2: "r", LOG_FD: "r"})
        self._started_at = self.reactor.seconds()
        log.info("local delivery: helper started, pid {pid}", pid=self.process.pid)
        unsent, self._unsent = self._unsent, []
        if unsent:
            self.process.write(b"".join(unsent))

    def _helper_ended(self, proto: _HelperProtocol, reason: Any) -> None:
        if proto is not self._proto:
            return
        self.process = self._proto = None
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.callback(LOST)
        if not self._running:
            log.info("local delivery: helper stopped")
            ended, self._ended = self._ended, []
            for d in ended:
                d.callback(None)
            return
        delay = self._backoff.next_delay(self.reactor.seconds() - self._started_at)
        log.error("local delivery: helper exited ({reason}); {lost} deliveries in progress "
                  "will be retried; starting it again in {delay:g} s",
                  reason=reason.getErrorMessage(), lost=len(waiting), delay=delay)
        self._restart = self.reactor.callLater(delay, self._spawn)

    # -- what the helper says ---------------------------------------------------------

    def _record(self, record: Any) -> None:
        if not isinstance(record, dict):
            raise ValueError("not an object")
        if "n" in record:
            d = self._waiting.pop(record["n"], None)
            if d is None:
                raise ValueError(f"no delivery {record['n']!r} is waiting")
            if record.get("s") not in _STATUSES:
                d.callback(DeliveryResult.temporary(
                    "The local delivery process gave a bad answer. (#4.3.0)", "4.3.0"))
                raise ValueError(f"bad status {record.get('s')!r}")
            d.callback(wire.result_in(record))
        elif "f" in record:
            self._forward(record)
        else:
            raise ValueError("neither a result nor a forward")

    def _forward(self, record: dict[str, Any]) -> None:
        number = record["f"]
        proto = self._proto
        d = defer.maybeDeferred(self._enqueue, wire.envelope_in(record["e"]),
                                str(record["dt"]).encode("latin-1"), str(record["p"]),
                                int(record["z"]))

        def answer(result: Any) -> None:
            if proto is self._proto and self.process is not None:
                self.process.write(wire.line({"fr": number, **result}))

        d.addCallback(lambda queue_id: {"id": queue_id})
        d.addErrback(_forward_failure)
        d.addCallback(answer)
        d.addErrback(lambda f: log.failure("local delivery: answering forward {n}", f,
                                           n=number))

    def _enqueue(self, envelope: Any, dtline: bytes, path: str,
                 size: int) -> defer.Deferred:
        queue = self._queue()
        if queue is None:
            raise RuntimeError("no queue")
        return enqueue_copy(self.reactor, queue, envelope, dtline, path, size)


def _forward_failure(failure: Any) -> dict[str, Any]:
    """A queue failure as the wire's answer: permanent only if the queue refused."""
    e = failure.value
    if isinstance(e, OSError) and e.strerror:
        return {"t": f"Unable to read message: {e.strerror}", "x": "4.3.0", "perm": False}
    text = getattr(e, "text", None) or str(e) or e.__class__.__name__
    permanent = getattr(e, "temporary", True) is False
    return {"t": text, "x": getattr(e, "enhanced", "") or ("5.3.0" if permanent else "4.3.0"),
            "perm": permanent}


class _HelperProtocol(protocol.ProcessProtocol):
    """The helper's pipes: results and forwards on stdout, JSON log events on fd 3,
    anything else on stderr (logged as errors)."""

    MAX_LINE = 64 * 1024 * 1024

    def __init__(self, spawn: LocalSpawn) -> None:
        self.spawn = spawn
        self._out = b""
        self._err = StderrLines("local delivery helper")
        self._events = JSONEventReader("local delivery helper")

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        if fd == 1:
            self._results(data)
        elif fd == LOG_FD:
            self._events.feed(data)
        else:
            self._err.feed(data)

    def _results(self, data: bytes) -> None:
        self._out += data
        if b"\n" not in data:
            if len(self._out) > self.MAX_LINE:
                log.error("local delivery helper: an answer longer than {n} bytes; "
                          "stopping it", n=self.MAX_LINE)
                self._out = b""
                self.transport.signalProcess("KILL")
            return
        *lines, self._out = self._out.split(b"\n")
        record_of = self.spawn._record
        for text in lines:
            try:
                record_of(wire.decode(text.decode("utf-8")))
            except Exception as e:  # noqa: BLE001 -- the helper's bug must not stop ours
                log.error("local delivery helper: bad answer {text!r}: {error}",
                          text=text[:200], error=str(e))

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.spawn._helper_ended(self, reason)


def build_local_spawn(context: Any) -> LocalSpawn:
    """The local agent of a running server (``ServerContext``) with delivery in a
    helper process."""
    reactor = context.reactor
    if reactor is None:
        from twisted.internet import reactor
    paths = context.paths
    command = helper_command(paths.root, paths.control,
                             nice=getattr(context, "local_nice", 0), parent=os.getpid())
    return LocalSpawn(reactor, command, helper_environ(context.environ),
                      lambda: context.queue)


def helper_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment, with the directory this package was imported from
    first on PYTHONPATH: the helper runs the same code as the server, wherever
    that came from (an installed package, a source tree, a tac file's path)."""
    import indimail_tw

    env = dict(environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(indimail_tw.__file__)))
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != here]
    env["PYTHONPATH"] = os.pathsep.join([here, *rest])
    return env
