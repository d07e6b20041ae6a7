"""Test doubles for the queue: settings, agents, runners, a queue on a temp dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue import Envelope, Queue, SyncRunner

T0 = 1_700_000_000.0


def settings(**kw: Any) -> SimpleNamespace:
    values = dict(queuelifetime=604800, concurrencylocal=10, concurrencyremote=20,
                  holdlocal=False, holdremote=False)
    values.update(kw)
    return SimpleNamespace(**values)


def route_by_domain(address: str) -> str:
    """Recipients @local.test are local, everything else remote."""
    return "local" if address.endswith("@local.test") else "remote"


class Agent:
    """Records each delivery; answers with ``answer(message, recipient)``.

    ``answer`` may return a DeliveryResult or a Deferred; the default delivers.
    With ``hold=True`` every delivery waits until the test fires it.
    """

    def __init__(self, answer: Callable[..., Any] | None = None, clock: Clock | None = None,
                 hold: bool = False) -> None:
        self.answer = answer or (lambda m, r: DeliveryResult.ok())
        self.clock = clock
        self.hold = hold
        self.calls: list[tuple[float | None, str, str]] = []
        self.held: list[tuple[Any, Any, defer.Deferred]] = []

    def deliver(self, message: Any, recipient: Any) -> Any:
        with message.open() as f:                # the data must be there
            assert len(f.read()) == message.size
        self.calls.append((self.clock.seconds() if self.clock else None, message.id,
                           recipient.address))
        if self.hold:
            d: defer.Deferred = defer.Deferred()
            self.held.append((message, recipient, d))
            return d
        return self.answer(message, recipient)

    def addresses(self) -> list[str]:
        return [address for _, _, address in self.calls]


class Bounces:
    """A bounce factory that records its calls and bounces to the sender."""

    def __init__(self, result: Callable[..., Any] | None = None) -> None:
        self.calls: list[tuple[str, list[tuple[str, DeliveryResult]], bool]] = []
        self.result = result

    def __call__(self, message: Any, failures: list, settings: Any,
                 expired: bool = False) -> Any:
        self.calls.append((message.id, [(r.address, res) for r, res in failures], expired))
        if self.result is not None:
            return self.result(message, failures)
        lines = "".join(f"{r.address}: {res.text}\n" for r, res in failures)
        return Envelope.simple("", message.envelope.sender), f"bounce\n{lines}".encode()


class ManualRunner:
    """Queues blocking calls; the test runs them one by one (or all) to control overlap."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple, dict, defer.Deferred]] = []

    def __call__(self, f: Callable[..., Any], *args: Any, **kw: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.jobs.append((f, args, kw, d))
        return d

    def step(self) -> bool:
        if not self.jobs:
            return False
        f, args, kw, d = self.jobs.pop(0)
        defer.maybeDeferred(f, *args, **kw).chainDeferred(d)
        return True

    def run_pending(self) -> int:
        """Run the jobs queued right now (not those they queue); returns how many."""
        jobs, n = list(self.jobs), 0
        for job in jobs:
            self.jobs.remove(job)
            f, args, kw, d = job
            defer.maybeDeferred(f, *args, **kw).chainDeferred(d)
            n += 1
        return n

    def run_all(self) -> None:
        while self.step():
            pass


def make_queue(path: str, *, clock: Clock | None = None, run: Any = None,
               local: Any = None, remote: Any = None, bounces: Any = None,
               config: Any = None, start: bool = True, **kw: Any) -> Queue:
    clock = clock or Clock()
    if not clock.seconds():
        clock.advance(T0)
    snapshot = config or settings()
    queue = Queue(path, clock=clock, run=run or SyncRunner(),
                  agents={"local": local, "remote": remote}, router=route_by_domain,
                  settings=lambda: snapshot, bounce_factory=bounces or Bounces(), **kw)
    if start:
        queue.start()
        if isinstance(queue.run, ManualRunner):
            queue.run.run_all()
    return queue


def files(queue: Queue, sub: str) -> list[str]:
    return sorted(os.listdir(os.path.join(queue.store.path, sub)))


def result_of(d: defer.Deferred) -> Any:
    """The result of a Deferred that has fired (re-raising a failure)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome


class LogCapture:
    """Collects the formatted log lines of the queue (twisted.logger global publisher)."""

    def __init__(self) -> None:
        from twisted.logger import globalLogPublisher

        self.events: list[dict] = []
        self._publisher = globalLogPublisher
        self._publisher.addObserver(self.events.append)

    def lines(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events
                if e.get("log_namespace") == "indimail_tw.queue"]

    def close(self) -> None:
        self._publisher.removeObserver(self.events.append)


def write_format1(path: str, envelope: Envelope, data: bytes,
                  msg_id: str = "6553f1000123456789") -> str:
    """An old-format (format 1) message written by hand into the queue at ``path``:
    the data in ``mess/ID`` and the envelope record in ``info/ID``."""
    from indimail_tw.queue.records import encode_envelope

    for sub in ("mess", "tmp", "info", "state", "corrupt", "spare"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    if not envelope.received_at:
        envelope.received_at = T0
    with open(os.path.join(path, "mess", msg_id), "wb") as f:
        f.write(data)
    with open(os.path.join(path, "info", msg_id), "wb") as f:
        f.write(encode_envelope(envelope, len(data)))
    return msg_id
