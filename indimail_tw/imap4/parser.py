"""IMAP command framing, sans-IO: bytes in, events out.  No Twisted, no sockets.

:meth:`IMAPParser.feed` takes whatever arrived and returns the events it
completes, in order:

* :class:`~indimail_tw.imap4.tokens.Command` -- one whole command, literals
  included, tokenised (see :mod:`indimail_tw.imap4.tokens`);
* :class:`ContinuationNeeded` -- a synchronizing literal ``{n}`` was accepted:
  the protocol sends ``+ <text>`` now (never for ``{n+}``, RFC 7888);
* :class:`ParseError` -- the peer sent something malformed or too big: the
  session answers ``<tag> BAD <text>`` (``* BAD`` when ``tag`` is None) and,
  when ``fatal``, ``* BYE`` and closes.  Otherwise the parser has already
  resynchronized at the next command line;
* :class:`RawLine` -- in raw line mode (AUTHENTICATE responses, IDLE's
  ``DONE``), one line without its line ending.

**Pauses.**  Some commands change how the following bytes must be read:
AUTHENTICATE and IDLE (raw lines follow), STARTTLS (the bytes after it must be
discarded, RFC 9051 6.2.1) and COMPRESS (the bytes after it are compressed).
So the parser *pauses* after emitting a Command named in :data:`PAUSE_AFTER`,
and after every :class:`RawLine`: later bytes are only buffered until the
session calls :meth:`IMAPParser.resume` or :meth:`IMAPParser.raw_line_mode`,
which return the events of the buffered bytes (process them like
:meth:`feed`'s).  :meth:`IMAPParser.take_buffer` hands the unparsed bytes out
(to discard them after STARTTLS, or to decompress them after COMPRESS and
feed them back).

Line endings: CRLF, and a bare LF is accepted too (as Dovecot does).

Bounds (all attributes, changeable between feeds):

* ``max_line`` -- the text of one command, literals excluded (an over-long
  line gives BAD at once and the rest of it is skipped up to the next LF);
* ``max_literal`` -- the largest literal, and the total of the literals of one
  command; ``max_small_literal`` applies to commands other than APPEND;
* ``max_literals`` -- literals in one command; ``max_depth`` -- list nesting;
* ``literal_minus`` -- LITERAL- (RFC 7888): ``{n+}`` above 4096 is refused;
* a refused ``{n+}`` literal is read and discarded (the client sends it
  anyway) when it is at most ``max_discard`` bytes (default: 256 MiB or
  ``max_literal`` if larger); a larger one is fatal.
  A refused ``{n}`` is never waited for.
* While paused at most ``max_line`` bytes are buffered; more is fatal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from indimail_tw.imap4.tokens import Atom, Command, List, String

PAUSE_AFTER = frozenset({"AUTHENTICATE", "IDLE", "STARTTLS", "COMPRESS"})

DEFAULT_MAX_LINE = 65536
DEFAULT_MAX_LITERAL = 64 * 1024 * 1024
DEFAULT_MAX_SMALL_LITERAL = 1024 * 1024
DEFAULT_MAX_DISCARD = 256 * 1024 * 1024
LITERAL_MINUS_LIMIT = 4096          # RFC 7888 3

_LITERAL_AT_END = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\Z")
_ANY_LITERAL = re.compile(rb"~?\{([^}]*)\}\Z")
# tag = 1*<any ASTRING-CHAR except "+">: no atom-specials except "]", no "+".
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+\Z')
_COMMAND_NAME = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+\Z')
# Bytes that end an atom or are not allowed in one (outside brackets).
_ATOM_END = re.compile(rb'[\x00-\x20\x7f()"{\[]')


@dataclass(frozen=True)
class ContinuationNeeded:
    """A synchronizing literal was accepted; send ``+ text``."""

    text: str = "Ready for literal data"


@dataclass(frozen=True)
class ParseError:
    """The peer's input was malformed or exceeded a bound; answer BAD."""

    tag: bytes | None
    text: str
    fatal: bool = False


