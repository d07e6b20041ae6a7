"""A strict IMAP response-syntax checker and a raw-socket client for the conformance tests.

The checker follows the formal syntax of RFC 9051 section 9 (and RFC 3501 section 9
where IMAP4rev1 differs): every line a conformance test receives is tokenized
(atoms, flags, quoted strings with their escapes, literals, lists, NIL) and then
checked against the grammar of its response type, down to the fields of ENVELOPE
and the nesting of BODY/BODYSTRUCTURE.  A violation raises ``SyntaxViolation``
with the offending line.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl

__all__ = ["NIL", "Atom", "Client", "Str", "SyntaxViolation", "check_response", "parse_list"]


class SyntaxViolation(AssertionError):
    pass


class Atom(bytes):
    """An atom (or a number, or a ``\\flag``)."""


class Str(bytes):
    """A string: quoted or literal."""

    literal = False


class _Nil:
    def __repr__(self) -> str:
        return "NIL"


NIL = _Nil()

ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x20)) | {0x7F}
_NUMBER = re.compile(rb"\A[0-9]+\Z")
_NZ_NUMBER = re.compile(rb"\A[1-9][0-9]*\Z")
_SECTION = re.compile(
    rb"\A(?:(?:[1-9][0-9]*)(?:\.[1-9][0-9]*)*)?"
    rb"(?:(?:\A|\.)(?:HEADER|TEXT|MIME|HEADER\.FIELDS(?:\.NOT)? \([^()]+\)))?\Z")
_DATE_TIME = re.compile(rb'\A(?: [1-9]|[0-3][0-9])-(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct'
                        rb'|Nov|Dec)-[0-9]{4} [0-2][0-9]:[0-5][0-9]:[0-6][0-9] [+-][0-9]{4}\Z')


class _Reader:
    def __init__(self, line: bytes) -> None:
        self.data = line
        self.pos = 0

    def fail(self, why: str) -> SyntaxViolation:
        return SyntaxViolation(f"{why} at {self.pos}: {self.data!r}")

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def expect(self, text: bytes) -> None:
        if not self.data.startswith(text, self.pos):
            raise self.fail(f"expected {text!r}")
        self.pos += len(text)

    def sp(self) -> None:
        self.expect(b" ")

    def at_end(self) -> bool:
        return self.data.startswith(b"\r\n", self.pos) and self.pos + 2 == len(self.data)

    def end(self) -> None:
        if not self.at_end():
            raise self.fail("expected CRLF at end of response")

    def atom(self, brackets: bool = False) -> Atom:
        start = self.pos
        while self.pos < len(self.data):
            c = self.data[self.pos]
            if c in ATOM_SPECIALS:
                break
            if c == ord("[") and brackets:
                self._section()
                continue
            if c >= 0x80:
                raise self.fail("8-bit byte in an atom")
            self.pos += 1
        if self.pos == start:
            raise self.fail("expected an atom")
        return Atom(self.data[start:self.pos])

    def _section(self) -> None:
        """``[...]`` after a fetch attribute name, then an optional ``<n>``."""
        end = self.data.index(b"]", self.pos)
        self.pos = end + 1
        if self.peek() == ord("<"):
            close = self.data.index(b">", self.pos)
            if not _NUMBER.match(self.data[self.pos + 1:close]):
                raise self.fail("bad <origin>")
            self.pos = close + 1

    def quoted(self) -> Str:
        self.expect(b'"')
        out = bytearray()
        while True:
            c = self.peek()
            if c is None or c in (0x0D, 0x0A):
                raise self.fail("unterminated quoted string")
            self.pos += 1
            if c == ord('"'):
                return Str(bytes(out))
            if c == ord("\\"):
                e = self.peek()
                if e not in (ord('"'), ord("\\")):
                    raise self.fail("bad escape in quoted string")
                out.append(e)
                self.pos += 1
            elif c >= 0x80:
                raise self.fail("8-bit byte in a quoted string")
            else:
                out.append(c)

    def literal(self) -> Str:
        if self.peek() == ord("~"):
            self.pos += 1
        self.expect(b"{")
        close = self.data.index(b"}", self.pos)
        size = self.data[self.pos:close]
        if not _NUMBER.match(size):
            raise self.fail("bad literal size")
        self.pos = close + 1
        self.expect(b"\r\n")
        n = int(size)
        value = Str(self.data[self.pos:self.pos + n])
        value.literal = True
        if len(value) != n:
            raise self.fail("short literal")
        self.pos += n
        return value

    def value(self, brackets: bool = False):
        c = self.peek()
        if c == ord("("):
            return self.list_()
        if c == ord('"'):
            return self.quoted()
        if c in (ord("{"), ord("~")):
            return self.literal()
        if c == ord("\\"):
            self.pos += 1
            if self.peek() == ord("*"):
                self.pos += 1
                return Atom(b"\\*")
            return Atom(b"\\" + self.atom())
        a = self.atom(brackets)
        return NIL if a.upper() == b"NIL" else a

    def list_(self, brackets: bool = False) -> list:
        self.expect(b"(")
        out: list = []
        if self.peek() == ord(")"):
            self.pos += 1
            return out
        while True:
            out.append(self.value(brackets))
            c = self.peek()
            if c == ord(")"):
                self.pos += 1
                return out
            if c == ord("(") and isinstance(out[-1], list):
                continue              # body-type-mpart: 1*body, the parts not separated
            self.sp()

    def values(self, brackets: bool = False) -> list:
        """Space-separated values up to CRLF."""
        out: list = []
        while not self.at_end():
            if out:
                self.sp()
            out.append(self.value(brackets))
        return out

    def rest(self) -> bytes:
        end = len(self.data) - 2
        text = self.data[self.pos:end]
        if any(c in (0x0D, 0x0A) for c in text):
            raise self.fail("bare CR or LF in text")
        self.pos = end
        return text


def parse_list(data: bytes) -> list:
    """Parse one parenthesized list (no CRLF needed)."""
    r = _Reader(data + b"\r\n")
    out = r.list_(brackets=True)
    r.end()
    return out


# -- the grammar ----------------------------------------------------------------------------


def _is_string(v) -> bool:
    return isinstance(v, Str)


def _nstring(v, what: str) -> None:
    if v is not NIL and not _is_string(v):
        raise SyntaxViolation(f"{what}: expected nstring, got {v!r}")


def _string(v, what: str) -> None:
    if not _is_string(v):
        raise SyntaxViolation(f"{what}: expected string, got {v!r}")


def _number(v, what: str, nz: bool = False) -> int:
    if not isinstance(v, Atom) or not (_NZ_NUMBER if nz else _NUMBER).match(v):
        raise SyntaxViolation(f"{what}: expected {'nz-' if nz else ''}number, got {v!r}")
    return int(v)


def _flag_list(v, what: str = "flag-list") -> None:
    if not isinstance(v, list):
        raise SyntaxViolation(f"{what}: expected a list, got {v!r}")
    for f in v:
        if not isinstance(f, Atom):
            raise SyntaxViolation(f"{what}: bad flag {f!r}")
        if f.startswith(b"\\") and f != b"\\*" and not re.match(rb"\A\\[A-Za-z0-9$_-]+\Z", f):
            raise SyntaxViolation(f"{what}: bad flag {f!r}")


def check_envelope(env) -> None:
    if not isinstance(env, list) or len(env) != 10:
        raise SyntaxViolation(f"envelope must have 10 fields: {env!r}")
    for i in (0, 1, 8, 9):
        _nstring(env[i], "envelope field")
    for i in range(2, 8):
        lst = env[i]
        if lst is NIL:
            continue
        if not isinstance(lst, list) or not lst:
            raise SyntaxViolation(f"address list must be NIL or non-empty: {lst!r}")
        for addr in lst:
            if not isinstance(addr, list) or len(addr) != 4:
                raise SyntaxViolation(f"address must have 4 fields: {addr!r}")
            for f in addr:
                _nstring(f, "address field")


def _params(v, what: str) -> None:
    if v is NIL:
        return
    if not isinstance(v, list) or not v or len(v) % 2:
        raise SyntaxViolation(f"{what}: body-fld-param must be NIL or pairs: {v!r}")
    for s in v:
        _string(s, what)


def _extensions(ext: list, what: str) -> None:
    """body-fld-dsp [SP body-fld-lang [SP body-fld-loc *(SP body-extension)]]."""
    if not ext:
        return
    dsp = ext[0]
    if dsp is not NIL:
        if not isinstance(dsp, list) or len(dsp) != 2:
            raise SyntaxViolation(f"{what}: body-fld-dsp {dsp!r}")
        _string(dsp[0], "disposition")
        _params(dsp[1], "disposition params")
    if len(ext) > 1:
        lang = ext[1]
        if isinstance(lang, list):
            if not lang:
                raise SyntaxViolation(f"{what}: empty language list")
            for s in lang:
                _string(s, "language")
        else:
            _nstring(lang, "language")
    if len(ext) > 2:
        _nstring(ext[2], "location")


def check_body(body, extensible: bool) -> None:
    """RFC 9051 ``body``; ``extensible`` is False for FETCH BODY (no extension data)."""
    if not isinstance(body, list) or not body:
        raise SyntaxViolation(f"body must be a non-empty list: {body!r}")
    if isinstance(body[0], list):              # multipart
        i = 0
        while i < len(body) and isinstance(body[i], list):
            check_body(body[i], extensible)
            i += 1
        if i >= len(body):
            raise SyntaxViolation(f"multipart without subtype: {body!r}")
        _string(body[i], "media-subtype")
        ext = body[i + 1:]
        if ext and not extensible:
            raise SyntaxViolation(f"BODY must not carry extension data: {body!r}")
        if ext:
            _params(ext[0], "multipart params")
            _extensions(ext[1:], "multipart")
        return
    if len(body) < 7:
        raise SyntaxViolation(f"single part needs at least 7 fields: {body!r}")
    mtype, subtype = body[0], body[1]
    _string(mtype, "media type")
    _string(subtype, "media subtype")
    _params(body[2], "body params")
    _nstring(body[3], "body id")
    _nstring(body[4], "body description")
    _string(body[5], "body encoding")
    _number(body[6], "body octets")
    rest = body[7:]
    if mtype.upper() == b"MESSAGE" and subtype.upper() in (b"RFC822", b"GLOBAL"):
        if len(rest) < 3:
            raise SyntaxViolation(f"message/rfc822 needs envelope, body, lines: {body!r}")
        check_envelope(rest[0])
        check_body(rest[1], extensible)
        _number(rest[2], "body lines")
        rest = rest[3:]
    elif mtype.upper() == b"TEXT":
        if not rest:
            raise SyntaxViolation(f"text part needs a line count: {body!r}")
        _number(rest[0], "body lines")
        rest = rest[1:]
    if rest and not extensible:
        raise SyntaxViolation(f"BODY must not carry extension data: {body!r}")
    if rest:
        _nstring(rest[0], "body MD5")
        _extensions(rest[1:], "single part")


def check_msg_att(atts: list) -> None:
    if not isinstance(atts, list) or not atts or len(atts) % 2:
        raise SyntaxViolation(f"FETCH needs name/value pairs: {atts!r}")
    for name, value in zip(atts[::2], atts[1::2], strict=True):
        if not isinstance(name, Atom):
            raise SyntaxViolation(f"FETCH attribute name {name!r}")
        n = name.upper()
        if n == b"FLAGS":
            _flag_list(value)
        elif n == b"ENVELOPE":
            check_envelope(value)
        elif n == b"INTERNALDATE":
            _string(value, "INTERNALDATE")
            if not _DATE_TIME.match(value):
                raise SyntaxViolation(f"INTERNALDATE {value!r}")
        elif n in (b"RFC822.SIZE", b"UID"):
            _number(value, n.decode(), nz=n == b"UID")
        elif n in (b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT"):
            _nstring(value, n.decode())
        elif n in (b"BODY", b"BODYSTRUCTURE"):
            check_body(value, extensible=n == b"BODYSTRUCTURE")
        elif n.startswith((b"BODY[", b"BINARY[")):
            section = n[n.index(b"[") + 1:n.rindex(b"]")]
            if n.startswith(b"BODY[") and not _SECTION.match(section):
                raise SyntaxViolation(f"bad section {section!r}")
            _nstring(value, "body section")
        elif n.startswith(b"BINARY.SIZE["):
            _number(value, "BINARY.SIZE")
        elif n == b"MODSEQ":
            if not isinstance(value, list) or len(value) != 1:
                raise SyntaxViolation(f"MODSEQ {value!r}")
            _number(value[0], "MODSEQ")
        else:
            raise SyntaxViolation(f"unknown FETCH attribute {name!r}")


def _resp_text(r: _Reader) -> None:
    if r.peek() == ord("["):
        r.pos += 1
        code = r.atom()
        c = code.upper()
        if c in (b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"HIGHESTMODSEQ"):
            r.sp()
            _number(r.atom(), c.decode(), nz=c != b"HIGHESTMODSEQ")
        elif c == b"PERMANENTFLAGS":
            r.sp()
            _flag_list(r.list_(), "PERMANENTFLAGS")
        elif c == b"CAPABILITY":
            while r.peek() == ord(" "):
                r.sp()
                r.atom()
        elif c == b"BADCHARSET":
            if r.peek() == ord(" "):
                r.sp()
                for cs in r.list_():
                    if not isinstance(cs, Atom | Str):
                        raise r.fail("bad charset")
        elif c in (b"APPENDUID", b"COPYUID"):
            r.sp()
            _number(r.atom(), "uidvalidity", nz=True)
            for _ in range(1 if c == b"APPENDUID" else 2):
                r.sp()
                if not re.match(rb"\A[0-9:,]+\Z", r.atom()):
                    raise r.fail("bad uid set")
        elif r.peek() == ord(" "):
            r.sp()
            while r.peek() not in (ord("]"), None):
                if r.data[r.pos] in (0x0D, 0x0A):
                    raise r.fail("CRLF in resp-text-code")
                r.pos += 1
        r.expect(b"]")
        if r.at_end():        # RFC 9051: text is optional after a code
            return
        r.sp()
    r.rest()


def _mailbox(v, what: str = "mailbox") -> None:
    if not isinstance(v, Atom | Str):
        raise SyntaxViolation(f"{what}: expected astring, got {v!r}")


def _untagged_data(r: _Reader) -> None:
    word = r.atom()
    w = word.upper()
    if _NUMBER.match(word):
        r.sp()
        kind = r.atom().upper()
        if kind in (b"EXISTS", b"RECENT"):
            pass
        elif kind == b"EXPUNGE":
            _number(word, "EXPUNGE", nz=True)
        elif kind == b"FETCH":
            _number(word, "FETCH", nz=True)
            r.sp()
            check_msg_att(r.list_(brackets=True))
        else:
            raise r.fail(f"unknown message-data {kind!r}")
        r.end()
        return
    if w in (b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"):
        r.sp()
        _resp_text(r)
    elif w in (b"CAPABILITY", b"ENABLED"):
        caps = []
        while not r.at_end():
            r.sp()
            caps.append(r.atom().upper())
        if w == b"CAPABILITY" and not {b"IMAP4REV1", b"IMAP4REV2"} & set(caps):
            raise r.fail("CAPABILITY without IMAP4rev1/IMAP4rev2")
    elif w == b"FLAGS":
        r.sp()
        _flag_list(r.list_())
    elif w in (b"LIST", b"LSUB"):
        r.sp()
        _flag_list(r.list_(), "mbx-list-flags")
        r.sp()
        delim = r.value()
        if delim is not NIL and not (isinstance(delim, Str) and not delim.literal
                                     and len(delim) == 1):
            raise r.fail("hierarchy delimiter must be a quoted char or NIL")
        r.sp()
        _mailbox(r.value())
        if not r.at_end():
            r.sp()
            r.list_()
    elif w == b"STATUS":
        r.sp()
        _mailbox(r.value())
        r.sp()
        items = r.list_()
        if len(items) % 2:
            raise r.fail("STATUS needs name/value pairs")
        for name, value in zip(items[::2], items[1::2], strict=True):
            if not isinstance(name, Atom):
                raise r.fail("STATUS item name")
            _number(value, name.decode())
    elif w == b"SEARCH":
        while not r.at_end():
            r.sp()
            v = r.value()
            if isinstance(v, list):       # (MODSEQ n)
                if len(v) != 2 or v[0].upper() != b"MODSEQ":
                    raise r.fail("bad SEARCH modifier")
                _number(v[1], "MODSEQ")
            else:
                _number(v, "SEARCH", nz=True)
    elif w == b"ESEARCH":
        if not r.at_end():
            r.sp()
            r.values()
    elif w == b"NAMESPACE":
        for _ in range(3):
            r.sp()
            v = r.value()
            if v is NIL:
                continue
            if not isinstance(v, list) or not v:
                raise r.fail("namespace must be NIL or a non-empty list")
            for ns in v:
                if not isinstance(ns, list) or len(ns) < 2:
                    raise r.fail("bad namespace descriptor")
                _string(ns[0], "namespace prefix")
                if ns[1] is not NIL and not (isinstance(ns[1], Str) and len(ns[1]) == 1):
                    raise r.fail("namespace delimiter")
    elif w in (b"ID", b"QUOTA", b"QUOTAROOT", b"VANISHED"):
        if not r.at_end():
            r.sp()
            r.values()
    else:
        raise r.fail(f"unknown untagged response {word!r}")
    r.end()


_TAG = re.compile(rb"\A[!#$&'+-9;<=>?@A-Z^-z|~\[]+")


def check_response(line: bytes) -> None:
    """Raise SyntaxViolation unless ``line`` (with any literals, ending in CRLF) is a
    valid server response."""
    if not line.endswith(b"\r\n"):
        raise SyntaxViolation(f"response without CRLF: {line!r}")
    r = _Reader(line)
    if line.startswith(b"+"):
        r.expect(b"+ ")
        _resp_text(r) if r.peek() == ord("[") else r.rest()
        return
    if line.startswith(b"* "):
        r.pos = 2
        _untagged_data(r)
        return
    m = _TAG.match(line)
    if not m or b"+" in m.group():
        raise r.fail("bad tag")
    r.pos = m.end()
    r.sp()
    status = r.atom()
    if status not in (b"OK", b"NO", b"BAD"):
        raise r.fail("tagged status must be OK, NO or BAD")
    r.sp()
    _resp_text(r)


# -- the client -----------------------------------------------------------------------------

_LITERAL_AT_END = re.compile(rb"~?\{([0-9]+)\}\r\n\Z")


class Client:
    """A raw IMAP client on a blocking socket: sends bytes, reads whole responses
    (literals included), checks every response with :func:`check_response`."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock)
        self.buf = b""
        self.seen: list[bytes] = []
        self._tag = 0
        self.greeting = self.response()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def starttls(self, context: ssl.SSLContext) -> None:
        assert not self.buf, self.buf
        self.sock = context.wrap_socket(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(self.buf)
        i = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(self.buf)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self) -> bytes:
        """One whole response, checked."""
        line = self._line()
        while (m := _LITERAL_AT_END.search(line)) is not None:
            line += self._exact(int(m.group(1))) + self._line()
        check_response(line)
        self.seen.append(line)
        return line

    def at_eof(self) -> bool:
        return not self.buf and not self._fill()

    def tag(self) -> bytes:
        self._tag += 1
        return b"t%d" % self._tag

    def until_tagged(self, tag: bytes) -> tuple[list[bytes], bytes]:
        untagged = []
        while True:
            line = self.response()
            if line.startswith(tag + b" "):
                return untagged, line
            untagged.append(line)

    def cmd(self, command: bytes | str, ok: bool | None = True) -> tuple[list[bytes], bytes]:
        """Send one command line (a tag is added); untagged lines and the tagged line.
        ``ok``: True asserts OK, False asserts not OK, None asserts nothing."""
        if isinstance(command, str):
            command = command.encode()
        tag = self.tag()
        self.send(tag + b" " + command + b"\r\n")
        untagged, done = self.until_tagged(tag)
        status = done.split(b" ", 2)[1]
        if ok is True and status != b"OK":
            raise AssertionError(f"{command!r} -> {done!r}")
        if ok is False and status == b"OK":
            raise AssertionError(f"{command!r} unexpectedly OK: {done!r}")
        return untagged, done

    def cmd_literal(self, head: bytes, literal: bytes, tail: bytes = b"",
                    plus: bool = False) -> tuple[list[bytes], bytes]:
        """``head {n}`` + literal + ``tail``; synchronizing unless ``plus``."""
        tag = self.tag()
        marker = b"{%d+}" % len(literal) if plus else b"{%d}" % len(literal)
        self.send(tag + b" " + head + b" " + marker + b"\r\n")
        if not plus:
            cont = self.response()
            assert cont.startswith(b"+ "), cont
        self.send(literal + tail + b"\r\n")
        return self.until_tagged(tag)

    def login(self, user: str, password: str) -> None:
        self.cmd(f'LOGIN "{user}" "{password}"')


