"""Typed arguments of every IMAP command, RFC examples and error cases."""

from __future__ import annotations

import datetime

import pytest

from indimail_tw.imap4 import grammar as g
from indimail_tw.imap4.parser import IMAPParser
from indimail_tw.imap4.tokens import Command


def cmd(line: bytes) -> Command:
    """Tokenise one command line (``{n+}`` literals allowed)."""
    events = IMAPParser().feed(line + b"\r\n")
    [command] = [e for e in events if isinstance(e, Command)]
    return command


def parse(line: bytes, utf8: bool = False):
    return g.parse(cmd(line), utf8=utf8)


def bad(line: bytes, utf8: bool = False) -> str:
    with pytest.raises(g.BadArgs) as info:
        parse(line, utf8)
    return info.value.text


# -- sequence sets -------------------------------------------------------------------

def seqset(text: bytes) -> g.SequenceSet:
    return parse(b"a FETCH " + text + b" FLAGS").seqset


def test_sequence_set_forms():
    assert seqset(b"1") == g.SequenceSet(((1, 1),))
    assert seqset(b"1:*") == g.SequenceSet(((1, None),))
    assert seqset(b"*") == g.SequenceSet(((None, None),))
    assert seqset(b"5:2,7,9:*") == g.SequenceSet(((5, 2), (7, 7), (9, None)))
    assert seqset(b"$") == g.SequenceSet((), saved=True)
    assert str(seqset(b"5:2,7,9:*")) == "5:2,7,9:*"
    assert str(seqset(b"$")) == "$"


@pytest.mark.parametrize("text", [b"0", b"1:0", b"01", b"-1", b"1,", b",1", b"1::2", b"a",
                                  b"4294967296", b"1:4294967296", b"$,1", b"1 :2"])
def test_bad_sequence_sets(text):
    with pytest.raises(g.BadArgs):
        seqset(text)


def test_sequence_set_resolve():
    assert seqset(b"1:*").resolve(3) == [1, 2, 3]
    assert seqset(b"*").resolve(0) == []
    assert seqset(b"1:*").resolve(0) == []
    assert seqset(b"5:2,3,*").resolve(6) == [2, 3, 4, 5, 6]
    assert seqset(b"4:*").resolve(2) == [2]          # 4:* is 2:4 when * is 2
    assert seqset(b"7,8").resolve(5) == []
    assert seqset(b"1:4294967295").resolve(3) == [1, 2, 3]


def test_sequence_set_members_of_sparse_uids():
    uids = [3, 7, 8, 20, 4000000000]
    assert seqset(b"1:4294967295").members(uids) == uids
    assert seqset(b"8:5,1:3,*").members(uids) == [3, 7, 8, 4000000000]
    assert seqset(b"5000000:*").members(uids) == [4000000000]
    assert seqset(b"30:*").members([3, 7]) == [7]                 # 30:* is 7:30
    assert seqset(b"1:*,2:3").members(uids) == uids                # overlaps: no duplicates
    assert seqset(b"9:19").members(uids) == []
    assert seqset(b"*").members([]) == []
    assert seqset(b"*").members(uids, largest=8) == [8]


def test_sequence_set_contains_and_range_checks():
    s = seqset(b"2:4,10:*")
    assert s.contains(3, 20) and s.contains(15, 20) and not s.contains(5, 20)
    assert seqset(b"100:*").contains(50, 50)          # RFC 9051: 100:* includes the last
    assert not seqset(b"100:*").contains(49, 50)
    assert seqset(b"3:1").contains(2, 5)
    assert seqset(b"1:7").out_of_range(5) and not seqset(b"1:*").out_of_range(5)
    assert seqset(b"10:2").bounds(5) == [(2, 5)]


# -- simple commands -----------------------------------------------------------------------

@pytest.mark.parametrize("name", [b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS", b"IDLE",
                                  b"CHECK", b"CLOSE", b"UNSELECT", b"NAMESPACE"])
def test_no_argument_commands(name):
    assert parse(b"a " + name) == g.NoArgs()
    assert bad(b"a " + name + b" x")


def test_unknown_command():
    with pytest.raises(g.UnknownCommand):
        parse(b"a XYZZY")


