"""STORE, SEARCH, COPY, MOVE, EXPUNGE, APPEND, CLOSE, UNSELECT against a real Maildir."""

from __future__ import annotations

import os
import re

import pytest

from indimail_tw.imap4 import fetch, mime
from tests.imap4.test_messages_harness import Harness, text

MSG = b"From: Ann <ann@example.com>\nTo: bob@example.com\nSubject: %s\n" \
      b"Date: Mon, 01 Jan 2024 10:00:00 +0000\n\n%s\n"


def msg(subject: str = "hello", body: str = "body text") -> bytes:
    return MSG % (subject.encode(), body.encode())


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.cleanup()


def filled(h: Harness, n: int = 5) -> Harness:
    for i in range(1, n + 1):
        h.deliver(msg(f"subject {i}", f"body number {i}"))
    h.select()
    return h


# -- STORE ---------------------------------------------------------------------------

def test_store_add_remove_replace(h):
    filled(h, 3)
    assert text(h.command("a STORE 1:2 +FLAGS (\\Seen $Work)")) == (
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Work)\r\n"
        "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded "
        "$Work \\*)] Flags permitted\r\n"
        "* 1 FETCH (FLAGS (\\Recent \\Seen $Work))\r\n"
        "* 2 FETCH (FLAGS (\\Recent \\Seen $Work))\r\na OK Store completed\r\n")
    assert text(h.command("a STORE 1 -FLAGS ($Work)")) == (
        "* 1 FETCH (FLAGS (\\Recent \\Seen))\r\na OK Store completed\r\n")
    assert text(h.command("a UID STORE 2 FLAGS (\\Flagged)")) == (
        "* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\na OK Store completed\r\n")
    assert text(h.command("a STORE 3 +FLAGS.SILENT (\\Answered)")) == "a OK Store completed\r\n"
    # the flags are in the file names, as other Maildir readers see them
    names = os.listdir(os.path.join(h.maildir, "cur"))
    assert sorted(n.rsplit(":2,", 1)[1] for n in names) == ["F", "R", "S"]


def test_store_on_a_read_only_mailbox(h):
    h.deliver(msg())
    h.select(readonly=True)
    assert h.command("a STORE 1 +FLAGS (\\Seen)") == [
        b"a NO [READ-ONLY] Mailbox is read-only\r\n"]


def test_store_unchangedsince(h):
    filled(h, 3)
    index = h.session.selected.index
    mark = index.highestmodseq
    h.command("a STORE 2 +FLAGS.SILENT (\\Flagged)")       # message 2 changes after mark
    out = text(h.command(f"a STORE 1:3 (UNCHANGEDSINCE {mark}) +FLAGS (\\Seen)"))
    assert re.fullmatch(
        r"\* 1 FETCH \(UID 1 FLAGS \(\\Recent \\Seen\) MODSEQ \(\d+\)\)\r\n"
        r"\* 3 FETCH \(UID 3 FLAGS \(\\Recent \\Seen\) MODSEQ \(\d+\)\)\r\n"
        r"a OK \[MODIFIED 2\] Conditional STORE failed\r\n", out)
    assert "\\Seen" not in index.flags(2)
    # RFC 7162 example 3: .SILENT still reports the new MODSEQ
    mark = index.highestmodseq
    out = text(h.command(f"a UID STORE 1,3 (UNCHANGEDSINCE {mark}) +FLAGS.SILENT (\\Deleted)"))
    assert re.fullmatch(r"\* 1 FETCH \(UID 1 MODSEQ \(\d+\)\)\r\n"
                        r"\* 3 FETCH \(UID 3 MODSEQ \(\d+\)\)\r\na OK Store completed\r\n", out)
    out = text(h.command("a UID STORE 1:3 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Draft)"))
    assert out == "a OK [MODIFIED 1:3] Conditional STORE failed\r\n"


def test_store_to_a_message_expunged_elsewhere_is_skipped(h):
    filled(h, 2)
    other = h.other_index()
    other.expunge([1])
    other.close()
    out = text(h.command("a STORE 1:2 +FLAGS (\\Seen)"))
    assert out == "* 2 FETCH (FLAGS (\\Recent \\Seen))\r\na OK Store completed\r\n"


# -- SEARCH --------------------------------------------------------------------------

