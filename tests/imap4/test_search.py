"""SEARCH evaluation: every key against a fake message, laziness, RFC semantics."""

from __future__ import annotations

import calendar
import datetime
from dataclasses import dataclass, field

import pytest

from indimail_tw.imap4 import grammar as g
from indimail_tw.imap4.parser import IMAPParser
from indimail_tw.imap4.search import SearchMessage, matches
from indimail_tw.imap4.tokens import Command

UTC = datetime.UTC


def epoch(*args) -> float:
    return datetime.datetime(*args, tzinfo=UTC).timestamp()


@dataclass
class FakeMessage:
    seq: int = 3
    uid: int = 30
    flags: frozenset = frozenset({"\\Seen", "$Junk"})
    recent: bool = False
    internaldate: float = epoch(2020, 3, 15, 23, 30)
    rfc822_size: int = 1000
    modseq: int = 50
    largest_seq: int = 10
    largest_uid: int = 100
    headers: dict = field(default_factory=lambda: {
        "FROM": ["Fred Smith <fred@example.org>"],
        "TO": ["Ann <ann@example.com>", "bob@example.net"],
        "CC": [], "SUBJECT": ["Grüße aus Köln"], "LIST-ID": [""],
    })
    body: str = "Hello WORLD, the quick brown fox.\n"
    date: float | datetime.date | None = calendar.timegm((2020, 3, 14, 0, 0, 0))
    calls: list = field(default_factory=list)

    def header_values(self, name: str) -> list[str]:
        self.calls.append(("header_values", name))
        return self.headers.get(name.upper(), [])

    def header_text(self) -> str:
        self.calls.append(("header_text",))
        return "".join(f"{k}: {v}\n" for k, vs in self.headers.items() for v in vs)

    def body_text(self) -> str:
        self.calls.append(("body_text",))
        return self.body

    def sent_date(self):
        self.calls.append(("sent_date",))
        return self.date


def key(text: bytes | str):
    if isinstance(text, str):
        text = text.encode("utf-8")
    [command] = [e for e in IMAPParser().feed(b"a SEARCH " + text + b"\r\n")
                 if isinstance(e, Command)]
    return g.parse(command).key


def check(text: bytes | str, msg: FakeMessage | None = None, **kw) -> bool:
    return matches(key(text), msg or FakeMessage(), tz=UTC, **kw)


def test_fake_message_satisfies_the_protocol():
    msg: SearchMessage = FakeMessage()
    assert msg.uid == 30


@pytest.mark.parametrize("text, expected", [
    (b"ALL", True),
    (b"SEEN", True), (b"UNSEEN", False),
    (b"ANSWERED", False), (b"UNANSWERED", True),
    (b"DELETED", False), (b"UNDELETED", True),
    (b"DRAFT", False), (b"UNDRAFT", True),
    (b"FLAGGED", False), (b"UNFLAGGED", True),
    (b"KEYWORD $Junk", True), (b"KEYWORD $junk", True), (b"KEYWORD $NotJunk", False),
    (b"UNKEYWORD $Junk", False), (b"UNKEYWORD other", True),
    (b"RECENT", False), (b"OLD", True), (b"NEW", False),
    (b"FROM smith", True), (b"FROM SMITH", True), (b"FROM example.org", True),
    (b"FROM ann", False),
    (b"TO example.net", True), (b"TO fred", False),
    (b"CC x", False), (b'CC ""', False),              # CC present but no values
    (b"BCC x", False),
    ('SUBJECT "GRÜSSE"', True), ('SUBJECT "grüße aus"', True), ('SUBJECT "KÖLN"', True),
    (b'SUBJECT ""', True),
    (b'HEADER List-Id ""', True),                      # present, empty value
    (b'HEADER X-Missing ""', False),
    (b'HEADER from "fred@"', True),
    (b"BODY quick", True), (b"BODY QUICK", True), (b"BODY Smith", False),
    (b"TEXT Smith", True), (b"TEXT brown", True), (b"TEXT zebra", False),
    (b'BODY ""', True),
    (b"BEFORE 15-Mar-2020", False), (b"BEFORE 16-Mar-2020", True),
    (b"ON 15-Mar-2020", True), (b"ON 16-Mar-2020", False),
    (b"SINCE 15-Mar-2020", True), (b"SINCE 16-Mar-2020", False),
    (b"SENTBEFORE 14-Mar-2020", False), (b"SENTBEFORE 15-Mar-2020", True),
    (b"SENTON 14-Mar-2020", True), (b"SENTSINCE 14-Mar-2020", True),
    (b"SENTSINCE 15-Mar-2020", False),
    (b"LARGER 999", True), (b"LARGER 1000", False),
    (b"SMALLER 1001", True), (b"SMALLER 1000", False),
    (b"3", True), (b"1:2,4:*", False), (b"*", False), (b"2:4", True), (b"5:1", True),
    (b"UID 30", True), (b"UID 1:29,31:*", False), (b"UID 200:*", False),
    (b"MODSEQ 50", True), (b"MODSEQ 51", False), (b'MODSEQ "/flags/\\\\seen" all 10', True),
    (b"NOT SEEN", False), (b"NOT NOT SEEN", True),
    (b"OR DELETED SEEN", True), (b"OR DELETED DRAFT", False),
    (b"(SEEN FROM fred)", True), (b"(SEEN FROM nobody)", False),
    (b"SEEN FROM fred LARGER 10", True), (b"SEEN FROM fred LARGER 10000", False),
])
def test_every_key(text, expected):
    assert check(text) is expected


