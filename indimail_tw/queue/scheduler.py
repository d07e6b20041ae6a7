"""Delivery scheduling for one queue, as qmail-send does it.

Each pending recipient of each message is one job on a channel (``local`` or
``remote``, chosen by ``router(address)``).  A channel runs at most
``concurrencylocal``/``concurrencyremote`` jobs at once (0, or ``holdlocal``/
``holdremote``, holds it); a channel without an agent keeps its recipients
pending, untouched and unexpired.  A temporary failure is retried at qmail's
``nextretry``; an attempt started after ``queuelifetime`` is the last one.
Permanent failures are collected and, once none of the message's jobs is
running, turned into one bounce through ``bounce_factory`` (run in a thread)
and enqueued with ``inject``.  A message whose recipients are all ``done`` or
``bounced`` is removed.

All of this runs on the reactor thread; disk work goes through the
``journal`` (state lines and removals, batched by the queue) and ``run``.

Logging follows qmail-send with fewer lines: one line per delivery attempt
(``delivery N: success|failure|deferral: msg ID to CHANNEL ADDRESS: text``).
The lines qmail-send adds around it (``starting delivery``, ``end msg``, the
concurrency ``status``) are debug events, made only when ``debug`` is set.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer
from twisted.python.failure import Failure

from indimail_tw.delivery.result import PERMANENT, DeliveryResult
from indimail_tw.logsetup import QuickLogger
from indimail_tw.queue.message import QueuedMessage
from indimail_tw.queue.states import (
    BOUNCED,
    CHANSKIP,
    DONE,
    EXPIRED_NOTE,
    FAILED,
    LOCAL,
    PENDING,
    REMOTE,
    RecipientState,
    next_retry,
)

log = QuickLogger(namespace="indimail_tw.queue")

BOUNCE_RETRY = 60.0          # seconds before retrying a bounce that could not be made
#: Seconds after which a recipient parked by a busy agent is tried again even if the
#: agent never said it has room (an agent without ``when_room``, or a lost wake-up).
PARK_RETRY = 5.0
#: Parked recipients of a domain started again per delivery that ended there: that
#: makes room for one more, so more would mostly be turned away again.
UNPARK_BATCH = 1
DOUBLE_BOUNCE_SENDER = "#@[]"


class Journal(Protocol):
    def record(self, msg_id: str, state: RecipientState) -> None: ...

    def remove(self, msg_id: str) -> defer.Deferred: ...


class _Entry:
    """The scheduler's view of one message."""

    __slots__ = ("message", "states", "channels", "running", "waiting", "bouncing",
                 "bounce_later", "gone")

    def __init__(self, message: QueuedMessage, states: list[RecipientState],
                 channels: list[str]) -> None:
        self.message = message
        self.states = states
        self.channels = channels
        self.running: set[int] = set()        # recipients ready to start or being delivered
        self.waiting: dict[int, object] = {}  # recipients in the retry heap -> their token
        self.bouncing = False
        self.bounce_later: Any = None         # a timer retrying a bounce that failed
        self.gone = False


