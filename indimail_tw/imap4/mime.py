"""The MIME structure of a stored message, for IMAP FETCH and SEARCH.

A message is parsed once into a tree of :class:`Part` objects whose offsets
point into the message *with CRLF line endings* (:func:`normalise`): that is
the form IMAP shows (RFC822.SIZE, ``BODY[]``, partial offsets), whatever the
Maildir file holds.  The tree serialises to a small JSON blob
(:func:`dump`/:func:`load`) that the folder index caches, so ENVELOPE and
BODYSTRUCTURE need neither the file nor a parse after the first time, and a
section fetch only reads the file.

Renders follow RFC 9051 7.5.2 / RFC 3501 7.4.2: ENVELOPE strings are sent as
they are in the header (RFC 2047 words not decoded), addresses with group
syntax; BODY and BODYSTRUCTURE with the body-type-specific fields (lines for
text, envelope + body + lines for message/rfc822) and, for BODYSTRUCTURE, all
extension fields (md5, disposition, language, location).  Defaults follow
Dovecot: ``"text" "plain" ("charset" "us-ascii")`` and ``"7bit"``.

Nothing here raises on malformed input: garbage gets a sane structure.
"""

from __future__ import annotations

import binascii
import calendar
import email.errors
import email.header
import email.utils
import json
import re
import struct

from indimail_tw.imap4 import wire

#: Structure cache format; bump when Part's serialisation changes.
CACHE_VERSION = 2
MAX_DEPTH = 40
MAX_PARTS = 5000

_HEADER_LINE = re.compile(rb"([^\x00-\x20\x7f:]+)[ \t]*:")


class UnknownCTE(Exception):
    """BINARY of a part whose Content-Transfer-Encoding we cannot decode."""


def normalise(data: bytes) -> bytes:
    """The message with every line ending as CRLF (bare LF becomes CRLF)."""
    if b"\n" not in data:
        return data
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# -- header fields -----------------------------------------------------------

def header_end(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the header incl. its blank line, start of the body) for the header
    that begins at ``start``; a header without a blank line runs to ``end``."""
    if data.startswith(b"\r\n", start) and start + 2 <= end:
        return start + 2, start + 2
    i = data.find(b"\r\n\r\n", start, end)
    if i < 0:
        return end, end
    return i + 4, i + 4


def header_fields(block: bytes) -> list[tuple[str, bytes]]:
    """[(lower-case name, raw field text with folding and final CRLF)] of a header."""
    fields: list[list] = []
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1] += line
            continue
        m = _HEADER_LINE.match(line)
        if m:
            fields.append([m.group(1).decode("latin-1").lower(), line])
    return [(name, bytes(raw)) for name, raw in fields]


def field_value(raw: bytes) -> str:
    """The unfolded value of a raw field (latin-1 str, surrounding space stripped)."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"").replace(b"\r", b"")
    return value.strip(b" \t").decode("latin-1")


def _first(fields: list[tuple[str, bytes]], name: str) -> str | None:
    for n, raw in fields:
        if n == name:
            return field_value(raw)
    return None


# -- MIME header values (Content-Type etc.) ------------------------------------

def _skip_comment(s: str, i: int) -> int:
    depth = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _mime_tokens(s: str) -> list[tuple[str, str]]:
    """('t', token) | ('q', quoted string) | ('s', one of ;/=) ; comments dropped."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            i = _skip_comment(s, i)
        elif c == '"':
            j, buf = i + 1, []
            while j < n and s[j] != '"':
                if s[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(s[j])
                j += 1
            out.append(("q", "".join(buf)))
            i = j + 1
        elif c in ";/=":
            out.append(("s", c))
            i += 1
        else:
            j = i
            while j < n and s[j] not in ' \t\r\n();/="':
                j += 1
            out.append(("t", s[i:j]))
            i = j
    return out


def parse_params(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``; name=value`` pairs; RFC 2231 continuations joined (an encoded value keeps
    its ``name*`` and ``charset'lang'%XX`` form, as Dovecot sends it)."""
    params: list[tuple[str, str]] = []
    i, n = 0, len(tokens)
    while i < n:
        if tokens[i] != ("s", ";"):
            i += 1
            continue
        if (i + 3 < n and tokens[i + 1][0] == "t" and tokens[i + 2] == ("s", "=")
                and tokens[i + 3][0] in "tq"):
            params.append((tokens[i + 1][1], tokens[i + 3][1]))
            i += 4
        elif i + 2 < n and tokens[i + 1][0] == "t" and tokens[i + 2] == ("s", "="):
            params.append((tokens[i + 1][1], ""))
            i += 3
        else:
            i += 1
    return _join_continuations(params)


