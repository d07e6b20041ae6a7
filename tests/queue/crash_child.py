"""Child process for test_crash: enqueue messages forever, print each acknowledged id.

Usage: python crash_child.py QUEUE_BASE SEED

Runs the real reactor and a real thread pool on two queues (queue1, queue2) with
no delivery agents, recovering whatever an earlier (killed) child left.  Prints
``READY <messages found> <corrupt>`` after recovery, then one ``<id>`` line per
acknowledged message, flushed at once.  Each message carries ``X-Sum``, the
SHA-256 of its body, so the parent can check it byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from indimail_tw.queue import Envelope, Queue, QueueService, QueueSet, ThreadRunner  # noqa: E402
from tests.queue.helpers import route_by_domain, settings  # noqa: E402

IN_FLIGHT = 16
SIZES = (200, 2_000, 2_000, 2_000, 40_000, 300_000)


def message(rng: random.Random, n: int) -> bytes:
    body = rng.randbytes(rng.choice(SIZES))
    return (f"X-Seq: {n}\nX-Sum: {hashlib.sha256(body).hexdigest()}\n\n").encode() + body


def main() -> None:
    base, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    pool = ThreadPool(0, 24, "crash-child")
    run = ThreadRunner(reactor, pool)
    snapshot = settings()
    queues = [Queue(os.path.join(base, f"queue{i}"), clock=reactor, run=run,
                    agents={"local": None, "remote": None}, router=route_by_domain,
                    settings=lambda: snapshot) for i in (1, 2)]
    qs = QueueSet(queues, rng=random.Random(seed))
    svc = QueueService(qs, reactor=reactor, pool=pool)
    counter = iter(range(seed * 1_000_000, sys.maxsize))

    def one(_=None) -> None:
        n = next(counter)
        data = message(rng, n)
        env = Envelope.simple("s@x", f"r{n}@remote.test")
        if n % 2:
            d = qs.enqueue(env, data)
        else:
            w = qs.writer(env)
            for k in range(0, len(data), 8192):
                w.write(data[k:k + 8192])
            d = w.commit()
        d.addCallback(lambda msg_id: print(msg_id, flush=True))
        d.addErrback(lambda f: print("ERROR", f.getErrorMessage(), flush=True))
        d.addCallback(one)

    def ready(_) -> None:
        found = sum(len(q.scheduler.messages) for q in queues)
        print("READY", found, flush=True)
        for _ in range(IN_FLIGHT):
            one()

    svc.startService()
    svc.started.addCallback(ready)
    reactor.run()


if __name__ == "__main__":
    main()
