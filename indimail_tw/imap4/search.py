"""Evaluating a SEARCH program (RFC 9051 6.4.4, RFC 3501 6.4.4) for one message.

:func:`matches` walks the key tree :func:`indimail_tw.imap4.grammar.parse`
built.  The message is anything that implements :class:`SearchMessage`; its
costly accessors (headers, body) are only called when a key needs them, and
the grammar already puts the cheap keys first in every AND group, so
``SEEN BODY x`` never reads the body of an unseen message.

Semantics:

* substring keys (FROM, SUBJECT, HEADER, BODY, TEXT ...) compare casefolded
  text; an empty string matches every message that has the header (HEADER,
  FROM ...) or every message (BODY, TEXT);
* BEFORE/ON/SINCE use the internal date's calendar date in the server's
  time zone (``tz``, local time by default); SENT* use the Date: header's own
  date, falling back to the internal date when the header is missing or
  unparseable (as Dovecot does);
* ``*`` is ``largest_seq`` / ``largest_uid``; ``$`` is the saved result
  (``saved``: a container of UIDs, RFC 5182), empty when none was saved;
* keywords compare case-insensitively; MODSEQ n is ``modseq >= n``.
"""

from __future__ import annotations

import datetime
from collections.abc import Container
from typing import Protocol

from indimail_tw.imap4.grammar import (
    All, And, DateKey, FlagKey, HeaderKey, ModSeqKey, Not, Or, RecentKey, SeqKey, SizeKey,
    TextKey,
)


class SearchMessage(Protocol):
    """What a message offers to SEARCH (implemented by the message layer)."""

    seq: int
    uid: int
    flags: frozenset[str]          # "\\Seen" ... and keywords, as stored
    recent: bool
    internaldate: float            # epoch seconds
    rfc822_size: int
    modseq: int
    largest_seq: int               # the mailbox's highest sequence number (for *)
    largest_uid: int               # the mailbox's highest UID (for *)

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), unfolded, RFC 2047 decoded."""
        ...

    def header_text(self) -> str:
        """The whole header, decoded."""
        ...

    def body_text(self) -> str:
        """The body text: transfer encodings undone, charsets decoded, all text parts."""
        ...

    def sent_date(self) -> float | datetime.date | None:
        """The Date: header's calendar date in the header's own zone, None if absent.

        A float is read as the epoch seconds of that date's 00:00 UTC
        (``calendar.timegm`` of the date), so no zone conversion moves the day.
        """
        ...


def matches(key, msg: SearchMessage, saved: Container[int] | None = None,
            tz: datetime.tzinfo | None = None) -> bool:
    """Whether ``msg`` satisfies the search key tree ``key``."""
    return _Evaluator(msg, saved, tz).eval(key)


class _Evaluator:
    __slots__ = ("msg", "saved", "tz", "_internal", "_sent", "_header", "_body")

    def __init__(self, msg: SearchMessage, saved, tz):
        self.msg = msg
        self.saved = saved
        self.tz = tz
        self._internal: datetime.date | None = None
        self._sent: datetime.date | None = None
        self._header: str | None = None
        self._body: str | None = None

    def eval(self, key) -> bool:
        kind = type(key)
        if kind is FlagKey:
            return self.has_flag(key.flag) == key.present
        if kind is And:
            return all(self.eval(k) for k in key.keys)
        if kind is All:
            return True
        if kind is SeqKey:
            return self.in_set(key)
        if kind is Not:
            return not self.eval(key.key)
        if kind is Or:
            return self.eval(key.left) or self.eval(key.right)
        if kind is RecentKey:
            return bool(self.msg.recent) == key.recent
        if kind is SizeKey:
            size = self.msg.rfc822_size
            return size > key.size if key.larger else size < key.size
        if kind is ModSeqKey:
            return self.msg.modseq >= key.modseq
        if kind is DateKey:
            day = self.sent_day() if key.sent else self.internal_day()
            if key.op == "BEFORE":
                return day < key.date
            if key.op == "ON":
                return day == key.date
            return day >= key.date
        if kind is HeaderKey:
            return self.header_contains(key.field, key.value)
        if kind is TextKey:
            needle = key.value.casefold()
            if key.where == "TEXT" and needle in self.header().casefold():
                return True
            return needle in self.body().casefold()
        raise TypeError(f"not a search key: {key!r}")

    def has_flag(self, flag: str) -> bool:
        flags = self.msg.flags
        if flag in flags:
            return True
        folded = flag.casefold()
        return any(f.casefold() == folded for f in flags)

    def in_set(self, key: SeqKey) -> bool:
        msg = self.msg
        if key.seqset.saved:
            return self.saved is not None and msg.uid in self.saved
        if key.uid:
            return key.seqset.contains(msg.uid, msg.largest_uid)
        return key.seqset.contains(msg.seq, msg.largest_seq)

    def internal_day(self) -> datetime.date:
        if self._internal is None:
            when = datetime.datetime.fromtimestamp(self.msg.internaldate, self.tz)
            self._internal = when.date()
        return self._internal

    def sent_day(self) -> datetime.date:
        if self._sent is None:
            value = self.msg.sent_date()
            if value is None:
                self._sent = self.internal_day()
            elif isinstance(value, datetime.datetime):
                self._sent = value.date()
            elif isinstance(value, datetime.date):
                self._sent = value
            else:
                self._sent = datetime.datetime.fromtimestamp(value, datetime.UTC).date()
        return self._sent

    def header_contains(self, name: str, value: str) -> bool:
        values = self.msg.header_values(name)
        if not value:
            return bool(values)
        needle = value.casefold()
        return any(needle in v.casefold() for v in values)

    def header(self) -> str:
        if self._header is None:
            self._header = self.msg.header_text()
        return self._header

    def body(self) -> str:
        if self._body is None:
            self._body = self.msg.body_text()
        return self._body
