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
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from indimail_tw.auth.checkers import AuthPolicy, ChainChecker, IBindable, StoreChecker
from indimail_tw.auth.realm import MaildirRealm
from indimail_tw.backoff import Backoff
from indimail_tw.config import Config, ControlDir
from indimail_tw.logjson import JSONEventReader, StderrLines
from indimail_tw.paths import Paths
from indimail_tw.storage.engine import Engine, open_engine
from indimail_tw.storage.store import CACHE_SECONDS as STORE_CACHE_SECONDS, UserStore

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
    worker: tuple[int, int] = (0, 1)    # (this process, processes): see --workers
    local_process: bool = False  # local deliveries in a helper process (--local-delivery)
    local_nice: int = 0          # ... running that much nicer (--local-delivery-nice)
    extras: dict = field(default_factory=dict)

    def auth_policy(self) -> AuthPolicy:
        settings = self.config.current
        return AuthPolicy(environ=self.environ, configured_domain=settings.defaultdomain,
                          locals=tuple(settings.locals))


def build_context(paths: Paths, environ: Mapping[str, str], checkers: list | None = None,
                  reactor: Any = None, *, log_debug: bool = False,
                  io_threads: int = IO_THREADS,
                  worker: tuple[int, int] = (0, 1),
                  local_process: bool = False, local_nice: int = 0) -> ServerContext:
    """Open the store (creating missing tables, refusing a newer schema) and the portal.

    Blocking: called once from ``makeService`` before the reactor runs, so a
    bad database or control file stops the start with a clear message.
    """
    paths.ensure()
    control = ControlDir(paths.control, environ)
    config = Config(control)
    engine = open_engine(paths, environ, create=True)
    engine.run_sync(engine.prepare)
    store = UserStore(engine, cache_seconds=STORE_CACHE_SECONDS)
    checker = ChainChecker(checkers) if checkers else StoreChecker()
    context = ServerContext(paths=paths, config=config, engine=engine, store=store,
                            portal=Portal(MaildirRealm(store), [checker]), checker=checker,
                            environ=environ, reactor=reactor, log_debug=log_debug,
                            io_pool=ThreadPool(minthreads=0, maxthreads=io_threads,
                                               name="indimail-io"), worker=worker,
                            local_process=local_process, local_nice=local_nice)
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
    from indimail_tw.delivery.lspawn import build_local_spawn
    from indimail_tw.queue.service import build_queue
    from indimail_tw.remote.agent import build_remote_agent

    build = build_local_spawn if context.local_process else build_local_agent
    context.local_agent = build(context)
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
        self.workers: WorkerSupervisor | None = None     # set by --workers (parent)
        attach_queue(context, self)

    def reload(self) -> bool:
        forget = getattr(self.context.store, "forget", None)
        if forget is not None:                  # as inlookup's HUP clears its cache
            forget()
        ok = self.context.config.reload()
        log.info("configuration reloaded" if ok else "configuration reload failed; "
                 "keeping the previous settings")
        reload_helper = getattr(self.context.local_agent, "reload", None)
        if reload_helper is not None:
            reload_helper()
        if self.workers is not None:
            self.workers.signal("HUP")
        return ok

    def flush(self) -> int:
        count = self.context.queue.flush() if self.context.queue is not None else 0
        log.info("ALRM: {count} recipients due now", count=count)
        if self.workers is not None:
            self.workers.signal("ALRM")
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
        from indimail_tw import logsetup

        logsetup.install(self._reactor())
        start_helper = getattr(self.context.local_agent, "start", None)
        if start_helper is not None:
            start_helper()
        super().startService()
        log.info("indimail_tw started: root {root}, {engine} user store",
                 root=self.context.paths.root, engine=self.context.engine.name)

    def stopService(self):  # noqa: N802
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        d = super().stopService()
        # after the queues stopped delivering: QUIT idle remote connections, stop the
        # local delivery helper
        for agent in (self.context.remote_agent, self.context.local_agent):
            stop = getattr(agent, "stop", None)
            if stop is not None:
                d.addBoth(lambda result, stop=stop: stop().addBoth(lambda _: result))
        d.addBoth(self._stopped)
        return d

    def _stopped(self, result: Any) -> Any:
        """After every child stopped: no job is left for the pool or the store."""
        pool = self.context.io_pool
        if pool is not None and pool.started:
            pool.stop()
        self.context.engine.close()
        return result


# -- several processes (--workers) ---------------------------------------------------------
#
# ``twistd indimail --workers N`` runs N processes (ARCHITECTURE section 7): this one
# and N-1 workers it starts, supervises and stops.  Each listener is N sockets bound
# to the same address with SO_REUSEPORT, so the kernel spreads new connections over
# the processes; worker k listens on socket k (inherited) and owns queues k, k+N, ...
# of QUEUE_START .. QUEUE_START+QUEUE_COUNT-1, with its own scheduler and I/O pool.
# Workers log as JSON on their stdout and this process logs their events as its own;
# a worker whose stdin (a pipe from this process) reaches its end stops, so none
# outlives its parent.  SIGHUP and SIGALRM are passed on; a worker that dies is
# started again.