def test_star_means_largest():
    msg = FakeMessage(seq=10, uid=100)
    assert check(b"*", msg) and check(b"UID *", msg) and check(b"UID 200:*", msg)
    assert check(b"9:*", msg) and not check(b"UID 101:105", msg)


def test_recent_and_new():
    msg = FakeMessage(recent=True, flags=frozenset())
    assert check(b"RECENT", msg) and check(b"NEW", msg) and not check(b"OLD", msg)
    msg = FakeMessage(recent=True)
    assert not check(b"NEW", msg)


def test_saved_result():
    assert check(b"$", saved={30})
    assert not check(b"$", saved={31})
    assert not check(b"$")                      # nothing saved
    assert check(b"UID $", saved={30, 40})


def test_internal_date_uses_the_given_zone():
    # 23:30 UTC on the 15th is already the 16th at UTC+1.
    plus1 = datetime.timezone(datetime.timedelta(hours=1))
    assert matches(key(b"ON 16-Mar-2020"), FakeMessage(), tz=plus1)
    assert matches(key(b"ON 15-Mar-2020"), FakeMessage(), tz=UTC)


def test_sent_date_forms_and_fallback():
    assert check(b"SENTON 14-Mar-2020", FakeMessage(date=datetime.date(2020, 3, 14)))
    assert check(b"SENTON 14-Mar-2020",
                 FakeMessage(date=datetime.datetime(2020, 3, 14, 23, 59)))
    # No Date: header: the internal date is used.
    assert check(b"SENTON 15-Mar-2020", FakeMessage(date=None))


def test_lazy_accessors():
    msg = FakeMessage(flags=frozenset())
    assert not matches(key(b"BODY quick TEXT x SUBJECT y SENTON 1-Jan-2000 SEEN"), msg)
    assert msg.calls == []                      # SEEN fails first, nothing else read
    msg = FakeMessage()
    assert matches(key(b"SEEN LARGER 5"), msg) and msg.calls == []
    msg = FakeMessage()
    assert not matches(key(b"BODY quick FROM nobody"), msg)
    assert msg.calls == [("header_values", "FROM")]
    msg = FakeMessage()
    assert matches(key(b"TEXT quick TEXT brown BODY fox"), msg)
    assert msg.calls.count(("body_text",)) == 1 and msg.calls.count(("header_text",)) == 1


def test_text_matches_header_without_reading_body():
    msg = FakeMessage()
    assert matches(key(b"TEXT fred"), msg)
    assert ("body_text",) not in msg.calls


def test_unknown_key_object_is_a_programming_error():
    with pytest.raises(TypeError):
        matches(object(), FakeMessage())


def test_deep_programs_evaluate():
    assert check(b"NOT " * 150 + b"SEEN") is True
    assert check(b"OR " * 100 + b"DELETED " * 100 + b"SEEN") is True
