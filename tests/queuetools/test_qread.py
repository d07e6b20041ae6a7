"""qmail-qread and qmail-qstat on real queues: listing, counts, damage, a running server."""

from __future__ import annotations

import os

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue import Envelope
from indimail_tw.queue.records import encode_state
from indimail_tw.queuetools import qread, qstat
from indimail_tw.queuetools.common import QueueDir
from indimail_tw.queuetools.scan import QueueReader
from tests.queue.helpers import make_queue, result_of
from tests.queuetools.helpers import call, enqueue, one_line, queue_in, run, snapshot

HAVE_PROC_LOCKS = os.path.exists("/proc/locks")
DATE = "14 Nov 2023 22:13:20 GMT"          # tests.queue.helpers.T0


def mark(queue, msg_id, index, status, **kw):
    state = queue.scheduler.messages[msg_id].states[index]
    state.status = status
    for name, value in kw.items():
        setattr(state, name, value)
    queue.journal.record(msg_id, state)


def test_lists_messages_with_recipients_states_and_channels(root, capsys):
    q = queue_in(root)
    first = enqueue(q, "alice@example.com",
                    ["a@local.test", "b@virt.test", "c@remote.test", "d@remote.test"],
                    b"Subject: hi\n\nhello\n")
    mark(q, first, 0, "done")
    mark(q, first, 2, "failed", result=DeliveryResult.permanent("no", "5.1.1"))
    mark(q, first, 3, "bounced", result=DeliveryResult.permanent("no", "5.1.1"))
    second = enqueue(q, "", ["e@remote.test"], b"x")
    q.close()
    r = call(qread.main, capsys, "--root", root)
    assert r.status == 0 and r.err == ""
    lines = r.out.splitlines()
    by_id = {first: lines.index(next(x for x in lines if f"#{first}" in x)),
             second: lines.index(next(x for x in lines if f"#{second}" in x))}
    i = by_id[first]
    assert lines[i:i + 5] == [
        f"{DATE}  queue1/#{first}  19  <alice@example.com>  bouncing",
        "  done\tlocal\ta@local.test",
        "\tlocal\tb@virt.test",                  # virtualdomains: local
        "  failed\tremote\tc@remote.test",
        "  bounced\tremote\td@remote.test",
    ]
    j = by_id[second]
    assert lines[j:j + 2] == [f"{DATE}  queue1/#{second}  1  <>", "\tremote\te@remote.test"]
    assert len(lines) == 7


def test_control_characters_are_not_printed(root, capsys):
    q = queue_in(root)
    enqueue(q, "evil\x1b[2J@example.com", ["a@local.test"], b"x")
    q.close()
    r = call(qread.main, capsys, "--root", root)
    assert "<evil_[2J@example.com>" in r.out and "\x1b" not in r.out


def test_counts_per_queue_and_totals(root, capsys):
    q1 = queue_in(root, 1, spill_limit=4)
    msg = enqueue(q1, "s@x", ["a@local.test", "b@remote.test"], b"one\n")
    mark(q1, msg, 0, "done")
    writer = q1.writer(Envelope.simple("s@x", "c@remote.test"))
    writer.write(b"being received")           # spilled to mess/, not committed
    q2 = queue_in(root, 2)
    enqueue(q2, "s@x", ["c@local.test"], b"two\n")
    enqueue(q2, "s@x", ["d@remote.test"], b"three\n")
    r = call(qread.main, capsys, "--root", root, "-c")
    assert r.status == 0
    assert r.out.splitlines() == [
        "queue1: messages in queue: 1",
        "queue1: messages in queue but not yet committed: 1",
        "queue1: recipients pending: 1 (local 0, remote 1)",
        "queue1: recipients done: 1, failed: 0, bounced: 0",
        "queue1: damaged messages: 0",
        "queue2: messages in queue: 2",
        "queue2: messages in queue but not yet committed: 0",
        "queue2: recipients pending: 2 (local 1, remote 1)",
        "queue2: recipients done: 0, failed: 0, bounced: 0",
        "queue2: damaged messages: 0",
        "messages in queue: 3",
        "messages in queue but not yet committed: 1",
        "recipients pending: 3 (local 1, remote 2)",
        "recipients done: 1, failed: 0, bounced: 0",
        "damaged messages: 0",
    ]
    totals = r.out.splitlines()[-5:]
    assert call(qread.main, capsys, "--root", root, "-s").out.splitlines() == totals
    assert call(qstat.main, capsys, "--root", root).out.splitlines() == totals