_CONT = re.compile(r"(.+?)\*(\d+)(\*?)\Z")


def _join_continuations(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if not any("*" in k for k, _ in params):
        return params
    out: list[tuple[str, str]] = []
    groups: dict[str, list] = {}
    for k, v in params:
        m = _CONT.match(k)
        if not m:
            out.append((k, v))
            continue
        base = m.group(1)
        if base.lower() not in groups:
            groups[base.lower()] = [base, []]
            out.append((base, None))       # placeholder, keeps the order
        groups[base.lower()][1].append((int(m.group(2)), bool(m.group(3)), v))
    result = []
    for k, v in out:
        if v is not None:
            result.append((k, v))
            continue
        base, pieces = groups[k.lower()]
        pieces.sort(key=lambda p: p[0])
        encoded = pieces[0][1]
        value = "".join(p[2] if (p[1] or not encoded) else _pct(p[2]) for p in pieces)
        result.append((base + "*" if encoded else base, value))
    return result


def _pct(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-._~" else "%%%02X" % (ord(c) & 0xFF)
                   for c in s)


def parse_content_type(value: str | None) -> tuple[str, str, list] | None:
    """(type, subtype, params) or None when absent/invalid."""
    if value is None:
        return None
    toks = _mime_tokens(value)
    if (len(toks) < 3 or toks[0][0] != "t" or toks[1] != ("s", "/")
            or toks[2][0] != "t"):
        return None
    return toks[0][1], toks[2][1], parse_params(toks[3:])


def parse_disposition(value: str | None) -> tuple[str, list] | None:
    if value is None:
        return None
    toks = _mime_tokens(value)
    if not toks or toks[0][0] != "t":
        return None
    return toks[0][1], parse_params(toks[1:])


# -- addresses (RFC 5322) -----------------------------------------------------

MISSING_DOMAIN = "MISSING_DOMAIN"


def _addr_tokens(s: str) -> list[tuple[str, str, bool]]:
    """(kind, text, space_before): kind a=atom q=quoted c=comment d=domain-literal s=special."""
    out: list[tuple[str, str, bool]] = []
    i, n, space = 0, len(s), False
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            space = True
            i += 1
            continue
        if c == "(":
            j = _skip_comment(s, i)
            text = s[i + 1:j - 1] if s[j - 1:j] == ")" else s[i + 1:j]
            out.append(("c", text, space))
            i, space = j, True
            continue
        if c == '"':
            j, buf = i + 1, []
            while j < n and s[j] != '"':
                if s[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(s[j])
                j += 1
            out.append(("q", "".join(buf), space))
            i = j + 1
        elif c == "[":
            j = s.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("d", s[i:j], space))
            i = j
        elif c in "<>@,;:.":
            out.append(("s", c, space))
            i += 1
        else:
            j = i
            while j < n and s[j] not in ' \t\r\n()<>@,;:."[':
                j += 1
            out.append(("a", s[i:j], space))
            i = j
        space = False
    return out


def _phrase(toks) -> str | None:
    text = ""
    for kind, t, sp in toks:
        if kind == "c":
            continue
        text += (" " if sp and text else "") + t
    return text or None


def _local(toks) -> str:
    parts = []
    for kind, t, _ in toks:
        if kind == "c":
            continue
        if kind == "q":
            parts.append('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
                         if re.search(r'[^A-Za-z0-9!#$%&\'*+/=?^_`{|}~.-]', t) or not t
                         else t)
        else:
            parts.append(t)
    return "".join(parts)


def _mailbox(item) -> tuple | None:
    if not any(k != "c" for k, _, _ in item):
        return None
    specials = [t for k, t, _ in item if k == "s"]
    if "<" in specials:
        lt = next(i for i, tok in enumerate(item) if tok[:2] == ("s", "<"))
        name = _phrase(item[:lt])
        inner = item[lt + 1:]
        gt = next((i for i, tok in enumerate(inner) if tok[:2] == ("s", ">")), len(inner))
        inner = inner[:gt]
        adl = None
        colon = next((i for i, tok in enumerate(inner) if tok[:2] == ("s", ":")), None)
        if colon is not None:
            adl = "".join(t for k, t, _ in inner[:colon] if k != "c") or None
            inner = inner[colon + 1:]
        spec = inner
        if name is None:
            comments = [t for k, t, _ in item[lt + 2 + gt:] if k == "c"]
            name = comments[0] if comments else None
    else:
        spec = item
        comments = [t for k, t, _ in item if k == "c"]
        name = comments[0] if comments else None
        adl = None
    at = max((i for i, tok in enumerate(spec) if tok[:2] == ("s", "@")), default=None)
    if at is None:
        local, host = _local(spec), (MISSING_DOMAIN if spec else "")
    else:
        local = _local(spec[:at])
        host = "".join(t for k, t, _ in spec[at + 1:] if k != "c")
    return (name, adl, local, host)


def parse_addresses(value: str | None) -> list[tuple]:
    """RFC 9051 address structures [(name, adl, mailbox, host)], group start as
    (None, None, group, None) and group end as (None, None, None, None)."""
    if not value:
        return []
    toks = _addr_tokens(value)
    out: list[tuple] = []
    item: list = []
    in_group, depth = False, 0
    for tok in toks:
        kind, t, _ = tok
        if kind == "s":
            if t == "<":
                depth += 1
            elif t == ">":
                depth = max(0, depth - 1)
            elif depth == 0 and t == ",":
                m = _mailbox(item)
                if m:
                    out.append(m)
                item = []
                continue
            elif depth == 0 and t == ";":
                m = _mailbox(item)
                if m:
                    out.append(m)
                item = []
                if in_group:
                    out.append((None, None, None, None))
                    in_group = False
                continue
            elif (depth == 0 and t == ":" and not in_group
                  and not any(k == "s" and x in "<@" for k, x, _ in item)):
                out.append((None, None, _phrase(item) or "", None))
                in_group, item = True, []
                continue
        item.append(tok)
    m = _mailbox(item)
    if m:
        out.append(m)
    if in_group:
        out.append((None, None, None, None))
    return out


# -- the tree ------------------------------------------------------------------

class Part:
    """One MIME entity.  ``start``: its header; ``body``: its body; ``end``: end of
    its body (all offsets in the CRLF form).  A multipart has ``children``; a
    message/rfc822 has ``message``, the encapsulated message (a Part whose header
    starts at this part's body).  Message-level parts (the root, encapsulated
    messages) carry ``envelope``."""

    __slots__ = ("start", "body", "end", "type", "subtype", "params", "id",
                 "description", "encoding", "md5", "disposition", "language",
                 "location", "lines", "children", "message", "envelope")

    def __init__(self):
        self.children: list[Part] | None = None
        self.message: Part | None = None
        self.envelope: list | None = None

    @property
    def size(self) -> int:
        return self.end - self.body

    def to_list(self) -> list:
        return [self.start, self.body, self.end, self.type, self.subtype, self.params,
                self.id, self.description, self.encoding, self.md5, self.disposition,
                self.language, self.location, self.lines,
                None if self.children is None else [c.to_list() for c in self.children],
                None if self.message is None else self.message.to_list(),
                self.envelope]

    @classmethod
    def from_list(cls, v: list) -> Part:
        p = cls()
        (p.start, p.body, p.end, p.type, p.subtype, p.params, p.id, p.description,
         p.encoding, p.md5, p.disposition, p.language, p.location, p.lines,
         children, message, p.envelope) = v
        p.params = [tuple(x) for x in p.params]
        if p.disposition is not None:
            p.disposition = (p.disposition[0], [tuple(x) for x in p.disposition[1]])
        if p.envelope is not None:
            p.envelope = [[tuple(a) for a in f] if isinstance(f, list) else f
                          for f in p.envelope]
        p.children = None if children is None else [cls.from_list(c) for c in children]
        p.message = None if message is None else cls.from_list(message)
        return p


_ENVELOPE_ADDR = ("from", "sender", "reply-to", "to", "cc", "bcc")


def _envelope(fields) -> list:
    addrs = {name: parse_addresses(_first(fields, name)) for name in _ENVELOPE_ADDR}
    for name in ("sender", "reply-to"):
        if not addrs[name]:
            addrs[name] = addrs["from"]
    return [_first(fields, "date"), _first(fields, "subject"),
            *(addrs[n] for n in _ENVELOPE_ADDR),
            _first(fields, "in-reply-to"), _first(fields, "message-id")]


def _count_lines(data: bytes, start: int, end: int) -> int:
    if end <= start:
        return 0
    n = data.count(b"\n", start, end)
    return n if data[end - 1:end] == b"\n" else n + 1


class _Parser:
    def __init__(self, data: bytes):
        self.data = data
        self.parts = 0

    def entity(self, start: int, end: int, depth: int, is_message: bool,
               digest: bool = False) -> Part:
        data = self.data
        self.parts += 1
        hend, body = header_end(data, start, end)
        fields = header_fields(data[start:hend])
        p = Part()
        p.start, p.body, p.end = start, body, end
        if is_message:
            p.envelope = _envelope(fields)
        ct = parse_content_type(_first(fields, "content-type"))
        if ct is None:
            if digest:
                ct = ("message", "rfc822", [])
            else:
                ct = ("text", "plain", [("charset", "us-ascii")])
        p.type, p.subtype, p.params = ct
        ltype, lsub = p.type.lower(), p.subtype.lower()
        if ltype == "text" and not any(k.lower() == "charset" for k, _ in p.params):
            p.params = [*p.params, ("charset", "us-ascii")]
        cte = _first(fields, "content-transfer-encoding")
        cte_toks = _mime_tokens(cte) if cte else []
        p.encoding = cte_toks[0][1] if cte_toks and cte_toks[0][0] == "t" else "7bit"
        p.id = _first(fields, "content-id")
        p.description = _first(fields, "content-description")
        p.md5 = _first(fields, "content-md5")
        p.disposition = parse_disposition(_first(fields, "content-disposition"))
        lang = _first(fields, "content-language")
        p.language = ([x.strip() for x in lang.split(",") if x.strip()] or None
                      if lang else None)
        p.location = _first(fields, "content-location")
        p.lines = 0
        deep = depth >= MAX_DEPTH or self.parts >= MAX_PARTS
        if ltype == "multipart" and not deep:
            boundary = next((v for k, v in p.params if k.lower() == "boundary"), None)
            if boundary:
                p.children = self.multipart(body, end, boundary.encode("latin-1"),
                                            depth, lsub == "digest")
            else:
                p.type, p.subtype = "text", "plain"
                p.params = [("charset", "us-ascii")]
                ltype = "text"
        elif (ltype == "message" and lsub in ("rfc822", "global") and not deep
              and p.encoding.lower() in ("7bit", "8bit", "binary")):
            p.message = self.entity(body, end, depth + 1, True)
        if p.children is None and (ltype == "text" or p.message is not None):
            p.lines = _count_lines(data, body, end)
        return p

    def multipart(self, start: int, end: int, boundary: bytes, depth: int,
                  digest: bool) -> list[Part]:
        data = self.data
        delim = b"--" + boundary
        children: list[Part] = []
        # the first delimiter may open the body; later ones follow a CRLF
        pos = start if data.startswith(delim, start) else self._find(delim, start - 2, end)
        while pos >= 0 and self.parts < MAX_PARTS:
            after = pos + len(delim)
            if data.startswith(b"--", after):
                break
            eol = data.find(b"\r\n", after, end)
            part_start = end if eol < 0 else eol + 2
            nxt = self._find(delim, part_start - 2, end)
            part_end = end if nxt < 0 else max(part_start, nxt - 2)
            children.append(self.entity(part_start, part_end, depth + 1, False, digest))
            pos = nxt
        if not children:
            p = Part()
            p.start = p.body = p.end = end
            p.type, p.subtype, p.params = "text", "plain", [("charset", "us-ascii")]
            p.id = p.description = p.md5 = p.disposition = p.language = None
            p.location = None
            p.encoding, p.lines = "7bit", 0
            children.append(p)
        return children

    def _find(self, delim: bytes, start: int, end: int) -> int:
        """Offset of the next delimiter line ``CRLF --boundary`` (at its ``--``)."""
        data = self.data
        needle = b"\r\n" + delim
        i = data.find(needle, max(start, 0), end)
        while i >= 0:
            after = i + len(needle)
            rest = data[after:after + 2]
            if rest in (b"--", b"\r\n", b"") or after >= end or rest[:1] in (b" ", b"\t"):
                return i + 2
            i = data.find(needle, i + 1, end)
        return -1


def parse(data: bytes) -> Part:
    """The structure of a CRLF-normalised message."""
    return _Parser(data).entity(0, len(data), 0, True)


#: The cache blob: this magic (with the tree's CACHE_VERSION), the lengths of the
#: three rendered items (4 bytes each, big-endian), the items, then the tree as
#: JSON.  Reading one back is three slices: the tree is decoded only when a section
#: needs it.  Blobs of the older form (one JSON list) are still read.
_BLOB_MAGIC = b"\x00IS" + bytes([CACHE_VERSION])
_BLOB_HEAD = struct.Struct(">4sIII")


def dump(root: Part) -> bytes:
    """The cache blob: the tree and, ready to send (without UTF8=ACCEPT), its
    ENVELOPE, BODY and BODYSTRUCTURE."""
    rendered = (envelope(root), bodystructure(root, False), bodystructure(root, True))
    tree = json.dumps(root.to_list(), separators=(",", ":")).encode()
    return b"".join((_BLOB_HEAD.pack(_BLOB_MAGIC, *map(len, rendered)), *rendered, tree))


class Structure:
    """A cache blob read back: the rendered items at once, the tree when asked."""

    __slots__ = ("_tree", "_root", "envelope", "body", "bodystructure")

    def __init__(self, tree: list | bytes, envelope: bytes, body: bytes,
                 bodystructure: bytes) -> None:
        self._tree = tree                    # JSON text (version 3) or the decoded list
        self._root: Part | None = None
        self.envelope, self.body, self.bodystructure = envelope, body, bodystructure

    @property
    def root(self) -> Part:
        if self._root is None:
            tree = self._tree
            if isinstance(tree, bytes):
                tree = json.loads(tree)
                if not isinstance(tree, list):
                    raise ValueError("bad cached tree")
            self._root = Part.from_list(tree)
            self._tree = None
        return self._root


def load_structure(blob: bytes) -> Structure | None:
    """A cache blob read back, or None when it is unusable (then parse again)."""
    try:
        if blob[:4] == _BLOB_MAGIC:
            _magic, a, b, c = _BLOB_HEAD.unpack_from(blob)
            start = _BLOB_HEAD.size
            if start + a + b + c >= len(blob):
                return None
            view = memoryview(blob)
            return Structure(bytes(view[start + a + b + c:]), bytes(view[start:start + a]),
                             bytes(view[start + a:start + a + b]),
                             bytes(view[start + a + b:start + a + b + c]))
        version, tree, *rendered = json.loads(blob)
        if version != CACHE_VERSION or len(rendered) != 3:
            return None
        if not isinstance(tree, list):
            return None
        return Structure(tree, *(r.encode("latin-1") for r in rendered))
    except (ValueError, TypeError, IndexError, KeyError, UnicodeError, struct.error):
        return None


def load(blob: bytes) -> Part | None:
    """The cached tree, or None when the blob is unusable."""
    structure = load_structure(blob)
    try:
        return None if structure is None else structure.root
    except (ValueError, TypeError, IndexError, KeyError):
        return None


# -- rendering -----------------------------------------------------------------

def _ns(value: str | None, utf8: bool) -> bytes:
    return b"NIL" if value is None else wire.string(value.encode("latin-1", "replace"),
                                                    utf8)


def _addresses(addrs: list, utf8: bool) -> bytes:
    if not addrs:
        return b"NIL"
    return wire.plist(wire.plist(_ns(v, utf8) for v in a) for a in addrs)


def envelope(p: Part, utf8: bool = False) -> bytes:
    e = p.envelope or [None, None, [], [], [], [], [], [], None, None]
    return wire.plist([_ns(e[0], utf8), _ns(e[1], utf8),
                       *(_addresses(a, utf8) for a in e[2:8]),
                       _ns(e[8], utf8), _ns(e[9], utf8)])


def _params(params: list, utf8: bool) -> bytes:
    if not params:
        return b"NIL"
    return wire.plist(x for k, v in params for x in (_ns(k, utf8), _ns(v, utf8)))


def _disposition(d, utf8: bool) -> bytes:
    if d is None:
        return b"NIL"
    return wire.plist([_ns(d[0], utf8), _params(d[1], utf8)])


def _language(lang, utf8: bool) -> bytes:
    if not lang:
        return b"NIL"
    if len(lang) == 1:
        return _ns(lang[0], utf8)
    return wire.plist(_ns(x, utf8) for x in lang)


def bodystructure(p: Part, extended: bool = True, utf8: bool = False) -> bytes:
    """BODYSTRUCTURE (``extended``) or BODY of a part."""
    if p.children is not None:
        items = [b"".join(bodystructure(c, extended, utf8) for c in p.children),
                 _ns(p.subtype, utf8)]
        if extended:
            items += [_params(p.params, utf8), _disposition(p.disposition, utf8),
                      _language(p.language, utf8), _ns(p.location, utf8)]
        return wire.plist(items)
    items = [_ns(p.type, utf8), _ns(p.subtype, utf8), _params(p.params, utf8),
             _ns(p.id, utf8), _ns(p.description, utf8), _ns(p.encoding, utf8),
             b"%d" % p.size]
    if p.message is not None:
        items += [envelope(p.message, utf8), bodystructure(p.message, extended, utf8),
                  b"%d" % p.lines]
    elif p.type.lower() == "text":
        items.append(b"%d" % p.lines)
    if extended:
        items += [_ns(p.md5, utf8), _disposition(p.disposition, utf8),
                  _language(p.language, utf8), _ns(p.location, utf8)]
    return wire.plist(items)


# -- sections ------------------------------------------------------------------

def find_part(root: Part, path: tuple[int, ...]) -> Part | None:
    """The part a section's part numbers name (RFC 9051 6.4.5), or None."""
    node = root
    for i, n in enumerate(path):
        if i > 0:
            if node.message is not None:
                node = node.message
            elif node.children is None:
                return None
        if node.children is not None:
            if not 1 <= n <= len(node.children):
                return None
            node = node.children[n - 1]
        elif n != 1:
            return None
    return node


def section(data: bytes, root: Part, path: tuple[int, ...], text: str | None,
            fields: tuple = ()) -> bytes | None:
    """The octets of ``BODY[section]``; None when the part does not exist."""
    node = find_part(root, path)
    if node is None:
        return None
    if text is None:
        if not path:
            return data
        return data[node.body:node.end]
    if text == "MIME":
        if not path:
            return None
        hend, _ = header_end(data, node.start, node.end)
        return data[node.start:hend]
    if path:
        if node.message is None:
            return b""
        node = node.message
    hend, body = header_end(data, node.start, node.end)
    if text == "TEXT":
        return data[body:node.end]
    header = data[node.start:hend]
    if text == "HEADER":
        return header
    wanted = {f.lower() if isinstance(f, str) else f.decode("latin-1").lower()
              for f in fields}
    keep = text == "HEADER.FIELDS"
    out = [raw for name, raw in header_fields(header) if (name in wanted) == keep]
    return b"".join(out) + b"\r\n"


def _decode_base64(data: bytes) -> bytes:
    clean = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    clean = clean[:len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    clean += b"=" * (-len(clean) % 4)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:
        return b""


KNOWN_CTES = frozenset({"7bit", "8bit", "binary", "", "base64", "quoted-printable"})


def decode_cte(data: bytes, encoding: str) -> bytes:
    """Content-Transfer-Decode; raises UnknownCTE."""
    enc = encoding.lower()
    if enc in ("7bit", "8bit", "binary", ""):
        return data
    if enc == "base64":
        return _decode_base64(data)
    if enc == "quoted-printable":
        return binascii.a2b_qp(data)
    raise UnknownCTE(encoding)


def binary(data: bytes, root: Part, path: tuple[int, ...]) -> bytes | None:
    """The decoded content of ``BINARY[section]`` (RFC 3516); None when the part does
    not exist; raises UnknownCTE."""
    if not path:
        return data
    node = find_part(root, path)
    if node is None:
        return None
    content = data[node.body:node.end]
    if node.children is not None or node.message is not None:
        return content
    return decode_cte(content, node.encoding)


# -- SEARCH helpers ------------------------------------------------------------

def decode_words(value: str) -> str:
    """A header value with RFC 2047 encoded words decoded (latin-1 str in, str out)."""
    raw = value.encode("latin-1", "replace")
    if b"=?" not in raw:
        return raw.decode("utf-8", "replace")
    try:
        return str(email.header.make_header(email.header.decode_header(
            raw.decode("utf-8", "surrogateescape"))))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return raw.decode("utf-8", "replace")


def header_values(data: bytes, root: Part, name: str) -> list[str]:
    hend, _ = header_end(data, root.start, root.end)
    name = name.lower()
    return [decode_words(field_value(raw))
            for n, raw in header_fields(data[root.start:hend]) if n == name]


def header_text(data: bytes, root: Part) -> str:
    hend, _ = header_end(data, root.start, root.end)
    return "\n".join(f"{n}: {decode_words(field_value(raw))}"
                     for n, raw in header_fields(data[root.start:hend]))


def _charset(p: Part) -> str:
    return next((v for k, v in p.params if k.lower() == "charset"), "us-ascii")


def body_text(data: bytes, root: Part, limit: int = 8 << 20) -> str:
    """The decoded text of the message's text parts (and encapsulated headers), for
    BODY/TEXT searches; at most ``limit`` octets of decoded text."""
    out: list[str] = []
    total = 0

    def walk(p: Part) -> None:
        nonlocal total
        if total > limit:
            return
        if p.children is not None:
            for c in p.children:
                walk(c)
        elif p.message is not None:
            out.append(header_text(data, p.message))
            walk(p.message)
        elif p.type.lower() in ("text", "message"):
            try:
                raw = decode_cte(data[p.body:p.end], p.encoding)
            except UnknownCTE:
                raw = data[p.body:p.end]
            try:
                text = raw.decode(_charset(p), "replace")
            except LookupError:
                text = raw.decode("utf-8", "replace")
            total += len(text)
            out.append(text)

    walk(root)
    return "\n".join(out)


def sent_date(root: Part) -> float | None:
    """The Date header's day as seconds since the epoch at 00:00 UTC of the date
    written in the header (its own time zone ignored, as SENTBEFORE etc. want)."""
    value = root.envelope[0] if root.envelope else None
    if not value:
        return None
    try:
        t = email.utils.parsedate_tz(value)
    except (TypeError, ValueError, IndexError):
        return None
    if t is None:
        return None
    try:
        return float(calendar.timegm((t[0], t[1], t[2], 0, 0, 0, 0, 0, 0)))
    except (ValueError, OverflowError, TypeError):
        return None