def live_site(test, prefix: str, password: str, environ=None) -> tuple[str, object, str, str]:
    """For tests of a listening server on the real reactor: a fresh data root with
    alice@example.com (``password``, home ``ROOT/home/alice``) in the store and a
    self-signed certificate.  Returns (root, context, home, certificate path);
    ``test.addCleanup`` removes it all."""
    import os
    import shutil
    import tempfile

    from twisted.internet import reactor

    from indimail_tw.auth import passwords
    from indimail_tw.paths import Paths
    from indimail_tw.service import build_context
    from indimail_tw.storage import User
    from indimail_tw.storage.store import REPOS
    from indimail_tw.tlsutil import make_self_signed

    root = tempfile.mkdtemp(prefix=prefix)
    test.addCleanup(shutil.rmtree, root, True)
    env = {"MIGRATEUSER": os.path.join(root, "absent"), "NORELAY": "1", **(environ or {})}
    context = build_context(Paths.resolve(root, environ={}), env, reactor=reactor)
    test.addCleanup(context.engine.close)
    home = os.path.join(root, "home", "alice")

    def add(txn):
        REPOS.users.add(txn, User(name="alice", domain="example.com",
                                  passwd=passwords.make_hash(password, "SHA-512"), dir=home))
    context.engine.run_sync(add)
    cert = os.path.join(context.paths.certs, "servercert.pem")
    make_self_signed(cert, "imap.example.com")
    return root, context, home, cert
