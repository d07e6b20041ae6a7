"""The queue tools, with IndiMail's names: qmail-qread, qmail-qstat, qmail-rm, qmail-flush.

They work on the queues of one installation: ``QUEUE_BASE`` (or control file
``queue_base``, default ``ROOT/queue``) holds ``queue1`` .. ``queueN``; with
``QUEUE_START``/``QUEUE_COUNT`` set only that range, else every ``queueN``
found there.  The on-disk format is read and written only through
:mod:`indimail_tw.queue` (its store, record codec and recovery rules).

======================  ==========================================================
module                  tool
======================  ==========================================================
:mod:`.qread`           ``qmail-qread``: list messages and recipients; ``-c`` counts
:mod:`.qstat`           ``qmail-qstat``: the totals of ``qmail-qread -c``
:mod:`.rm`              ``qmail-rm``: search by content; yank, delete or back-date
:mod:`.flush`           ``qmail-flush``: SIGALRM to the server (retry now)
:mod:`.scan`            read-only reading of a queue, safe while the server runs
:mod:`.lock`            the queue lock (who holds it; taking it for changes)
:mod:`.actions`         yank / delete / back-date one message (lock held)
:mod:`.common`          options, the installation, finding queues, output helpers
======================  ==========================================================

Readers never take a lock and never write.  Changes need the queue's lock,
which a running server holds, so qmail-rm refuses to change anything while a
server runs.  Every failure is one ``prog: message`` line on stderr; exit
status 0 done, 1 could not be done, 100 bad usage or input, 111 unexpected.
"""