def test_search_plain_and_uid(h):
    filled(h, 5)
    h.command("a STORE 2,4 +FLAGS.SILENT (\\Seen)")
    assert text(h.command("a SEARCH SEEN")) == "* SEARCH 2 4\r\na OK Search completed\r\n"
    assert text(h.command("a SEARCH UNSEEN SUBJECT \"subject 5\"")) == (
        "* SEARCH 5\r\na OK Search completed\r\n")
    assert text(h.command("a SEARCH BODY \"number 3\"")) == (
        "* SEARCH 3\r\na OK Search completed\r\n")
    assert text(h.command("a UID SEARCH NOT SEEN")) == (
        "* SEARCH 1 3 5\r\na OK Search completed\r\n")
    assert text(h.command("a SEARCH KEYWORD $Nope")) == "* SEARCH\r\na OK Search completed\r\n"
    assert text(h.command("a SEARCH 2:3 OR FROM ann TEXT zzz")) == (
        "* SEARCH 2 3\r\na OK Search completed\r\n")
    assert text(h.command("a SEARCH SENTON 1-Jan-2024 RECENT")).startswith("* SEARCH 1 2 3 4 5")


def test_search_reading_many_files_runs_in_a_thread(h):
    filled(h, 60)
    before = h.session.runs
    assert text(h.command("a SEARCH BODY \"number 42\"")) == (
        "* SEARCH 42\r\na OK Search completed\r\n")
    assert h.session.runs == before + 1
    before = h.session.runs
    h.command("a SEARCH UNSEEN")
    assert h.session.runs == before


def test_search_of_index_data_builds_no_records(h, monkeypatch):
    # flags, numbers, \Recent, modseq: answered from the index arrays (big folders)
    filled(h, 5)
    h.command("a STORE 2,4 +FLAGS.SILENT (\\Seen)")
    index = h.session.selected.index

    def no_records(*_a):
        raise AssertionError("records() called")
    monkeypatch.setattr(index, "records", no_records)
    assert text(h.command("a SEARCH OR SEEN 5 NOT (RECENT 1:3)")) == (
        "* SEARCH 4 5\r\na OK Search completed\r\n")      # all five are \\Recent
    assert text(h.command("a UID SEARCH UID 2:* UNSEEN MODSEQ 1")).startswith(
        "* SEARCH 3 5 (MODSEQ ")


def test_esearch_return_options(h):
    filled(h, 5)
    h.command("a STORE 2:4 +FLAGS.SILENT (\\Flagged)")
    assert text(h.command("t1 SEARCH RETURN (MIN MAX COUNT) FLAGGED")) == (
        '* ESEARCH (TAG "t1") MIN 2 MAX 4 COUNT 3\r\nt1 OK Search completed\r\n')
    assert text(h.command("t2 UID SEARCH RETURN () FLAGGED")) == (
        '* ESEARCH (TAG "t2") UID ALL 2:4\r\nt2 OK Search completed\r\n')
    assert text(h.command("t3 SEARCH RETURN (MIN COUNT ALL) DELETED")) == (
        '* ESEARCH (TAG "t3") COUNT 0\r\nt3 OK Search completed\r\n')


def test_imap4rev2_always_answers_esearch(h):
    h.session.enabled.add("IMAP4REV2")
    filled(h, 2)
    assert text(h.command("a SEARCH ALL")) == (
        '* ESEARCH (TAG "a") ALL 1:2\r\na OK Search completed\r\n')


def test_searchres_save_and_use(h):
    filled(h, 5)
    h.command("a STORE 1,3,5 +FLAGS.SILENT (\\Seen)")
    assert h.command("a SEARCH RETURN (SAVE) SEEN") == [b"a OK Search completed\r\n"]
    assert text(h.command("a FETCH $ UID")) == (
        "* 1 FETCH (UID 1)\r\n* 3 FETCH (UID 3)\r\n* 5 FETCH (UID 5)\r\na OK Fetch completed\r\n")
    assert text(h.command("a SEARCH $ 2:5")) == "* SEARCH 3 5\r\na OK Search completed\r\n"
    # MIN/MAX with SAVE keep only those
    h.command("a SEARCH RETURN (SAVE MIN MAX) SEEN")
    assert h.session.searchres == {1, 5}
    # an expunge removes its messages from $
    h.command("a STORE 5 +FLAGS.SILENT (\\Deleted)")
    h.command("a EXPUNGE")
    assert h.session.searchres == {1}


