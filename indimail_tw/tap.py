"""``twistd indimail``: options and the service tree (no other logic here)."""

from __future__ import annotations

import os

from twisted.application import strports
from twisted.cred import strcred
from twisted.python import usage

from indimail_tw import listeners
from indimail_tw.errors import ConfigError, StoreError
from indimail_tw.paths import DEFAULT_ROOT, Paths


class Options(usage.Options, strcred.AuthOptionMixin):
    synopsis = "[options]"
    longdesc = (
        "IndiMail-compatible mail server. Listener options take Twisted endpoint "
        "descriptions (e.g. tcp:2525:interface=127.0.0.1, ssl:465:privateKey=key.pem) and "
        "may be repeated. Without any listener option every available protocol listens "
        "on its standard port; with one, exactly the listeners given are started. "
        "--auth selects credential checkers (tried in the order given; default: the "
        "user store, 'indimail'); see --help-auth. --workers N runs N processes that "
        "share the listening sockets (tcp: listeners; the kernel spreads connections "
        "over them) and each own every Nth queue; connection limits (MAXDAEMONS, "
        "concurrencyincoming, MAXPERIP) then apply to each process.")
    optParameters = [
        ["root", "r", None,
         f"Data root (control/, tcp/, certs/, domains/, queue/, mail/, db/) "
         f"[default: $INDIMAIL_ROOT or {DEFAULT_ROOT}]"],
        ["control-dir", None, None,
         "Control directory [default: $CONTROLDIR, else ROOT/control]"],
        ["io-threads", None, 2,
         "Threads doing the disk and database work of receiving and local delivery "
         "(queue commits, Maildir deliveries, the recipient check). Few keep the CPU "
         "cost per message low; raise it when fsync is slow (spinning disks)", int],
        ["workers", None, 1,
         "Processes to run (this one and N-1 it starts and supervises); worker k owns "
         "queues QUEUE_START+k, +k+N, ... so QUEUE_COUNT must be at least N", int],
        ["local-delivery", None, "process",
         "Where local deliveries run: 'process', a helper process the server starts "
         "(as qmail-send uses qmail-lspawn), so that delivering runs on another core "
         "while the server receives; or 'inline', in the server's own threads"],
        ["local-delivery-nice", None, 10,
         "How much nicer (lower CPU priority, 0-19) the local delivery process runs: "
         "where receiving and delivering compete for a CPU, receiving goes first", int],
        ["worker-index", None, 0,
         "(internal: set by --workers for the processes it starts)", int],
        ["listen-fds", None, None,
         "(internal: the listening sockets a worker inherits, comma separated)"],
    ]
    optFlags = [
        ["log-debug", None,
         "Also log debug events: each delivery's start, each message's end and the "
         "queue's concurrency (qmail-send's 'starting delivery', 'end msg' and 'status' "
         "lines); off by default, when they are not even created"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listeners"] = []
        self.raw_args: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:  # noqa: N802
        import sys

        self.raw_args = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_auth(self, description: str) -> None:
        """Credential checker TYPE[:ARGS], repeatable, tried in order [default: indimail]"""
        strcred.AuthOptionMixin.opt_auth(self, description)

    opt_a = opt_auth

    def _listener(self, name: str, description: str) -> None:
        self["listeners"].append((name, description))


    def postOptions(self) -> None:  # noqa: N802
        if self["io-threads"] < 1:
            raise usage.UsageError("--io-threads: at least 1")
        if self["workers"] < 1:
            raise usage.UsageError("--workers: at least 1")
        if self["local-delivery"] not in ("process", "inline"):
            raise usage.UsageError("--local-delivery: 'process' or 'inline'")
        if not 0 <= self["local-delivery-nice"] <= 19:
            raise usage.UsageError("--local-delivery-nice: between 0 and 19")
        if not 0 <= self["worker-index"] < self["workers"]:
            raise usage.UsageError("--worker-index: between 0 and --workers - 1")
        fds = self["listen-fds"]
        try:
            self["listen-fds"] = [int(fd) for fd in fds.split(",") if fd] if fds else []
        except ValueError:
            raise usage.UsageError(f"--listen-fds: not a list of numbers: {fds!r}") from None
        for name, description in self["listeners"]:
            spec = listeners.PROTOCOLS[name]
            if spec.build is None:
                raise usage.UsageError(
                    f"--{name}: the {spec.description} server is not available in this "
                    f"version of indimail_tw")
            try:
                strports.service(description, None)
            except OSError:
                pass    # e.g. the certificate of an ssl: listener: checked when it is built
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(f"--{name}: bad endpoint description "
                                       f"{description!r}: {e}") from None


def _listener_option(spec: listeners.ProtocolSpec):
    def opt(self: Options, description: str) -> None:
        self._listener(spec.name, description)
    opt.__doc__ = f"{spec.description} listener (repeatable) [default: {spec.default}]"
    return opt


for _spec in listeners.PROTOCOLS.values():
    setattr(Options, f"opt_{_spec.name}", _listener_option(_spec))
del _spec


def makeService(options: Options):  # noqa: N802
    from indimail_tw.service import IndiMailService, add_listeners, build_context

    environ = dict(os.environ)
    paths = Paths.resolve(options["root"], environ, options["control-dir"])
    workers, index = options["workers"], options["worker-index"]
    try:
        context = build_context(paths, environ, options.get("credCheckers") or None,
                                log_debug=bool(options["log-debug"]),
                                io_threads=options["io-threads"], worker=(index, workers),
                                local_process=options["local-delivery"] == "process",
                                local_nice=options["local-delivery-nice"])
    except (StoreError, ConfigError, OSError) as e:
        raise SystemExit(f"indimail: cannot start: {e}") from None
    count = context.config.current.queue_count
    if workers > count:
        raise SystemExit(f"indimail: --workers {workers} needs at least as many queues; "
                         f"QUEUE_COUNT is {count}")
    root = IndiMailService(context)
    add_listeners(root, listeners.selected(options["listeners"]), options.raw_args,
                  options["listen-fds"])
    return root
