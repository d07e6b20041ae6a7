"""FETCH of UID/FLAGS/MODSEQ from the index's view arrays gives what the general path gives."""

from __future__ import annotations

import os

import pytest

from indimail_tw.fsutil import make_maildir
from indimail_tw.imap4 import fetch, grammar
from indimail_tw.imap4.parser import Command, IMAPParser
from indimail_tw.imap4.selected import SelectedMailbox
from indimail_tw.maildir.index import FolderIndex


class Session:
    rev2 = False
    searchres = None

    def __init__(self) -> None:
        self.enabled: set[str] = set()


def parse(line: bytes):
    (event,) = [e for e in IMAPParser().feed(line + b"\r\n") if isinstance(e, Command)]
    return grammar.parse(event)


def reply(session, line: bytes, fast: bool) -> bytes:
    index = session.selected.index
    if not fast:
        index.view_arrays = None                # the general path
    try:
        return b"".join(fetch.do_fetch(session, b"a1", parse(line)))
    finally:
        if not fast:
            del index.view_arrays


@pytest.fixture
def session(tmp_path):
    maildir = str(tmp_path / "Maildir")
    make_maildir(maildir)
    for i in range(1, 41):
        info = ":2,S" if i % 3 else ""
        with open(os.path.join(maildir, "cur", f"{1000 + i}.M{i}.x,S=10{info}"), "wb") as f:
            f.write(b"Subject: x\n\n")
    index = FolderIndex.open(maildir)
    index.store_flags(5, frozenset({"\\Flagged", "$Work"}))
    index.store_flags(6, frozenset())
    index.claim_recent()
    index.append(b"Subject: new\n\n")            # recent for this session
    index.sync()
    s = Session()
    s.selected = SelectedMailbox(index, "INBOX", False, s)
    s.selected.open_responses()
    yield s
    index._disconnect()


@pytest.mark.parametrize("line", [
    b"a1 FETCH 1:* (UID FLAGS)", b"a1 FETCH 1:* FLAGS", b"a1 UID FETCH 5:9,30:* (FLAGS MODSEQ)",
    b"a1 FETCH 41,2,3:4 (MODSEQ UID FLAGS)", b"a1 UID FETCH 1000:2000 FLAGS",
    b"a1 FETCH 50 FLAGS", b"a1 UID FETCH 7 UID"])
def test_view_arrays_answer_like_the_general_path(session, line):
    fast = reply(session, line, fast=True)
    assert fast == reply(session, line, fast=False)
    assert b"\\Recent" in reply(session, b"a1 FETCH 41 FLAGS", fast=True)


def test_pending_expunges_take_the_general_path(session):
    session.selected.gone.add(3)
    assert fetch._view_fast(session.selected, b"a1", parse(b"a1 FETCH 1:* FLAGS")) is None


def test_parsed_structures_are_kept_for_the_next_fetch(session, monkeypatch):
    index = session.selected.index
    asked = []
    real = index.cache_get_many
    monkeypatch.setattr(index, "cache_get_many", lambda uids, key: asked.append(
        list(uids)) or real(uids, key))
    line = b"a1 FETCH 1:3 (ENVELOPE BODYSTRUCTURE)"
    first = reply(session, line, fast=True)           # parsed, cached in the index
    second = reply(session, line, fast=True)          # read from the index's cache
    third = reply(session, line, fast=True)           # kept in the process
    assert first == second == third and b"ENVELOPE" in first
    assert asked == [[1, 2, 3], [1, 2, 3]]            # the third asks nothing