def test_reading_while_the_server_runs_changes_nothing(root, capsys):
    q = queue_in(root)                       # open: holds queue1/lock like a server
    msg = enqueue(q, "s@x", ["a@remote.test"], b"m\n")
    before = snapshot(root)
    for argv in ([], ["-c"], ["-i"]):
        r = call(qread.main, capsys, "--root", root, *argv)
        assert r.status == 0
    assert msg in call(qread.main, capsys, "--root", root).out
    info = call(qread.main, capsys, "--root", root, "-i").out
    owner = f"in use by pid {os.getpid()}" if HAVE_PROC_LOCKS else "owner unknown"
    assert f"queue1: 1 message, 0 being received, 0 in corrupt/; {owner}" in info
    assert snapshot(root) == before
    q.close()
    assert "queue1: 1 message, 0 being received, 0 in corrupt/; not in use" in call(
        qread.main, capsys, "--root", root, "-i").out


def test_a_message_leaving_mid_read_is_skipped(root):
    q = queue_in(root)
    gone = enqueue(q, "s@x", ["a@remote.test"], b"m\n")
    kept = enqueue(q, "s@x", ["b@remote.test"], b"n\n")
    reader = QueueReader(QueueDir("queue1", 1, q.store.path))
    ids = reader.ids()
    load = reader.store.load

    def delivered_meanwhile(msg_id):
        if msg_id == gone:                  # the server finishes it as we read it
            q.store.apply([("remove", gone, b"")])
        return load(msg_id)

    reader.store.load = delivered_meanwhile
    assert [m.id for m in reader.messages(ids)] == [kept]

    def removed_after_load(msg_id):         # envelope read, then the message left
        found = load(msg_id)
        q.store.apply([("remove", msg_id, b"")])
        return found

    reader.store.load = removed_after_load
    assert reader.read(kept) is None


def test_damaged_messages_are_listed_not_fatal(root, capsys):
    q = queue_in(root)
    bad_info = enqueue(q, "s@x", ["a@remote.test"], b"m\n")
    bad_state = enqueue(q, "s@x", ["b@remote.test"], b"m\n")
    unreadable = enqueue(q, "s@x", ["c@remote.test"], b"m\n")
    good = enqueue(q, "s@x", ["d@remote.test"], b"m\n")
    q.close()
    mess = q.store.mess_path(bad_info)
    os.truncate(mess, os.path.getsize(mess) - 3)             # trailer cut
    with open(os.path.join(q.store.state, bad_state), "wb") as f:
        f.write(encode_state({"i": 7, "st": "done"}))        # a recipient it has not
    os.unlink(q.store.mess_path(unreadable))
    os.mkdir(q.store.mess_path(unreadable))                  # cannot be read as a file
    with open(os.path.join(q.store.corrupt, "0123.info"), "wb") as f:
        f.write(b"moved aside by recovery")
    r = call(qread.main, capsys, "--root", root)
    assert r.status == 0 and "Traceback" not in r.err
    assert f"queue1/#{bad_info}  damaged: no queue trailer at the end of the message file" \
        in r.out
    assert f"queue1/#{bad_state}  damaged: state line for unknown recipient 7" in r.out
    assert f"queue1/#{unreadable}  damaged: unreadable: Is a directory" in r.out
    assert f"queue1/#{good}  2  <s@x>" in r.out
    counts = call(qread.main, capsys, "--root", root, "-c").out
    assert "queue1: messages in queue: 1" in counts
    assert "queue1: damaged messages: 4" in counts


