"""The remote delivery agent: qmail-remote's behaviour behind ``IDeliveryAgent``.

For each ``deliver(message, recipient)``:

1. recipients of the same message and domain asked for within one reactor
   turn are delivered in one SMTP transaction (at most :data:`MAX_RCPTS`);
2. in a thread: the message is scanned (size on the wire, 8-bit data, UTF-8
   headers), ``moresmtproutes.cdb`` and ``outgoingip.<domain>`` are read;
3. the route: ``moresmtproutes.cdb`` > ``smtproutes`` > MX (:mod:`.routes`);
4. the addresses: MX via twisted.names (:mod:`.mx`), or the relay's A/AAAA;
   by MX, addresses of preference not better than our own (ipme, ``moreipme``)
   are dropped, and if that leaves none we are the best MX for a domain that
   is not ours: permanent 5.4.6, as qmail-remote says it;
5. each address in turn, skipping those in the tcpto table (:mod:`.tcpto`)
   and those that failed while we waited: a connection reused from the idle
   cache or a new one (source address ``outgoingip``, HELO ``helohost``,
   STARTTLS per :mod:`.tls`, AUTH from the route), at most
   ``concurrencyperhost`` per IP (:mod:`.pool`).  Refused connections, dead
   connections before the greeting, 4xx greetings and timeouts go on to the
   next address; a failed opportunistic TLS handshake retries the same address
   in the clear;
6. per recipient: 2xx ok, 5xx permanent, 4xx temporary, with the server's
   words (``diagnostic`` ``smtp; ...``, ``remote_mta`` ``dns; host``).

Environment: ``MIN_PENALTY``, ``MAX_TOLERANCE`` (tcpto), ``TRY_NEXT_MX_HELO_FAIL``,
``SECURE_AUTH``, ``AUTH_SMTP``, ``MORESMTPROUTESCDB``, ``CLIENTCERT``, ``DNSCACHEIP``
(djbdns: the DNS caches to ask, see :func:`dnscache_servers`).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from indimail_tw.delivery.result import TEMPORARY, DeliveryResult
from indimail_tw.errors import ConfigError
from indimail_tw.interfaces import IDeliveryAgent
from indimail_tw.remote import tls as tlsmod
from indimail_tw.remote.addresses import domain_of
from indimail_tw.remote.body import MessageInfo, scan_message
from indimail_tw.remote.client import SMTPClientProtocol, connect
from indimail_tw.remote.client_parser import ClientCore, SessionFailed, TLSMode, Transaction
from indimail_tw.remote.ipme import load_ipme
from indimail_tw.remote.mx import Candidate, MXResolver, Unroutable
from indimail_tw.remote.pool import DEFAULT_PER_HOST, IDLE_SECONDS, ConnectionCache, HostSlots
from indimail_tw.remote.routes import (
    NextHop, find_route, more_routes, next_hop, remote_auth, remote_auth_key,
)
from indimail_tw.remote.tcpto import DEFAULT_PENALTY, DEFAULT_TOLERANCE, TcpTo, table_path

log = Logger()

MAX_RCPTS = 100               # recipients per transaction (RFC 5321 4.5.3.1.8)
TLS_FALLBACK_SECONDS = 3600   # after a failed opportunistic handshake, that IP gets plaintext
INLINE_BODY = 64 * 1024     # messages up to this size on the wire are sent from memory
TLS_FILES_SECONDS = 1.0      # how long a host's TLS decision (tlshosts/ ...) is reused
STOP_GRACE = 5.0              # seconds stop() waits for QUIT before dropping connections
MEMORY_LIMIT = 10_000         # entries in the in-memory failure maps before pruning
_SAFE_DOMAIN = re.compile(r"[A-Za-z0-9_.-]+\Z")
_OFF = ("", "0", "no", "false", "off")

AMBIGUOUS_MX = ("Sorry. Although I'm listed as a best-preference MX or A for that host,\n"
                "it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)")


@dataclass(frozen=True)
class Busy(DeliveryResult):
    """Not an attempt: every address of the destination already has its
    ``concurrencyperhost`` deliveries running and as many waiting.

    The scheduler does not count it, log it or retry it on qmail's schedule: it
    parks the recipient and starts it again when :meth:`RemoteDeliveryAgent.when_room`
    calls back (a slot was released).
    """

    busy: ClassVar[bool] = True


def busy(host: str, ip: str) -> Busy:
    return Busy(TEMPORARY, f"Sorry, too many deliveries to {host} [{ip}] are in progress; "
                           "I will try again later. (#4.4.5)", "4.4.5")


@dataclass
class _Prepared:
    """What the thread found out before routing."""

    info: MessageInfo
    routes: list
    outgoing: tuple[str, ...]
    notlhosts: tuple[str, ...]
    per_host: int
    ipme: frozenset[str] | None
    client_cert: Any
    remote_auth: dict[str, tuple[str, ...]]    # remote_auth.cdb entries routes asked for
    tcpto: Any                                 # TcpTo.read(): the table if it changed


class _Batch:
    __slots__ = ("message", "items")

    def __init__(self, message: Any) -> None:
        self.message = message
        self.items: list[tuple[Any, defer.Deferred]] = []


@implementer(IDeliveryAgent)
class RemoteDeliveryAgent:
    """Delivers to other hosts by SMTP (see the module docstring)."""

    def __init__(self, config: Any, *, certs: str, queue_base: str, reactor: Any,
                 resolver: Any = None, dns_servers: Sequence[tuple[str, int]] | None = None,
                 port: int = 25, environ: Mapping[str, str] | None = None,
                 ipme: frozenset[str] | None = None, rng: random.Random | None = None,
                 run: Callable[..., defer.Deferred] | None = None,
                 idle: float = IDLE_SECONDS, clock: Any = None) -> None:
        self.config = config
        self.certs = certs
        self.reactor = reactor
        self.clock = clock or reactor          # timers and "now"; the network is the reactor's
        self.port = port
        self.environ: Mapping[str, str] = dict(os.environ if environ is None else environ)
        self.run = run or (lambda f, *a: threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), f, *a))
        self._resolver = resolver
        self._dns_servers = list(dns_servers) if dns_servers else None
        self._mx: MXResolver | None = None
        self._rng = rng or random.Random()
        self._fixed_ipme = ipme
        self._ipme: frozenset[str] | None = ipme
        self.tcpto = TcpTo(table_path(queue_base), self.clock, self.run)
        self.per_host = DEFAULT_PER_HOST
        self.slots = HostSlots(lambda: self.per_host)
        self.cache = ConnectionCache(self.clock, idle)
        self._batches: dict[tuple[str, str], _Batch] = {}
        self._new_batches: list[tuple[tuple[str, str], _Batch]] = []   # to start next turn
        self._batch_call: Any = None
        self._seq = itertools.count(1)
        self._failed_at: dict[str, int] = {}        # ip -> sequence number of its failure
        self._tls_broken: dict[str, float] = {}     # ip -> until when we skip STARTTLS
        self._client_cert: tuple[Any, Any] = (None, None)   # (file stamp, certificate)
        self._open: set[SMTPClientProtocol] = set()
        self._domain_ips: dict[str, tuple[str, ...]] = {}   # domain -> IPs used last time
        self._ip_domains: dict[str, set[str]] = {}          # and the other way round
        self._room: list[Callable[[dict[str, int]], object]] = []
        self._released_domains: dict[str, int] = {}         # domain -> deliveries ended
        self._inflight: dict[str, int] = {}                 # domain -> deliveries admitted
        self._room_call: Any = None
        self._room_turn = 0
        self._tls_cache: dict[tuple, tuple[float, tlsmod.HostTLS]] = {}
        self._unsubscribe = config.subscribe(self._config_changed) \
            if hasattr(config, "subscribe") else None

    # -- IDeliveryAgent --------------------------------------------------------------------------

    def deliver(self, message: Any, recipient: Any) -> defer.Deferred:
        domain = domain_of(recipient.address)
        name = domain.lower()
        ips = self._domain_ips.get(name, ())
        # Admission before any work: a domain has at most twice its hosts' slots of
        # deliveries in progress (the rest would only wait for a slot or be turned
        # away after reading the message and routing it).
        if self._inflight.get(name, 0) >= 2 * max(1, self.per_host) * max(1, len(ips)):
            return defer.succeed(busy(domain, ips[0] if ips else domain))
        self._inflight[name] = self._inflight.get(name, 0) + 1
        d: defer.Deferred = defer.Deferred()
        key = (message.id, domain)
        batch = self._batches.get(key)
        if batch is None or len(batch.items) >= MAX_RCPTS:
            batch = self._batches[key] = _Batch(message)
            self._new_batches.append((key, batch))
            if self._batch_call is None:       # one timer per reactor turn, not per batch
                self._batch_call = self.clock.callLater(0, self._run_batches)
        batch.items.append((recipient, d))
        return d.addBoth(self._admitted_done, name)

    def _admitted_done(self, result: Any, name: str) -> Any:
        count = self._inflight.get(name, 1) - 1
        if count > 0:
            self._inflight[name] = count
        else:
            self._inflight.pop(name, None)
        if self._room:
            self._released_domains[name] = self._released_domains.get(name, 0) + 1
            self._schedule_room()
        return result

    def when_room(self, callback: Callable[[dict[str, int]], dict[str, int]]) -> None:
        """Subscribe ``callback(domains)``: called (in a later reactor turn) after
        deliveries ended, with the recipient domains that have room again and for how
        many deliveries.  It returns how many of them it started; the rest goes to
        the next subscriber (the first one changes each time, so every queue gets
        its turn)."""
        self._room.append(callback)

    def _made_room(self, ip: str, domain: str) -> None:
        """A slot of ``ip`` is free: room for the other domains routed there (the
        delivery's own domain hears of it when the delivery ends)."""
        for other in self._ip_domains.get(ip, ()):
            if other != domain:
                self._released_domains[other] = self._released_domains.get(other, 0) + 1
        self._schedule_room()

    def _schedule_room(self) -> None:
        if self._room_call is None:
            self._room_call = self.clock.callLater(0, self._tell_room)

    def _tell_room(self) -> None:
        self._room_call = None
        domains, self._released_domains = self._released_domains, {}
        if not domains or not self._room:
            return
        self._room_turn = (self._room_turn + 1) % len(self._room)
        callbacks = self._room[self._room_turn:] + self._room[:self._room_turn]
        for callback in callbacks:
            taken = callback(dict(domains)) or {}
            for domain, count in taken.items():
                left = domains.get(domain, 0) - count
                if left > 0:
                    domains[domain] = left
                else:
                    domains.pop(domain, None)
            if not domains:
                break

    def _remember(self, domain: str, candidates: list[Candidate]) -> None:
        """Which IPs ``domain`` went to (for :meth:`deliver`'s quick busy check)."""
        if len(self._domain_ips) > MEMORY_LIMIT:
            self._domain_ips.clear()
            self._ip_domains.clear()
        ips = tuple(dict.fromkeys(c.ip for c in candidates))
        for ip in self._domain_ips.get(domain, ()):
            self._ip_domains.get(ip, set()).discard(domain)
        self._domain_ips[domain] = ips
        for ip in ips:
            self._ip_domains.setdefault(ip, set()).add(domain)

    def stop(self) -> defer.Deferred:
        """Close idle connections (QUIT), drop the rest after :data:`STOP_GRACE` seconds."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.cache.close_all()
        protos = list(self._open)
        if not protos:
            return defer.succeed(None)
        timer = self.clock.callLater(STOP_GRACE, lambda: [p.abort() for p in protos])
        done = defer.DeferredList([p.closed for p in protos])

        def finished(_: Any) -> None:
            if timer.active():
                timer.cancel()

        return done.addCallback(finished)

    # -- one batch -------------------------------------------------------------------------------

    def _run_batches(self) -> None:
        self._batch_call = None
        new, self._new_batches = self._new_batches, []
        for key, batch in new:
            self._run_batch(key, batch)

    def _run_batch(self, key: tuple[str, str], batch: _Batch) -> None:
        if self._batches.get(key) is batch:
            del self._batches[key]
        d = defer.Deferred.fromCoroutine(self._deliver_batch(batch))

        def failed(failure: Any) -> list[DeliveryResult]:
            log.failure("remote delivery of {id} failed", failure, id=batch.message.id)
            return [DeliveryResult.temporary("internal error in remote delivery", "4.3.0")
                    ] * len(batch.items)

        def report(results: list[DeliveryResult]) -> None:
            for (_, d), result in zip(batch.items, results, strict=True):
                d.callback(result)

        d.addErrback(failed).addCallback(report)

    async def _deliver_batch(self, batch: _Batch) -> list[DeliveryResult]:
        settings = self.config.current
        message = batch.message
        recipients = [r for r, _ in batch.items]
        domain = domain_of(recipients[0].address)
        sender = message.envelope.sender
        try:
            prep = await self.run(self._prepare, settings.control, message.path, domain,
                                  [r.address for r in recipients], sender,
                                  self._ipme is None, settings.smtproutes, message.size)
        except Exception as error:  # noqa: BLE001 -- the message or the configuration
            log.error("cannot prepare {id}: {error}", id=message.id, error=error)
            unreadable = isinstance(error, OSError) and error.filename == message.path
            text = ("Unable to read message. (#4.3.0)" if unreadable else
                    "Unable to read the configuration for remote delivery. (#4.3.0)")
            return [DeliveryResult.temporary(text, "4.3.0")] * len(recipients)
        self._take(prep)
        self.tcpto.take(prep.tcpto)
        groups: dict[tuple, tuple[NextHop, list[int]]] = {}
        for i in range(len(recipients)):
            route, origin = prep.routes[i], "moresmtproutes.cdb"
            if route is None:
                route, origin = find_route(settings.smtproutes, domain, sender), "smtproutes"
            hop = next_hop(domain, route, self.environ, origin, prep.remote_auth, sender,
                           recipients[i].address)
            groups.setdefault(hop.key, (hop, []))[1].append(i)
        if len(groups) == 1:             # the usual case: no gathering of one result
            ((hop, _indices),) = groups.values()
            return await self._deliver_group(settings, message, prep, domain, hop, recipients)
        results: list[DeliveryResult | None] = [None] * len(recipients)
        work = [defer.Deferred.fromCoroutine(self._deliver_group(
            settings, message, prep, domain, hop, [recipients[i] for i in indices]))
            for hop, indices in groups.values()]
        for (_hop, indices), group in zip(groups.values(), await defer.gatherResults(work),
                                          strict=True):
            for i, result in zip(indices, group, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _prepare(self, control: Any, path: str, domain: str, addresses: list[str],
                 sender: str, need_ipme: bool, smtproutes: Any = (),
                 size: int | None = None) -> _Prepared:
        """Blocking: everything read from disk before a delivery (runs in a thread).
        The message is the first ``size`` bytes of ``path``."""
        info = scan_message(path, keep=INLINE_BODY, message_size=size)
        routes = more_routes(control.path, self.environ, addresses, sender)
        keys = []
        for address, route in zip(addresses, routes, strict=True):
            route = route or find_route(smtproutes, domain, sender)
            if route is not None and route.relay and route.auth and \
                    route.auth[0].startswith("/"):
                keys.append(remote_auth_key(route.auth[0], sender, address))
        found = remote_auth(control.path, keys) if keys else {}
        outgoing = control.lines(f"outgoingip.{domain}") if _SAFE_DOMAIN.match(domain) else ()
        value = control.value("concurrencyperhost")
        per_host = int(value) if value and value.isdigit() and int(value) > 0 \
            else DEFAULT_PER_HOST
        ipme = load_ipme(control) if need_ipme else None
        return _Prepared(info, routes, tuple(outgoing), control.lines("notlhosts"),
                         per_host, ipme, self._load_client_cert(), found, self.tcpto.read())

    def _load_client_cert(self) -> Any:
        path = tlsmod.client_certificate_path(self.certs, self.environ)
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._client_cert[0] == stamp:
            return self._client_cert[1]
        try:
            cert = tlsmod.load_client_certificate(path)
        except Exception as e:  # noqa: BLE001 -- a broken file: no client certificate
            log.error("cannot load {path}: {error}", path=path, error=e)
            cert = None
        self._client_cert = (stamp, cert)
        return cert

    def _take(self, prep: _Prepared) -> None:
        self.per_host = prep.per_host
        if prep.ipme is not None and self._ipme is None:
            self._ipme = prep.ipme

    def _config_changed(self, _settings: Any) -> None:
        if self._fixed_ipme is None:
            self._ipme = None          # re-read moreipme/notipme with the next delivery

    # -- one next hop ----------------------------------------------------------------------------

    @property
    def mx(self) -> MXResolver:
        if self._mx is None:
            resolver = self._resolver
            if resolver is None:
                resolver = system_resolver(self.reactor, self._dns_servers)
            self._mx = MXResolver(resolver, self._rng)
        return self._mx

    async def _deliver_group(self, settings: Any, message: Any, prep: _Prepared, domain: str,
                             hop: NextHop, recipients: list[Any]) -> list[DeliveryResult]:
        count = len(recipients)
        try:
            if hop.use_mx:
                candidates = await self.mx.mx_candidates(hop.host)
            else:
                candidates = await self.mx.host_candidates(hop.host)
        except Unroutable as e:
            return [e.result] * count
        self._remember(domain.lower(), candidates)
        if not hop.artificial:
            ipme = self._ipme or frozenset()
            mine = [c.pref for c in candidates if c.ip in ipme]
            if mine:
                candidates = [c for c in candidates if c.pref < min(mine)]
                if not candidates:
                    return [DeliveryResult.permanent(AMBIGUOUS_MX, "5.4.6")] * count
        envelope = message.envelope
        tx = Transaction(envelope.sender, recipients, size=prep.info.wire_size,
                         eight_bit=prep.info.eight_bit, smtputf8=envelope.smtputf8,
                         utf8_header=prep.info.utf8_header, ret=envelope.ret,
                         envid=envelope.envid)
        decisions = await self._tls_decisions(sorted({c.host for c in candidates}), domain,
                                              prep.notlhosts)
        return await self._try(settings, message, prep, hop, candidates, decisions, tx)

    async def _tls_decisions(self, hosts: list[str], domain: str,
                             notlhosts: tuple[str, ...]) -> dict[str, tlsmod.HostTLS]:
        """The TLS decision per host, from files read at most once per
        :data:`TLS_FILES_SECONDS` for the same host and domain (a thread job saved
        per delivery under load; a changed ``tlshosts/`` takes effect that late)."""
        now = self.clock.seconds()
        decisions: dict[str, tlsmod.HostTLS] = {}
        missing = []
        for host in hosts:
            cached = self._tls_cache.get((host, domain, notlhosts))
            if cached is not None and cached[0] > now:
                decisions[host] = cached[1]
            else:
                missing.append(host)
        if missing:
            found = await self.run(_tls_decisions, self.certs, missing, domain, notlhosts)
            if len(self._tls_cache) > MEMORY_LIMIT:
                self._tls_cache.clear()
            until = self.clock.seconds() + TLS_FILES_SECONDS
            for host, decision in found.items():
                self._tls_cache[(host, domain, notlhosts)] = (until, decision)
            decisions.update(found)
        return decisions

    def _penalty(self, hop: NextHop) -> tuple[int, int]:
        penalty = hop.penalty if hop.penalty is not None else _env_int(
            self.environ, "MIN_PENALTY", DEFAULT_PENALTY)
        tolerance = hop.max_tolerance if hop.max_tolerance is not None else _env_int(
            self.environ, "MAX_TOLERANCE", DEFAULT_TOLERANCE)
        return penalty, tolerance

    async def _try(self, settings: Any, message: Any, prep: _Prepared, hop: NextHop,
                   candidates: list[Candidate], decisions: dict[str, tlsmod.HostTLS],
                   tx: Transaction) -> list[DeliveryResult]:
        count = len(tx.recipients)
        started = next(self._seq)
        penalty, _tolerance = self._penalty(hop)
        last: DeliveryResult | None = None
        for candidate in candidates:
            if self.tcpto.dead(candidate.ip, penalty) or self._failed_since(candidate.ip,
                                                                            started):
                continue
            outcome = await self._attempt(settings, message, prep, hop, candidate,
                                          decisions[candidate.host], tx, started)
            if not isinstance(outcome, SessionFailed):
                return outcome
            if not outcome.next_mx:
                return [outcome.result] * count
            log.info("remote delivery of {id}: {text}; trying the next address",
                     id=message.id, text=outcome.result.text.replace("\n", "/"))
            last = outcome.result
        if last is None:
            last = DeliveryResult.temporary(
                "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)", "4.4.1")
        return [last] * count

    def _failed_since(self, ip: str, started: int) -> bool:
        return self._failed_at.get(ip, 0) > started

    async def _attempt(self, settings: Any, message: Any, prep: _Prepared, hop: NextHop,
                       candidate: Candidate, decision: tlsmod.HostTLS, tx: Transaction,
                       started: int) -> list[DeliveryResult] | SessionFailed:
        slot = self.slots.acquire(candidate.ip)
        if slot is None:
            return SessionFailed(busy(candidate.host, candidate.ip))
        await slot
        try:
            if self._failed_since(candidate.ip, started):
                return SessionFailed(DeliveryResult.temporary(
                    f"Sorry, {candidate.host} [{candidate.ip}] failed just now. (#4.4.1)",
                    "4.4.1"), next_mx=True)
            mode = self._tls_mode(candidate, decision)
            key = (candidate.ip, hop.port or self.port, settings.helohost,
                   self._bind(candidate.ip, prep, settings), mode, hop.implicit_tls,
                   hop.credentials)
            proto = self.cache.take(key)
            for _attempt in range(2):
                fresh = proto is None
                if proto is None:
                    opened = await self._connect(settings, prep, hop, candidate, decision,
                                                 mode, key)
                    if isinstance(opened, SessionFailed):
                        return opened
                    proto, key = opened
                done = await proto.transact(tx, message.path, prep.info.wire, message.size)
                if not done.answered and not done.reusable and not fresh:
                    proto = None             # a cached connection had died: once more, fresh
                    continue
                if done.reusable:
                    self.cache.put(key, proto)
                return list(done.results)
            raise AssertionError("unreachable")
        finally:
            self.slots.release(candidate.ip)
            if self._room:
                self._made_room(candidate.ip, domain_of(tx.recipients[0].address).lower())

    def _tls_mode(self, candidate: Candidate, decision: tlsmod.HostTLS) -> TLSMode:
        if decision.mode is TLSMode.OPPORTUNISTIC and \
                self._tls_broken.get(candidate.ip, 0) > self.clock.seconds():
            return TLSMode.NONE
        return decision.mode

    def _bind(self, ip: str, prep: _Prepared, settings: Any) -> str | None:
        """The source address: ``outgoingip.<domain>`` or ``outgoingip``, same family."""
        choices = []
        family = ipaddress.ip_address(ip).version
        for entry in prep.outgoing or tuple(settings.outgoingip):
            try:
                address = ipaddress.ip_address(entry.strip())
            except ValueError:
                continue
            if address.version == family:
                choices.append(None if address.is_unspecified else address.compressed)
        if not choices:
            return None
        return choices[int(self.clock.seconds()) % len(choices)]

    async def _connect(self, settings: Any, prep: _Prepared, hop: NextHop,
                       candidate: Candidate, decision: tlsmod.HostTLS, mode: TLSMode,
                       key: tuple) -> tuple[SMTPClientProtocol, tuple] | SessionFailed:
        penalty, tolerance = self._penalty(hop)
        while True:
            proto = self._open_connection(settings, prep, hop, candidate, decision, mode, key)
            outcome = await proto.ready
            if outcome is None:
                if penalty:
                    self.tcpto.succeeded(candidate.ip)
                return proto, key
            if outcome.tcpto:
                if len(self._failed_at) > MEMORY_LIMIT:
                    self._failed_at.clear()      # only deliveries waiting right now use it
                self._failed_at[candidate.ip] = next(self._seq)
                if penalty:
                    self.tcpto.failed(candidate.ip, tolerance)
            if outcome.tls_failed and mode is TLSMode.OPPORTUNISTIC and not hop.implicit_tls:
                log.info("TLS with {host} [{ip}] failed; trying again without TLS",
                         host=candidate.host, ip=candidate.ip)
                now = self.clock.seconds()
                if len(self._tls_broken) > MEMORY_LIMIT:
                    self._tls_broken = {ip: t for ip, t in self._tls_broken.items() if t > now}
                self._tls_broken[candidate.ip] = now + TLS_FALLBACK_SECONDS
                mode = TLSMode.NONE
                key = key[:4] + (mode,) + key[5:]
                continue
            return outcome

    def _open_connection(self, settings: Any, prep: _Prepared, hop: NextHop,
                         candidate: Candidate, decision: tlsmod.HostTLS, mode: TLSMode,
                         key: tuple) -> SMTPClientProtocol:
        next_mx_helo = self.environ.get("TRY_NEXT_MX_HELO_FAIL", "").lower() not in _OFF
        core = ClientCore(candidate.host, settings.helohost, tls=mode,
                          implicit_tls=hop.implicit_tls, credentials=hop.credentials,
                          next_mx_on_helo_failure=next_mx_helo)
        if hop.implicit_tls and mode is TLSMode.NONE:
            decision = tlsmod.HostTLS(TLSMode.OPPORTUNISTIC)
        elif mode is TLSMode.NONE:
            decision = tlsmod.HostTLS(TLSMode.NONE)
        client_cert = prep.client_cert

        def options() -> Any:
            return tlsmod.tls_options(candidate.host, decision, client_cert)

        proto = connect(self.reactor, candidate.ip, key[1], core,
                        connect_timeout=settings.timeoutconnect,
                        timeout=settings.timeoutremote, run=self.run,
                        tls_options=options if decision.mode is not TLSMode.NONE else None,
                        implicit_tls=hop.implicit_tls, bind=key[3], clock=self.clock)
        self._open.add(proto)
        proto.closed.addCallback(lambda _: self._open.discard(proto))
        return proto


def system_resolver(reactor: Any, servers: Sequence[tuple[str, int]] | None = None) -> Any:
    """The resolver of a running server: ``/etc/hosts``, a cache, then the name servers
    of ``/etc/resolv.conf``, all on ``reactor``; with ``servers`` (``DNSCACHEIP``, or
    ``dns_servers`` given by a test), a cache and just those servers, no ``/etc/hosts``
    (djbdns's resolver never reads it either).

    What ``twisted.names.client.createResolver`` builds, except that it takes the
    reactor to use (createResolver always uses the global one).
    """
    from twisted.names import cache, client, hosts, resolve

    if servers:
        return resolve.ResolverChain([cache.CacheResolver(reactor=reactor),
                                      client.Resolver(servers=list(servers), reactor=reactor)])
    dns = client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)
    return resolve.ResolverChain([hosts.Resolver(file=b"/etc/hosts"),
                                  cache.CacheResolver(reactor=reactor), dns])


DNS_PORT = 53
_DNSCACHEIP_SPLIT = re.compile(r"[\s,]+")


def dnscache_servers(environ: Mapping[str, str]) -> list[tuple[str, int]] | None:
    """djbdns's ``DNSCACHEIP``: the DNS caches to ask (port 53) instead of
    ``/etc/resolv.conf``, as ``[(ip, 53), ...]`` in the given order; ``None`` when the
    variable is unset or blank (djbdns then reads resolv.conf too).

    IPv4 and IPv6 addresses, separated by spaces and/or commas; anything that is not
    an address raises :class:`ConfigError` naming the variable and the bad item.
    """
    value = environ.get("DNSCACHEIP") or ""
    items = [item for item in _DNSCACHEIP_SPLIT.split(value) if item]
    if not items:
        return None
    servers: list[tuple[str, int]] = []
    for item in items:
        try:
            address = ipaddress.ip_address(item).compressed
        except ValueError:
            raise ConfigError(f"environment variable DNSCACHEIP: not an IPv4 or IPv6 "
                              f"address: {item!r} (in {value!r})") from None
        if (address, DNS_PORT) not in servers:
            servers.append((address, DNS_PORT))
    return servers


def _tls_decisions(certs: str, hosts: list[str], domain: str,
                   notlhosts: Sequence[str]) -> dict[str, tlsmod.HostTLS]:
    return {host: tlsmod.host_tls(certs, host, domain, notlhosts) for host in hosts}


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


def build_remote_agent(context: Any, **kw: Any) -> RemoteDeliveryAgent:
    """The remote agent of a running server (``ServerContext``).

    Keyword arguments go to :class:`RemoteDeliveryAgent` (``resolver``,
    ``dns_servers``, ``port``, ``ipme`` ... for tests and special sites).
    """
    reactor = context.reactor
    if reactor is None:
        from twisted.internet import reactor
    if kw.get("resolver") is None and not kw.get("dns_servers"):
        try:
            servers = dnscache_servers(context.environ)
        except ConfigError as e:
            # build_remote_agent runs while twistd builds the service: a clean exit with
            # one line on stderr, as makeService does for a bad control file
            raise SystemExit(f"indimail: cannot start: {e}") from None
        if servers:
            log.info("DNS: asking {servers} (DNSCACHEIP), not /etc/resolv.conf",
                     servers=" ".join(ip for ip, _port in servers))
            kw["dns_servers"] = servers
    settings = context.config.current
    queue_base = settings.queue_base or context.paths.queue
    return RemoteDeliveryAgent(context.config, certs=context.paths.certs,
                               queue_base=queue_base, reactor=reactor,
                               environ=context.environ, **kw)
