"""Enqueue throughput by concurrency (run by hand, not a test).

    python tests/queue/bench_enqueue.py DIR [MESSAGES] [QUEUES]

Enqueues MESSAGES messages of ~2 KB with 1, 5, 20 and 50 concurrent writers on
the real reactor and thread pool (fsync on, as always) and prints messages/s
and the number of commit batches.  DIR should be on the file system the queue
will use.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time

from twisted.internet import defer, reactor, task
from twisted.python.threadpool import ThreadPool

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from indimail_tw.queue import Envelope, Queue, QueueService, QueueSet, ThreadRunner  # noqa: E402
from tests.queue.helpers import route_by_domain, settings  # noqa: E402

BODY = (b"From: a@example.com\nTo: b@example.com\nSubject: bench\n\n"
        + b"x" * 76 + b"\n") * 26


@defer.inlineCallbacks
def measure(base: str, messages: int, queues: int, concurrency: int):
    shutil.rmtree(base, ignore_errors=True)
    pool = ThreadPool(0, int(os.environ.get("BENCH_THREADS", max(32, 4 * queues))), "bench")
    run = ThreadRunner(reactor, pool)
    snapshot = settings()
    qs = QueueSet([Queue(os.path.join(base, f"queue{i}"), clock=reactor, run=run,
                         agents={"local": None, "remote": None}, router=route_by_domain,
                         settings=lambda: snapshot) for i in range(1, queues + 1)],
                  rng=random.Random(1))
    svc = QueueService(qs, reactor=reactor, pool=pool)
    svc.startService()
    yield svc.started
    left = [messages]

    @defer.inlineCallbacks
    def writer():
        while left[0] > 0:
            left[0] -= 1
            w = qs.writer(Envelope.simple("a@example.com", "b@remote.test"))
            w.write(BODY)
            yield w.commit()

    start = time.perf_counter()
    yield defer.DeferredList([writer() for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    batches = sum(q.committer.batches for q in qs.queues)
    yield svc.stopService()
    print(f"queues={queues:2} writers={concurrency:3}: {messages / elapsed:7.0f} msg/s, "
          f"{batches} batches ({messages / batches:.1f} msg/batch)", flush=True)


@defer.inlineCallbacks
def main(_reactor):
    base = sys.argv[1]
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    queue_counts = [int(sys.argv[3])] if len(sys.argv) > 3 else [1, 10]
    for queues in queue_counts:
        for concurrency in (1, 5, 20, 50):
            yield measure(base, messages if concurrency > 1 else messages // 4, queues,
                          concurrency)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    task.react(main)
