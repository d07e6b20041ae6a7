"""Typed arguments of IMAP commands (RFC 9051, RFC 3501 and the extensions we offer).

:func:`parse` turns a :class:`~indimail_tw.imap4.tokens.Command` into one
argument object per command (the dataclasses below).  Malformed arguments
raise :class:`BadArgs` (the session answers ``tag BAD text``); an unknown
command raises :class:`UnknownCommand` (a :class:`BadArgs`); SEARCH with a
charset we do not know raises :class:`BadCharset` (``tag NO [BADCHARSET
(...)] text``).

Conventions: mailbox names are decoded ``str`` (modified UTF-7, or UTF-8
after ``ENABLE UTF8=ACCEPT``), ``INBOX`` in any case is ``"INBOX"``; option
and item names are upper-case ``str``; system flags are canonical
(``\\Seen``), keywords keep their case; dates are epoch seconds (``float``)
for APPEND and :class:`datetime.date` for SEARCH.  Semantic checks that need
state (is a mailbox selected, was QRESYNC enabled, does a mailbox exist) are
the session's.
"""

from __future__ import annotations

import bisect
import calendar
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from indimail_tw.imap4.tokens import Atom, Command, List, String
from indimail_tw.imap4.wire import MUTF7Error, mutf7_decode

MAX_NUMBER = 2**32 - 1              # nz-number, uniqueid
MAX_NUMBER64 = 2**63 - 1            # number64, mod-sequence-value (RFC 9051, 7162)
MAX_SEARCH_DEPTH = 200              # nesting of NOT/OR/( ) in a SEARCH program

SYSTEM_FLAGS = {f.upper(): f for f in
                ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
STATUS_ITEMS = frozenset({"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED",
                          "SIZE", "RECENT", "HIGHESTMODSEQ", "APPENDLIMIT"})
SEARCH_CHARSETS = ("US-ASCII", "UTF-8")
SEARCH_RETURN_OPTS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})
LIST_SELECTION_OPTS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN_OPTS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
SPECIAL_USES = frozenset({"\\ALL", "\\ARCHIVE", "\\DRAFTS", "\\FLAGGED", "\\JUNK",
                          "\\SENT", "\\TRASH", "\\IMPORTANT"})
FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
FETCH_SIMPLE = frozenset({"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY",
                          "BODYSTRUCTURE", "RFC822", "RFC822.HEADER", "RFC822.TEXT",
                          "MODSEQ"})
MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}