WORKER_LOGGER = "indimail_tw.service.worker_log_observer"
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER = 60.0          # a worker that ran this long restarts without delay growth
WORKER_STOP_GRACE = 45.0     # after SIGTERM, SIGKILL (the queues' grace is 30 s)
FIRST_LISTEN_FD = 3


def worker_log_observer() -> Any:
    """The log observer of a worker process (twistd ``--logger``): JSON events on stdout."""
    from twisted.internet import reactor

    from indimail_tw.logjson import json_observer
    from indimail_tw.logsetup import FLUSH_DELAY

    # stdout itself is taken over by twistd's logging: write to a copy of the descriptor
    return json_observer(1, reactor, FLUSH_DELAY)


def add_listeners(root: IndiMailService, selected: list[tuple[str, str]],
                  plugin_args: list[str], fds: list[int]) -> None:
    """Add the listeners to ``root``: on their own; as the parent of ``--workers``
    (shared sockets, and the supervisor of the workers); or in a worker (the
    sockets inherited as ``fds``, one per listener, in order)."""
    import sys

    from indimail_tw import listeners

    context = root.context
    index, count = context.worker
    reactor = context.reactor
    if reactor is None:
        from twisted.internet import reactor
    shared: list[tuple[str, SharedListener]] = []
    for n, (name, description) in enumerate(selected):
        spec = listeners.PROTOCOLS[name]
        try:
            if count == 1:
                spec.builder()(context, spec, description).setServiceParent(root)
                continue
            factory, where = _listener_of(spec)(context, spec, description)
            if index == 0:
                _tcp_address(where, reactor)
                listener: service.Service = SharedListener(name, factory, where, count,
                                                           reactor)
                shared.append((name, listener))
            elif n < len(fds):
                listener = AdoptedListener(name, factory, fds[n], reactor)
            else:
                raise ValueError("no inherited socket for it (--listen-fds)")
            listener.setServiceParent(root)
        except (OSError, ValueError) as e:
            raise SystemExit(f"indimail: cannot start the --{name} listener "
                             f"{description!r}: {e}") from None
    if count == 1:
        return
    if index == 0:
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                   "-n", "--pidfile=", "--logger", WORKER_LOGGER, "indimail", *plugin_args]
        root.workers = WorkerSupervisor(reactor, command, count, shared)
        root.workers.setServiceParent(root)
    else:
        ParentWatch(reactor).setServiceParent(root)


def _listener_of(spec: Any) -> Any:
    """The protocol's ``listener(context, spec, description) -> (factory, description)``."""
    import importlib

    module = importlib.import_module(spec.build.partition(":")[0])
    listener = getattr(module, "listener", None)
    if listener is None:
        raise ValueError(f"the {spec.description} server cannot share its listener with "
                         "--workers yet")
    return listener


def _tcp_address(description: str, reactor: Any) -> tuple[int, int, str, int]:
    """(address family, port, interface, backlog) of a ``tcp:`` description; ValueError
    for anything else (only TCP sockets are shared by --workers)."""
    import socket

    from twisted.internet import endpoints

    endpoint = endpoints.serverFromString(reactor, description)
    if not isinstance(endpoint, (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint)):
        raise ValueError("--workers shares only tcp: listeners (and ssl: ones without "
                         "TLS material, which the server turns into tcp:)")
    family = (socket.AF_INET6 if isinstance(endpoint, endpoints.TCP6ServerEndpoint)
              else socket.AF_INET)
    # Twisted's own parse of the description (it has no public accessors)
    return family, endpoint._port, endpoint._interface, endpoint._backlog


def _reuse_port_sockets(description: str, count: int, reactor: Any) -> list[Any]:
    """``count`` listening sockets on the address of a ``tcp:`` description, each with
    SO_REUSEPORT."""
    import socket

    family, port, interface, backlog = _tcp_address(description, reactor)
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface or ("::" if family == socket.AF_INET6 else ""), port))
            if not port:            # tcp:0: the others take the port the first one got
                port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class SharedListener(service.Service):
    """One listener of the parent of workers: ``count`` SO_REUSEPORT sockets bound when
    privileges allow it; this process listens on the first, worker k inherits socket k."""

    def __init__(self, name: str, factory: Any, description: str, count: int,
                 reactor: Any) -> None:
        self.name = f"listener:{name}:{description}"
        self.factory = factory
        self.description = description
        self.count = count
        self.reactor = reactor
        self.sockets: list[Any] = []
        self.port: Any = None

    def privilegedStartService(self) -> None:  # noqa: N802
        super().privilegedStartService()
        self.bind()

    def bind(self) -> None:
        if not self.sockets:
            self.sockets = _reuse_port_sockets(self.description, self.count, self.reactor)

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.bind()
        first = self.sockets[0]
        self.port = self.reactor.adoptStreamPort(first.fileno(), first.family, self.factory)

    def stopService(self):  # noqa: N802
        super().stopService()
        port, self.port = self.port, None
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        return port.stopListening() if port is not None else None