def test_expunge_and_uid_expunge():
    assert parse(b"a EXPUNGE") == g.ExpungeArgs(None, False)
    assert parse(b"a UID EXPUNGE 3000:3002") == g.ExpungeArgs(g.SequenceSet(((3000, 3002),)),
                                                             True)
    bad(b"a EXPUNGE 1")
    bad(b"a UID EXPUNGE")


def test_uid_needs_a_known_subcommand():
    bad(b"a UID")
    bad(b"a UID NOOP")
    bad(b"a UID (FETCH)")


# -- authentication ------------------------------------------------------------------------

def test_login():
    assert parse(b"a LOGIN fred secret") == g.LoginArgs(b"fred", b"secret")
    assert parse(b'a LOGIN "fred smith" "a\\"b"') == g.LoginArgs(b"fred smith", b'a"b')
    assert parse(b"a LOGIN {4+}\r\nfred {2+}\r\n\x80x") == g.LoginArgs(b"fred", b"\x80x")
    assert parse(b"a LOGIN fred] x]") == g.LoginArgs(b"fred]", b"x]")
    bad(b"a LOGIN fred")
    bad(b"a LOGIN fred a b")
    bad(b"a LOGIN (fred) x")
    bad(b"a LOGIN fr%d x")


def test_authenticate():
    assert parse(b"a AUTHENTICATE plain") == g.AuthenticateArgs("PLAIN", None)
    assert parse(b"a AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0") == g.AuthenticateArgs(
        "PLAIN", b"AGZyZWQAc2VjcmV0")
    assert parse(b"a AUTHENTICATE PLAIN =") == g.AuthenticateArgs("PLAIN", b"=")
    bad(b"a AUTHENTICATE")
    bad(b'a AUTHENTICATE "PLAIN"')
    bad(b"a AUTHENTICATE PLAIN a b")


def test_enable():
    assert parse(b"a ENABLE CONDSTORE utf8=accept") == g.EnableArgs(("CONDSTORE",
                                                                      "UTF8=ACCEPT"))
    bad(b"a ENABLE")
    bad(b'a ENABLE "X"')


def test_compress():
    assert parse(b"a COMPRESS deflate") == g.CompressArgs("DEFLATE")
    bad(b"a COMPRESS")


def test_id():
    assert parse(b"a ID NIL") == g.IdArgs(None)
    assert parse(b'a ID ("name" "sodr" "version" "19.34" "vendor" NIL)') == g.IdArgs(
        {"name": "sodr", "version": "19.34", "vendor": None})
    assert parse(b"a ID ()") == g.IdArgs({})
    bad(b'a ID ("name")')
    bad(b"a ID (name x)")
    bad(b'a ID ("' + b"n" * 31 + b'" "x")')
    bad(b'a ID ("n" "' + b"v" * 1025 + b'")')
    bad(b"a ID")


# -- mailbox commands -----------------------------------------------------------------------

def test_mailbox_names_decoding():
    assert parse(b"a DELETE inbox") == g.MailboxArgs("INBOX")
    assert parse(b'a DELETE "InBoX"') == g.MailboxArgs("INBOX")
    assert parse(b"a DELETE INBOX.sub") == g.MailboxArgs("INBOX.sub")
    assert parse(b"a SUBSCRIBE Entw&APw-rfe") == g.MailboxArgs("Entwürfe")
    assert parse(b"a UNSUBSCRIBE &-x") == g.MailboxArgs("&x")
    assert parse(b'a DELETE "Entw\xc3\xbcrfe"', utf8=True) == g.MailboxArgs("Entwürfe")
    assert parse(b"a DELETE Entw&APw-rfe", utf8=True) == g.MailboxArgs("Entw&APw-rfe")
    bad(b'a DELETE "Entw\xc3\xbcrfe"')              # 8-bit without UTF8=ACCEPT
    bad(b"a DELETE &Jjo")                           # unterminated mUTF-7
    bad(b'a DELETE "\xff"', utf8=True)
    bad(b"a DELETE")
    bad(b"a DELETE a b")
    bad(b"a DELETE a*")


def test_create_with_special_use():
    assert parse(b"a CREATE Sent") == g.MailboxArgs("Sent")
    assert parse(b"a CREATE MySpecial (USE (\\Drafts \\sent))") == g.MailboxArgs(
        "MySpecial", ("\\Drafts", "\\Sent"))
    bad(b"a CREATE x (USE ())")
    bad(b"a CREATE x (USE (Drafts))")
    bad(b"a CREATE x (FOO (\\Drafts))")


