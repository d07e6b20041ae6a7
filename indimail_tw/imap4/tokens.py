"""The tokens an IMAP command line is made of (the contract between the framing
parser, :mod:`indimail_tw.imap4.parser`, and the typed grammar,
:mod:`indimail_tw.imap4.grammar`).

A command is ``tag SP name [SP args]``; ``args`` is a list of tokens:

* :class:`Atom` -- an atom as sent (case kept).  A *bracketed* atom keeps its
  bracket and partial suffix in one token, spaces and parentheses included:
  ``BODY.PEEK[HEADER.FIELDS (From To)]<0.100>`` is one Atom.  The grammar
  parses what is inside.
* :class:`String` -- a quoted string (unescaped) or a literal (``{n}``,
  ``{n+}``, ``~{n}`` for literal8); ``literal`` / ``binary`` say which.
* :class:`List` -- a parenthesised list of tokens.
* :data:`NIL` is simply ``Atom(b"NIL")``: whether NIL means nil depends on
  the argument, so the grammar decides.

Everything is bytes: mailbox names arrive as modified UTF-7 or, after
``ENABLE UTF8=ACCEPT``, UTF-8; the grammar decodes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Atom:
    value: bytes

    def upper(self) -> str:
        return self.value.decode("ascii", "replace").upper()


@dataclass(frozen=True)
class String:
    value: bytes
    literal: bool = False
    binary: bool = False        # literal8 (~{n}), APPEND of binary content


@dataclass(frozen=True)
class List:
    items: tuple = field(default_factory=tuple)


Token = Atom | String | List


@dataclass(frozen=True)
class Command:
    """One complete command, literals included."""

    tag: bytes
    name: str                   # upper-cased: "FETCH", "UID", "AUTHENTICATE", ...
    args: tuple = ()            # tuple[Token, ...]
