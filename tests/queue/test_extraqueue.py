"""EXTRAQUEUE / control/extraqueue: every message entering the queue also goes there."""

from __future__ import annotations

from indimail_tw.config import Config, ControlDir
from indimail_tw.queue import Envelope
from indimail_tw.queue.store import read_message_file
from tests.queue.helpers import Agent, make_queue, result_of, settings
from tests.smtp.support import Conn, Site, ehlo, make_factory


def stored_envelope(queue, msg_id):
    return read_message_file(queue.store.mess_path(msg_id))[0]


def test_the_extra_address_is_added_to_the_stored_envelope_and_delivered(tmp_path):
    local, remote = Agent(hold=True), Agent(hold=True)
    queue = make_queue(str(tmp_path / "queue1"), local=local, remote=remote,
                       config=settings(extraqueue=("archive@local.test",)))
    msg_id = result_of(queue.enqueue(Envelope.simple("s@x.test", "bob@remote.test"),
                                     b"Subject: x\n\nhello\n"))
    envelope = stored_envelope(queue, msg_id)
    assert [r.address for r in envelope.recipients] == ["archive@local.test",
                                                        "bob@remote.test"]
    assert local.addresses() == ["archive@local.test"]
    assert remote.addresses() == ["bob@remote.test"]


def test_several_extra_addresses_and_no_duplicates(tmp_path):
    local = Agent(hold=True)
    queue = make_queue(str(tmp_path / "queue1"), local=local, remote=Agent(hold=True),
                       config=settings(extraqueue=("a@local.test", "", "B@local.test",
                                                   "a@local.test")))
    msg_id = result_of(queue.enqueue(Envelope.simple("s@x.test", "b@local.test"), b"m\n"))
    assert [r.address for r in stored_envelope(queue, msg_id).recipients] == [
        "a@local.test", "b@local.test"]
    assert sorted(local.addresses()) == ["a@local.test", "b@local.test"]


def test_without_extraqueue_the_envelope_is_unchanged(tmp_path):
    queue = make_queue(str(tmp_path / "queue1"), local=Agent(hold=True),
                       remote=Agent(hold=True))
    msg_id = result_of(queue.enqueue(Envelope.simple("s@x.test", "b@remote.test"), b"m\n"))
    assert [r.address for r in stored_envelope(queue, msg_id).recipients] == ["b@remote.test"]


def test_bounces_made_by_the_queue_get_the_extra_address_too(tmp_path):
    from indimail_tw.delivery.result import DeliveryResult

    local = Agent()
    remote = Agent(lambda m, r: DeliveryResult.permanent("no such user", "5.1.1"))
    queue = make_queue(str(tmp_path / "queue1"), local=local, remote=remote,
                       config=settings(extraqueue=("archive@local.test",)))
    result_of(queue.enqueue(Envelope.simple("alice@local.test", "bob@remote.test"), b"m\n"))
    # the original copy and the bounce's copy to archive, and the bounce to alice
    assert sorted(local.addresses()) == ["alice@local.test", "archive@local.test",
                                         "archive@local.test"]


def test_the_server_settings_read_extraqueue_and_the_environment_variable(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    (control / "extraqueue").write_text("archive@local.test\n")
    config = Config(ControlDir(str(control), {}))
    queue = make_queue(str(tmp_path / "q1"), local=Agent(hold=True), remote=Agent(hold=True),
                       config=config.current)
    msg_id = result_of(queue.enqueue(Envelope.simple("s@x.test", "b@remote.test"), b"m\n"))
    assert [r.address for r in stored_envelope(queue, msg_id).recipients] == [
        "archive@local.test", "b@remote.test"]

    for environ, expected in (({"EXTRAQUEUE": "copy@local.test"}, ["copy@local.test"]),
                              ({"EXTRAQUEUE": ""}, [])):        # empty: the file is ignored
        config = Config(ControlDir(str(control), environ))
        queue = make_queue(str(tmp_path / f"q{len(expected) + 2}"), local=Agent(hold=True),
                           remote=Agent(hold=True), config=config.current)
        msg_id = result_of(queue.enqueue(Envelope.simple("s@x.test", "b@remote.test"),
                                         b"m\n"))
        assert [r.address for r in stored_envelope(queue, msg_id).recipients] == [
            *expected, "b@remote.test"]


def test_a_message_received_by_smtp_gets_the_extra_address(tmp_path):
    site = Site()
    try:
        site.store.add_user("alice@example.com")
        local = Agent(hold=True)
        queue = make_queue(str(tmp_path / "queue1"), local=local, remote=local,
                           config=settings(extraqueue=("archive@local.test",)))
        site.queue = queue
        conn = Conn(make_factory(site))
        ehlo(conn)
        conn.send(b"MAIL FROM:<s@remote.example>\r\nRCPT TO:<alice@example.com>\r\n"
                  b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
        last = conn.lines()[-1]
        assert last.startswith("250 ")
        msg_id = last.rsplit(" ", 1)[1]
        assert [r.address for r in stored_envelope(queue, msg_id).recipients] == [
            "archive@local.test", "alice@example.com"]
        # the SMTP client was told about its own recipient only; both are delivered
        assert sorted(local.addresses()) == ["alice@example.com", "archive@local.test"]
    finally:
        site.cleanup()