def test_rename():
    assert parse(b"a RENAME blurdybloop sarasoop") == g.RenameArgs("blurdybloop", "sarasoop")
    bad(b"a RENAME x")


def test_select_and_examine():
    assert parse(b"a SELECT INBOX") == g.SelectArgs("INBOX")
    assert parse(b"a EXAMINE blurdybloop") == g.SelectArgs("blurdybloop")
    assert parse(b"a SELECT INBOX (CONDSTORE)") == g.SelectArgs("INBOX", condstore=True)
    assert parse(b"a SELECT INBOX (QRESYNC (67890007 90060115194045000))") == g.SelectArgs(
        "INBOX", qresync=g.QResync(67890007, 90060115194045000))
    # RFC 7162 3.2.5.2 example
    args = parse(b"A02 SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))")
    assert args.qresync.known_uids == g.SequenceSet(((41, 211), (214, 541)))
    args = parse(b"B04 SELECT INBOX (QRESYNC (67890007 90060115194045000 "
                 b"1:29997 (5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976:29997)))")
    assert args.qresync.seq_match[0] == g.SequenceSet(
        ((5000, 5000), (7500, 7500), (9000, 9000), (9990, 9999)))
    assert args.qresync.seq_match[1].contains(29980, 30000)
    bad(b"a SELECT")
    bad(b"a SELECT INBOX ()")
    bad(b"a SELECT INBOX (FOO)")
    bad(b"a SELECT INBOX (QRESYNC)")
    bad(b"a SELECT INBOX (QRESYNC (0 1))")
    bad(b"a SELECT INBOX (QRESYNC (1))")
    bad(b"a SELECT INBOX (QRESYNC (1 2 3:4 (1:2)))")
    bad(b"a SELECT INBOX CONDSTORE")


def test_status():
    args = parse(b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)")
    assert args == g.StatusArgs("blurdybloop", ("UIDNEXT", "MESSAGES"))
    every = b" ".join(sorted(i.encode() for i in g.STATUS_ITEMS))
    assert set(parse(b"a STATUS x (" + every.lower() + b")").items) == g.STATUS_ITEMS
    bad(b"a STATUS x ()")
    bad(b"a STATUS x (FOO)")
    bad(b"a STATUS x MESSAGES")
    bad(b"a STATUS (MESSAGES)")


def test_list_basic():
    assert parse(b'A101 LIST "" ""') == g.ListArgs("", ("",))
    assert parse(b"A102 LIST #news.comp.mail.misc ~/Mail/%") == g.ListArgs(
        "#news.comp.mail.misc", ("~/Mail/%",))
    assert parse(b'a LIST "" inbox') == g.ListArgs("", ("INBOX",))
    assert parse(b'a LIST "" *') == g.ListArgs("", ("*",))
    assert parse(b'a LIST "" "&AOk-*"') == g.ListArgs("", ("é*",))
    bad(b"a LIST")
    bad(b'a LIST ""')
    bad(b'a LIST "" * extra')


def test_list_extended():
    args = parse(b'A02 LIST (SUBSCRIBED) "" "*"')
    assert args.selection == {"SUBSCRIBED"} and args.extended
    args = parse(b'A03 LIST () "" "%" RETURN (CHILDREN)')
    assert args.returns == {"CHILDREN"} and args.extended and not args.selection
    args = parse(b'A04 LIST (REMOTE SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Drafts") '
                 b'RETURN (SUBSCRIBED special-use)')
    assert args.patterns == ("INBOX", "Drafts")
    assert args.returns == {"SUBSCRIBED", "SPECIAL-USE"}
    args = parse(b'A01 LIST "" % RETURN (STATUS (MESSAGES UNSEEN))')
    assert args.status_items == ("MESSAGES", "UNSEEN") and args.returns == {"STATUS"}
    args = parse(b'a LIST (SPECIAL-USE) "" *')
    assert args.selection == {"SPECIAL-USE"}
    assert not parse(b'a LIST "" *').extended
    bad(b'a LIST (RECURSIVEMATCH) "" *')
    bad(b'a LIST (RECURSIVEMATCH REMOTE) "" *')
    bad(b'a LIST (FOO) "" *')
    bad(b'a LIST "" * RETURN (FOO)')
    bad(b'a LIST "" * RETURN (STATUS)')
    bad(b'a LIST "" * RETURN (STATUS ())')
    bad(b'a LIST "" * RETURN CHILDREN')
    bad(b'a LIST "" ()')


