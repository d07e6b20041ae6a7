"""Mailbox commands in memory: CREATE/DELETE/RENAME, subscriptions, LIST/LSUB, STATUS,
QUOTA, SELECT/EXAMINE and IDLE, on real Maildirs."""

from __future__ import annotations

import os

import pytest

from indimail_tw.maildir import quota as mquota
from tests.imap4.session_support import Server, put, untagged


@pytest.fixture
def server():
    s = Server()
    yield s
    s.cleanup()


@pytest.fixture
def conn(server):
    c = server.connect()
    c.login()
    return c


def names(lines):
    return [line.rsplit(" ", 1)[1] for line in untagged(lines, "LIST")]


def test_create_delete_rename(server, conn):
    assert conn.tagged("a CREATE Work") == "a OK CREATE completed"
    assert conn.tagged("b CREATE Work") == "b NO [ALREADYEXISTS] Mailbox already exists"
    assert conn.tagged("c CREATE inbox") == "c NO [ALREADYEXISTS] Mailbox already exists"
    assert conn.tagged("d CREATE Lists.python.") == "d OK CREATE completed"
    assert os.path.isdir(os.path.join(server.maildir(), ".Lists.python", "cur"))
    assert os.path.isdir(os.path.join(server.maildir(), ".Lists"))   # superior name
    assert conn.tagged('e CREATE "a..b"') == "e NO [CANNOT] Invalid hierarchy in mailbox name"
    assert conn.tagged("f RENAME Lists Mail.Lists") == "f OK RENAME completed"
    assert os.path.isdir(os.path.join(server.maildir(), ".Mail.Lists.python"))
    assert os.path.isdir(os.path.join(server.maildir(), ".Mail", "cur"))    # superior name
    assert conn.tagged("g RENAME Nope Other") == "g NO [NONEXISTENT] Mailbox doesn't exist"
    assert conn.tagged("h RENAME Work Sent") == (
        "h NO [ALREADYEXISTS] Target mailbox already exists")
    assert conn.tagged("i DELETE Work") == "i OK DELETE completed"
    assert conn.tagged("j DELETE Work") == "j NO [NONEXISTENT] Mailbox doesn't exist"
    assert conn.tagged("k DELETE INBOX") == "k NO [CANNOT] INBOX can't be deleted"
    assert conn.tagged("l DELETE Mail") == "l OK DELETE completed"
    assert conn.tagged("l2 DELETE Mail") == (      # now only implied by Mail.Lists
        "l2 NO [HASCHILDREN] Mailbox has children, delete them first")
    conn.ask("m CREATE Top.sub")
    assert conn.tagged("n DELETE Top") == "n OK DELETE completed"
    assert '* LIST (\\Noselect \\HasChildren) "." Top' in conn.ask('o LIST "" Top')


def test_create_special_use(server, conn):
    assert conn.tagged("a CREATE Stars (USE (\\Flagged))") == "a OK CREATE completed"
    lines = conn.ask('b LIST "" Stars')
    assert untagged(lines, "LIST") == ['* LIST (\\HasNoChildren \\Flagged) "." Stars']
    answer = conn.tagged("c CREATE Odd (USE (\\Important))")
    assert answer.startswith("c NO [USEATTR]")


def test_eight_bit_names(server, conn):
    assert conn.tagged("a CREATE Entw&APw-rfe") == "a OK CREATE completed"
    assert os.path.isdir(os.path.join(server.maildir(), ".Entw&APw-rfe"))
    assert "Entw&APw-rfe" in names(conn.ask('b LIST "" *'))
    conn.ask("c ENABLE UTF8=ACCEPT")
    assert '"Entwürfe"' in names(conn.ask('d LIST "" *'))


def test_rename_inbox(server, conn):
    put(server.maildir())
    assert conn.tagged("a RENAME INBOX Old") == "a OK RENAME completed"
    lines = conn.ask("b STATUS Old (MESSAGES)")
    assert lines[0] == "* STATUS Old (MESSAGES 1)"
    assert conn.ask("c STATUS INBOX (MESSAGES)")[0] == "* STATUS INBOX (MESSAGES 0)"


def test_selected_mailbox_in_use(server, conn):
    conn.ask("a CREATE Work")
    conn.ask("b SELECT Work")
    assert conn.tagged("c DELETE Work") == "c NO [INUSE] Can't delete the selected mailbox"
    assert conn.tagged("d RENAME Work Play") == "d NO [INUSE] Can't rename the selected mailbox"


