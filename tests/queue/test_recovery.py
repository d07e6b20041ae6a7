"""Recovery at startup: leftovers cleaned, damage moved aside, states resumed."""

from __future__ import annotations

import os

import pytest

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.errors import MailError
from indimail_tw.queue import DONE, FAILED, PENDING, Envelope
from indimail_tw.queue.records import encode_state
from indimail_tw.queue.store import QueueLocked
from indimail_tw.queue.queue import REMOVAL_SYNC
from tests.queue.helpers import Agent, Bounces, files, make_queue, result_of

ENV = Envelope.simple("alice@example.com", "a@local.test", "b@local.test", "c@local.test")


def crash(queue):
    """What a killed process leaves: files as they are, the lock released."""
    queue.close()


def test_uncommitted_files_are_removed(tmp_path, logs):
    path = str(tmp_path / "queue1")
    q = make_queue(path, spill_limit=4)
    w = q.writer(ENV)
    w.write(b"partial message")                       # spilled into mess/, never committed
    kept = result_of(q.enqueue(Envelope.simple("x@y", "r@remote.test"), b"kept\n"))
    for sub, name in (("tmp", "1234"), ("state", "5678"), ("mess", "9abc")):
        with open(os.path.join(path, sub, name), "wb") as f:
            f.write(b"junk")
    crash(q)
    q2 = make_queue(path)
    assert files(q2, "tmp") == [] and files(q2, "state") == []
    assert files(q2, "mess") == [kept] and files(q2, "info") == [kept]
    assert list(q2.scheduler.messages) == [kept]
    assert any("recovery removed 4 uncommitted files" in line for line in logs.lines())


@pytest.mark.parametrize("damage", ["truncate-info", "garbage-info", "no-data", "short-data"])
def test_damaged_messages_are_moved_aside_and_logged(tmp_path, logs, damage):
    path = str(tmp_path / "queue1")
    q = make_queue(path)
    bad = result_of(q.enqueue(Envelope.simple("x@y", "r@remote.test"), b"bad message\n"))
    good = result_of(q.enqueue(Envelope.simple("x@y", "r@remote.test"), b"good message\n"))
    q.journal.record(bad, q.scheduler.messages[bad].states[0])
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
    assert files(q2, "info") != [] and msg_id not in files(q2, "info")


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
    assert msg_id not in files(q2, "info")
    q2.clock.advance(REMOVAL_SYNC)                     # its data goes after an fsync
    assert msg_id not in files(q2, "mess")


def test_a_finished_message_left_behind_by_a_crash_is_removed(tmp_path):
    path = str(tmp_path / "queue1")
    q = make_queue(path)
    msg_id = result_of(q.enqueue(Envelope.simple("x@y", "a@local.test"), b"hi\n"))
    with open(os.path.join(q.store.state, msg_id), "ab") as f:
        f.write(encode_state({"i": 0, "st": "done", "a": 1}))
    crash(q)
    agent = Agent()
    q2 = make_queue(path, local=agent)
    assert agent.calls == [] and files(q2, "info") == []
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
    """A crash between moving a damaged message's data and its envelope leaves
    the envelope without data; the next recovery moves that aside too."""
    from indimail_tw import fsutil

    path = str(tmp_path / "queue1")
    q = make_queue(path)
    bad = result_of(q.enqueue(Envelope.simple("x@y", "r@remote.test"), b"bad message\n"))
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
