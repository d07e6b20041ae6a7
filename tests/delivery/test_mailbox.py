"""Maildir delivery from the agent's side: a complete Maildir is not re-checked every
time, and one that lost a directory is repaired as before."""

from __future__ import annotations

import os
import shutil

import pytest

from indimail_tw.delivery import mailbox
from indimail_tw.delivery.mailbox import QuotaPolicy, deliver_to_maildir
from indimail_tw.fsutil import make_maildir

HEADER = b"Delivered-To: example.com-alice@example.com\n"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(mailbox, "_complete", set())
    maildir = str(tmp_path / "alice" / "Maildir")
    make_maildir(maildir)
    message = tmp_path / "msg"
    message.write_bytes(b"Subject: x\n\nhello\n")
    prepared = []
    real = mailbox.prepare

    def prepare(root, folder=None):
        prepared.append((root, folder))
        return real(root, folder)

    monkeypatch.setattr(mailbox, "prepare", prepare)
    return maildir, str(message), prepared


def deliver(maildir, message, **kw):
    return deliver_to_maildir(maildir, message, HEADER, quota=None, label="alice@example.com",
                              policy=QuotaPolicy(), **kw)


def new(maildir):
    return os.listdir(os.path.join(maildir, "new"))


def test_a_complete_maildir_is_prepared_once(setup):
    maildir, message, prepared = setup
    for _ in range(3):
        assert deliver(maildir, message).result.is_ok
    assert prepared == [(maildir, None)] and len(new(maildir)) == 3
    assert deliver(maildir, message, folder="Lists").result.is_ok     # a folder: its own
    assert prepared[1:] == [(maildir, "Lists")]
    assert deliver(maildir, message, message_size=18).result.is_ok


@pytest.mark.parametrize("lost", ["new", "tmp", ""])
def test_a_maildir_that_lost_a_directory_is_repaired_at_once(setup, lost):
    maildir, message, prepared = setup
    assert deliver(maildir, message).result.is_ok
    shutil.rmtree(os.path.join(maildir, lost) if lost else maildir)
    outcome = deliver(maildir, message)
    assert outcome.result.is_ok, outcome
    assert prepared == [(maildir, None)] * 2 and len(new(maildir)) == (2 if lost == "tmp" else 1)
    assert sorted(os.listdir(maildir)) == ["cur", "new", "tmp"]


def test_a_failure_that_prepare_cannot_mend_is_temporary(setup):
    maildir, message, prepared = setup
    assert deliver(maildir, message).result.is_ok
    os.chmod(maildir, 0o1700)                      # sticky: deliveries refused
    outcome = deliver(maildir, message)
    assert outcome.result.is_temporary and "sticky" in outcome.result.text
    assert len(prepared) == 2 and mailbox._complete == set()