@dataclass(frozen=True)
class RawLine:
    """One line in raw line mode, line ending removed."""

    data: bytes


Event = Command | ContinuationNeeded | ParseError | RawLine


class _Bad(Exception):
    def __init__(self, text: str, fatal: bool = False):
        super().__init__(text)
        self.text = text
        self.fatal = fatal


_SKIPPED = object()

# States
_LINE, _LITERAL, _DISCARD_LITERAL, _SKIP_LINE, _SKIP_COMMAND = range(5)


class IMAPParser:
    """The framing state machine; see the module docstring."""

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE,
                 max_literal: int = DEFAULT_MAX_LITERAL,
                 max_small_literal: int = DEFAULT_MAX_SMALL_LITERAL,
                 max_literals: int = 64, max_depth: int = 32,
                 literal_minus: bool = False,
                 max_discard: int | None = None) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_small_literal = max_small_literal
        self.max_literals = max_literals
        self.max_depth = max_depth
        self.literal_minus = literal_minus
        self.max_discard = max_discard
        self._buf = bytearray()
        self._state = _LINE
        self._raw = False
        self._paused = False
        self._overflowed = False
        self._reset_command()

    # -- public -------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def feed(self, data: bytes) -> list[Event]:
        """Take received bytes; return the events they complete."""
        if self._overflowed:
            return []
        self._buf += data
        if self._paused:
            if len(self._buf) > self.max_line:
                self._overflowed = True
                self._buf.clear()
                return [ParseError(None, "Too much data sent without waiting", fatal=True)]
            return []
        return self._run()

    def resume(self) -> list[Event]:
        """Leave a pause; return the events of what was buffered meanwhile."""
        self._paused = False
        if self._overflowed:
            return []
        return self._run()

    def raw_line_mode(self, on: bool) -> list[Event]:
        """Switch raw line mode on or off; resumes (returns buffered events)."""
        self._raw = on
        return self.resume()

    def take_buffer(self) -> bytes:
        """Remove and return the bytes not parsed yet (after STARTTLS/COMPRESS)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    # -- the state machine ----------------------------------------------------

    def _reset_command(self) -> None:
        self._tag: bytes | None = None
        self._name = ""
        self._stack: list[list] = [[]]
        self._text_len = 0
        self._nlit = 0
        self._lit_total = 0
        self._lit_need = 0
        self._lit_binary = False
        self._lit_chunks: list[bytes] = []
        self._lit_have = 0
        self._discard = 0

    def _run(self) -> list[Event]:
        events: list[Event] = []
        while not self._paused and not self._overflowed:
            state = self._state
            if state == _LITERAL:
                if not self._take_literal():
                    break
                continue
            if state == _DISCARD_LITERAL:
                take = min(self._discard, len(self._buf))
                del self._buf[:take]
                self._discard -= take
                if self._discard:
                    break
                self._state = _SKIP_COMMAND
                continue
            line = self._next_line(events)
            if line is None:
                break
            if line is _SKIPPED:
                continue
            if state == _SKIP_LINE:
                self._state = _LINE
                continue
            if self._raw:
                events.append(RawLine(line))
                self._paused = True
                continue
            if state == _SKIP_COMMAND:
                self._skip_command_line(line, events)
                continue
            self._command_line(line, events)
        return events

    def _next_line(self, events: list[Event]) -> bytes | object | None:
        """The next line without its ending, None when incomplete, or
        :data:`_SKIPPED` when an over-long line was dealt with."""
        budget = max(self.max_line - self._text_len, 0)
        buf = self._buf
        end = buf.find(b"\n", 0, budget + 2)
        if end >= 0:
            length = end - 1 if end and buf[end - 1] == 13 else end
            if length <= budget:
                line = bytes(buf[:length])
                del buf[:end + 1]
                return line
        elif len(buf) < budget + 2:
            return None
        # Too long: BAD at once (unless this command was refused already),
        # then skip through the next LF.
        if self._state == _LINE:
            tag = None if self._raw else (
                self._tag if self._tag is not None else self._peek_tag())
            events.append(ParseError(tag, "Command line too long"))
        self._reset_command()
        lf = buf.find(b"\n")
        if lf < 0:
            buf.clear()
            self._state = _SKIP_LINE
        else:
            del buf[:lf + 1]
            self._state = _LINE
            return _SKIPPED
        return None

    def _peek_tag(self) -> bytes | None:
        head = bytes(self._buf[:min(len(self._buf), self.max_line)])
        sp = head.find(b" ")
        if sp > 0 and _TAG.match(head[:sp]):
            return head[:sp]
        return None

    def _skip_command_line(self, line: bytes, events: list[Event]) -> None:
        """The rest of a refused command: discard its non-synchronizing literals."""
        m = _LITERAL_AT_END.search(line)
        if m and m.group(3):
            n = int(m.group(2))
            if n <= self._discard_cap():
                self._discard = n
                self._state = _DISCARD_LITERAL
                return
            events.append(ParseError(None, "Literal too big to skip", fatal=True))
            self._overflowed = True
            self._buf.clear()
            return
        self._state = _LINE
        self._reset_command()

    def _discard_cap(self) -> int:
        if self.max_discard is not None:
            return self.max_discard
        return max(self.max_literal, DEFAULT_MAX_DISCARD)

    def _command_line(self, line: bytes, events: list[Event]) -> None:
        self._text_len += len(line)
        try:
            pos = self._start(line) if self._tag is None else 0
            lit = self._scan(line, pos)
        except _Bad as bad:
            events.append(ParseError(self._tag, bad.text, bad.fatal))
            self._reset_command()
            return
        if lit is None:
            if len(self._stack) > 1:
                events.append(ParseError(self._tag, "Unbalanced parentheses"))
            else:
                events.append(Command(self._tag, self._name, tuple(self._stack[0])))
                if self._name in PAUSE_AFTER:
                    self._paused = True
            self._reset_command()
            return
        binary, n, nonsync = lit
        refusal = self._refuse_literal(n, nonsync)
        if refusal is not None:
            tag = self._tag
            self._reset_command()
            if nonsync:
                if n > self._discard_cap():
                    events.append(ParseError(tag, refusal, fatal=True))
                    self._overflowed = True
                    self._buf.clear()
                    return
                self._discard = n
                self._state = _DISCARD_LITERAL
            events.append(ParseError(tag, refusal))
            return
        self._nlit += 1
        self._lit_total += n
        self._lit_need = n
        self._lit_binary = binary
        self._lit_chunks = []
        self._lit_have = 0
        self._state = _LITERAL
        if not nonsync:
            events.append(ContinuationNeeded())

    def _refuse_literal(self, n: int, nonsync: bool) -> str | None:
        limit = self.max_literal if self._name == "APPEND" else min(
            self.max_literal, self.max_small_literal)
        if self._nlit >= self.max_literals:
            return "Too many literals"
        if nonsync and self.literal_minus and n > LITERAL_MINUS_LIMIT:
            return "[TOOBIG] Non-synchronizing literal larger than 4096 octets"
        if n > limit or self._lit_total + n > limit:
            return "[TOOBIG] Literal too big"
        return None

    def _take_literal(self) -> bool:
        need = self._lit_need - self._lit_have
        if need:
            if not self._buf:
                return False
            chunk = bytes(self._buf[:need])
            del self._buf[:need]
            self._lit_chunks.append(chunk)
            self._lit_have += len(chunk)
            if self._lit_have < self._lit_need:
                return False
        data = b"".join(self._lit_chunks)
        self._lit_chunks = []
        self._stack[-1].append(String(data, literal=True, binary=self._lit_binary))
        self._state = _LINE
        return True

    # -- tokenising ------------------------------------------------------------

    def _start(self, line: bytes) -> int:
        """Read the tag and command name of a command's first line."""
        sp = line.find(b" ")
        tag = line if sp < 0 else line[:sp]
        if not tag:
            raise _Bad("Empty command line" if not line else "Missing tag")
        if not _TAG.match(tag):
            raise _Bad("Invalid tag")
        self._tag = tag
        if sp < 0:
            raise _Bad("Missing command")
        end = line.find(b" ", sp + 1)
        if end < 0:
            end = len(line)
        name = line[sp + 1:end]
        if not name:
            raise _Bad("Missing command")
        if not _COMMAND_NAME.match(name):
            raise _Bad("Invalid command name")
        self._name = name.decode("ascii").upper()
        return end

    def _scan(self, line: bytes, pos: int) -> tuple[bool, int, bool] | None:
        """Tokenise ``line`` from ``pos`` onto the stack.

        Returns None at the end of the command, or (binary, size, nonsync)
        when the line ends with a literal announcement.
        """
        stack = self._stack
        n = len(line)
        while pos < n:
            c = line[pos]
            if c == 0x20:
                pos += 1
            elif c == 0x28:                                     # (
                if len(stack) > self.max_depth:
                    raise _Bad("Lists nested too deeply")
                stack.append([])
                pos += 1
            elif c == 0x29:                                     # )
                if len(stack) == 1:
                    raise _Bad("Unbalanced parentheses")
                items = stack.pop()
                stack[-1].append(List(tuple(items)))
                pos += 1
            elif c == 0x22:                                     # "
                pos = self._quoted(line, pos)
            elif c == 0x7B or (c == 0x7E and line[pos + 1:pos + 2] == b"{"):
                return self._literal_header(line[pos:])
            else:
                pos = self._atom(line, pos)
        return None

    def _quoted(self, line: bytes, pos: int) -> int:
        out = bytearray()
        i = pos + 1
        n = len(line)
        while i < n:
            c = line[i]
            if c == 0x22:
                self._stack[-1].append(String(bytes(out)))
                return i + 1
            if c == 0x5C:
                if i + 1 < n and line[i + 1] in b'"\\':
                    out.append(line[i + 1])
                    i += 2
                    continue
                raise _Bad("Invalid escape in quoted string")
            if c == 0 or c == 0x0D:
                raise _Bad("Invalid character in quoted string")
            out.append(c)
            i += 1
        raise _Bad("Unterminated quoted string")

    def _literal_header(self, rest: bytes) -> tuple[bool, int, bool]:
        m = _LITERAL_AT_END.match(rest)
        if m is None:
            if _ANY_LITERAL.match(rest):
                raise _Bad("Invalid literal size")
            raise _Bad("Literal announcement must end the line")
        return bool(m.group(1)), int(m.group(2)), bool(m.group(3))

    def _atom(self, line: bytes, pos: int) -> int:
        """An atom; a ``[...]`` part (sections) keeps its spaces and parentheses."""
        start = pos
        n = len(line)
        while pos < n:
            m = _ATOM_END.search(line, pos)
            if m is None:
                pos = n
                break
            pos = m.start()
            c = line[pos]
            if c == 0x5B:                                       # [
                pos = self._bracket(line, pos)
                continue
            if c in (0x20, 0x29):
                break
            raise _Bad("Invalid character in atom")
        self._stack[-1].append(Atom(line[start:pos]))
        return pos

    def _bracket(self, line: bytes, pos: int) -> int:
        """Skip a ``[...]`` part; returns the position after ``]``."""
        i = pos + 1
        n = len(line)
        depth = 0
        while i < n:
            c = line[i]
            if c == 0x5D and depth == 0:
                return i + 1
            if c == 0x28:
                depth += 1
                if depth > self.max_depth:
                    raise _Bad("Lists nested too deeply")
            elif c == 0x29:
                depth -= 1
                if depth < 0:
                    raise _Bad("Unbalanced parentheses in section")
            elif c == 0x22:
                i += 1
                while i < n and line[i] != 0x22:
                    if line[i] == 0x5C:
                        i += 1
                    i += 1
                if i >= n:
                    raise _Bad("Unterminated quoted string")
            elif c == 0x7B:
                raise _Bad("Literals inside a section are not supported")
            elif c < 0x20 or c == 0x7F:
                raise _Bad("Invalid character in section")
            i += 1
        raise _Bad("Missing ] in section")