def test_lsub():
    assert parse(b'A002 LSUB "#news." "comp.mail.*"') == g.ListArgs(
        "#news.", ("comp.mail.*",), frozenset({"SUBSCRIBED"}))
    bad(b'a LSUB ""')


def test_quota_commands():
    assert parse(b'G GETQUOTAROOT inbox') == g.QuotaRootArgs("INBOX")
    assert parse(b'G GETQUOTA ""') == g.QuotaArgs("")
    assert parse(b'S SETQUOTA "" (STORAGE 512 message 100)') == g.SetQuotaArgs(
        "", (("STORAGE", 512), ("MESSAGE", 100)))
    bad(b"S SETQUOTA x (STORAGE)")
    bad(b"G GETQUOTA")


# -- APPEND --------------------------------------------------------------------------------

MSG = b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nSubject: hi\r\n\r\nHello\r\n"


def append(prefix: bytes, data: bytes = MSG, lit: bytes = b"{%d+}"):
    return parse(prefix + b" " + lit % len(data) + b"\r\n" + data)


def test_append_plain():
    args = append(b"A003 APPEND saved-messages (\\Seen)")
    assert args == g.AppendArgs("saved-messages", ("\\Seen",), None, MSG)
    assert append(b"a APPEND INBOX") == g.AppendArgs("INBOX", (), None, MSG)


def test_append_with_date_and_keywords():
    args = append(b'a APPEND x (\\seen $Forwarded \\DRAFT) "07-Feb-1994 21:52:25 -0800"')
    assert args.flags == ("\\Seen", "$Forwarded", "\\Draft")
    assert args.date == datetime.datetime(1994, 2, 8, 5, 52, 25,
                                          tzinfo=datetime.UTC).timestamp()
    assert append(b'a APPEND x " 7-Feb-1994 21:52:25 +0000"').date == datetime.datetime(
        1994, 2, 7, 21, 52, 25, tzinfo=datetime.UTC).timestamp()
    assert append(b'a APPEND x () "7-feb-1994 21:52:25 +0000"').flags == ()


def test_append_binary_and_utf8_forms():
    data = b"Subject: x\r\n\r\n\x00\x01"
    args = append(b"a APPEND x", data, b"~{%d+}")
    assert args.binary and args.data == data
    args = parse(b"a APPEND x UTF8 (~{%d+}\r\n" % len(MSG) + MSG + b")")
    assert args.utf8 and args.binary and args.data == MSG


@pytest.mark.parametrize("line", [
    b"a APPEND x", b"a APPEND", b'a APPEND x "abc"', b"a APPEND x abc",
    b'a APPEND x "31-Feb-1994 21:52:25 -0800" {1+}\r\nx',
    b'a APPEND x "07-Feb-1994 21:52 -0800" {1+}\r\nx',
    b'a APPEND x "07-Fob-1994 21:52:25 -0800" {1+}\r\nx',
    b'a APPEND x "07-Feb-1994 25:52:25 -0800" {1+}\r\nx',
    b"a APPEND x (\\Recent) {1+}\r\nx", b"a APPEND x (\\Foo) {1+}\r\nx",
    b"a APPEND x (\\*) {1+}\r\nx", b"a APPEND x {1+}\r\nx {1+}\r\ny",
    b"a APPEND x {3+}\r\na\x00b", b"a APPEND x UTF8 ({1+}\r\nx)", b"a APPEND x UTF8 {1+}\r\nx",
    b"a APPEND x (\\Seen) NIL {1+}\r\nx",
])
def test_append_errors(line):
    bad(line)


# -- FETCH --------------------------------------------------------------------------------------

def items(spec: bytes) -> tuple:
    return parse(b"a FETCH 1 " + spec).items


def test_fetch_simple_items_and_macros():
    assert items(b"flags") == (g.FetchItem("FLAGS"),)
    assert items(b"(UID RFC822.SIZE INTERNALDATE ENVELOPE BODY BODYSTRUCTURE RFC822 "
                 b"RFC822.HEADER RFC822.TEXT MODSEQ)") == tuple(g.FetchItem(n) for n in (
                     "UID", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "BODY",
                     "BODYSTRUCTURE", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"))
    assert [i.name for i in items(b"ALL")] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE",
                                                "ENVELOPE"]
    assert [i.name for i in items(b"fast")] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert [i.name for i in items(b"FULL")] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE",
                                                 "ENVELOPE", "BODY"]