class Scheduler:
    """Retries, concurrency, bounces and removal for the messages of one queue."""

    def __init__(self, name: str, *, clock: Any, agents: Mapping[str, Any],
                 router: Callable[[str], str], settings: Callable[[], Any],
                 journal: Journal, run: Callable[..., defer.Deferred],
                 bounce_factory: Callable[..., Any],
                 inject: Callable[[Any, bytes], defer.Deferred] | None = None,
                 debug: bool = False) -> None:
        self.name = name
        self.debug = debug
        self.clock = clock
        self.agents = dict(agents)
        self.router = router
        self.settings = settings
        self.journal = journal
        self.run = run
        self.bounce_factory = bounce_factory
        self.inject = inject
        self.messages: dict[str, _Entry] = {}
        self.active = {LOCAL: 0, REMOTE: 0}
        self._ready: dict[str, deque[tuple[_Entry, int]]] = {LOCAL: deque(), REMOTE: deque()}
        self._heap: list[tuple[float, int, _Entry, int, object]] = []
        self._seq = itertools.count()
        self._deliveries = itertools.count(1)
        self._timer: Any = None
        self._later: set[Any] = set()
        self._bounces = 0
        self._stopping = False
        self._abandoned = False
        self._quiet: list[defer.Deferred] = []
        self._parked: dict[str, dict[str, deque[tuple[_Entry, int, object]]]] = {
            LOCAL: {}, REMOTE: {}}
        self._unpark_timer: dict[str, Any] = {LOCAL: None, REMOTE: None}
        self._room_agent: dict[str, Any] = {LOCAL: None, REMOTE: None}

    # -- public -----------------------------------------------------------------------------

    def add(self, message: QueuedMessage, states: list[RecipientState]) -> None:
        """Take over a committed message (new, or found by recovery)."""
        entry = _Entry(message, states, [self._route(s.address) for s in states])
        self.messages[message.id] = entry
        for state in states:
            if state.status == PENDING and self.agents.get(entry.channels[state.index]):
                self._wait(entry, state.index, state.next_at)
        self._pump_all()
        self._settle(entry)

    def flush(self, domain: str | None = None) -> int:
        """Make every waiting recipient (of ``domain``) due now; returns how many."""
        domain = domain.lower() if domain else None
        count = 0
        for entry in list(self.messages.values()):
            for index in list(entry.waiting):
                address = entry.states[index].address
                if domain is None or address.rpartition("@")[2].lower() == domain:
                    del entry.waiting[index]
                    self._make_ready(entry, index)
                    count += 1
        self._pump_all()
        return count

    def set_agent(self, channel: str, agent: Any) -> None:
        """Install (or remove, with None) a channel's agent; its recipients start moving."""
        self.agents[channel] = agent
        if agent is None:
            return
        for entry in list(self.messages.values()):
            for state in entry.states:
                i = state.index
                if (state.status == PENDING and entry.channels[i] == channel
                        and i not in entry.running and i not in entry.waiting):
                    self._wait(entry, i, state.next_at)
        self._pump_all()

    def settings_changed(self) -> None:
        """Concurrency or hold settings may have changed: start what may start now."""
        self._pump_all()

    @property
    def busy(self) -> int:
        """Deliveries and bounces in progress."""
        return self.active[LOCAL] + self.active[REMOTE] + self._bounces

    def stop(self) -> defer.Deferred:
        """Start nothing new; fires when the deliveries and bounces in progress are done."""
        self._stopping = True
        for call in [self._timer, *self._later, *self._unpark_timer.values()]:
            if call is not None and call.active():
                call.cancel()
        self._timer, self._later = None, set()
        return self._when_quiet()

    def abandon(self) -> None:
        """Stop waiting for deliveries in progress: their results will be ignored.

        Their recipients stay pending on disk and are delivered again after a
        restart (at-least-once).
        """
        self._abandoned = True
        self._check_quiet(force=True)

    # -- scheduling -------------------------------------------------------------------------

    def _route(self, address: str) -> str:
        try:
            channel = self.router(address)
        except Exception:  # noqa: BLE001 -- a broken router must not lose the message
            log.failure("{queue}: routing {address} failed; using local", queue=self.name,
                        address=address)
            return LOCAL
        if channel not in (LOCAL, REMOTE):
            log.error("{queue}: router gave {channel!r} for {address}; using local",
                      queue=self.name, channel=channel, address=address)
            return LOCAL
        return channel

    def _wait(self, entry: _Entry, index: int, when: float) -> None:
        now = self.clock.seconds()
        if when <= now:
            self._make_ready(entry, index)
            return
        token = object()
        entry.waiting[index] = token
        heapq.heappush(self._heap, (when, next(self._seq), entry, index, token))
        if self._timer is None or when < self._timer.getTime():
            self._arm()

    def _make_ready(self, entry: _Entry, index: int) -> None:
        entry.running.add(index)
        self._ready[entry.channels[index]].append((entry, index))

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._heap and not self._stopping:
            delay = max(0.0, self._heap[0][0] - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        while self._heap and self._heap[0][0] <= now:
            _, _, entry, index, token = heapq.heappop(self._heap)
            if not entry.gone and entry.waiting.get(index) is token:
                del entry.waiting[index]
                self._make_ready(entry, index)
        self._pump_all()
        self._arm()

    def _limit(self, channel: str) -> int:
        settings = self.settings()
        if getattr(settings, f"hold{channel}", False):
            return 0
        return int(getattr(settings, f"concurrency{channel}"))

    def _pump_all(self) -> None:
        for channel in (LOCAL, REMOTE):
            self._pump(channel)

    def _pump(self, channel: str) -> None:
        if self._stopping or not self._ready[channel]:
            return
        agent = self.agents.get(channel)
        if agent is None:
            return
        limit = self._limit(channel)
        ready = self._ready[channel]
        while ready and self.active[channel] < limit:
            entry, index = ready.popleft()
            self._start(agent, entry, index, channel)

    # -- one delivery -----------------------------------------------------------------------

    def _start(self, agent: Any, entry: _Entry, index: int, channel: str) -> None:
        state = entry.states[index]
        now = self.clock.seconds()
        dying = now > entry.message.birth + self.settings().queuelifetime
        number = next(self._deliveries)
        self.active[channel] += 1
        if self.debug:
            log.debug("{queue}: starting delivery {number}: msg {id} to {channel} {address}",
                      queue=self.name, number=number, id=entry.message.id, channel=channel,
                      address=state.address)
            self._status()
        d = defer.maybeDeferred(agent.deliver, entry.message, state.recipient)
        d.addErrback(self._agent_failed, number)
        d.addCallback(self._finished, entry, index, channel, number, dying)
        d.addErrback(lambda f: log.failure("{queue}: scheduler error", f, queue=self.name))

    def _agent_failed(self, failure: Failure, number: int) -> DeliveryResult:
        log.failure("{queue}: delivery {number}: agent raised", failure, queue=self.name,
                    number=number)
        return DeliveryResult.temporary("internal error in the delivery agent", "4.3.0")

    def _finished(self, result: Any, entry: _Entry, index: int, channel: str, number: int,
                  dying: bool) -> None:
        self.active[channel] -= 1
        entry.running.discard(index)
        if self._abandoned:
            return
        if getattr(result, "busy", False):
            self._park(entry, index, channel)
            self._check_quiet()
            return
        if not isinstance(result, DeliveryResult):
            log.error("{queue}: delivery {number}: agent returned {result!r}",
                      queue=self.name, number=number, result=result)
            result = DeliveryResult.temporary("internal error in the delivery agent", "4.3.0")
        state = entry.states[index]
        state.attempts += 1
        if result.is_ok:
            state.status, state.error, text = DONE, "", result.text
            kind = "success"
        elif result.is_permanent or dying:
            text = result.text
            if not result.is_permanent:        # the bounce factory adds EXPIRED_NOTE
                result = dataclasses.replace(result, status=PERMANENT,
                                             enhanced=result.enhanced or "4.4.7")
                state.expired = True
                text = f"{text}\n{EXPIRED_NOTE}"
            state.status, state.error, state.result = FAILED, result.text, result
            kind = "failure"
        else:
            state.error = text = result.text
            state.next_at = next_retry(entry.message.birth, self.clock.seconds(),
                                       CHANSKIP[channel])
            kind = "deferral"
        log.info("{queue}: delivery {number}: {kind}: msg {id} to {channel} {address}: {text}",
                 queue=self.name, number=number, kind=kind, id=entry.message.id,
                 channel=channel, address=state.address, text=text.replace("\n", "/"))
        if not self._finishing(entry):      # else the removal makes the line moot
            self.journal.record(entry.message.id, state)
        if state.status == PENDING and not self._stopping:
            self._wait(entry, index, state.next_at)
        self._settle(entry)
        self._pump(channel)
        if self.debug:
            self._status()
        self._check_quiet()

    # -- a busy agent -------------------------------------------------------------------------

    def _park(self, entry: _Entry, index: int, channel: str) -> None:
        """The agent had no room for this destination: not an attempt (nothing counted,
        logged or recorded); the recipient waits, with the others of its domain, until
        the agent has room there again (or :data:`PARK_RETRY` seconds)."""
        token = object()
        entry.waiting[index] = token           # flush() and set_agent() see it as waiting
        domain = entry.states[index].address.rpartition("@")[2].lower()
        if self.debug:
            log.debug("{queue}: parked msg {id} to {channel} {address}: the agent is busy",
                      queue=self.name, id=entry.message.id, channel=channel,
                      address=entry.states[index].address)
        self._parked[channel].setdefault(domain, deque()).append((entry, index, token))
        self._ask_room(channel)

    def _ask_room(self, channel: str) -> None:
        if self._stopping or not self._parked[channel]:
            return
        agent = self.agents.get(channel)
        if agent is not None and agent is not self._room_agent[channel] \
                and hasattr(agent, "when_room"):
            self._room_agent[channel] = agent        # subscribed for good: one per agent
            agent.when_room(lambda domains: self._unpark(channel, domains))
        if self._unpark_timer[channel] is None:
            self._unpark_timer[channel] = self.clock.callLater(PARK_RETRY, self._unpark,
                                                               channel, None)

    def _unpark(self, channel: str, domains: dict[str, int] | None) -> dict[str, int]:
        """Start again parked recipients of the domains that got room:
        :data:`UNPARK_BATCH` per delivery that ended there (with ``domains`` None,
        the timer's call, that many of every parked domain).  Returns how many were
        started per domain (the agent offers the rest to the other queues)."""
        if domains is None:
            self._unpark_timer[channel] = None
        parked = self._parked[channel]
        started: dict[str, int] = {}
        if self._stopping or not parked:
            return started
        ready = self._ready[channel]
        chosen = parked.keys() if domains is None else parked.keys() & domains.keys()
        for domain in list(chosen):
            waiting = parked[domain]
            quota = UNPARK_BATCH * (1 if domains is None else domains[domain])
            taken = 0
            while waiting and taken < quota:
                entry, index, token = waiting.popleft()
                if not entry.gone and entry.waiting.get(index) is token:
                    del entry.waiting[index]
                    entry.running.add(index)
                    ready.appendleft((entry, index))
                    taken += 1
            if taken:
                started[domain] = taken
            if not waiting:
                del parked[domain]
        self._pump(channel)
        self._ask_room(channel)
        return started

    def _status(self) -> None:
        limits = self.settings()
        log.debug("{queue}: status: local {l}/{L} remote {r}/{R}", queue=self.name,
                  l=self.active[LOCAL], L=limits.concurrencylocal,
                  r=self.active[REMOTE], R=limits.concurrencyremote)

    # -- bounces and the end of a message ----------------------------------------------------

    def _finishing(self, entry: _Entry) -> bool:
        """Whether :meth:`_settle` is about to remove the message."""
        return not (entry.running or entry.bouncing or entry.bounce_later or self._abandoned
                    ) and all(s.is_final for s in entry.states)

    def _settle(self, entry: _Entry) -> None:
        """Bounce or remove the message once none of its jobs is running (and stop
        keeping its bytes in memory: a retry reads them from disk)."""
        if not entry.running:
            release = getattr(entry.message, "release_data", None)
            if release is not None:
                release()
        if (entry.running or entry.bouncing or entry.bounce_later or entry.gone
                or self._abandoned):
            return
        failed = [s for s in entry.states if s.status == FAILED]
        if failed:
            if not self._stopping:
                self._bounce(entry, failed)
        elif all(s.is_final for s in entry.states):
            entry.gone = True
            del self.messages[entry.message.id]
            d = self.journal.remove(entry.message.id)
            if self.debug:
                d.addCallback(lambda _: log.debug("{queue}: end msg {id}", queue=self.name,
                                                  id=entry.message.id))
            d.addErrback(lambda f: log.failure("{queue}: removing msg {id}", f,
                                               queue=self.name, id=entry.message.id))

    def _bounce(self, entry: _Entry, failed: list[RecipientState]) -> None:
        entry.bouncing = True
        self._bounces += 1
        message = entry.message
        if message.envelope.sender == DOUBLE_BOUNCE_SENDER:
            log.info("{queue}: triple bounce: discarding bounce/{id}", queue=self.name,
                     id=message.id)
            d: defer.Deferred = defer.succeed(None)
        else:
            failures = [(s.recipient, s.result) for s in failed]
            d = self.run(self.bounce_factory, message, failures, self.settings(),
                         expired=any(s.expired for s in failed))
            d.addCallback(self._inject, message)
        d.addCallbacks(self._bounced, self._bounce_failed, (entry, failed), None, (entry,))

    def _inject(self, bounce: Any, message: QueuedMessage) -> Any:
        if bounce is None:
            log.info("{queue}: bounce msg {id}: dropped", queue=self.name, id=message.id)
            return None
        envelope, data = bounce
        return self.inject(envelope, data)

    def _bounced(self, bounce_id: str | None, entry: _Entry, failed: list[RecipientState]):
        self._bounces -= 1
        entry.bouncing = False
        if bounce_id is not None:
            log.info("{queue}: bounce msg {id} qp {bounce}", queue=self.name,
                     id=entry.message.id, bounce=bounce_id)
        if not self._abandoned:
            for state in failed:
                state.status = BOUNCED
                self.journal.record(entry.message.id, state)
            self._settle(entry)
        self._check_quiet()

    def _bounce_failed(self, failure: Failure, entry: _Entry) -> None:
        self._bounces -= 1
        entry.bouncing = False
        log.failure("{queue}: bounce msg {id} failed; trying again later", failure,
                    queue=self.name, id=entry.message.id)
        if not self._stopping:
            entry.bounce_later = self.clock.callLater(BOUNCE_RETRY, self._retry_bounce, entry)
            self._later.add(entry.bounce_later)
        self._check_quiet()

    def _retry_bounce(self, entry: _Entry) -> None:
        self._later.discard(entry.bounce_later)
        entry.bounce_later = None
        self._settle(entry)

    # -- stopping ----------------------------------------------------------------------------

    def _when_quiet(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._quiet.append(d)
        self._check_quiet()
        return d

    def _check_quiet(self, force: bool = False) -> None:
        if self._quiet and (force or not self.busy):
            waiting, self._quiet = self._quiet, []
            for d in waiting:
                d.callback(None)