def test_subscriptions_and_lsub(server, conn):
    conn.ask("a CREATE Lists.python")
    assert conn.tagged("b SUBSCRIBE Lists.python") == "b OK SUBSCRIBE completed"
    assert conn.tagged("c SUBSCRIBE Ghost") == "c OK SUBSCRIBE completed"
    with open(os.path.join(server.maildir(), "courierimapsubscribed")) as f:
        assert f.read().splitlines()[-2:] == ["INBOX.Lists.python", "INBOX.Ghost"]
    lines = conn.ask('d LSUB "" "*"')
    assert '* LSUB () "." Lists.python' in lines and '* LSUB () "." Ghost' in lines
    lines = conn.ask('e LSUB "" "%"')
    assert '* LSUB (\\Noselect) "." Lists' in lines
    assert '* LSUB () "." Lists.python' not in lines
    assert conn.tagged("f UNSUBSCRIBE Ghost") == "f OK UNSUBSCRIBE completed"
    assert conn.tagged("g UNSUBSCRIBE Ghost") == "g OK UNSUBSCRIBE completed"
    assert '* LSUB () "." Ghost' not in conn.ask('h LSUB "" "*"')


def test_list_basic(server, conn):
    os.makedirs(os.path.join(server.maildir(), ".A.B", "cur"))
    assert conn.ask('a LIST "" ""') == ['* LIST (\\Noselect) "." ""', "a OK LIST completed"]
    lines = conn.ask('b LIST "" "%"')
    assert '* LIST (\\Noselect \\HasChildren) "." A' in lines
    assert not [x for x in lines if x.endswith(" A.B")]
    lines = conn.ask('c LIST "" "*"')
    assert '* LIST (\\HasNoChildren) "." A.B' in lines
    assert conn.ask('d LIST "A." "%"')[:-1] == ['* LIST (\\HasNoChildren) "." A.B']
    assert conn.ask('e LIST "" "inbox"')[:-1] == ['* LIST (\\HasNoChildren) "." INBOX']
    assert conn.ask('f LIST "" "nothing*"') == ["f OK LIST completed"]