def test_fetch_sections():
    [i] = items(b"BODY[]")
    assert i == g.FetchItem("BODY[]", g.Section())
    assert i.response_name() == b"BODY[]" and i.sets_seen
    [i] = items(b"body.peek[1.2.MIME]<0.100>")
    assert i == g.FetchItem("BODY[]", g.Section((1, 2), "MIME"), True, (0, 100))
    assert i.response_name() == b"BODY[1.2.MIME]<0>" and not i.sets_seen
    [i] = items(b"BODY[HEADER.FIELDS (DATE FROM)]")
    assert i.section == g.Section((), "HEADER.FIELDS", ("DATE", "FROM"))
    [i] = items(b"BODY.PEEK[HEADER.FIELDS.NOT (x-priority References)]<10.20>")
    assert i.response_name() == b"BODY[HEADER.FIELDS.NOT (X-PRIORITY REFERENCES)]<10>"
    [i] = items(b'BODY[2.HEADER.FIELDS ("Subject" To)]')
    assert i.section == g.Section((2,), "HEADER.FIELDS", ("SUBJECT", "TO"))
    [i] = items(b"BODY[3.TEXT]")
    assert i.section == g.Section((3,), "TEXT") and i.response_name() == b"BODY[3.TEXT]"
    [i] = items(b"BODY[TEXT]<0.2048>")
    assert i.partial == (0, 2048)
    [i] = items(b"BODY[4]")
    assert i.section == g.Section((4,))


def test_fetch_binary():
    [i] = items(b"BINARY[1.2]")
    assert i == g.FetchItem("BINARY[]", g.Section((1, 2)))
    [i] = items(b"BINARY.PEEK[]<0.10>")
    assert i.peek and i.partial == (0, 10) and i.response_name() == b"BINARY[]<0>"
    [i] = items(b"BINARY.SIZE[3]")
    assert i == g.FetchItem("BINARY.SIZE[]", g.Section((3,)))
    assert i.response_name() == b"BINARY.SIZE[3]"


@pytest.mark.parametrize("spec", [
    b"FOO", b"()", b"(ALL)", b"BODY[MIME]", b"BODY[0]", b"BODY[1.0]", b"BODY[HEADER.FIELDS]",
    b"BODY[HEADER.FIELDS ()]", b"BODY[HEADER (x)]", b"BODY[TEXT.1]", b"BODY[]<0>",
    b"BODY[]<0.0>", b"BODY[]<a.1>", b"BINARY[TEXT]", b"BINARY[1.MIME]", b"BINARY.SIZE[1]<0.1>",
    b"BODY[1]x", b"BODY[HEADER.FIELDS (a:b)]", b'"FLAGS"', b"BODY[X]", b"BODY.PEEK",
])
def test_fetch_item_errors(spec):
    bad(b"a FETCH 1 " + spec)


def test_fetch_modifiers():
    args = parse(b"s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)")
    assert args.changedsince == 12345 and args.vanished and args.uid
    args = parse(b"s100 FETCH 1:* (FLAGS) (CHANGEDSINCE 0)")
    assert args.changedsince == 0 and not args.vanished and not args.uid
    bad(b"a FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)")           # VANISHED needs UID
    bad(b"a UID FETCH 1:* FLAGS (VANISHED)")
    bad(b"a FETCH 1 FLAGS (CHANGEDSINCE)")
    bad(b"a FETCH 1 FLAGS (CHANGEDSINCE x)")
    bad(b"a FETCH 1 FLAGS ()")
    bad(b"a FETCH 1 FLAGS (FOO 1)")
    bad(b"a FETCH 1 FLAGS CHANGEDSINCE")
    bad(b"a FETCH 1")
    bad(b"a FETCH FLAGS")


# -- STORE --------------------------------------------------------------------------------------

