"""The local delivery helper process, started by :class:`~indimail_tw.delivery.lspawn.LocalSpawn`.

    python -m indimail_tw.delivery.lhelper --root ROOT --control-dir DIR [--nice N] [--parent PID]

It runs the :class:`~indimail_tw.delivery.local.LocalDeliveryAgent` of the
installation at ROOT (its own settings, store connection and threads) for the
requests the server writes on its stdin, and writes each result on its stdout
(:mod:`indimail_tw.delivery.wire`); forwards go back to the server, which queues
them.  ``--nice N`` lowers its CPU priority by N before anything else (every
thread it starts inherits it).  Log events go to fd 3 as JSON.

SIGHUP reloads the control files and forgets cached users.  SIGINT and SIGTERM
are caught and dropped (they reach the whole process group when the server is
stopped from a terminal or by a service manager, and the server stops the
helper itself): the helper stops once its stdin reaches its end and the
deliveries in progress are answered.  If the server dies (``--parent``), the
helper is killed with it, or drops what it reads after that: the server's
successor makes those deliveries again.  If it cannot start (a damaged control
file, no database) it says why on stderr and exits 111.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from twisted.internet import defer, interfaces, protocol
from zope.interface import implementer

from indimail_tw.delivery import wire
from indimail_tw.errors import MailError
from indimail_tw.queue.message import QueuedMessage

LOG_FD = 3
MAX_LINE = 64 * 1024 * 1024


@implementer(interfaces.IHalfCloseableProtocol)
class Channel(protocol.Protocol):
    """The server's requests in, results and forwards out (over stdin and stdout).

    The end of stdin ends the helper once every delivery in progress is answered."""

    def __init__(self, reactor: Any, parent: int | None = None) -> None:
        self.reactor = reactor
        self.parent = parent      # the server's pid: requests read after it died are dropped
        self.agent: Any = None
        self._buffer = b""
        self._running = 0
        self._closing = False
        self._forwards = 0
        self._forwarding: dict[int, defer.Deferred] = {}

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._buffer += data
        if b"\n" not in data:
            if len(self._buffer) > MAX_LINE:
                raise SystemExit("lhelper: a request longer than the limit")
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        for text in lines:
            record = wire.decode(text.decode("utf-8"))
            if "n" in record:
                self._deliver(record)
            else:
                self._forwarded(record)

    def _deliver(self, record: dict[str, Any]) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            # the server died (we were handed to another parent): nobody will read the
            # answer, and its successor delivers this recipient again; doing it now
            # would only make a duplicate
            return
        recipient = wire.recipient_in(record["r"])
        envelope = wire.envelope_in(record["e"])
        envelope.recipients = [recipient]
        message = QueuedMessage(str(record["m"]), envelope, str(record["p"]),
                                int(record["z"]), str(record["q"]))
        number = record["n"]
        self._running += 1
        d = self.agent.deliver(message, recipient)
        d.addCallback(lambda result: self.transport.write(wire.result_out(number, result)))
        d.addBoth(self._done)

    def _done(self, result: Any) -> Any:
        self._running -= 1
        self._stop_if_done()
        return result

    # -- forwards: the agent's queue --------------------------------------------------

    def enqueue_copy(self, envelope: Any, dtline: bytes, path: str,
                     size: int) -> defer.Deferred:
        """Ask the server to queue ``dtline`` + the message: Deferred[queue id], or a
        :class:`MailError` with the server's reason."""
        self._forwards += 1
        number = self._forwards
        d: defer.Deferred = defer.Deferred()
        self._forwarding[number] = d
        self.transport.write(wire.line({"f": number, "e": wire.envelope_out(envelope),
                                        "dt": dtline.decode("latin-1"), "p": path,
                                        "z": size}))
        return d

    def _forwarded(self, record: dict[str, Any]) -> None:
        d = self._forwarding.pop(record["fr"])
        if "id" in record:
            d.callback(str(record["id"]))
        else:
            code = 554 if record.get("perm") else 451
            d.errback(MailError(code, str(record["x"]), str(record["t"])))

    # -- the end ------------------------------------------------------------------------

    def readConnectionLost(self) -> None:  # noqa: N802
        self._closing = True
        self._stop_if_done()

    def writeConnectionLost(self) -> None:  # noqa: N802
        self.connectionLost(None)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self._closing = True
        for d in self._forwarding.values():
            d.errback(MailError(451, "4.3.0", "the server stopped"))
        self._forwarding.clear()
        self._stop_if_done()

    def _stop_if_done(self) -> None:
        if self._closing and not self._running and self.reactor.running:
            self.reactor.stop()


def _die_with_parent(parent: int) -> None:
    """Be killed when the server dies (Linux PR_SET_PDEATHSIG): the deliveries in
    progress are then abandoned, as the server's successor makes them again."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            return
    if os.getppid() != parent:          # it died before that: nothing to do here
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="indimail_tw.delivery.lhelper",
                                description="local delivery helper (started by the server)")
    p.add_argument("--root", required=True)
    p.add_argument("--control-dir", required=True)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--parent", type=int, default=0, help="the server's pid")
    args = p.parse_args(argv)
    parent = args.parent or os.getppid()
    _die_with_parent(parent)
    if args.nice:
        try:
            os.nice(args.nice)
        except OSError as e:                    # a limit or a sandbox: run as we are
            print(f"lhelper: cannot lower its priority: {e}", file=sys.stderr)

    from twisted.internet import reactor, stdio
    from twisted.logger import globalLogBeginner
    from twisted.python.threadpool import ThreadPool

    from indimail_tw.config import Config, ControlDir
    from indimail_tw.delivery.local import LocalDeliveryAgent
    from indimail_tw.errors import ConfigError, StoreError
    from indimail_tw.logjson import json_observer
    from indimail_tw.logsetup import FLUSH_DELAY
    from indimail_tw.paths import Paths
    from indimail_tw.service import IO_THREADS
    from indimail_tw.storage.engine import open_engine
    from indimail_tw.storage.store import CACHE_SECONDS, UserStore

    environ = dict(os.environ)
    try:
        paths = Paths.resolve(args.root, environ, args.control_dir)
        config = Config(ControlDir(paths.control, environ))
        engine = open_engine(paths, environ, create=False)
    except (ConfigError, StoreError, OSError) as e:
        print(f"lhelper: cannot start: {e}", file=sys.stderr)
        return 111
    globalLogBeginner.beginLoggingTo([json_observer(LOG_FD, reactor, FLUSH_DELAY)],
                                     redirectStandardIO=False)
    store = UserStore(engine, cache_seconds=CACHE_SECONDS)
    pool = ThreadPool(minthreads=0, maxthreads=IO_THREADS, name="indimail-lhelper")
    channel = Channel(reactor, parent)
    channel.agent = LocalDeliveryAgent(store, paths.domains, config, reactor=reactor,
                                       environ=environ, pool=pool,
                                       forward=channel.enqueue_copy)

    def reload() -> None:
        store.forget()
        config.reload()

    def signals() -> None:
        # after the reactor's own handlers (SIGCHLD is needed by program deliveries).
        # SIGINT and SIGTERM are caught and dropped, not SIG_IGN: an ignored signal
        # would stay ignored in the programs that deliveries run.
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
        signal.signal(signal.SIGINT, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: None)

    pool.start()
    reactor.callWhenRunning(signals)
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    stdio.StandardIO(channel, reactor=reactor)
    reactor.run()
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
