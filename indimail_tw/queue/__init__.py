"""The durable queue: the only meeting point between receiving and delivering.

Receivers call ``IQueue.enqueue`` or stream through ``IQueue.writer``; the
Deferred fires with the queue id once the message is durable.  Each queue's
scheduler hands every recipient to the ``local`` or ``remote`` delivery agent,
retries temporary failures on qmail's schedule, bounces permanent ones (one
bounce per message per batch of failures) and removes finished messages.

Message states (qmail's S1-S5, see ``indimail-mta-internals(7)``); the files of
a queue are described in :mod:`indimail_tw.queue.store`:

===  ===================  ===========================  ===============================
#    state                on disk                      next
===  ===================  ===========================  ===============================
S0   not in the queue     --                           writer created -> S1
S1   being received       ``mess/ID`` (partial), and   commit: data fsynced, envelope
                          at commit ``tmp/NAME``       fsynced -> S2; abort, error or
                                                       crash -> removed (recovery
                                                       removes any leftovers)
S2   prepared             ``mess/ID`` + ``tmp/NAME``,  batch: fsync ``mess/``, rename
                          both fsynced                 ``tmp/NAME`` -> ``info/ID``, fsync
                                                       ``info/`` -> S3 (the enqueue
                                                       Deferred fires only now)
S3   committed            ``info/ID`` + ``mess/ID``    deliveries; recipient states in
                          [+ ``state/ID``]             ``state/ID`` (table in
                                                       :mod:`.states`); all recipients
                                                       done or bounced -> S4
S4   finishing            unlink ``info/ID``, fsync    unlink ``mess/ID``,
                          ``info/`` (the next commit   ``state/ID`` -> S0
                          batch's, or within a
                          second)
---  damaged              unreadable ``info/ID``, or   moved to ``corrupt/`` by
                          data missing/wrong size      recovery and logged, never
                                                       deleted
===  ===================  ===========================  ===============================

A crash in S1/S2 loses nothing acknowledged (nothing was); a crash in S3 or S4
resumes from the files (at-least-once).  Several queues (``QUEUE_COUNT``) live
side by side as ``queue1`` .. ``queueN``, each with its own scheduler; a
:class:`QueueSet` spreads injections over them.
"""

from indimail_tw.queue.batch import Batcher, SyncRunner, ThreadRunner
from indimail_tw.queue.envelope import Envelope, Recipient
from indimail_tw.queue.message import QueuedMessage
from indimail_tw.queue.queue import Queue, QueueSet
from indimail_tw.queue.service import QueueService, build_queue
from indimail_tw.queue.states import BOUNCED, DONE, FAILED, PENDING, RecipientState

__all__ = [
    "BOUNCED",
    "DONE",
    "FAILED",
    "PENDING",
    "Batcher",
    "Envelope",
    "Queue",
    "QueueService",
    "QueueSet",
    "QueuedMessage",
    "Recipient",
    "RecipientState",
    "SyncRunner",
    "ThreadRunner",
    "build_queue",
]