_NUMBER = re.compile(rb"[0-9]+\Z")
_SEQ_NUMBER = rb"(?:[1-9][0-9]*|\*)"
_SEQSET = re.compile(rb"%s(?::%s)?(?:,%s(?::%s)?)*\Z" % ((_SEQ_NUMBER,) * 4))
# ATOM-CHAR: no atom-specials ( ) { SP CTL % * " \ ]
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+\Z')
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_DATE_TIME = re.compile(r"([ 0-9][0-9]|[0-9])-([A-Za-z]{3})-([0-9]{4}) "
                        r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z")


class BadArgs(Exception):
    """The arguments do not follow the grammar: answer ``tag BAD text``."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class UnknownCommand(BadArgs):
    """A command name we do not implement: ``tag BAD text``."""


class BadCharset(Exception):
    """SEARCH CHARSET we do not support: ``tag NO [BADCHARSET (charsets)] text``."""

    def __init__(self, charsets: tuple[str, ...] = SEARCH_CHARSETS):
        super().__init__("Unsupported charset")
        self.charsets = charsets
        self.text = "Unsupported charset"


# -- sequence sets ------------------------------------------------------------

@dataclass(frozen=True)
class SequenceSet:
    """A sequence set; ``None`` in a range stands for ``*``.

    ``saved`` is ``$`` (RFC 5182, the result SEARCH RETURN (SAVE) kept): then
    ``ranges`` is empty and the session substitutes the saved result.
    Ranges keep the client's order (``5:2`` is ``(5, 2)``).
    """

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False

    def bounds(self, largest: int) -> list[tuple[int, int]]:
        """The ranges as (low, high) with ``*`` = ``largest``, high clipped to ``largest``."""
        out = []
        for a, b in self.ranges:
            a = largest if a is None else a
            b = largest if b is None else b
            lo, hi = (a, b) if a <= b else (b, a)
            hi = min(hi, largest)
            if lo <= hi:
                out.append((lo, hi))
        return out

    def resolve(self, largest: int) -> list[int]:
        """The numbers in 1..largest the set names, sorted and unique.

        Suited to message sequence numbers; for UIDs test the existing UIDs
        with :meth:`contains` (or :meth:`bounds`) instead.
        """
        if largest <= 0:
            return []
        seen: set[int] = set()
        for lo, hi in self.bounds(largest):
            seen.update(range(lo, hi + 1))
        return sorted(seen)

    def members(self, existing: Sequence[int], largest: int | None = None) -> list[int]:
        """The values of the sorted ``existing`` numbers (e.g. a mailbox's UIDs) in the set.

        ``*`` is ``largest``, by default the last of ``existing``.  Costs a
        binary search per range, so ``UID FETCH 1:4294967295`` is cheap.
        """
        if not existing:
            return []
        if largest is None:
            largest = existing[-1]
        bounds = []
        for a, b in self.ranges:
            a = largest if a is None else a
            b = largest if b is None else b
            bounds.append((a, b) if a <= b else (b, a))
        bounds.sort()
        out: list[int] = []
        last = 0
        for lo, hi in bounds:
            lo = max(lo, last + 1)
            if lo > hi:
                continue
            out.extend(existing[bisect.bisect_left(existing, lo):bisect.bisect_right(existing, hi)])
            last = hi
        return out

    def contains(self, n: int, largest: int) -> bool:
        for a, b in self.ranges:
            a = largest if a is None else a
            b = largest if b is None else b
            if (a <= n <= b) or (b <= n <= a):
                return True
        return False

    def out_of_range(self, largest: int) -> bool:
        """True when an explicit number exceeds ``largest`` (RFC 3501 6.4.8: BAD)."""
        return any(x is not None and x > largest for r in self.ranges for x in r)

    def __str__(self) -> str:
        if self.saved:
            return "$"
        def num(x: int | None) -> str:
            return "*" if x is None else str(x)
        return ",".join(num(a) if a == b else f"{num(a)}:{num(b)}" for a, b in self.ranges)


def parse_sequence_set(token, allow_saved: bool = True) -> SequenceSet:
    if not isinstance(token, Atom):
        raise BadArgs("Invalid sequence set")
    raw = token.value
    if raw == b"$":
        if not allow_saved:
            raise BadArgs("Invalid sequence set")
        return SequenceSet((), saved=True)
    if not _SEQSET.match(raw):
        raise BadArgs("Invalid sequence set")
    ranges = []
    for part in raw.split(b","):
        a, _, b = part.partition(b":")
        lo = None if a == b"*" else int(a)
        hi = lo if not b else (None if b == b"*" else int(b))
        if (lo is not None and lo > MAX_NUMBER) or (hi is not None and hi > MAX_NUMBER):
            raise BadArgs("Invalid sequence set: number too big")
        ranges.append((lo, hi))
    return SequenceSet(tuple(ranges))


# -- FETCH ------------------------------------------------------------------------

@dataclass(frozen=True)
class Section:
    """A body section: ``part`` numbers, then ``text`` (None, "HEADER",
    "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"), and the upper-cased
    header ``fields`` of HEADER.FIELDS[.NOT]."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        """The section as it is echoed inside the brackets."""
        out = ".".join(str(p) for p in self.part)
        if self.text:
            out = f"{out}.{self.text}" if out else self.text
            if self.fields:
                out += " (" + " ".join(_echo_field(f) for f in self.fields) + ")"
        return out


def _echo_field(name: str) -> str:
    if _ATOM.match(name.encode("utf-8", "replace")):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class FetchItem:
    """One fetch attribute.

    ``name`` is one of UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY
    BODYSTRUCTURE RFC822 RFC822.HEADER RFC822.TEXT MODSEQ, or "BODY[]",
    "BINARY[]", "BINARY.SIZE[]" with ``section``.  ``peek`` for BODY.PEEK /
    BINARY.PEEK (do not set \\Seen); ``partial`` is (origin, length).
    """

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None

    def response_name(self) -> bytes:
        """The item name in the FETCH response: PEEK dropped, partial echoes its origin only."""
        if self.section is None:
            return self.name.encode("ascii")
        base = self.name[:-2]
        out = f"{base}[{self.section.spec()}]"
        if self.partial is not None:
            out += f"<{self.partial[0]}>"
        return out.encode("utf-8")

    @property
    def sets_seen(self) -> bool:
        """Whether fetching this item sets \\Seen (BODY[...], BINARY[...], RFC822, RFC822.TEXT)."""
        return ((self.name in ("BODY[]", "BINARY[]") and not self.peek)
                or self.name in ("RFC822", "RFC822.TEXT"))


@dataclass(frozen=True)
class FetchArgs:
    """FETCH / UID FETCH.  ``changedsince``/``vanished`` are the CONDSTORE/QRESYNC
    modifiers (VANISHED only with UID FETCH and CHANGEDSINCE).  The UID item is
    not added for UID FETCH: the session adds it."""

    seqset: SequenceSet
    items: tuple[FetchItem, ...]
    changedsince: int | None = None
    vanished: bool = False
    uid: bool = False


_SECTION_ATOM = re.compile(
    rb"(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[(.*)\](?:<([0-9]+)(?:\.([0-9]+))?>)?\Z",
    re.IGNORECASE | re.DOTALL)
_PART = re.compile(r"[1-9][0-9]*(?:\.[1-9][0-9]*)*")


def _parse_section(spec: str, binary: bool) -> Section:
    if not spec:
        return Section()
    m = _PART.match(spec)
    part: tuple[int, ...] = ()
    rest = spec
    if m:
        part = tuple(int(p) for p in m.group(0).split("."))
        if any(p > MAX_NUMBER for p in part):
            raise BadArgs("Invalid section part number")
        rest = spec[m.end():]
        if binary:
            if rest:
                raise BadArgs("Invalid BINARY section")
            return Section(part)
        if not rest:
            return Section(part)
        if not rest.startswith("."):
            raise BadArgs("Invalid section")
        rest = rest[1:]
    elif binary:
        raise BadArgs("Invalid BINARY section")
    word, sp, tail = rest.partition(" ")
    word = word.upper()
    if word in ("HEADER", "TEXT") or (word == "MIME" and part):
        if sp:
            raise BadArgs("Invalid section")
        return Section(part, word)
    if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        if not sp:
            raise BadArgs("HEADER.FIELDS needs a list of header names")
        return Section(part, word, _header_list(tail))
    raise BadArgs("Invalid section")


_HEADER_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\["\\])*)"|([^\s()"]+))')
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")


def _header_list(text: str) -> tuple[str, ...]:
    text = text.strip()
    if not (text.startswith("(") and text.endswith(")")):
        raise BadArgs("Invalid header list")
    inner = text[1:-1]
    names = []
    pos = 0
    while pos < len(inner):
        m = _HEADER_TOKEN.match(inner, pos)
        if not m or m.end() == pos:
            if inner[pos:].strip() == "":
                break
            raise BadArgs("Invalid header list")
        pos = m.end()
        name = re.sub(r"\\(.)", r"\1", m.group(1)) if m.group(1) is not None else m.group(2)
        if not _FIELD_NAME.match(name):
            raise BadArgs("Invalid header field name")
        names.append(name.upper())
    if not names:
        raise BadArgs("Empty header list")
    return tuple(names)


def _fetch_item(token) -> FetchItem:
    if not isinstance(token, Atom):
        raise BadArgs("Invalid fetch item")
    raw = token.value
    if b"[" not in raw:
        name = token.upper()
        if name in FETCH_SIMPLE:
            return FetchItem(name)
        raise BadArgs(f"Unknown fetch item {name[:40]}")
    m = _SECTION_ATOM.match(raw)
    if m is None:
        raise BadArgs("Invalid fetch item")
    kind = m.group(1).decode("ascii").upper()
    spec = m.group(2).decode("utf-8", "replace")
    binary = kind.startswith("BINARY")
    section = _parse_section(spec, binary)
    partial = None
    if m.group(3) is not None:
        if kind == "BINARY.SIZE":
            raise BadArgs("BINARY.SIZE takes no partial")
        if m.group(4) is None:
            raise BadArgs("Partial needs <origin.length>")
        origin, length = int(m.group(3)), int(m.group(4))
        if length == 0 or origin > MAX_NUMBER64 or length > MAX_NUMBER64:
            raise BadArgs("Invalid partial")
        partial = (origin, length)
    name = {"BODY": "BODY[]", "BODY.PEEK": "BODY[]", "BINARY": "BINARY[]",
            "BINARY.PEEK": "BINARY[]", "BINARY.SIZE": "BINARY.SIZE[]"}[kind]
    return FetchItem(name, section, kind.endswith(".PEEK"), partial)


def _fetch(args: tuple, uid: bool) -> FetchArgs:
    if len(args) not in (2, 3):
        raise BadArgs("FETCH needs a sequence set and items")
    seqset = parse_sequence_set(args[0])
    spec = args[1]
    if isinstance(spec, Atom) and spec.upper() in FETCH_MACROS:
        items = tuple(FetchItem(n) for n in FETCH_MACROS[spec.upper()])
    elif isinstance(spec, List):
        if not spec.items:
            raise BadArgs("Empty fetch item list")
        items = tuple(_fetch_item(t) for t in spec.items)
    else:
        items = (_fetch_item(spec),)
    changedsince, vanished = None, False
    if len(args) == 3:
        mods = _list(args[2], "FETCH modifiers")
        i = 0
        while i < len(mods):
            word = _atom_upper(mods[i], "FETCH modifier")
            if word == "CHANGEDSINCE" and changedsince is None and i + 1 < len(mods):
                changedsince = _number(mods[i + 1], MAX_NUMBER64, allow_zero=True)
                i += 2
            elif word == "VANISHED" and not vanished:
                vanished = True
                i += 1
            else:
                raise BadArgs("Invalid FETCH modifier")
        if not mods:
            raise BadArgs("Empty FETCH modifier list")
        if vanished and (not uid or changedsince is None):
            raise BadArgs("VANISHED needs UID FETCH and CHANGEDSINCE")
    return FetchArgs(seqset, items, changedsince, vanished, uid)


# -- flags ---------------------------------------------------------------------------

def parse_flag(token, *, allow_recent: bool = False) -> str:
    """A storable flag: a system flag (canonical case) or a keyword atom."""
    if not isinstance(token, Atom):
        raise BadArgs("Invalid flag")
    raw = token.value
    if raw.startswith(b"\\"):
        name = token.upper()
        if name in SYSTEM_FLAGS:
            return SYSTEM_FLAGS[name]
        if name == "\\RECENT" and allow_recent:
            return "\\Recent"
        raise BadArgs(f"Invalid system flag {token.value[:40].decode('ascii', 'replace')}")
    if not _ATOM.match(raw):
        raise BadArgs("Invalid flag")
    return raw.decode("ascii")


def _flag_list(token) -> tuple[str, ...]:
    items = _list(token, "flag list")
    out: list[str] = []
    for t in items:
        f = parse_flag(t)
        if f not in out:
            out.append(f)
    return tuple(out)


@dataclass(frozen=True)
class StoreArgs:
    """STORE / UID STORE: ``mode`` "+" (add), "-" (remove) or "" (replace)."""

    seqset: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None
    uid: bool = False


_STORE_ATT = re.compile(r"([+-]?)FLAGS(\.SILENT)?\Z")


def _store(args: tuple, uid: bool) -> StoreArgs:
    if len(args) < 3:
        raise BadArgs("STORE needs a sequence set, an item and flags")
    seqset = parse_sequence_set(args[0])
    rest = list(args[1:])
    unchangedsince = None
    if isinstance(rest[0], List):
        mods = rest.pop(0).items
        if (len(mods) != 2 or not isinstance(mods[0], Atom)
                or mods[0].upper() != "UNCHANGEDSINCE"):
            raise BadArgs("Invalid STORE modifier")
        unchangedsince = _number(mods[1], MAX_NUMBER64, allow_zero=True)
    if len(rest) < 2:
        raise BadArgs("STORE needs an item and flags")
    m = _STORE_ATT.match(_atom_upper(rest[0], "STORE item"))
    if m is None:
        raise BadArgs("Invalid STORE item")
    if len(rest) == 2 and isinstance(rest[1], List):
        flags = _flag_list(rest[1])
    else:
        flags = tuple(dict.fromkeys(parse_flag(t) for t in rest[1:]))
    return StoreArgs(seqset, m.group(1), bool(m.group(2)), flags, unchangedsince, uid)


# -- SEARCH keys ------------------------------------------------------------------------

@dataclass(frozen=True)
class All:
    """ALL."""


@dataclass(frozen=True)
class And:
    """All of ``keys`` (a parenthesised group or the whole program); cheap keys first."""

    keys: tuple


@dataclass(frozen=True)
class Or:
    left: object
    right: object


@dataclass(frozen=True)
class Not:
    key: object


@dataclass(frozen=True)
class FlagKey:
    """ANSWERED DELETED DRAFT FLAGGED SEEN KEYWORD (present) and the UN- forms."""

    flag: str
    present: bool


@dataclass(frozen=True)
class RecentKey:
    """RECENT (``recent`` True) or OLD (False).  NEW is And(RECENT, UNSEEN)."""

    recent: bool


@dataclass(frozen=True)
class HeaderKey:
    """BCC CC FROM SUBJECT TO HEADER: ``field`` (upper-cased) contains ``value``."""

    field: str
    value: str


@dataclass(frozen=True)
class TextKey:
    """BODY (``where`` "BODY") or TEXT ("TEXT": header or body) contains ``value``."""

    where: str
    value: str


@dataclass(frozen=True)
class DateKey:
    """BEFORE ON SINCE (``sent`` False: internal date) and SENT* (True)."""

    op: str                     # "BEFORE" | "ON" | "SINCE"
    date: datetime.date
    sent: bool = False


@dataclass(frozen=True)
class SizeKey:
    """LARGER (``larger`` True) / SMALLER n: RFC822.SIZE strictly above / below ``size``."""

    larger: bool
    size: int


@dataclass(frozen=True)
class SeqKey:
    """A sequence set key (``uid`` False) or UID set (True); ``seqset.saved`` for ``$``."""

    seqset: SequenceSet
    uid: bool = False


@dataclass(frozen=True)
class ModSeqKey:
    """MODSEQ [entry type] n: modseq >= ``modseq``; entry and type are kept, not used."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


SearchKey = All | And | Or | Not | FlagKey | RecentKey | HeaderKey | TextKey | DateKey \
    | SizeKey | SeqKey | ModSeqKey


def key_cost(key) -> int:
    """A rough cost: 0 for index data, 1 for a header, 2 whole header, 3 body."""
    if isinstance(key, HeaderKey):
        return 1
    if isinstance(key, DateKey):
        return 1 if key.sent else 0
    if isinstance(key, TextKey):
        return 3
    if isinstance(key, Not):
        return key_cost(key.key)
    if isinstance(key, Or):
        return max(key_cost(key.left), key_cost(key.right))
    if isinstance(key, And):
        return max((key_cost(k) for k in key.keys), default=0)
    return 0


def _and(keys: list) -> object:
    if len(keys) == 1:
        return keys[0]
    return And(tuple(sorted(keys, key=key_cost)))


@dataclass(frozen=True)
class SearchArgs:
    """SEARCH / UID SEARCH.  ``return_opts`` is None without RETURN (answer
    ``* SEARCH``), else the ESEARCH options (``RETURN ()`` is ("ALL",));
    ``charset`` is "US-ASCII", "UTF-8" or None."""

    key: object
    charset: str | None = None
    return_opts: tuple[str, ...] | None = None
    uid: bool = False


_FLAG_KEYS = {"ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True),
              "DRAFT": ("\\Draft", True), "FLAGGED": ("\\Flagged", True),
              "SEEN": ("\\Seen", True), "UNANSWERED": ("\\Answered", False),
              "UNDELETED": ("\\Deleted", False), "UNDRAFT": ("\\Draft", False),
              "UNFLAGGED": ("\\Flagged", False), "UNSEEN": ("\\Seen", False)}
_HEADER_KEYS = frozenset({"BCC", "CC", "FROM", "SUBJECT", "TO"})
_DATE_KEYS = {"BEFORE": ("BEFORE", False), "ON": ("ON", False), "SINCE": ("SINCE", False),
              "SENTBEFORE": ("BEFORE", True), "SENTON": ("ON", True),
              "SENTSINCE": ("SINCE", True)}


class _SearchParser:
    def __init__(self, tokens: tuple, charset: str | None):
        self.tokens = tokens
        self.pos = 0
        self.charset = charset
        self.depth = 0

    def next(self, what: str = "search key"):
        if self.pos >= len(self.tokens):
            raise BadArgs(f"Missing {what}")
        t = self.tokens[self.pos]
        self.pos += 1
        return t

    def text(self) -> str:
        raw = _astring(self.next("search string"))
        if self.charset == "US-ASCII" and not raw.isascii():
            raise BadArgs("8-bit text in a US-ASCII search")
        return raw.decode("utf-8", "replace")

    def key(self):
        self.depth += 1
        if self.depth > MAX_SEARCH_DEPTH:
            raise BadArgs("Search program nested too deeply")
        try:
            return self._key()
        finally:
            self.depth -= 1

    def _key(self):
        t = self.next()
        if isinstance(t, List):
            if not t.items:
                raise BadArgs("Empty search key list")
            sub = _SearchParser(t.items, self.charset)
            sub.depth = self.depth
            keys = []
            while sub.pos < len(sub.tokens):
                keys.append(sub.key())
            return _and(keys)
        if not isinstance(t, Atom):
            raise BadArgs("Invalid search key")
        word = t.upper()
        if word[:1].isdigit() or word[:1] in ("*", "$"):
            return SeqKey(parse_sequence_set(t))
        if word == "ALL":
            return All()
        if word in _FLAG_KEYS:
            return FlagKey(*_FLAG_KEYS[word])
        if word in ("KEYWORD", "UNKEYWORD"):
            flag = parse_flag(self.next("keyword"))
            return FlagKey(flag, word == "KEYWORD")
        if word == "RECENT":
            return RecentKey(True)
        if word == "OLD":
            return RecentKey(False)
        if word == "NEW":
            return And((RecentKey(True), FlagKey("\\Seen", False)))
        if word in _HEADER_KEYS:
            return HeaderKey(word, self.text())
        if word == "HEADER":
            name = _astring(self.next("header field name"))
            if not _FIELD_NAME.match(name.decode("ascii", "replace")):
                raise BadArgs("Invalid header field name")
            return HeaderKey(name.decode("ascii").upper(), self.text())
        if word in ("BODY", "TEXT"):
            return TextKey(word, self.text())
        if word in _DATE_KEYS:
            op, sent = _DATE_KEYS[word]
            return DateKey(op, parse_search_date(self.next("date")), sent)
        if word in ("LARGER", "SMALLER"):
            return SizeKey(word == "LARGER", _number(self.next("size"), MAX_NUMBER64,
                                                      allow_zero=True))
        if word == "UID":
            return SeqKey(parse_sequence_set(self.next("UID set")), uid=True)
        if word == "NOT":
            return Not(self.key())
        if word == "OR":
            left = self.key()
            return Or(left, self.key())
        if word == "MODSEQ":
            nxt = self.next("mod-sequence")
            entry = entry_type = None
            if isinstance(nxt, String):
                entry = nxt.value.decode("utf-8", "replace")
                entry_type = _atom_upper(self.next("entry type"), "entry type")
                if entry_type not in ("PRIV", "SHARED", "ALL"):
                    raise BadArgs("Invalid MODSEQ entry type")
                entry_type = entry_type.lower()
                nxt = self.next("mod-sequence")
            return ModSeqKey(_number(nxt, MAX_NUMBER64, allow_zero=True), entry, entry_type)
        raise BadArgs(f"Unknown search key {word[:40]}")


def parse_search_date(token) -> datetime.date:
    """``date`` of RFC 3501/9051: d-Mon-yyyy, atom or quoted."""
    if isinstance(token, String) and not token.literal or isinstance(token, Atom):
        raw = token.value
    else:
        raise BadArgs("Invalid date")
    m = _DATE.match(raw.decode("ascii", "replace"))
    if m is None or m.group(2).upper() not in MONTHS:
        raise BadArgs("Invalid date")
    try:
        return datetime.date(int(m.group(3)), MONTHS[m.group(2).upper()], int(m.group(1)))
    except ValueError as e:
        raise BadArgs("Invalid date") from e


def _search(args: tuple, uid: bool, utf8: bool) -> SearchArgs:
    args = tuple(args)
    pos = 0
    return_opts = None
    if len(args) > pos + 1 and isinstance(args[pos], Atom) and args[pos].upper() == "RETURN" \
            and isinstance(args[pos + 1], List):
        opts = []
        for t in args[pos + 1].items:
            word = _atom_upper(t, "RETURN option")
            if word not in SEARCH_RETURN_OPTS:
                raise BadArgs(f"Unknown RETURN option {word[:40]}")
            if word not in opts:
                opts.append(word)
        return_opts = tuple(opts) or ("ALL",)
        pos += 2
    charset = None
    if len(args) > pos and isinstance(args[pos], Atom) and args[pos].upper() == "CHARSET":
        if utf8:
            # RFC 6855 3 (errata 4029): no charset once UTF8=ACCEPT is enabled.
            raise BadArgs("CHARSET is not allowed after ENABLE UTF8=ACCEPT")
        if len(args) <= pos + 1:
            raise BadArgs("Missing charset")
        name = _astring(args[pos + 1]).decode("ascii", "replace").upper()
        if name not in SEARCH_CHARSETS:
            raise BadCharset()
        charset = name
        pos += 2
    if pos >= len(args):
        raise BadArgs("Missing search key")
    parser = _SearchParser(args[pos:], charset)
    keys = []
    while parser.pos < len(parser.tokens):
        keys.append(parser.key())
    return SearchArgs(_and(keys), charset, return_opts, uid)


# -- other message commands --------------------------------------------------------------

@dataclass(frozen=True)
class CopyArgs:
    """COPY / MOVE (and their UID forms)."""

    seqset: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True)
class ExpungeArgs:
    """EXPUNGE (``seqset`` None) or UID EXPUNGE set (RFC 4315)."""

    seqset: SequenceSet | None = None
    uid: bool = False


@dataclass(frozen=True)
class AppendArgs:
    """APPEND one message.  ``date`` is epoch seconds or None; ``binary`` when the
    message came as literal8 (``~{n}``, BINARY or the UTF8 (...) form); ``utf8``
    for the RFC 6855 ``UTF8 (~{n})`` form."""

    mailbox: str
    flags: tuple[str, ...]
    date: float | None
    data: bytes
    binary: bool = False
    utf8: bool = False


def parse_date_time(token) -> float:
    """APPEND ``date-time``: "dd-Mon-yyyy hh:mm:ss +zzzz" as epoch seconds."""
    if not isinstance(token, String) or token.literal:
        raise BadArgs("Invalid date-time")
    m = _DATE_TIME.match(token.value.decode("ascii", "replace"))
    if m is None or m.group(2).upper() not in MONTHS:
        raise BadArgs("Invalid date-time")
    day, _, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        zone = datetime.timezone((1 if sign == "+" else -1)
                                 * datetime.timedelta(hours=int(zh), minutes=int(zm)))
        when = datetime.datetime(int(year), MONTHS[m.group(2).upper()], int(day.strip()),
                                 int(hh), int(mm), int(ss), tzinfo=zone)
    except ValueError as e:
        raise BadArgs("Invalid date-time") from e
    return when.timestamp()


def _append(args: tuple, utf8: bool) -> AppendArgs:
    if len(args) < 2:
        raise BadArgs("APPEND needs a mailbox and a message")
    mailbox = parse_mailbox(args[0], utf8)
    rest = list(args[1:])
    flags: tuple[str, ...] = ()
    date = None
    if rest and isinstance(rest[0], List):
        flags = _flag_list(rest.pop(0))
    if rest and isinstance(rest[0], String) and not rest[0].literal:
        date = parse_date_time(rest.pop(0))
    utf8_form = False
    if len(rest) == 2 and isinstance(rest[0], Atom) and rest[0].upper() == "UTF8":
        inner = rest[1]
        if not (isinstance(inner, List) and len(inner.items) == 1
                and isinstance(inner.items[0], String) and inner.items[0].binary):
            raise BadArgs("UTF8 needs ( literal8 )")
        rest = [inner.items[0]]
        utf8_form = True
    if len(rest) != 1:
        raise BadArgs("APPEND takes one message" if len(rest) > 1 else "Missing message")
    msg = rest[0]
    if not isinstance(msg, String) or not msg.literal:
        raise BadArgs("The message must be a literal")
    if not msg.binary and b"\0" in msg.value:
        raise BadArgs("NUL in a literal (use a literal8)")
    return AppendArgs(mailbox, flags, date, msg.value, msg.binary, utf8_form)


# -- mailbox commands ------------------------------------------------------------------------

@dataclass(frozen=True)
class QResync:
    """SELECT's QRESYNC parameter (RFC 7162 3.2.5)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True)
class SelectArgs:
    """SELECT / EXAMINE with optional (CONDSTORE) or (QRESYNC (...))."""

    mailbox: str
    condstore: bool = False
    qresync: QResync | None = None


def _select(args: tuple, utf8: bool) -> SelectArgs:
    if len(args) not in (1, 2):
        raise BadArgs("SELECT needs a mailbox")
    mailbox = parse_mailbox(args[0], utf8)
    condstore, qresync = False, None
    if len(args) == 2:
        params = _list(args[1], "SELECT parameters")
        i = 0
        while i < len(params):
            word = _atom_upper(params[i], "SELECT parameter")
            if word == "CONDSTORE" and not condstore:
                condstore = True
                i += 1
            elif word == "QRESYNC" and qresync is None and i + 1 < len(params):
                qresync = _qresync(params[i + 1])
                i += 2
            else:
                raise BadArgs("Invalid SELECT parameter")
        if not params:
            raise BadArgs("Empty SELECT parameter list")
    return SelectArgs(mailbox, condstore, qresync)


def _qresync(token) -> QResync:
    items = _list(token, "QRESYNC parameters")
    if not 2 <= len(items) <= 4:
        raise BadArgs("Invalid QRESYNC parameters")
    uidvalidity = _number(items[0], MAX_NUMBER)
    modseq = _number(items[1], MAX_NUMBER64, allow_zero=True)
    known = seq_match = None
    rest = list(items[2:])
    if rest and isinstance(rest[0], Atom):
        known = parse_sequence_set(rest.pop(0), allow_saved=False)
    if rest:
        match = rest.pop(0)
        if not (isinstance(match, List) and len(match.items) == 2):
            raise BadArgs("Invalid QRESYNC sequence match data")
        seq_match = (parse_sequence_set(match.items[0], allow_saved=False),
                     parse_sequence_set(match.items[1], allow_saved=False))
    if rest:
        raise BadArgs("Invalid QRESYNC parameters")
    return QResync(uidvalidity, modseq, known, seq_match)


@dataclass(frozen=True)
class MailboxArgs:
    """CREATE DELETE SUBSCRIBE UNSUBSCRIBE; ``use`` is CREATE's (USE (...)) (RFC 6154)."""

    mailbox: str
    use: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenameArgs:
    old: str
    new: str


@dataclass(frozen=True)
class StatusArgs:
    """STATUS mailbox (items): upper-case item names, client order, no duplicates."""

    mailbox: str
    items: tuple[str, ...]


def _status_items(token) -> tuple[str, ...]:
    items = _list(token, "status items")
    if not items:
        raise BadArgs("Empty STATUS item list")
    out = []
    for t in items:
        word = _atom_upper(t, "STATUS item")
        if word not in STATUS_ITEMS:
            raise BadArgs(f"Unknown STATUS item {word[:40]}")
        if word not in out:
            out.append(word)
    return tuple(out)


@dataclass(frozen=True)
class ListArgs:
    """LIST (RFC 9051 / 5258 / 5819 / 6154) and LSUB (``extended`` False).

    ``selection`` and ``returns`` hold upper-case option names;
    ``status_items`` is RETURN (STATUS (...)); ``extended`` is True when a
    selection option, several patterns or RETURN was given (the LIST-EXTENDED
    syntax, where a reply without matches must still be exact).  ``patterns``
    are decoded like mailbox names (``%`` and ``*`` are wildcards).
    """

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()
    extended: bool = False


def _list_cmd(args: tuple, utf8: bool) -> ListArgs:
    args = list(args)
    selection: set[str] = set()
    extended = False
    if args and isinstance(args[0], List):
        extended = True
        for t in args.pop(0).items:
            word = _atom_upper(t, "LIST selection option")
            if word not in LIST_SELECTION_OPTS:
                raise BadArgs(f"Unknown LIST selection option {word[:40]}")
            selection.add(word)
        if selection == {"RECURSIVEMATCH"} or (
                "RECURSIVEMATCH" in selection and selection <= {"RECURSIVEMATCH", "REMOTE"}):
            raise BadArgs("RECURSIVEMATCH needs another selection option")
    if len(args) < 2:
        raise BadArgs("LIST needs a reference and a pattern")
    reference = _mailbox_text(args.pop(0), utf8)
    pats = args.pop(0)
    if isinstance(pats, List):
        extended = True
        if not pats.items:
            raise BadArgs("Empty pattern list")
        patterns = tuple(_pattern(t, utf8) for t in pats.items)
    else:
        patterns = (_pattern(pats, utf8),)
    returns: set[str] = set()
    status_items: tuple[str, ...] = ()
    if args:
        if not (len(args) == 2 and isinstance(args[0], Atom) and args[0].upper() == "RETURN"):
            raise BadArgs("Invalid LIST arguments")
        extended = True
        opts = _list(args[1], "LIST return options")
        i = 0
        while i < len(opts):
            word = _atom_upper(opts[i], "LIST return option")
            if word not in LIST_RETURN_OPTS:
                raise BadArgs(f"Unknown LIST return option {word[:40]}")
            if word == "STATUS":
                if i + 1 >= len(opts) or "STATUS" in returns:
                    raise BadArgs("STATUS needs a list of items")
                status_items = _status_items(opts[i + 1])
                i += 1
            returns.add(word)
            i += 1
    return ListArgs(reference, patterns, frozenset(selection), frozenset(returns),
                    status_items, extended)


def _pattern(token, utf8: bool) -> str:
    name = _mailbox_text(token, utf8)
    return "INBOX" if name.upper() == "INBOX" else name


# -- session commands ----------------------------------------------------------------------

@dataclass(frozen=True)
class NoArgs:
    """A command without arguments (CAPABILITY NOOP LOGOUT STARTTLS IDLE CHECK
    CLOSE UNSELECT NAMESPACE)."""


@dataclass(frozen=True)
class LoginArgs:
    username: bytes
    password: bytes


@dataclass(frozen=True)
class AuthenticateArgs:
    """``mechanism`` upper-case; ``initial`` the SASL-IR response as sent
    (base64, or ``=`` for empty), None when absent."""

    mechanism: str
    initial: bytes | None = None


@dataclass(frozen=True)
class EnableArgs:
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class IdArgs:
    """ID (RFC 2971): ``params`` None for NIL, else field -> value (None for NIL)."""

    params: dict | None = field(default=None, hash=False, compare=True)


@dataclass(frozen=True)
class QuotaRootArgs:
    """GETQUOTAROOT mailbox."""

    mailbox: str


@dataclass(frozen=True)
class QuotaArgs:
    """GETQUOTA root."""

    root: str


@dataclass(frozen=True)
class SetQuotaArgs:
    """SETQUOTA root ((resource limit)...): upper-case resource names."""

    root: str
    limits: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class CompressArgs:
    mechanism: str


def _id(args: tuple) -> IdArgs:
    if len(args) != 1:
        raise BadArgs("ID needs NIL or a list")
    t = args[0]
    if isinstance(t, Atom) and t.upper() == "NIL":
        return IdArgs(None)
    items = _list(t, "ID parameters")
    if len(items) % 2 or len(items) > 60:
        raise BadArgs("Invalid ID parameter list")
    params: dict = {}
    for k, v in zip(items[::2], items[1::2], strict=True):
        if not isinstance(k, String):
            raise BadArgs("ID field names are strings")
        if len(k.value) > 30:
            raise BadArgs("ID field name too long")
        value = _nstring(v)
        if value is not None and len(value) > 1024:
            raise BadArgs("ID value too long")
        params[k.value.decode("utf-8", "replace")] = (
            None if value is None else value.decode("utf-8", "replace"))
    return IdArgs(params)


# -- helpers -------------------------------------------------------------------------------

def _list(token, what: str) -> tuple:
    if not isinstance(token, List):
        raise BadArgs(f"Expected a list of {what}")
    return token.items


def _atom_upper(token, what: str) -> str:
    if not isinstance(token, Atom):
        raise BadArgs(f"Invalid {what}")
    return token.upper()


def _number(token, limit: int = MAX_NUMBER, allow_zero: bool = False) -> int:
    if not isinstance(token, Atom) or not _NUMBER.match(token.value):
        raise BadArgs("Expected a number")
    if len(token.value) > 20:
        raise BadArgs("Number too big")
    n = int(token.value)
    if n > limit or (n == 0 and not allow_zero):
        raise BadArgs("Number out of range")
    return n


def _astring(token) -> bytes:
    if isinstance(token, String):
        return token.value
    if isinstance(token, Atom):
        # ASTRING-CHAR: ATOM-CHAR or "]"
        if not _ATOM.match(token.value.replace(b"]", b"a")):
            raise BadArgs("Invalid atom")
        return token.value
    raise BadArgs("Expected a string")


def _nstring(token) -> bytes | None:
    if isinstance(token, String):
        return token.value
    if isinstance(token, Atom) and token.upper() == "NIL":
        return None
    raise BadArgs("Expected a string or NIL")


def _decode_name(raw: bytes, utf8: bool) -> str:
    if utf8:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadArgs("Mailbox name is not valid UTF-8") from e
    try:
        return mutf7_decode(raw)
    except MUTF7Error as e:
        raise BadArgs("Mailbox name is not valid modified UTF-7") from e


def _mailbox_text(token, utf8: bool) -> str:
    """A list-mailbox (atom with wildcards allowed) or string, decoded."""
    if isinstance(token, String):
        raw = token.value
    elif isinstance(token, Atom):
        raw = token.value
        if not _ATOM.match(raw.replace(b"%", b"a").replace(b"*", b"a").replace(b"]", b"a")):
            raise BadArgs("Invalid mailbox pattern")
    else:
        raise BadArgs("Expected a mailbox name")
    if b"\0" in raw or b"\r" in raw or b"\n" in raw:
        raise BadArgs("Invalid character in mailbox name")
    return _decode_name(raw, utf8)


def parse_mailbox(token, utf8: bool = False) -> str:
    """``mailbox``: astring, decoded; INBOX in any case is "INBOX"."""
    raw = _astring(token)
    if b"\0" in raw or b"\r" in raw or b"\n" in raw:
        raise BadArgs("Invalid character in mailbox name")
    name = _decode_name(raw, utf8)
    return "INBOX" if name.upper() == "INBOX" else name


def _expect(args: tuple, n: int, name: str) -> None:
    if len(args) != n:
        raise BadArgs(f"{name}: wrong number of arguments")


# -- dispatch ------------------------------------------------------------------------------

_NO_ARGS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "IDLE", "CHECK", "CLOSE",
                      "UNSELECT", "NAMESPACE"})
