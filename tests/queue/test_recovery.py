"""Recovery at startup: leftovers cleaned, damage moved aside, states resumed."""

from __future__ import annotations

import os

import pytest

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.errors import MailError
from indimail_tw.queue import DONE, FAILED, PENDING, Envelope
from indimail_tw.queue import records
from indimail_tw.queue.records import encode_state
from indimail_tw.queue.store import QueueLocked
from indimail_tw.queue.queue import REMOVAL_SYNC
from tests.queue.helpers import Agent, Bounces, files, make_queue, result_of, write_format1

ENV = Envelope.simple("alice@example.com", "a@local.test", "b@local.test", "c@local.test")


def crash(queue):
    """What a killed process leaves: files as they are, the lock released."""
    queue.close()


def test_uncommitted_files_are_removed(tmp_path, logs):
    path = str(tmp_path / "queue1")
    q = make_queue(path, spill_limit=4)
    w = q.writer(ENV)
    w.write(b"partial message")                       # spilled into tmp/, never committed
    assert len(files(q, "tmp")) == 1
    kept = result_of(q.enqueue(Envelope.simple("x@y", "r@remote.test"), b"kept\n"))
    for sub, name in (("tmp", "1234"), ("state", "5678")):
        with open(os.path.join(path, sub, name), "wb") as f:
            f.write(b"junk")
    crash(q)
    q2 = make_queue(path)
    assert files(q2, "tmp") == [] and files(q2, "state") == []
    assert files(q2, "mess") == [kept] and files(q2, "info") == []
    assert files(q2, "corrupt") == []
    assert list(q2.scheduler.messages) == [kept]
    assert any("recovery removed 3 uncommitted files" in line for line in logs.lines())


def test_a_committed_message_is_one_file_and_is_recovered(tmp_path):
    path = str(tmp_path / "queue1")
    q = make_queue(path)
    data = b"Subject: one file\n\nbody\n"
    msg_id = result_of(q.enqueue(ENV, data))
    assert files(q, "mess") == [msg_id] and files(q, "info") == files(q, "tmp") == []
    with open(q.store.mess_path(msg_id), "rb") as f:
        whole = f.read()
    assert whole.startswith(data)
    record = whole[len(data):-records.TRAILER_SIZE]
    assert whole[-records.TRAILER_SIZE:] == records.encode_trailer(len(record))
    assert records.decode_envelope(record)[1] == len(data)
    crash(q)
    agent = Agent(hold=True)
    q2 = make_queue(path, local=agent)
    (message,) = q2.scheduler.messages.values()
    assert message.message.id == msg_id and message.message.size == len(data)
    assert message.message.envelope.recipients == ENV.recipients
    assert agent.addresses() == ["a@local.test", "b@local.test", "c@local.test"]
    with message.message.open() as f:
        assert f.read() == data


def _damage(path: str, how: str) -> None:
    with open(path, "rb") as f:
        whole = f.read()
    if how == "cut-trailer":
        whole = whole[:-3]
    elif how == "garbage-trailer":
        whole = whole[:-records.TRAILER_SIZE] + b"\x00" * records.TRAILER_SIZE
    elif how == "bad-record":                        # one byte of the envelope changed
        at = len(whole) - records.TRAILER_SIZE - 20
        whole = whole[:at] + bytes([whole[at] ^ 1]) + whole[at + 1:]
    elif how == "short-data":                        # a byte of the message missing
        whole = whole[1:]
    elif how == "long-trailer":                      # names a record longer than the file
        whole = whole[:-records.TRAILER_SIZE] + records.encode_trailer(len(whole) + 5)
    elif how == "empty":
        whole = b""
    elif how == "junk":
        whole = b"junk"
    with open(path, "wb") as f:
        f.write(whole)


@pytest.mark.parametrize("damage", ["cut-trailer", "garbage-trailer", "bad-record",
                                    "short-data", "long-trailer", "empty", "junk"])
