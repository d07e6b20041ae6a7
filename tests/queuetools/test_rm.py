"""qmail-rm on real queues; the effects checked by re-opening them with recovery."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest
from twisted.internet.task import Clock

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.datafile import read_data
from indimail_tw.queue import Envelope
from indimail_tw.queue.records import decode_envelope
from indimail_tw.queue.store import read_message_file
from indimail_tw.queuetools import rm
from tests.queue.helpers import T0, Agent, Bounces, files, result_of
from tests.queuetools.helpers import call, enqueue, one_line, queue_in, run, snapshot

SPAM = b"Subject: Cheap VIAGRA\nFrom: spammer@example.com\n\nbuy now\n"
HAM = b"Subject: lunch\nFrom: friend@example.com\n\nat noon?\n"


def temporary(message, recipient):
    return DeliveryResult.temporary("mailbox busy", "4.2.1")


@pytest.fixture
def two(root):
    """queue1 with a spam and a ham message (one delivery attempt logged), closed."""
    q = queue_in(root)
    spam = enqueue(q, "spammer@example.com", ["a@remote.test", "b@local.test"], SPAM)
    ham = enqueue(q, "friend@example.com", ["c@remote.test"], HAM)
    state = q.scheduler.messages[spam].states[1]
    state.status = "done"
    q.journal.record(spam, state)
    q.close()
    return q, spam, ham


def reopen(root, n=1, **kw):
    """Start the queue as a server would: recovery, then scheduling."""
    q = queue_in(root, n, start=False, **kw)
    report = result_of(q.start())
    return q, report


def test_search_only_lists(root, two, capsys):
    q, spam, ham = two
    before = snapshot(root)
    r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA")
    assert r.status == 0 and r.err == ""
    assert r.out.splitlines() == [
        f"14 Nov 2023 22:13:20 GMT  queue1/#{spam}  {len(SPAM)}  <spammer@example.com>",
        "1 message matched"]
    assert snapshot(root) == before
    assert "0 messages matched" in call(rm.main, capsys, "--root", root, "-p", "viagra").out
    assert f"#{spam}" in call(rm.main, capsys, "--root", root, "-i", "-p", "viagra").out
    r = call(rm.main, capsys, "--root", root, "-e", "-p", r"^Subject: (cheap|lunch)", "-i")
    assert "2 messages matched" in r.out
    assert "0 messages" in call(rm.main, capsys, "--root", root, "-p", "buy", "-n", "20").out
    r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA", "-v")
    assert "  done\tlocal\tb@local.test" in r.out and "\tremote\ta@remote.test" in r.out


def test_search_works_while_the_server_runs(root, capsys):
    q = queue_in(root)
    spam = enqueue(q, "s@x", ["a@remote.test"], SPAM)
    r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA")
    assert r.status == 0 and f"#{spam}" in r.out
    q.close()


def test_yank_moves_the_files_and_they_can_be_put_back(root, two, capsys):
    q, spam, ham = two
    r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA", "-r")
    trash = os.path.join(root, "queue", "trash", "queue1")
    assert r.status == 0, r.err
    assert f"  yanked: {trash}" in r.out
    assert r.out.splitlines()[-1] == (
        f"1 message matched; 1 yanked to {os.path.join(root, 'queue', 'trash')}")
    assert sorted(os.listdir(trash)) == [f"{spam}.info", f"{spam}.mess", f"{spam}.state"]
    with open(os.path.join(trash, f"{spam}.mess"), "rb") as f:
        assert f.read() == SPAM

    q2, report = reopen(root)
    assert [m.id for m in report.messages] == [ham]
    assert report.removed == 0 and report.corrupt == []
    assert files(q2, "mess") == [ham] and files(q2, "state") == []
    q2.close()

    # the documented restore: data and states first, the envelope (the commit) last
    for suffix, sub in (("mess", "mess"), ("state", "state"), ("info", "info")):
        shutil.move(os.path.join(trash, f"{spam}.{suffix}"),
                    os.path.join(q.store.path, sub, spam))
    q3, report = reopen(root)
    restored = {m.id: m for m in report.messages}
    assert sorted(restored) == sorted([spam, ham])
    assert [s.status for s in restored[spam].states] == ["pending", "done"]
    q3.close()


def test_yank_to_a_chosen_dir_with_verbose_file_list(root, two, tmp_path, capsys):
    q, spam, ham = two
    yank = str(tmp_path / "yanked")
    r = call(rm.main, capsys, "--root", root, "-p", "lunch", "-r", "-y", yank, "-v")
    assert r.status == 0
    here = os.path.join(yank, "queue1")
    assert f"  yanked: {here}/{ham}.mess {here}/{ham}.info" in r.out   # no state log yet
    q2, report = reopen(root)
    assert [m.id for m in report.messages] == [spam]
    q2.close()


def test_delete_removes_the_message(root, two, capsys):
    q, spam, ham = two
    r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA", "-d")
    assert r.status == 0 and "  deleted" in r.out and "1 deleted" in r.out
    q2, report = reopen(root)
    assert [m.id for m in report.messages] == [ham] and report.removed == 0
    for sub in ("info", "mess", "state"):
        assert spam not in files(q2, sub)
    assert not os.path.exists(os.path.join(root, "queue", "trash"))
    q2.close()


def test_backdate_expires_the_message_on_the_next_pass(root, capsys):
    agent, bounces = Agent(temporary), Bounces()
    q = queue_in(root, remote=agent)
    agent.clock = q.clock
    spam = enqueue(q, "spammer@example.com", ["a@remote.test"], SPAM)
    ham = enqueue(q, "friend@example.com", ["c@remote.test"], HAM)
    assert len(agent.calls) == 2                     # first attempts failed: retry at +400
    before, _ = q.store.read_envelope(spam)
    q.close()

    r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA", "-X", "0")   # queuelifetime
    assert r.status == 0, r.err
    assert "  back-dated: arrival now 7 Nov 2023 22:13:20 GMT" in r.out
    assert "1 back-dated by 604800 s" in r.out
    after, size, _ = read_message_file(q.store.mess_path(spam))   # END + crc intact
    assert size == len(SPAM) and after.received_at == T0 - 604800
    assert read_data(q.store.mess_path(spam), size) == SPAM
    assert os.listdir(q.store.info) == []
    assert dataclasses.replace(after, received_at=before.received_at) == before
    assert os.listdir(q.store.tmp) == []

    clock = Clock()
    clock.advance(T0 + 10)                           # well before the planned retry
    agent2 = Agent(temporary, clock)
    q2, report = reopen(root, clock=clock, remote=agent2, bounces=bounces)
    # the spam's last attempt, then its bounce to the sender; the ham is not tried
    assert [address for _, _, address in agent2.calls] == ["a@remote.test",
                                                            "spammer@example.com"]
    ((bounced, failures, expired),) = bounces.calls
    assert bounced == spam and expired is True
    assert spam not in q2.scheduler.messages and spam not in files(q2, "mess")
    assert ham in q2.scheduler.messages              # the other one waits for +400
    q2.close()


def test_without_backdate_nothing_expires(root):
    agent, bounces = Agent(temporary), Bounces()
    q = queue_in(root, remote=agent)
    spam = enqueue(q, "s@x", ["a@remote.test"], SPAM)
    q.close()
    clock = Clock()
    clock.advance(T0 + 10)
    agent2 = Agent(temporary, clock)
    q2, _ = reopen(root, clock=clock, remote=agent2, bounces=bounces)
    assert agent2.calls == [] and bounces.calls == []
    assert spam in q2.scheduler.messages
    q2.close()


def test_changes_are_refused_while_a_server_holds_a_queue(root, capsys):
    q1 = queue_in(root, 1)
    spam = enqueue(q1, "s@x", ["a@remote.test"], SPAM)
    q1.close()
    q2 = queue_in(root, 2)                           # still open: "the server runs"
    enqueue(q2, "s@x", ["a@remote.test"], SPAM)
    before = snapshot(root)
    for action in (["-r"], ["-d"], ["-X", "100"]):
        r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA", *action)
        assert r.status == 1 and r.out == ""
        assert one_line(r.err) == ("qmail-rm: queue2 is in use by a running server; "
                                   "stop it first; nothing was changed")
    assert snapshot(root) == before                  # queue1 was free, yet untouched
    r = run("rm", "--root", root, "-p", "VIAGRA", "-d")   # from another process too
    assert r.status == 1 and "queue2 is in use by a running server" in one_line(r.err)
    q2.close()
    r = run("rm", "--root", root, "-p", "VIAGRA", "-d")
    assert r.status == 0 and "2 messages matched; 2 deleted" in r.out
    assert f"#{spam}" in r.out


def test_the_tool_holds_the_lock_while_it_works(root, two, monkeypatch, capsys):
    q, spam, ham = two
    seen = []

    def delete(store, msg_id):
        other = queue_in(root, start=False)
        with pytest.raises(OSError, match="in use by another process"):
            other.store.open()                       # a server starting now must fail
        seen.append(msg_id)

    monkeypatch.setattr(rm.actions, "delete", delete)
    assert call(rm.main, capsys, "--root", root, "-p", "VIAGRA", "-d").status == 0
    assert seen == [spam]


def test_a_failed_action_is_reported_and_the_rest_done(root, two, capsys):
    q, spam, ham = two
    trash = os.path.join(root, "queue", "trash", "queue1")
    os.makedirs(trash)
    with open(os.path.join(trash, f"{spam}.mess"), "wb") as f:
        f.write(b"an older yank of something else")
    r = call(rm.main, capsys, "--root", root, "-e", "-p", "VIAGRA|lunch", "-r")
    assert r.status == 1
    assert one_line(r.err).startswith(f"qmail-rm: queue1/#{spam}: cannot yank:")
    assert "2 messages matched; 1 yanked" in r.out
    q2, report = reopen(root)
    assert [m.id for m in report.messages] == [spam]   # still queued, intact
    q2.close()


def test_damaged_messages_are_skipped_with_a_warning(root, two, capsys):
    q, spam, ham = two
    mess = q.store.mess_path(ham)
    os.truncate(mess, os.path.getsize(mess) - 2)
    r = call(rm.main, capsys, "--root", root, "-p", "a", "-d")
    assert r.status == 0
    assert one_line(r.err) == (f"qmail-rm: queue1/#{ham}: damaged (no queue trailer at the "
                               "end of the message file); not searched")
    assert "1 message matched; 1 deleted" in r.out


@pytest.mark.parametrize(("argv", "message"), [
    ([], "-p pattern is required"),
    (["-p", ""], "the pattern is empty"),
    (["-e", "-p", "(unclosed"], "bad regular expression '(unclosed'"),
    (["-p", "x", "-r", "-d"], "-r, -d and -X exclude each other"),
    (["-p", "x", "-d", "-X", "5"], "-r, -d and -X exclude each other"),
    (["-p", "x", "-X", "soon"], "-X needs a non-negative integer"),
    (["-p", "x", "-n", "-1"], "-n needs a non-negative integer"),
    (["-p", "x", "-k"], "option -k not recognized"),
])
def test_bad_usage(root, two, capsys, argv, message):
    r = call(rm.main, capsys, "--root", root, *argv)
    assert r.status == 100 and message in one_line(r.err)


def test_missing_root_and_queue_base(tmp_path, root, capsys):
    r = call(rm.main, capsys, "--root", str(tmp_path / "nowhere"), "-p", "x")
    assert r.status == 1 and "no control directory" in one_line(r.err)
    r = call(rm.main, capsys, "--root", root, "-p", "x", "-q", str(tmp_path / "nobase"))
    assert r.status == 1 and "no queue directory here" in one_line(r.err)
    r = call(rm.main, capsys, "--root", root, "-p", "x")
    assert r.status == 1 and "no queueN directories" in one_line(r.err)


def test_the_search_never_sees_the_envelope(root, capsys):
    q = queue_in(root)
    enqueue(q, "only-in-the-envelope@example.com", ["a@remote.test"], HAM)
    q.close()
    r = call(rm.main, capsys, "--root", root, "-p", "only-in-the-envelope")
    assert r.status == 0 and "0 messages matched" in r.out
    r = call(rm.main, capsys, "--root", root, "-p", "a@remote.test")   # a recipient
    assert "0 messages matched" in r.out
    assert "1 message matched" in call(rm.main, capsys, "--root", root, "-p", "noon").out


def test_yank_and_backdate_of_an_old_format1_message(root, capsys):
    from tests.queue.helpers import write_format1

    q = queue_in(root)
    q.close()
    old = write_format1(q.store.path, Envelope.simple("s@x", "a@remote.test"), SPAM)
    r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA", "-X", "100")
    assert r.status == 0 and "1 back-dated by 100 s" in r.out, r.err
    envelope, size = q.store.read_envelope(old)
    assert size == len(SPAM) and envelope.received_at == T0 - 100
    with open(q.store.mess_path(old), "rb") as f:
        assert f.read() == SPAM                      # the data file is untouched
    r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA", "-r")
    assert r.status == 0, r.err
    trash = os.path.join(root, "queue", "trash", "queue1")
    assert sorted(os.listdir(trash)) == [f"{old}.info", f"{old}.mess", f"{old}.state"]
    with open(os.path.join(trash, f"{old}.mess"), "rb") as f:
        assert f.read() == SPAM
    with open(os.path.join(trash, f"{old}.info"), "rb") as f:
        assert decode_envelope(f.read())[0].received_at == T0 - 100
    assert os.listdir(q.store.info) == os.listdir(q.store.mess) == []
    q2, report = reopen(root)
    assert report.messages == [] and report.corrupt == []
    q2.close()


def test_a_yanked_format2_message_holds_only_the_message_and_the_envelope(root, two, capsys):
    q, spam, ham = two
    envelope, size = q.store.read_envelope(spam)
    r = call(rm.main, capsys, "--root", root, "-p", "VIAGRA", "-r")
    assert r.status == 0, r.err
    trash = os.path.join(root, "queue", "trash", "queue1")
    with open(os.path.join(trash, f"{spam}.info"), "rb") as f:
        assert decode_envelope(f.read()) == (envelope, size)
    with open(os.path.join(trash, f"{spam}.mess"), "rb") as f:
        assert f.read() == SPAM
