"""SMTP into the real durable queue (indimail_tw.queue) instead of the fake."""

from __future__ import annotations

import pytest
from twisted.internet import task

queue_module = pytest.importorskip("indimail_tw.queue")
helpers = pytest.importorskip("tests.queue.helpers")

from tests.smtp.support import Conn, Site, ehlo, make_factory  # noqa: E402


@pytest.fixture
def site(tmp_path):
    s = Site()
    s.store.add_user("alice@example.com")
    clock = task.Clock()
    queue = queue_module.Queue(str(tmp_path / "queue1"), clock=clock,
                               run=queue_module.SyncRunner(),
                               agents={"local": None, "remote": None},
                               router=lambda address: "local",
                               settings=helpers.settings, spill_limit=64)
    queue.start()
    s.queue = queue
    yield s
    s.cleanup()


def test_messages_reach_the_queue_durably(site):
    conn = Conn(make_factory(site))
    ehlo(conn)
    body = b"".join(b"line %d of a message longer than the spill limit\r\n" % i
                    for i in range(50))
    conn.send(b"MAIL FROM:<s@remote.example> BODY=8BITMIME\r\nRCPT TO:<alice@example.com>"
              b" NOTIFY=FAILURE\r\nDATA\r\n" + body + b".\r\n")
    lines = conn.lines()
    assert lines[-1].startswith("250 2.0.0 ok ")
    queue_id = lines[-1].rsplit(" ", 1)[1]
    message = site.queue.scheduler.messages[queue_id].message
    with message.open() as f:           # the message; the envelope follows it in the file
        data = f.read()
    assert len(data) == message.size
    assert data.startswith(b"Received: from client.example.org")
    assert data.endswith(body.replace(b"\r\n", b"\n"))
    assert message.envelope.recipients[0].notify == ("FAILURE",)
    assert message.envelope.body == "8BITMIME"
