"""The running server's shared parts and the service tree that owns them.

``ServerContext`` is what every protocol factory receives: paths, the live
configuration, the user store, the portal, and the small thread pool that does
the disk and database work of the hot path (queue commits, local deliveries,
the recipient check).  ``IndiMailService`` starts and stops them and reloads
the control files on SIGHUP without dropping connections (each connection
keeps the settings snapshot it started with).

The pool is small on purpose: Python threads share one interpreter lock, and
every system call a worker makes gives it up and takes it back, so many busy
workers spend more time handing the lock around than working (measured: ten
threads doing the same jobs as two cost three times the CPU).  Batches keep
two threads busy; slow disks (long fsyncs) want more (``--io-threads``).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

from twisted.application import service
from twisted.cred.portal import Portal
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from indimail_tw.auth.checkers import AuthPolicy, ChainChecker, IBindable, StoreChecker
from indimail_tw.auth.realm import MaildirRealm
from indimail_tw.config import Config, ControlDir
from indimail_tw.paths import Paths
from indimail_tw.storage.engine import Engine, open_engine
from indimail_tw.storage.store import UserStore

log = Logger()

IO_THREADS = 2


@dataclass
class ServerContext:
    paths: Paths
    config: Config
    engine: Engine
    store: UserStore
    portal: Portal
    checker: Any
    environ: Mapping[str, str]
    reactor: Any = None
    queue: Any = None            # IQueue, once the queue service is built
    local_agent: Any = None      # IDeliveryAgent for local recipients
    remote_agent: Any = None     # IDeliveryAgent for remote recipients
    log_debug: bool = False      # make debug log events (off: they are not even created)
    io_pool: ThreadPool | None = None   # the hot path's blocking work (see the module doc)
    extras: dict = field(default_factory=dict)

    def auth_policy(self) -> AuthPolicy:
        settings = self.config.current
        return AuthPolicy(environ=self.environ, configured_domain=settings.defaultdomain,
                          locals=tuple(settings.locals))


def build_context(paths: Paths, environ: Mapping[str, str], checkers: list | None = None,
                  reactor: Any = None, *, log_debug: bool = False,
                  io_threads: int = IO_THREADS) -> ServerContext:
    """Open the store (creating missing tables, refusing a newer schema) and the portal.

    Blocking: called once from ``makeService`` before the reactor runs, so a
    bad database or control file stops the start with a clear message.
    """
    paths.ensure()
    control = ControlDir(paths.control, environ)
    config = Config(control)
    engine = open_engine(paths, environ, create=True)
    engine.run_sync(engine.prepare)
    store = UserStore(engine)
    checker = ChainChecker(checkers) if checkers else StoreChecker()
    context = ServerContext(paths=paths, config=config, engine=engine, store=store,
                            portal=Portal(MaildirRealm(store), [checker]), checker=checker,
                            environ=environ, reactor=reactor, log_debug=log_debug,
                            io_pool=ThreadPool(minthreads=0, maxthreads=io_threads,
                                               name="indimail-io"))
    _bind(context)
    config.subscribe(lambda _settings: _bind(context))
    return context


def channel_router(context: ServerContext):
    """qmail-send's classification: an address whose domain is in ``locals`` or
    matched by ``virtualdomains`` is local; everything else is remote."""

    def route(address: str) -> str:
        settings = context.config.current
        domain = address.rpartition("@")[2].lower()
        if not domain or settings.is_local(domain):
            return "local"
        if settings.virtualdomains.lookup(address) is not None:
            return "local"
        return "remote"

    return route


def attach_queue(context: ServerContext, parent: service.MultiService) -> None:
    """Build the queues with the local and remote delivery agents and run them
    under ``parent``."""
    from indimail_tw.delivery.local import build_local_agent
    from indimail_tw.queue.service import build_queue
    from indimail_tw.remote.agent import build_remote_agent

    context.local_agent = build_local_agent(context)
    context.remote_agent = build_remote_agent(context)
    queue_set, queue_service = build_queue(
        context, {"local": context.local_agent, "remote": context.remote_agent},
        channel_router(context))
    context.queue = queue_set
    queue_service.setServiceParent(parent)


def _bind(context: ServerContext) -> None:
    if IBindable.providedBy(context.checker):
        context.checker.bind(context.engine, context.auth_policy())


class IndiMailService(service.MultiService):
    """The root of the tree: owns the store; SIGHUP reloads the configuration,
    SIGALRM retries every queued recipient now (qmail-send's ALRM, ``qmail-flush``)."""

    name = "indimail"

    def __init__(self, context: ServerContext) -> None:
        super().__init__()
        self.context = context
        self._previous = {}
        attach_queue(context, self)

    def reload(self) -> bool:
        ok = self.context.config.reload()
        log.info("configuration reloaded" if ok else "configuration reload failed; "
                 "keeping the previous settings")
        return ok

    def flush(self) -> int:
        count = self.context.queue.flush() if self.context.queue is not None else 0
        log.info("ALRM: {count} recipients due now", count=count)
        return count

    def _reactor(self):
        if self.context.reactor is not None:
            return self.context.reactor
        from twisted.internet import reactor
        return reactor

    def _on_hup(self, signum, frame) -> None:
        self._reactor().callFromThread(self.reload)

    def _on_alrm(self, signum, frame) -> None:
        self._reactor().callFromThread(self.flush)

    def startService(self) -> None:  # noqa: N802
        if os.environ.get("INDIMAIL_NO_SIGHUP") is None:
            for signum, handler in ((signal.SIGHUP, self._on_hup),
                                    (signal.SIGALRM, self._on_alrm)):
                self._previous[signum] = signal.signal(signum, handler)
        pool = self.context.io_pool
        if pool is not None and not pool.started:
            pool.start()
        super().startService()
        log.info("indimail_tw started: root {root}, {engine} user store",
                 root=self.context.paths.root, engine=self.context.engine.name)

    def stopService(self):  # noqa: N802
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        d = super().stopService()
        if self.context.remote_agent is not None:
            # after the queues stopped delivering: QUIT idle remote connections
            d.addBoth(lambda result: self.context.remote_agent.stop().addBoth(lambda _: result))
        d.addBoth(self._stopped)
        return d

    def _stopped(self, result: Any) -> Any:
        """After every child stopped: no job is left for the pool or the store."""
        pool = self.context.io_pool
        if pool is not None and pool.started:
            pool.stop()
        self.context.engine.close()
        return result