def test_search_modseq(h):
    filled(h, 3)
    index = h.session.selected.index
    mark = index.highestmodseq
    h.command("a STORE 2 +FLAGS.SILENT (\\Seen)")
    out = text(h.command(f"a SEARCH MODSEQ {mark + 1}"))
    assert out == f"* SEARCH 2 (MODSEQ {index.modseq(2)})\r\na OK Search completed\r\n"
    assert "CONDSTORE" in h.session.enabled
    out = text(h.command(f"a SEARCH RETURN (ALL) MODSEQ {mark + 1}"))
    assert out == f'* ESEARCH (TAG "a") ALL 2 MODSEQ {index.modseq(2)}\r\na OK Search completed\r\n'


# -- COPY and MOVE -------------------------------------------------------------------

def test_copy_keeps_flags_and_internaldate(h):
    h.deliver(msg(), flags="S", mtime=1600000000)
    h.deliver(msg())
    h.create("Archive")
    h.select()
    target = h.other_index("Archive")
    validity = target.uidvalidity
    target.close()
    assert text(h.command("a COPY 1:2 Archive")) == (
        f"a OK [COPYUID {validity} 1:2 1:2] Copy completed\r\n")
    h.select("Archive")
    out = text(h.command("a FETCH 1:2 (FLAGS INTERNALDATE)"))
    date = fetch.internaldate(1600000000).decode()
    assert f"* 1 FETCH (FLAGS (\\Recent \\Seen) INTERNALDATE {date})" in out
    assert "* 2 FETCH (FLAGS (\\Recent) " in out


def test_copy_to_a_missing_mailbox_and_uid_copy_of_nothing(h):
    filled(h, 1)
    assert h.command("a COPY 1 Nowhere") == [
        b"a NO [TRYCREATE] Mailbox doesn't exist\r\n"]
    assert h.command("a UID COPY 99 INBOX") == [b"a OK COPY completed\r\n"]


def test_copy_over_quota(h):
    filled(h, 1)
    h.session.quota_text = "Quota exceeded"
    assert h.command("a COPY 1 INBOX") == [b"a NO [OVERQUOTA] Quota exceeded\r\n"]


def test_copy_into_the_selected_mailbox_shows_up(h):
    filled(h, 2)
    out = text(h.command("a COPY 2 INBOX"))
    assert out.startswith("* 3 EXISTS\r\n")
    assert re.search(r"a OK \[COPYUID \d+ 2 3\] Copy completed", out)


def test_move(h):
    filled(h, 4)
    h.create("Trash")
    out = text(h.command("a MOVE 2:3 Trash"))
    assert re.fullmatch(r"\* OK \[COPYUID \d+ 2:3 1:2\] Moved\r\n"
                        r"\* 2 EXPUNGE\r\n\* 2 EXPUNGE\r\na OK Move completed\r\n", out)
    assert list(h.session.selected.uids) == [1, 4]
    out = text(h.command("a UID MOVE 4 Trash"))
    assert re.fullmatch(r"\* OK \[COPYUID \d+ 4 3\] Moved\r\n"
                        r"\* 2 EXPUNGE\r\na OK Move completed\r\n", out)


def test_move_with_qresync_sends_vanished(h):
    h.session.enabled |= {"QRESYNC", "CONDSTORE"}
    filled(h, 3)
    h.create("Trash")
    out = text(h.command("a UID MOVE 1,3 Trash"))
    assert re.fullmatch(r"\* OK \[COPYUID \d+ 1,3 1:2\] Moved\r\n"
                        r"\* VANISHED 1,3\r\na OK Move completed\r\n", out)


def test_move_from_a_read_only_mailbox(h):
    h.deliver(msg())
    h.create("Trash")
    h.select(readonly=True)
    assert h.command("a MOVE 1 Trash") == [b"a NO [READ-ONLY] Mailbox is read-only\r\n"]


# -- EXPUNGE -------------------------------------------------------------------------

def test_expunge_only_deleted_in_rfc_order(h):
    filled(h, 11)
    h.command("a STORE 3,4,7,11 +FLAGS.SILENT (\\Deleted)")
    # RFC 9051 7.5.1 example: 3, 4, 7 and 11 give 3, 3, 5, 8
    assert text(h.command("a EXPUNGE")) == (
        "* 3 EXPUNGE\r\n* 3 EXPUNGE\r\n* 5 EXPUNGE\r\n* 8 EXPUNGE\r\na OK Expunge completed\r\n")
    assert h.session.selected.exists == 7


def test_uid_expunge(h):
    filled(h, 4)
    h.command("a STORE 1:4 +FLAGS.SILENT (\\Deleted)")
    assert text(h.command("a UID EXPUNGE 2:3")) == (
        "* 2 EXPUNGE\r\n* 2 EXPUNGE\r\na OK Expunge completed\r\n")
    assert list(h.session.selected.uids) == [1, 4]