def test_store_forms():
    assert parse(b"A003 STORE 2:4 +FLAGS (\\Deleted)") == g.StoreArgs(
        g.SequenceSet(((2, 4),)), "+", False, ("\\Deleted",))
    args = parse(b"a UID STORE 1 -flags.silent (\\seen $Junk)")
    assert (args.mode, args.silent, args.flags, args.uid) == ("-", True, ("\\Seen", "$Junk"),
                                                              True)
    assert parse(b"a STORE 1 FLAGS ()").flags == ()
    assert parse(b"a STORE 1 FLAGS \\Seen \\Flagged").flags == ("\\Seen", "\\Flagged")
    args = parse(b"d105 STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)")
    assert args.unchangedsince == 320162338 and args.silent


@pytest.mark.parametrize("line", [
    b"a STORE 1 +FLAGS (\\Recent)", b"a STORE 1 +FLAGS (\\*)", b"a STORE 1 FLAGS (\\Bogus)",
    b"a STORE 1 FOO (\\Seen)", b"a STORE 1 +FLAGS", b"a STORE 1 *FLAGS (x)",
    b"a STORE 1 FLAGS (a]b)", b'a STORE 1 FLAGS ("x")', b"a STORE 1 (UNCHANGEDSINCE) FLAGS ()",
    b"a STORE 1 (FOO 1) FLAGS ()", b"a STORE +FLAGS (\\Seen)", b"a STORE 1 FLAGS ((x))",
])
def test_store_errors(line):
    bad(line)


# -- COPY / MOVE ----------------------------------------------------------------------------------

def test_copy_and_move():
    assert parse(b"A003 COPY 2:4 MEETING") == g.CopyArgs(g.SequenceSet(((2, 4),)), "MEETING")
    assert parse(b"a UID MOVE 42:69 foo") == g.CopyArgs(g.SequenceSet(((42, 69),)), "foo",
                                                        True)
    assert parse(b"a MOVE $ inbox").seqset.saved
    bad(b"a COPY 1")
    bad(b"a MOVE x y")


# -- SEARCH ---------------------------------------------------------------------------------------

def key(text: bytes, **kw):
    return parse(b"a SEARCH " + text, **kw).key


D = datetime.date


@pytest.mark.parametrize("text, expected", [
    (b"ALL", g.All()),
    (b"ANSWERED", g.FlagKey("\\Answered", True)),
    (b"DELETED", g.FlagKey("\\Deleted", True)),
    (b"DRAFT", g.FlagKey("\\Draft", True)),
    (b"FLAGGED", g.FlagKey("\\Flagged", True)),
    (b"SEEN", g.FlagKey("\\Seen", True)),
    (b"UNANSWERED", g.FlagKey("\\Answered", False)),
    (b"UNDELETED", g.FlagKey("\\Deleted", False)),
    (b"UNDRAFT", g.FlagKey("\\Draft", False)),
    (b"UNFLAGGED", g.FlagKey("\\Flagged", False)),
    (b"UNSEEN", g.FlagKey("\\Seen", False)),
    (b"KEYWORD $Junk", g.FlagKey("$Junk", True)),
    (b"UNKEYWORD foo", g.FlagKey("foo", False)),
    (b"RECENT", g.RecentKey(True)),
    (b"OLD", g.RecentKey(False)),
    (b"NEW", g.And((g.RecentKey(True), g.FlagKey("\\Seen", False)))),
    (b"BCC fred", g.HeaderKey("BCC", "fred")),
    (b"CC fred", g.HeaderKey("CC", "fred")),
    (b'FROM "Smith"', g.HeaderKey("FROM", "Smith")),
    (b"TO x", g.HeaderKey("TO", "x")),
    (b'SUBJECT ""', g.HeaderKey("SUBJECT", "")),
    (b'HEADER list-id "python"', g.HeaderKey("LIST-ID", "python")),
    (b"BODY hello", g.TextKey("BODY", "hello")),
    (b"TEXT {5+}\r\nhe lo", g.TextKey("TEXT", "he lo")),
    (b"BEFORE 1-Feb-1994", g.DateKey("BEFORE", D(1994, 2, 1))),
    (b'ON "01-feb-1994"', g.DateKey("ON", D(1994, 2, 1))),
    (b"SINCE 31-Dec-2020", g.DateKey("SINCE", D(2020, 12, 31))),
    (b"SENTBEFORE 1-Jan-2000", g.DateKey("BEFORE", D(2000, 1, 1), True)),
    (b"SENTON 1-Jan-2000", g.DateKey("ON", D(2000, 1, 1), True)),
    (b"SENTSINCE 1-Jan-2000", g.DateKey("SINCE", D(2000, 1, 1), True)),
    (b"LARGER 100", g.SizeKey(True, 100)),
    (b"SMALLER 0", g.SizeKey(False, 0)),
    (b"UID 1:5", g.SeqKey(g.SequenceSet(((1, 5),)), True)),
    (b"UID $", g.SeqKey(g.SequenceSet((), True), True)),
    (b"2,4:*", g.SeqKey(g.SequenceSet(((2, 2), (4, None))))),
    (b"$", g.SeqKey(g.SequenceSet((), True))),
    (b"NOT SEEN", g.Not(g.FlagKey("\\Seen", True))),
    (b"OR SEEN FLAGGED", g.Or(g.FlagKey("\\Seen", True), g.FlagKey("\\Flagged", True))),
    (b"(SEEN)", g.FlagKey("\\Seen", True)),
    (b"MODSEQ 620162338", g.ModSeqKey(620162338)),
    (b'MODSEQ "/flags/\\\\draft" all 620162338',
     g.ModSeqKey(620162338, "/flags/\\draft", "all")),
])
def test_every_search_key(text, expected):
    assert key(text) == expected