def test_an_unreadable_queue_is_reported_and_the_others_listed(root, capsys):
    q1 = queue_in(root, 1)
    q1.close()
    q2 = queue_in(root, 2)
    msg = enqueue(q2, "s@x", ["a@remote.test"], b"m\n")
    q2.close()
    os.rmdir(q1.store.mess)
    with open(q1.store.mess, "w") as f:       # not a directory: cannot be listed
        f.write("x")
    for argv in ([], ["-c"]):
        r = call(qread.main, capsys, "--root", root, *argv)
        assert r.status == 1
        assert one_line(r.err).startswith(f"qmail-qread: {q1.store.path}: cannot read the "
                                          "queue:")
    assert msg in call(qread.main, capsys, "--root", root).out


def test_queue_base_and_range_from_control_and_environment(root, tmp_path, capsys,
                                                           monkeypatch):
    base = str(tmp_path / "elsewhere")
    ids = {}
    for n in (1, 2, 5):
        q = make_queue(os.path.join(base, f"queue{n}"))
        ids[n] = result_of(q.enqueue(Envelope.simple("s@x", "a@remote.test"), b"m\n"))
        q.close()
    os.makedirs(os.path.join(base, "queue7x"))            # not a queue name
    with open(os.path.join(root, "control", "queue_base"), "w") as f:
        f.write(base + "\n")
    out = call(qread.main, capsys, "--root", root).out
    assert all(f"queue{n}/#{ids[n]}" in out for n in (1, 2, 5))   # every queueN found
    monkeypatch.setenv("QUEUE_COUNT", "2")
    out = call(qread.main, capsys, "--root", root).out           # queue1, queue2
    assert f"#{ids[1]}" in out and f"#{ids[2]}" in out and f"#{ids[5]}" not in out
    monkeypatch.setenv("QUEUE_START", "2")
    out = call(qread.main, capsys, "--root", root).out           # queue2, queue3
    assert f"#{ids[2]}" in out and f"#{ids[1]}" not in out
    monkeypatch.delenv("QUEUE_START")
    monkeypatch.delenv("QUEUE_COUNT")
    os.unlink(os.path.join(root, "control", "queue_base"))
    monkeypatch.setenv("QUEUE_BASE", base)
    assert f"#{ids[5]}" in call(qread.main, capsys, "--root", root).out
    monkeypatch.setenv("INDIMAIL_ROOT", root)                    # --root's default
    assert f"#{ids[5]}" in call(qread.main, capsys).out


def test_bad_input_gives_one_line_and_a_status(root, tmp_path, capsys):
    r = call(qread.main, capsys, "--root", str(tmp_path / "missing"))
    assert r.status == 1 and "no control directory" in one_line(r.err)
    r = call(qread.main, capsys, "--root", root, "-z")
    assert r.status == 100 and one_line(r.err).startswith("qmail-qread: option -z")
    r = call(qread.main, capsys, "--root", root, "extra")
    assert r.status == 100 and "unexpected argument" in one_line(r.err)
    r = call(qread.main, capsys, "--root", root)                  # queue/ has no queueN
    assert r.status == 1 and "no queueN directories" in one_line(r.err)
    os.rmdir(os.path.join(root, "queue"))
    r = call(qstat.main, capsys, "--root", root)
    assert r.status == 1 and "no queue directory here" in one_line(r.err)


def test_help_and_console_script_entry(root):
    q = queue_in(root)
    msg = enqueue(q, "s@x", ["a@remote.test"], b"m\n")
    q.close()
    r = run("qread", "--root", root)
    assert r.status == 0 and f"queue1/#{msg}" in r.out
    r = run("qstat", "--help")
    assert r.status == 0 and "usage: qmail-qstat" in r.out and "exit status" in r.out
    r = run("qread", "--help")
    assert "Safe while the server runs" in r.out


def test_dates_are_the_arrival(root, capsys):
    q = queue_in(root)
    q.clock.advance(86400 + 61)
    enqueue(q, "s@x", ["a@remote.test"], b"m\n")
    q.close()
    assert "15 Nov 2023 22:14:21 GMT  queue1/#" in call(qread.main, capsys, "--root", root).out