def test_expunge_read_only(h):
    h.deliver(msg(), flags="T")
    h.select(readonly=True)
    assert h.command("a EXPUNGE") == [b"a NO [READ-ONLY] Mailbox is read-only\r\n"]


def test_expunge_sees_deleted_set_by_another_session(h):
    filled(h, 2)
    other = h.other_index()
    other.store_flags(2, frozenset({"\\Deleted"}))
    other.close()
    assert text(h.command("a EXPUNGE")) == (
        "* 2 FETCH (FLAGS (\\Deleted \\Recent))\r\n* 2 EXPUNGE\r\na OK Expunge completed\r\n")


def test_a_small_expunge_runs_inline_without_fsync(h, monkeypatch):
    from indimail_tw import fsutil
    from indimail_tw.maildir import quota

    filled(h, 4)
    h.command("a STORE 2:3 +FLAGS.SILENT (\\Deleted)")

    def no_fsync(*args):
        raise AssertionError("fsync on the reactor thread")

    for name in ("fsync_dir", "fsync_dirs", "fsync_file"):
        monkeypatch.setattr(fsutil, name, no_fsync)
    monkeypatch.setattr(os, "fsync", no_fsync)
    monkeypatch.setattr(os, "fdatasync", no_fsync)
    runs = h.session.runs
    assert text(h.command("a EXPUNGE")) == (
        "* 2 EXPUNGE\r\n* 2 EXPUNGE\r\na OK Expunge completed\r\n")
    assert h.session.runs == runs                  # no thread: no quota file to update
    assert len(os.listdir(os.path.join(h.maildir, "cur"))) + len(
        os.listdir(os.path.join(h.maildir, "new"))) == 2
    monkeypatch.undo()
    # with a quota file, its line is written in a thread (fsync there)
    quota.recalculate(h.maildir, quota.Quota(10_000_000))
    before = quota.read_usage(h.maildir)
    h.command("a STORE 1 +FLAGS.SILENT (\\Deleted)")
    runs = h.session.runs
    assert text(h.command("a EXPUNGE")) == "* 1 EXPUNGE\r\na OK Expunge completed\r\n"
    assert h.session.runs == runs + 1
    after = quota.read_usage(h.maildir)
    assert after.count == before.count - 1 and after.bytes < before.bytes


