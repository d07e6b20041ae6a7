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
S1   being received       ``tmp/NAME`` (partial)       commit: data, envelope record
                                                       and trailer written, file
                                                       fsynced -> S2; abort, error or
                                                       crash -> removed (recovery
                                                       empties ``tmp/``)
S2   prepared             ``tmp/NAME``, fsynced        batch: rename ``tmp/NAME`` ->
                                                       ``mess/ID``, fsync ``mess/`` ->
                                                       S3 (the enqueue Deferred fires
                                                       only now)
S3   committed            ``mess/ID`` (message,        deliveries; recipient states in
                          envelope, trailer)           ``state/ID`` (table in
                          [+ ``state/ID``]             :mod:`.states`); all recipients
                                                       done or bounced -> S4
S4   finishing            ``mess/ID`` -> ``spare/``,   ``state/ID`` removed -> S0
                          fsync ``mess/`` (the next
                          commit batch's, or within
                          a second)
---  damaged              ``mess/ID`` whose trailer,   moved to ``corrupt/`` by
                          envelope or sizes do not     recovery and logged, never
                          check out                    deleted
===  ===================  ===========================  ===============================

Old format-1 messages (``info/ID`` + ``mess/ID``, written by earlier versions)
are still recovered, delivered and removed (``info/ID`` first, the data after
the next fsync of ``info/``); see :mod:`indimail_tw.queue.store`.

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
