"""The selected mailbox: SELECT/EXAMINE responses, updates from other sessions and
processes (EXISTS, RECENT, FETCH FLAGS, EXPUNGE / VANISHED), \\Recent, QRESYNC."""

from __future__ import annotations

import re

import pytest

from indimail_tw.imap4 import grammar
from indimail_tw.imap4.selected import SelectedMailbox, uid_set
from tests.imap4.test_messages_harness import FakeSession, Harness, text

MSG = b"From: a@b\nSubject: s\n\nbody\n"


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.cleanup()


def second_session(h: Harness, readonly: bool = False, enabled=()) -> SelectedMailbox:
    s = FakeSession(h.folders)
    s.enabled |= set(enabled)
    s.selected = SelectedMailbox(h.folders.open_index("INBOX"), "INBOX", readonly, s)
    return s.selected


def test_select_responses_rev1(h):
    h.deliver(MSG, flags="S")
    h.deliver(MSG)
    h.deliver(MSG)
    out = text(h.select())
    index = h.session.selected.index
    assert out == (
        "* 3 EXISTS\r\n* 3 RECENT\r\n* OK [UNSEEN 2] First unseen: 2\r\n"
        f"* OK [UIDVALIDITY {index.uidvalidity}] UIDs valid\r\n"
        "* OK [UIDNEXT 4] Predicted next UID\r\n"
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)\r\n"
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded \\*)]"
        " Flags permitted\r\n")


def test_select_responses_rev2_and_condstore(h):
    h.deliver(MSG)
    h.session.enabled |= {"IMAP4REV2", "CONDSTORE"}
    out = text(h.select())
    assert "RECENT" not in out and "UNSEEN" not in out
    assert re.search(r"\* OK \[HIGHESTMODSEQ \d+\] ", out)
    assert out.endswith('* LIST () "." INBOX\r\n')


def test_examine_has_no_permanent_flags_and_claims_nothing(h):
    h.deliver(MSG)
    out = text(h.select(readonly=True))
    assert "* 1 RECENT" in out        # shown (RFC 3501 6.3.2), not claimed
    assert "* OK [PERMANENTFLAGS ()] No permanent flags permitted" in out
    # a later read-write session still gets \Recent
    other = second_session(h)
    assert other.recent == {1}


def test_recent_goes_to_one_session_only(h):
    h.deliver(MSG)
    assert "* 1 RECENT" in text(h.select())
    other = second_session(h)
    assert other.recent == set()
    h.deliver(MSG)
    # whoever syncs first gets the new message's \Recent
    out = other.poll(True)
    assert out == [b"* 2 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert text(h.command("a CHECK")).startswith("* 2 EXISTS\r\n* 1 RECENT")
    assert text(h.command("a FETCH 1:2 FLAGS")) == (
        "* 1 FETCH (FLAGS (\\Recent))\r\n* 2 FETCH (FLAGS ())\r\na OK Fetch completed\r\n")


def test_delivery_shows_up_in_poll(h):
    h.select()
    sel = h.session.selected
    assert sel.poll(True) == []
    h.deliver(MSG)
    assert sel.changed()
    assert sel.poll(False) == [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert sel.poll(True) == []


def test_flag_changes_by_another_session(h):
    h.deliver(MSG)
    h.deliver(MSG)
    h.select()
    other = second_session(h)
    other.index.store_flags(2, frozenset({"\\Seen", "$Label1"}))
    out = text(h.session.selected.poll(False))
    assert out == (
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Label1)\r\n"
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded "
        "$Label1 \\*)] Flags permitted\r\n"
        "* 2 FETCH (FLAGS (\\Recent \\Seen $Label1))\r\n")


def test_condstore_unsolicited_fetch_has_uid_and_modseq(h):
    h.deliver(MSG)
    h.session.enabled.add("CONDSTORE")
    h.select()
    other = second_session(h)
    rec = other.index.store_flags(1, frozenset({"\\Flagged"}))
    assert h.session.selected.poll(True) == [
        b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (%d))\r\n" % rec.modseq]


def test_expunge_elsewhere_is_announced_only_when_allowed(h):
    for _ in range(4):
        h.deliver(MSG)
    h.select()
    other = second_session(h)
    other.index.expunge([2, 3])
    sel = h.session.selected
    assert sel.poll(False) == []
    assert sel.exists == 4                       # numbers stay until announced
    assert sel.changed()
    h.deliver(MSG)
    assert sel.poll(False) == [b"* 5 EXISTS\r\n", b"* 5 RECENT\r\n"]
    out = sel.poll(True)
    assert out == [b"* 2 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    assert list(sel.uids) == [1, 4, 5]
    assert sel.poll(True) == []


def test_expunge_elsewhere_with_qresync_is_vanished(h):
    for _ in range(5):
        h.deliver(MSG)
    h.session.enabled |= {"QRESYNC", "CONDSTORE"}
    h.select()
    other = second_session(h)
    other.index.expunge([2, 3, 5])
    assert h.session.selected.poll(True) == [b"* VANISHED 2:3,5\r\n"]


def test_qresync_select(h):
    for _ in range(6):
        h.deliver(MSG)
    h.select()
    index = h.session.selected.index
    validity, mark = index.uidvalidity, index.highestmodseq
    h.command("a STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    h.command("a EXPUNGE")
    h.command("a STORE 3 +FLAGS.SILENT (\\Seen)")
    h.command("a CLOSE")
    h.session.enabled |= {"QRESYNC", "CONDSTORE"}
    q = grammar.QResync(validity, mark, None)
    out = text(h.select(qresync=q))
    assert "* VANISHED (EARLIER) 2,4\r\n" in out
    assert re.search(r"\* 3 FETCH \(UID 5 FLAGS \(\\Seen\) MODSEQ \(\d+\)\)\r\n", out)
    assert out.count("FETCH") == 1
    # a wrong UIDVALIDITY: a plain SELECT
    out = text(h.select(qresync=grammar.QResync(validity + 1, mark, None)))
    assert "VANISHED" not in out and "FETCH" not in out


def test_uid_set_is_compact():
    assert uid_set([5, 1, 2, 3, 9, 10, 12]) == b"1:3,5,9:10,12"
    assert uid_set([]) == b""


def test_closed_mailbox_is_quiet(h):
    h.select()
    sel = h.session.selected
    sel.close_silently()
    h.session.selected = None
    h.deliver(MSG)
    assert not sel.changed()
    assert sel.poll(True) == []
    sel.close_silently()


def test_an_index_rebuilt_under_the_session_ends_it(h):
    import os

    from indimail_tw.maildir.index import INDEX_NAME

    h.deliver(MSG)
    h.select()
    h.session.action = None
    os.unlink(os.path.join(h.maildir, INDEX_NAME))
    assert h.session.selected.poll(True) == [
        b"* BYE [UNAVAILABLE] Mailbox UIDVALIDITY changed, reconnect\r\n"]
    assert h.session.action == "close"
    assert h.session.selected.poll(True) == []