def test_damaged_message_files_are_moved_aside_not_deleted(tmp_path, logs, damage):
    path = str(tmp_path / "queue1")
    q = make_queue(path)
    bad = result_of(q.enqueue(Envelope.simple("x@y", "r@remote.test"), b"bad message\n"))
    good = result_of(q.enqueue(Envelope.simple("x@y", "r@remote.test"), b"good message\n"))
    q.journal.record(bad, q.scheduler.messages[bad].states[0])
    _damage(q.store.mess_path(bad), damage)
    with open(q.store.mess_path(bad), "rb") as f:
        damaged = f.read()
    crash(q)
    q2 = make_queue(path)
    assert list(q2.scheduler.messages) == [good]
    assert files(q2, "corrupt") == [f"{bad}.mess", f"{bad}.state"]
    with open(os.path.join(q2.store.corrupt, f"{bad}.mess"), "rb") as f:
        assert f.read() == damaged                     # kept as it was
    assert files(q2, "mess") == [good]
    assert any(f"msg {bad} is damaged" in line and "corrupt" in line
               for line in logs.lines())


@pytest.mark.parametrize("damage", ["truncate-info", "garbage-info", "no-data", "short-data"])
def test_damaged_format1_messages_are_moved_aside_and_logged(tmp_path, logs, damage):
    path = str(tmp_path / "queue1")
    bad = write_format1(path, Envelope.simple("x@y", "r@remote.test"), b"bad message\n")
    with open(os.path.join(path, "state", bad), "wb") as f:
        f.write(encode_state({"i": 0, "st": "pending", "a": 1}))
    q = make_queue(path)
    good = result_of(q.enqueue(Envelope.simple("x@y", "r@remote.test"), b"good message\n"))
    info = os.path.join(q.store.info, bad)
    if damage == "truncate-info":
        os.truncate(info, os.path.getsize(info) - 3)
    elif damage == "garbage-info":
        with open(info, "wb") as f:
            f.write(b"\x00" * 50)
    elif damage == "no-data":
        os.unlink(q.store.mess_path(bad))
    else:
        os.truncate(q.store.mess_path(bad), 4)
    crash(q)
    q2 = make_queue(path)
    assert list(q2.scheduler.messages) == [good]
    moved = files(q2, "corrupt")
    assert f"{bad}.info" in moved
    assert (f"{bad}.mess" in moved) == (damage != "no-data")
    assert files(q2, "info") == [] and files(q2, "mess") == [good]
    assert f"{bad}.state" in moved
    assert any(f"msg {bad} is damaged" in line and "corrupt" in line
               for line in logs.lines())


def test_recipient_states_are_resumed(tmp_path):
    path = str(tmp_path / "queue1")
    q = make_queue(path)                               # no local agent: nothing moves
    msg_id = result_of(q.enqueue(ENV, b"hello\n"))
    a, b, c = q.scheduler.messages[msg_id].states
    birth = q.clock.seconds()
    a.status = DONE
    b.status, b.result = FAILED, DeliveryResult.permanent("no such user", "5.1.1")
    c.attempts, c.next_at, c.error = 2, birth + 400, "mailbox busy"
    for s in (a, b, c):
        q.journal.record(msg_id, s)
    crash(q)
    agent, bounces = Agent(), Bounces()
    q2 = make_queue(path, clock=q.clock, local=agent, bounces=bounces)
    states = q2.scheduler.messages[msg_id].states
    assert [s.status for s in states] == [DONE, "bounced", PENDING]
    assert states[2].attempts == 2 and states[2].error == "mailbox busy"
    assert bounces.calls == [(msg_id, [("b@local.test", b.result)], False)]
    assert agent.calls == []                           # c waits for its retry time
    q2.clock.advance(400)
    assert agent.addresses() == ["c@local.test"]
    assert msg_id not in q2.scheduler.messages          # all done: removed
    assert files(q2, "mess") != [] and msg_id not in files(q2, "mess")   # the bounce


def test_a_delivery_in_progress_at_a_crash_is_done_again(tmp_path):
    path = str(tmp_path / "queue1")
    agent = Agent(hold=True)
    q = make_queue(path, local=agent)
    msg_id = result_of(q.enqueue(ENV, b"hello\n"))
    assert agent.addresses() == ["a@local.test", "b@local.test", "c@local.test"]
    agent.held[0][2].callback(DeliveryResult.ok())     # a delivered before the crash
    crash(q)                                           # b and c were in progress
    agent2 = Agent()
    q2 = make_queue(path, clock=q.clock, local=agent2)
    assert agent2.addresses() == ["b@local.test", "c@local.test"]   # at-least-once
    assert msg_id not in q2.scheduler.messages
    assert msg_id not in files(q2, "mess")             # the message is gone at once
    q2.clock.advance(REMOVAL_SYNC)                     # its state log after an fsync
    assert msg_id not in files(q2, "state")