def test_search_program_is_an_and_with_cheap_keys_first():
    k = key(b"BODY x FROM y SEEN 1:3 SENTON 1-Jan-2000 LARGER 5")
    assert k == g.And((g.FlagKey("\\Seen", True), g.SeqKey(g.SequenceSet(((1, 3),))),
                       g.SizeKey(True, 5), g.HeaderKey("FROM", "y"),
                       g.DateKey("ON", D(2000, 1, 1), True), g.TextKey("BODY", "x")))


def test_rfc_search_examples():
    k = key(b'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
    assert k == g.And((g.FlagKey("\\Flagged", True), g.DateKey("SINCE", D(1994, 2, 1)),
                       g.Not(g.HeaderKey("FROM", "Smith"))))
    args = parse(b'A284 SEARCH CHARSET UTF-8 TEXT {12+}\r\n\xd0\xb8\xd0\xbc\xd0\xb0\xd0\xbf'
                 b'\xd0\xb0\xd0\xbf')
    assert args.charset == "UTF-8" and args.key == g.TextKey("TEXT", "имапап")
    args = parse(b"A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM \"Smith\"")
    assert args.return_opts == ("MIN", "COUNT")
    assert parse(b"A283 SEARCH RETURN () FLAGGED").return_opts == ("ALL",)
    assert parse(b"a UID SEARCH RETURN (SAVE) UNSEEN").uid
    assert parse(b"a SEARCH UNSEEN").return_opts is None


def test_nested_or_and_groups():
    k = key(b"OR (SEEN FLAGGED) NOT (DELETED OR DRAFT ANSWERED)")
    assert k == g.Or(g.And((g.FlagKey("\\Seen", True), g.FlagKey("\\Flagged", True))),
                     g.Not(g.And((g.FlagKey("\\Deleted", True),
                                  g.Or(g.FlagKey("\\Draft", True),
                                       g.FlagKey("\\Answered", True))))))


def test_search_charsets():
    assert parse(b"a SEARCH CHARSET us-ascii ALL").charset == "US-ASCII"
    with pytest.raises(g.BadCharset) as info:
        parse(b"a SEARCH CHARSET KOI8-R ALL")
    assert info.value.charsets == ("US-ASCII", "UTF-8")
    bad(b'a SEARCH CHARSET US-ASCII SUBJECT "\xc3\xa9"')
    bad(b"a SEARCH CHARSET UTF-8 ALL", utf8=True)         # RFC 6855 3
    assert parse(b'a SEARCH SUBJECT "\xc3\xa9"', utf8=True).key == g.HeaderKey("SUBJECT", "é")


def test_search_depth_is_bounded():
    bad(b"a SEARCH " + b"NOT " * 300 + b"ALL")
    assert isinstance(key(b"NOT " * 100 + b"ALL"), g.Not)


@pytest.mark.parametrize("text", [
    b"", b"FOO", b"BEFORE", b"BEFORE 1-Foo-2000", b"BEFORE 32-Jan-2000", b"BEFORE 2000-01-01",
    b"ON {10+}\r\n1-Jan-2000", b"LARGER", b"LARGER x", b"LARGER -1", b"HEADER", b"HEADER x",
    b"HEADER a:b x", b"OR SEEN", b"NOT", b"()", b"UID", b"UID x", b"0", b"KEYWORD \\Recent",
    b"KEYWORD", b"KEYWORD a]b", b"MODSEQ", b'MODSEQ "/flags/x" 5', b'MODSEQ "/flags/x" foo 5',
    b"RETURN (FOO) ALL", b"RETURN (MIN)", b"CHARSET", b"SUBJECT (x)", b"FUZZY x",
])
def test_search_errors(text):
    bad(b"a SEARCH " + text)


# -- flags and dates helpers -------------------------------------------------------

def test_parse_flag():
    from indimail_tw.imap4.tokens import Atom, String
    assert g.parse_flag(Atom(b"\\ANSWERED")) == "\\Answered"
    assert g.parse_flag(Atom(b"$MDNSent")) == "$MDNSent"
    assert g.parse_flag(Atom(b"\\recent"), allow_recent=True) == "\\Recent"
    for t in (Atom(b"\\Recent"), Atom(b"\\*"), Atom(b"a*"), Atom(b"a%"), String(b"x"),
              Atom(b"\\"), Atom(b"\xc3\xa9")):
        with pytest.raises(g.BadArgs):
            g.parse_flag(t)


def test_parse_date_time_zones():
    from indimail_tw.imap4.tokens import String
    t = g.parse_date_time(String(b"17-Jul-1996 02:44:25 -0700"))
    assert t == datetime.datetime(1996, 7, 17, 9, 44, 25, tzinfo=datetime.UTC).timestamp()
    with pytest.raises(g.BadArgs):
        g.parse_date_time(String(b"17-Jul-1996 02:44:25 0700"))


# -- fuzzing ---------------------------------------------------------------------

_NAMES = [b"FETCH", b"UID FETCH", b"STORE", b"UID STORE", b"SEARCH", b"UID SEARCH", b"COPY",
          b"MOVE", b"UID EXPUNGE", b"APPEND", b"SELECT", b"EXAMINE", b"LIST", b"LSUB",
          b"STATUS", b"CREATE", b"RENAME", b"LOGIN", b"AUTHENTICATE", b"ENABLE", b"ID",
          b"SETQUOTA", b"GETQUOTA", b"GETQUOTAROOT", b"COMPRESS", b"NOOP", b"EXPUNGE"]
_WORDS = [b"1", b"1:*", b"*", b"$", b"0", b"2,4:5", b"(", b")", b"()", b'""', b'"x"', b"NIL",
          b"FLAGS", b"+FLAGS.SILENT", b"\\Seen", b"\\Recent", b"BODY[]", b"BODY.PEEK[1.MIME]",
          b"BINARY[1]<0.5>", b"BODY[HEADER.FIELDS (a b)]", b"<0.1>", b"ALL", b"OR", b"NOT",
          b"SINCE", b"1-Jan-2000", b"HEADER", b"UID", b"RETURN", b"CHARSET", b"UTF-8",
          b"CHANGEDSINCE", b"VANISHED", b"UNCHANGEDSINCE", b"QRESYNC", b"CONDSTORE",
          b"STATUS", b"MESSAGES", b"USE", b"\\Drafts", b"UTF8", b"{1+}\r\nx", b"~{1+}\r\n\x00",
          b'"07-Feb-1994 21:52:25 -0800"', b"INBOX", b"&AOk-", b"MODSEQ", b"KEYWORD", b"%",
          b"99999999999999999999999", b"SUBSCRIBED", b"RECURSIVEMATCH", b"SPECIAL-USE",
          b"STORAGE", b"TEXT", b"LARGER", b"=", b"PLAIN"]


def test_fuzz_grammar_raises_only_its_own_errors():
    import random

    from indimail_tw.imap4.parser import ParseError
    rng = random.Random(99)
    parsed = 0
    for _ in range(4000):
        line = b"t " + rng.choice(_NAMES) + b"".join(
            b" " + rng.choice(_WORDS) for _ in range(rng.randrange(8)))
        for event in IMAPParser().feed(line + b"\r\n"):
            if isinstance(event, ParseError):
                continue
            if not isinstance(event, Command):
                continue
            for utf8 in (False, True):
                try:
                    g.parse(event, utf8=utf8)
                    parsed += 1
                except (g.BadArgs, g.BadCharset):
                    pass
    assert parsed > 50
