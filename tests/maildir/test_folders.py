"""The Maildir++ folder tree of one user: names, create/delete/rename, subscriptions."""

from __future__ import annotations

import os

import pytest

from indimail_tw import fsutil
from indimail_tw.maildir import folders as mf
from indimail_tw.maildir.folders import MailFolders


@pytest.fixture
def tree(tmp_path):
    maildir = str(tmp_path / "Maildir")
    fsutil.make_maildir(maildir)
    return MailFolders(maildir)


def put(maildir: str, sub: str, name: str, data: bytes = b"Subject: x\n\nbody\n") -> str:
    path = os.path.join(maildir, sub, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("name", ["", ".", "a.", ".a", "a..b", "a/b", "a\x00b", "a\rb", "a*",
                                  "%",
                                  "x" * 300])
def test_invalid_names(name):
    with pytest.raises(mf.BadFolderName):
        mf.validate(name)


def test_inbox_is_case_insensitive():
    assert mf.validate("inbox") == "INBOX"
    assert mf.validate("Inbox.Sub") == "INBOX.Sub"
    assert mf.validate("INBOXes") == "INBOXes"


def test_create_layout_and_marker(tree):
    assert tree.create("Lists.python") == "Lists.python"
    path = os.path.join(tree.maildir, ".Lists.python")
    for sub in ("cur", "new", "tmp"):
        assert os.path.isdir(os.path.join(path, sub))
    assert os.path.exists(os.path.join(path, "maildirfolder"))
    assert not os.path.exists(os.path.join(tree.maildir, "maildirfolder"))
    with pytest.raises(mf.FolderExists):
        tree.create("Lists.python")
    with pytest.raises(mf.FolderExists):
        tree.create("inbox")


def test_eight_bit_names_are_modified_utf7_on_disk(tree):
    tree.create("Entwürfe")
    tree.create("R&D")
    entries = set(os.listdir(tree.maildir))
    assert ".Entw&APw-rfe" in entries
    assert ".R&-D" in entries
    assert tree.names() == {"Entwürfe", "R&D"}


def test_tree_has_implied_parents_and_children(tree):
    os.makedirs(os.path.join(tree.maildir, ".A.B", "cur"))
    tree.create("C")
    infos = {i.name: i for i in tree.tree()}
    assert infos["A"] == mf.FolderInfo("A", False, True)
    assert infos["A.B"].exists and not infos["A.B"].has_children
    assert infos["INBOX"].exists and not infos["INBOX"].has_children
    assert infos["C"].exists


def test_strange_entries_are_ignored(tree):
    os.makedirs(os.path.join(tree.maildir, ".bad..name"))
    os.makedirs(os.path.join(tree.maildir, ".&broken"))
    with open(os.path.join(tree.maildir, ".afile"), "w"):
        pass
    assert tree.names() == set()


def test_delete(tree):
    tree.create("A")
    tree.create("A.B")
    tree.delete("A")
    assert not tree.exists("A") and tree.exists("A.B")
    with pytest.raises(mf.HasChildren):            # A is now only a parent
        tree.delete("A")
    with pytest.raises(mf.NoSuchFolder):
        tree.delete("Nope")
    with pytest.raises(mf.FolderError):
        tree.delete("INBOX")
    tree.delete("A.B")
    assert tree.names() == set()
    assert os.listdir(os.path.join(tree.maildir, "tmp")) == []


def test_rename_moves_children(tree):
    tree.create("A")
    tree.create("A.B")
    tree.create("A.B.C")
    tree.create("AA")
    put(os.path.join(tree.maildir, ".A.B"), "cur", "1.M1P1.host:2,S")
    done = tree.rename("A", "X.Y")
    assert done == [("A", "X.Y"), ("A.B", "X.Y.B"), ("A.B.C", "X.Y.B.C")]
    assert tree.names() == {"X.Y", "X.Y.B", "X.Y.B.C", "AA"}
    assert os.listdir(os.path.join(tree.maildir, ".X.Y.B", "cur")) == ["1.M1P1.host:2,S"]
    with pytest.raises(mf.FolderExists):
        tree.rename("AA", "X.Y")
    with pytest.raises(mf.NoSuchFolder):
        tree.rename("Nope", "Other")
    with pytest.raises(mf.FolderError):
        tree.rename("AA", "AA.sub")


def test_rename_inbox_moves_messages(tree):
    tree.create("INBOX.kept")
    put(tree.maildir, "new", "1.M1P1.host")
    put(tree.maildir, "cur", "2.M1P1.host:2,S")
    tree.rename("INBOX", "Old")
    assert os.listdir(os.path.join(tree.maildir, "new")) == []
    assert os.listdir(os.path.join(tree.maildir, "cur")) == []
    assert os.listdir(os.path.join(tree.maildir, ".Old", "new")) == ["1.M1P1.host"]
    assert os.listdir(os.path.join(tree.maildir, ".Old", "cur")) == ["2.M1P1.host:2,S"]
    assert tree.exists("INBOX.kept")


def test_subscriptions_courier_format(tree):
    tree.subscribe("Sent")
    tree.subscribe("INBOX")
    tree.subscribe("Sent")
    with open(os.path.join(tree.maildir, "courierimapsubscribed")) as f:
        assert f.read() == "INBOX.Sent\nINBOX\n"
    assert tree.subscriptions() == ["Sent", "INBOX"]
    assert tree.unsubscribe("Sent")
    assert not tree.unsubscribe("Sent")
    assert tree.subscriptions() == ["INBOX"]


def test_subscriptions_read_other_forms(tree):
    with open(os.path.join(tree.maildir, "courierimapsubscribed"), "wb") as f:
        f.write(b"INBOX.Lists.python\r\nbare\n\nINBOX..bad\n\xff\n")
    assert tree.subscriptions() == ["Lists.python", "bare"]


def test_special_use_first_login(tree):
    tree.create("Sent")                     # an existing folder keeps its messages
    put(os.path.join(tree.maildir, ".Sent"), "cur", "1.M1P1.host:2,S")
    created = tree.ensure_special_use()
    assert created == ["Drafts", "Trash", "Junk", "Archive"]
    assert tree.special_uses() == {"Drafts": ("\\Drafts",), "Sent": ("\\Sent",),
                                   "Trash": ("\\Trash",), "Junk": ("\\Junk",),
                                   "Archive": ("\\Archive",)}
    assert set(tree.subscriptions()) == {"Drafts", "Sent", "Trash", "Junk", "Archive"}
    tree.delete("Junk")
    assert tree.ensure_special_use() == []   # only once
    assert not tree.exists("Junk")
    assert "Junk" not in tree.special_uses()


def test_special_use_follows_rename_and_create_use(tree):
    tree.create("Mine", ["\\Flagged"])
    tree.rename("Mine", "Stars")
    assert tree.special_uses() == {"Stars": ("\\Flagged",)}
    with pytest.raises(mf.FolderError):
        tree.create("Other", ["\\Bogus"])
    infos = {i.name: i for i in tree.tree()}
    assert infos["Stars"].special == ("\\Flagged",)


def test_missing_maildir(tmp_path):
    tree = MailFolders(str(tmp_path / "none"))
    assert tree.names() == set()
    assert tree.ensure_special_use() == []
    with pytest.raises(mf.NoSuchFolder):
        tree.open_index("Sent")


def test_open_index(tree):
    tree.create("Sent")
    put(os.path.join(tree.maildir, ".Sent"), "new", "1.M1P1.host")
    index = tree.open_index("Sent")
    try:
        assert [r.key for r in index.records()] == ["1.M1P1.host"]
    finally:
        index.close()
    with pytest.raises(mf.NoSuchFolder):
        tree.open_index("Nope")
    with pytest.raises(mf.NoSuchFolder):
        tree.open_index("a..b")


@pytest.mark.parametrize("reference,pattern,name,hit", [
    ("", "*", "A.B", True), ("", "%", "A.B", False), ("", "%", "A", True),
    ("", "A.%", "A.B", True), ("", "A.%", "A.B.C", False), ("A.", "%", "A.B", True),
    ("", "inbox", "INBOX", True), ("", "Inbox.%", "INBOX.x", True), ("", "a", "A", False),
    ("", "*B", "A.B", True), ("", "A*C", "A.B.C", True), ("", "A%C", "A.B.C", False),
])
def test_pattern(reference, pattern, name, hit):
    assert mf.matches(mf.pattern_regex(reference, pattern), name) is hit