def test_a_finished_message_left_behind_by_a_crash_is_removed(tmp_path):
    path = str(tmp_path / "queue1")
    q = make_queue(path)
    msg_id = result_of(q.enqueue(Envelope.simple("x@y", "a@local.test"), b"hi\n"))
    with open(os.path.join(q.store.state, msg_id), "ab") as f:
        f.write(encode_state({"i": 0, "st": "done", "a": 1}))
    crash(q)
    agent = Agent()
    q2 = make_queue(path, local=agent)
    assert agent.calls == [] and files(q2, "mess") == []
    q2.clock.advance(REMOVAL_SYNC)
    assert files(q2, "mess") == [] and files(q2, "state") == []


def test_a_cut_state_line_means_the_previous_state(tmp_path):
    path = str(tmp_path / "queue1")
    q = make_queue(path)
    msg_id = result_of(q.enqueue(Envelope.simple("x@y", "a@local.test"), b"hi\n"))
    with open(os.path.join(q.store.state, msg_id), "ab") as f:
        f.write(encode_state({"i": 0, "st": "done", "a": 1})[:-5])
    crash(q)
    agent = Agent()
    make_queue(path, local=agent)
    assert agent.addresses() == ["a@local.test"]


def test_a_queue_has_one_owner(tmp_path):
    path = str(tmp_path / "queue1")
    make_queue(path)
    second = make_queue(path, start=False)
    d = second.start()
    with pytest.raises(QueueLocked):
        result_of(d)
    with pytest.raises(MailError) as e:
        result_of(second.enqueue(ENV, b"x"))
    assert e.value.code == 451


def test_crash_while_moving_aside_loses_nothing(tmp_path, monkeypatch):
    """A crash between moving a damaged format-1 message's data and its envelope
    leaves the envelope without data; the next recovery moves that aside too."""
    from indimail_tw import fsutil

    path = str(tmp_path / "queue1")
    bad = write_format1(path, Envelope.simple("x@y", "r@remote.test"), b"bad message\n")
    q = make_queue(path)
    real_rename = fsutil.rename
    calls = []

    def rename_then_die(src, dst):
        calls.append(src)
        if len(calls) > 1:
            raise OSError("killed mid-move")
        real_rename(src, dst)

    monkeypatch.setattr(fsutil, "rename", rename_then_die)
    with pytest.raises(OSError):
        q.store.move_aside(bad)
    monkeypatch.setattr(fsutil, "rename", real_rename)
    crash(q)
    assert files(q, "corrupt") == [f"{bad}.mess"]      # data already safe in corrupt/
    q2 = make_queue(path)
    moved = files(q2, "corrupt")
    assert f"{bad}.mess" in moved and f"{bad}.info" in moved
    assert files(q2, "info") == [] and files(q2, "mess") == []


def test_an_old_format1_message_is_recovered_delivered_and_removed(tmp_path):
    path = str(tmp_path / "queue1")
    data = b"Subject: old\n\nwritten by an older version\n"
    old = write_format1(path, Envelope.simple("x@y", "a@local.test", "b@local.test"), data)
    with open(os.path.join(path, "state", old), "wb") as f:
        f.write(encode_state({"i": 0, "st": "done", "a": 1}))
    seen = []

    def answer(message, recipient):
        with message.open() as f:
            seen.append(f.read())
        return DeliveryResult.ok()

    agent = Agent(answer)
    q = make_queue(path, local=agent)
    assert agent.addresses() == ["b@local.test"]            # a was done already
    assert seen == [data]
    assert old not in q.scheduler.messages
    assert files(q, "info") == []                            # the envelope goes first,
    assert files(q, "mess") == [old]                         # the data after info/ fsync
    q.clock.advance(REMOVAL_SYNC)
    assert files(q, "mess") == [] and files(q, "state") == [] and files(q, "corrupt") == []
    # and new messages next to it are format 2
    new = result_of(q.enqueue(Envelope.simple("x@y", "r@remote.test"), b"new\n"))
    assert files(q, "mess") == [new] and files(q, "info") == []


def test_a_format1_message_can_be_removed_with_remove(tmp_path):
    path = str(tmp_path / "queue1")
    old = write_format1(path, Envelope.simple("x@y", "r@remote.test"), b"old\n")
    q = make_queue(path)                                     # no remote agent: it waits
    assert list(q.scheduler.messages) == [old]
    assert q.store.apply([("remove", old, b"")]) == [None]
    assert files(q, "info") == [] and files(q, "mess") == []