UID_COMMANDS = frozenset({"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"})


def parse(command: Command, utf8: bool = False):
    """The typed arguments of ``command``; raises BadArgs / UnknownCommand / BadCharset."""
    name = command.name
    args = command.args
    uid = False
    if name == "UID":
        if not args or not isinstance(args[0], Atom) or args[0].upper() not in UID_COMMANDS:
            raise BadArgs("UID needs FETCH, STORE, SEARCH, COPY, MOVE or EXPUNGE")
        name, args, uid = args[0].upper(), args[1:], True
    return _parse_named(name, tuple(args), uid, utf8)


def _parse_named(name: str, args: tuple, uid: bool, utf8: bool):
    if name in _NO_ARGS:
        if args:
            raise BadArgs(f"{name} takes no arguments")
        return NoArgs()
    if name == "EXPUNGE":
        if uid:
            _expect(args, 1, "UID EXPUNGE")
            return ExpungeArgs(parse_sequence_set(args[0]), True)
        _expect(args, 0, "EXPUNGE")
        return ExpungeArgs()
    if name == "FETCH":
        return _fetch(args, uid)
    if name == "STORE":
        return _store(args, uid)
    if name == "SEARCH":
        return _search(args, uid, utf8)
    if name in ("COPY", "MOVE"):
        _expect(args, 2, name)
        return CopyArgs(parse_sequence_set(args[0]), parse_mailbox(args[1], utf8), uid)
    if name == "LOGIN":
        _expect(args, 2, "LOGIN")
        return LoginArgs(_astring(args[0]), _astring(args[1]))
    if name == "AUTHENTICATE":
        if len(args) not in (1, 2):
            raise BadArgs("AUTHENTICATE needs a mechanism")
        mech = _atom_upper(args[0], "SASL mechanism")
        initial = None
        if len(args) == 2:
            if not isinstance(args[1], Atom):
                raise BadArgs("Invalid initial response")
            initial = args[1].value
        return AuthenticateArgs(mech, initial)
    if name == "ENABLE":
        if not args:
            raise BadArgs("ENABLE needs a capability")
        return EnableArgs(tuple(_atom_upper(t, "capability") for t in args))
    if name in ("SELECT", "EXAMINE"):
        return _select(args, utf8)
    if name == "CREATE":
        if len(args) not in (1, 2):
            raise BadArgs("CREATE needs a mailbox")
        use: tuple[str, ...] = ()
        if len(args) == 2:
            params = _list(args[1], "CREATE parameters")
            if (len(params) != 2 or not isinstance(params[0], Atom)
                    or params[0].upper() != "USE"):
                raise BadArgs("Invalid CREATE parameters")
            uses = _list(params[1], "special uses")
            use = tuple(_atom_upper(t, "special use") for t in uses)
            if not use or any(not u.startswith("\\") for u in use):
                raise BadArgs("Invalid special use")
            use = tuple(u[0] + u[1:].capitalize() for u in use)
        return MailboxArgs(parse_mailbox(args[0], utf8), use)
    if name in ("DELETE", "SUBSCRIBE", "UNSUBSCRIBE"):
        _expect(args, 1, name)
        return MailboxArgs(parse_mailbox(args[0], utf8))
    if name == "RENAME":
        _expect(args, 2, "RENAME")
        return RenameArgs(parse_mailbox(args[0], utf8), parse_mailbox(args[1], utf8))
    if name == "LIST":
        return _list_cmd(args, utf8)
    if name == "LSUB":
        _expect(args, 2, "LSUB")
        return ListArgs(_mailbox_text(args[0], utf8), (_pattern(args[1], utf8),),
                        frozenset({"SUBSCRIBED"}))
    if name == "STATUS":
        _expect(args, 2, "STATUS")
        return StatusArgs(parse_mailbox(args[0], utf8), _status_items(args[1]))
    if name == "APPEND":
        return _append(args, utf8)
    if name == "ID":
        return _id(args)
    if name == "GETQUOTAROOT":
        _expect(args, 1, name)
        return QuotaRootArgs(parse_mailbox(args[0], utf8))
    if name == "GETQUOTA":
        _expect(args, 1, name)
        return QuotaArgs(_astring(args[0]).decode("utf-8", "replace"))
    if name == "SETQUOTA":
        _expect(args, 2, name)
        items = _list(args[1], "quota limits")
        if len(items) % 2:
            raise BadArgs("Invalid quota limits")
        limits = tuple((_atom_upper(r, "resource"), _number(v, MAX_NUMBER64, allow_zero=True))
                       for r, v in zip(items[::2], items[1::2], strict=True))
        return SetQuotaArgs(_astring(args[0]).decode("utf-8", "replace"), limits)
    if name == "COMPRESS":
        _expect(args, 1, name)
        return CompressArgs(_atom_upper(args[0], "compression mechanism"))
    raise UnknownCommand(f"Unknown command {name[:40]}")