def test_list_extended(server, conn):
    conn.ask("a CREATE Lists.python")
    conn.ask("b SUBSCRIBE Lists.python")
    conn.ask("c SUBSCRIBE Gone")
    lines = conn.ask('d LIST (SUBSCRIBED) "" "*"')
    listed = untagged(lines, "LIST")
    assert '* LIST (\\HasNoChildren \\Subscribed) "." Lists.python' in listed
    assert '* LIST (\\NonExistent \\Subscribed) "." Gone' in listed
    assert '* LIST (\\HasNoChildren \\Sent \\Subscribed) "." Sent' in listed
    assert not [x for x in listed if x.endswith('" Lists')]
    lines = conn.ask('e LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert '* LIST (\\HasChildren) "." Lists ("CHILDINFO" ("SUBSCRIBED"))' in lines
    lines = conn.ask('f LIST "" "*" RETURN (SUBSCRIBED CHILDREN)')
    assert '* LIST (\\HasChildren) "." Lists' in lines
    assert '* LIST (\\HasNoChildren \\Subscribed) "." Lists.python' in lines
    lines = conn.ask('g LIST (SPECIAL-USE) "" "*"')
    assert names(lines) == ["Archive", "Drafts", "Junk", "Sent", "Trash"]
    lines = conn.ask('h LIST "" ("INBOX" "Sent")')
    assert names(lines) == ["INBOX", "Sent"]
    assert conn.tagged('i LIST (RECURSIVEMATCH) "" "*"').startswith("i BAD")


def test_list_status(server, conn):
    put(server.maildir())
    put(server.maildir(), folder="Sent")
    lines = conn.ask('a LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))')
    i = lines.index('* LIST (\\HasNoChildren) "." INBOX')
    assert lines[i + 1] == "* STATUS INBOX (MESSAGES 1 UNSEEN 1)"
    i = lines.index('* LIST (\\HasNoChildren \\Sent) "." Sent')
    assert lines[i + 1] == "* STATUS Sent (MESSAGES 1 UNSEEN 1)"
    assert lines[-1] == "a OK LIST completed"


def test_status(server, conn):
    put(server.maildir(), b"Subject: a\n\nbody\n")
    put(server.maildir(), b"Subject: b\n\nbody\n")
    lines = conn.ask("a STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE "
                     "HIGHESTMODSEQ APPENDLIMIT RECENT)")
    status = lines[0]
    assert status.startswith("* STATUS INBOX (MESSAGES 2 UIDNEXT 3 UIDVALIDITY ")
    assert " UNSEEN 2 DELETED 0 SIZE 40 HIGHESTMODSEQ " in status   # CRLF octets
    assert status.endswith(" APPENDLIMIT 67108864 RECENT 2)")
    assert lines[-1] == "a OK STATUS completed"
    assert conn.tagged("b STATUS Nope (MESSAGES)") == "b NO [NONEXISTENT] Mailbox doesn't exist"
    assert conn.tagged("c STATUS INBOX (BOGUS)").startswith("c BAD")


def test_quota_without_limit(server, conn):
    assert conn.ask("a GETQUOTAROOT INBOX") == ["* QUOTAROOT INBOX",
                                                "a OK GETQUOTAROOT completed"]
    assert conn.tagged('b GETQUOTA ""') == "b NO [NONEXISTENT] No such quota root"
    assert conn.tagged('c SETQUOTA "" (STORAGE 10)') == (
        "c NO [NOPERM] Quotas are set by the administrator")


def test_quota_from_maildirsize(server):
    server.login.quota = "1048576,100"
    conn = server.connect()
    conn.login()
    put(server.maildir(), b"x" * 3000)
    mquota.recalculate(server.maildir(), mquota.Quota(1048576, 100))
    assert conn.ask("a GETQUOTAROOT Sent") == [
        '* QUOTAROOT Sent ""', '* QUOTA "" (STORAGE 3 1024 MESSAGE 1 100)',
        "a OK GETQUOTAROOT completed"]
    assert conn.ask('b GETQUOTA ""') == ['* QUOTA "" (STORAGE 3 1024 MESSAGE 1 100)',
                                        "b OK GETQUOTA completed"]
    assert conn.tagged("c GETQUOTAROOT Nope") == "c NO [NONEXISTENT] Mailbox doesn't exist"
    session = conn.proto.session
    assert session.quota_check(10) is None
    assert session.quota_check(2 * 1048576) == "Quota exceeded"


def test_select_examine_and_closed(server, conn):
    put(server.maildir())
    lines = conn.ask("a SELECT INBOX")
    assert "* 1 EXISTS" in lines
    assert lines[-1] == "a OK [READ-WRITE] SELECT completed"
    lines = conn.ask("b EXAMINE Sent")
    assert lines[0] == "* OK [CLOSED] Previous mailbox closed."
    assert "* 0 EXISTS" in lines
    assert lines[-1] == "b OK [READ-ONLY] EXAMINE completed"
    lines = conn.ask("c SELECT Nope")
    assert lines == ["* OK [CLOSED] Previous mailbox closed.",
                     "c NO [NONEXISTENT] Mailbox doesn't exist"]
    assert conn.tagged("d FETCH 1 FLAGS") == "d BAD No mailbox selected"
    assert conn.tagged("e SELECT INBOX (QRESYNC (1 1))") == "e BAD QRESYNC is not enabled"


def test_select_condstore_and_unselect(server, conn):
    lines = conn.ask("a SELECT INBOX (CONDSTORE)")
    assert [x for x in lines if "[HIGHESTMODSEQ " in x]
    assert "CONDSTORE" in conn.proto.session.enabled
    assert conn.tagged("b UNSELECT") == "b OK Unselect completed"
    assert conn.tagged("c NOOP") == "c OK NOOP completed"
    assert conn.tagged("d CLOSE") == "d BAD No mailbox selected"


def test_updates_before_tagged_line(server, conn):
    conn.ask("a SELECT INBOX")
    put(server.maildir())
    assert conn.ask("b NOOP") == ["* 1 EXISTS", "* 1 RECENT", "b OK NOOP completed"]


def test_idle_reports_deliveries(server, conn):
    conn.ask("a SELECT INBOX")
    assert conn.ask("b IDLE") == ["+ idling"]
    server.clock.advance(1)
    assert conn.lines() == []
    put(server.maildir())
    server.clock.advance(1)
    assert conn.lines() == ["* 1 EXISTS", "* 1 RECENT"]
    assert conn.ask("DONE") == ["b OK IDLE terminated"]
    assert conn.proto._idle is None
    conn.ask("c IDLE")
    assert conn.ask("NOTDONE") == ["c BAD Expected DONE"]
    assert conn.tagged("d NOOP") == "d OK NOOP completed"


def test_idle_without_mailbox_and_pipelined_done(server, conn):
    conn.send("a IDLE\r\nDONE\r\nb NOOP\r\n")
    assert conn.lines() == ["+ idling", "a OK IDLE terminated", "b OK NOOP completed"]
    assert server.clock.getDelayedCalls() and len(server.clock.getDelayedCalls()) == 1


def test_logout_while_selected_and_delayed_calls(server, conn):
    conn.ask("a SELECT INBOX")
    assert conn.ask("b LOGOUT") == ["* BYE Logging out", "b OK LOGOUT completed"]
    assert conn.closed
    conn.lose()
    assert server.clock.getDelayedCalls() == []