class AdoptedListener(service.Service):
    """A worker's listener: the socket it inherited as file descriptor ``fd``."""

    def __init__(self, name: str, factory: Any, fd: int, reactor: Any) -> None:
        self.name = f"listener:{name}:fd{fd}"
        self.factory = factory
        self.fd = fd
        self.reactor = reactor
        self.port: Any = None

    def startService(self) -> None:  # noqa: N802
        import socket

        super().startService()
        with socket.socket(fileno=os.dup(self.fd)) as sock:
            family = sock.family
        self.port = self.reactor.adoptStreamPort(self.fd, family, self.factory)
        os.close(self.fd)                      # the port has its own copy

    def stopService(self):  # noqa: N802
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class ParentWatch(service.Service):
    """A worker stops when its stdin, a pipe from the parent, reaches its end."""

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self.reactor = reactor
        self.fd = fd
        self._reader: Any = None

    def startService(self) -> None:  # noqa: N802
        from twisted.internet import abstract, fdesc

        super().startService()
        fd, reactor = self.fd, self.reactor

        class Reader(abstract.FileDescriptor):
            def fileno(self) -> int:
                return fd

            def doRead(self) -> Any:  # noqa: N802
                return fdesc.readFromFD(fd, lambda data: None) or None

            def connectionLost(self, reason: Any) -> None:  # noqa: N802
                abstract.FileDescriptor.connectionLost(self, reason)
                if reactor.running:
                    log.info("worker: the parent process is gone; stopping")
                    reactor.stop()

        fdesc.setNonBlocking(fd)
        self._reader = Reader(reactor=reactor)
        self._reader.startReading()

    def stopService(self) -> None:  # noqa: N802
        super().stopService()
        if self._reader is not None:
            self._reader.stopReading()
            self._reader = None


class WorkerSupervisor(service.Service):
    """Starts worker processes 1 .. count-1, restarts them when they die, passes
    signals on and stops them (SIGTERM, then SIGKILL after a grace period)."""

    name = "workers"

    def __init__(self, reactor: Any, command: list[str], count: int,
                 listeners: list[tuple[str, SharedListener]],
                 env: Mapping[str, str] | None = None) -> None:
        self.reactor = reactor
        self.command = list(command)
        self.count = count
        self.listeners = listeners
        self.env = dict(os.environ if env is None else env)
        self.processes: dict[int, Any] = {}
        self.started_at: dict[int, float] = {}
        self.backoff: dict[int, Backoff] = {}
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self._stopped: list[defer.Deferred] = []
        self._kill: Any = None

    def argv(self, index: int) -> list[str]:
        fds = ",".join(str(FIRST_LISTEN_FD + n) for n in range(len(self.listeners)))
        return [*self.command, "--worker-index", str(index), "--listen-fds", fds]

    def child_fds(self, index: int) -> dict[int, Any]:
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for n, (_name, listener) in enumerate(self.listeners):
            fds[FIRST_LISTEN_FD + n] = listener.sockets[index].fileno()
        return fds

    def startService(self) -> None:  # noqa: N802
        super().startService()
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        argv = self.argv(index)
        proto = _WorkerProtocol(self, index)
        self.processes[index] = self.reactor.spawnProcess(
            proto, argv[0], argv, env=self.env, childFDs=self.child_fds(index))
        self.started_at[index] = self.reactor.seconds()
        log.info("worker {index}: started, pid {pid}", index=index,
                 pid=self.processes[index].pid)

    def ended(self, index: int, reason: Any) -> None:
        self.processes.pop(index, None)
        if self._stopping:
            log.info("worker {index}: stopped", index=index)
            if not self.processes:
                self._all_stopped()
            return
        backoff = self.backoff.setdefault(index, Backoff(RESTART_DELAYS, STABLE_AFTER))
        delay = backoff.next_delay(self.reactor.seconds() - self.started_at.get(index, 0.0))
        log.error("worker {index}: exited ({reason}); starting it again in {delay:g} s",
                  index=index, reason=reason.getErrorMessage(), delay=delay)
        self._restarts[index] = self.reactor.callLater(delay, self._spawn, index)

    def signal(self, signame: str) -> None:
        for process in list(self.processes.values()):
            try:
                process.signalProcess(signame)
            except OSError:   # ProcessExitedAlready and friends: it is being replaced
                pass
            except Exception:  # noqa: BLE001
                log.failure("signalling a worker")

    def stopService(self) -> defer.Deferred:  # noqa: N802
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        if not self.processes:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._stopped.append(d)
        self.signal("TERM")
        self._kill = self.reactor.callLater(WORKER_STOP_GRACE, self.signal, "KILL")
        return d

    def _all_stopped(self) -> None:
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        waiting, self._stopped = self._stopped, []
        for d in waiting:
            d.callback(None)


class _WorkerProtocol(protocol.ProcessProtocol):
    """One worker's pipes: JSON log events on stdout, anything else on stderr."""

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self._events = JSONEventReader(f"worker {index}")
        self._err = StderrLines(f"worker {index}")

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self._events.feed(data)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self._err.feed(data)

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.supervisor.ended(self.index, reason)