def test_a_big_expunge_goes_to_a_thread(h, monkeypatch):
    from indimail_tw.imap4 import messages

    monkeypatch.setattr(messages, "INLINE_EXPUNGE", 2)
    filled(h, 4)
    h.command("a STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    runs = h.session.runs
    assert text(h.command("a EXPUNGE")) == (
        "* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\na OK Expunge completed\r\n")
    assert h.session.runs == runs + 1


def test_a_grown_index_wal_is_checkpointed_in_a_thread(h, monkeypatch):
    from indimail_tw.maildir import index as mindex

    monkeypatch.setattr(mindex, "CHECKPOINT_COMMITS", 10)
    filled(h, 2)
    ran = []
    real = h.session.run
    h.session.run = lambda fn, *args: (ran.append(fn), real(fn, *args))[1]
    for i in range(1000):
        sign = "+-"[i % 2]
        h.command(f"a STORE 1 {sign}FLAGS.SILENT (\\Seen)")
        if ran:
            break
    assert ran == [mindex.checkpoint_wal]
    assert not h.session.selected.index.checkpoint_due


# -- APPEND --------------------------------------------------------------------------

def test_append_with_flags_and_date(h):
    h.create("Drafts")
    data = b"From: me@x\r\nSubject: draft\r\n\r\nunfinished\r\n"
    line = (b'a APPEND Drafts (\\Draft \\Seen) "05-Mar-2023 10:00:00 +0100" {%d}\r\n'
            % len(data) + data)
    out = text(h.command(line))
    m = re.fullmatch(r"a OK \[APPENDUID (\d+) 1\] Append completed\r\n", out)
    assert m
    h.select("Drafts")
    out = h.command("a FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    date = fetch.internaldate(1678006800).decode().encode()
    assert out[0] == (b"* 1 FETCH (FLAGS (\\Draft \\Recent \\Seen) INTERNALDATE " + date
                      + b" RFC822.SIZE %d BODY[] {%d}\r\n" % (len(data), len(data)) + data
                      + b")\r\n")
    # stored with LF line ends, like delivered mail
    (name,) = os.listdir(os.path.join(h.maildir, ".Drafts", "cur"))
    with open(os.path.join(h.maildir, ".Drafts", "cur", name), "rb") as f:
        assert f.read() == data.replace(b"\r\n", b"\n")


def test_append_to_the_selected_mailbox_shows_exists(h):
    filled(h, 1)
    out = text(h.command(b"a APPEND INBOX {7}\r\nX: y\r\n\r\n"))
    assert out.startswith("* 2 EXISTS\r\n* 2 RECENT\r\n")
    assert out.endswith("Append completed\r\n")


def test_append_to_an_examined_mailbox_leaves_recent_to_others(h):
    filled(h, 1)
    h.session.selected.close_silently()
    h.session.selected = None
    h.select(readonly=True)
    out = text(h.command(b"a APPEND INBOX {7}\r\nX: y\r\n\r\n"))
    assert out.startswith("* 2 EXISTS\r\n")
    other = h.other_index()
    assert other.claim_recent() == {2}
    other.close()


def test_append_refusals(h):
    assert h.command(b"a APPEND Nowhere {6}\r\nX: y\r\n") == [
        b"a NO [TRYCREATE] Mailbox doesn't exist\r\n"]
    h.folders.append_limit = 5
    assert h.command(b"a APPEND INBOX {6}\r\nX: y\r\n") == [b"a NO [TOOBIG] Message too large\r\n"]
    h.folders.append_limit = 0
    h.session.quota_text = "Over quota"
    assert h.command(b"a APPEND INBOX {6}\r\nX: y\r\n") == [b"a NO [OVERQUOTA] Over quota\r\n"]
    h.session.quota_text = None
    assert h.command(b"a APPEND INBOX {0}\r\n") == [
        b"a NO Can't save a zero-length message\r\n"]


def test_append_binary_literal_is_kept_as_is(h):
    data = b"Content-Transfer-Encoding: binary\r\n\r\n\x00\x01\r\n"
    out = text(h.command(b"a APPEND INBOX ~{%d}\r\n" % len(data) + data))
    assert "APPENDUID" in out
    h.select()
    assert h.command("a FETCH 1 BINARY.PEEK[1]")[0] == (
        b"* 1 FETCH (BINARY[1] ~{4}\r\n\x00\x01\r\n)\r\n")


# -- CLOSE, UNSELECT, CHECK ----------------------------------------------------------

def test_close_expunges_silently(h):
    filled(h, 3)
    h.command("a STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert h.command("a CLOSE") == [b"a OK Close completed\r\n"]
    assert h.session.selected is None
    h.select()
    assert list(h.session.selected.uids) == [1, 3]


def test_close_read_only_and_unselect_keep_deleted(h):
    h.deliver(msg(), flags="T")
    h.select(readonly=True)
    assert h.command("a CLOSE") == [b"a OK Close completed\r\n"]
    h.select()
    assert h.command("a UNSELECT") == [b"a OK Unselect completed\r\n"]
    assert h.session.selected is None
    h.select()
    assert h.session.selected.exists == 1


def test_check(h):
    filled(h, 1)
    h.deliver(msg())
    assert h.command("a CHECK") == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n",
                                    b"a OK Check completed\r\n"]


def test_unexpected_errors_become_no(h, monkeypatch):
    filled(h, 1)

    def boom(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fetch, "render", boom)
    assert h.command("a FETCH 1 (FLAGS INTERNALDATE)") == [
        b"a NO [SERVERBUG] FETCH failed: internal error\r\n"]
    monkeypatch.undo()
    monkeypatch.setattr(mime, "parse", boom)
    assert h.command("a FETCH 1 ENVELOPE") == [
        b"a NO [SERVERBUG] FETCH failed: internal error\r\n"]


def test_append_into_the_selected_mailbox_uses_its_index(h, monkeypatch):
    h.deliver(b"Subject: one\n\nbody\n")
    h.select()
    opened = []
    real = type(h.folders).open_index
    monkeypatch.setattr(type(h.folders), "open_index", lambda self, name, **kw: (
        opened.append(name) or real(self, name, **kw)))
    lines = h.command(b'a1 APPEND INBOX (\\Seen) {11}\r\nSubject: x\n')
    assert opened == []
    assert b"* 2 EXISTS\r\n" in lines and b"APPENDUID" in lines[-1]
    h.create("Other")
    h.command(b"a2 APPEND Other {11}\r\nSubject: y\n")
    assert opened == ["Other"]
