"""SMTP command syntax, sans-IO: verbs, paths (addresses) and ESMTP parameters.

Liberal where real clients are sloppy (``MAIL FROM: <a@b>``, a path without
angle brackets, verbs in any case) and strict where it matters: no control
characters anywhere, length limits of RFC 5321 4.5.3.1, UTF-8 only with
SMTPUTF8, address literals that are real IP addresses.  Every failure is a
:class:`SyntaxProblem` carrying the reply to give.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_VERB = 16


class SyntaxProblem(ValueError):
    """A command the client got wrong; ``code``/``enhanced``/``text`` is the reply."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.enhanced = enhanced
        self.text = text


def _bad_syntax(text: str = "syntax error") -> SyntaxProblem:
    return SyntaxProblem(501, "5.5.4", text)


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERB = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def split_command(line: bytes) -> tuple[str, bytes]:
    """``(VERB, argument bytes)``; the verb upper-cased, the argument stripped."""
    if _CONTROL.search(line):
        raise _bad_syntax("syntax error (control characters)")
    head, _, rest = line.strip(b" \t").partition(b" ")
    try:
        verb = head.decode("ascii")
    except UnicodeDecodeError:
        raise _bad_syntax("syntax error (bad command)") from None
    if not verb or len(verb) > MAX_VERB or not _VERB.fullmatch(verb):
        raise _bad_syntax("syntax error (bad command)")
    return verb.upper(), rest.strip(b" \t")


def decode_argument(arg: bytes, utf8: bool) -> str:
    """The argument as text: ASCII, or UTF-8 when the client may use it (SMTPUTF8)."""
    try:
        return arg.decode("ascii")
    except UnicodeDecodeError:
        pass
    if not utf8:
        raise SyntaxProblem(553, "5.6.7", "non-ASCII address requires SMTPUTF8")
    try:
        return arg.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_syntax("syntax error (invalid UTF-8)") from None


# -- paths -----------------------------------------------------------------------------

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING = re.compile(rf"[{_ATEXT}.]+")
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(\.[{_ATEXT}]+)*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_ROUTE = re.compile(r"@[^,:]+(?:,@[^,:]+)*:")


@dataclass(frozen=True)
class Path:
    """A reverse- or forward-path: ``local@domain`` (domain "" for ``<postmaster>``)."""

    local: str
    domain: str
    route: tuple[str, ...] = ()          # a source route given (and ignored)

    @property
    def null(self) -> bool:
        return not self.local and not self.domain

    @property
    def address(self) -> str:
        if self.null:
            return ""
        return f"{self.local}@{self.domain}" if self.domain else self.local

    def __str__(self) -> str:
        return self.address


NULL_PATH = Path("", "")


def _is_utf8_domain(domain: str) -> bool:
    return not domain.isascii()


def check_domain(domain: str) -> str:
    """A host name or an address literal; returns it (host names lower-cased)."""
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise ValueError("domain too long")
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise ValueError("bad address literal")
        inner = domain[1:-1]
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
            return "[IPv6:" + inner[5:].lower() + "]"
        ipaddress.IPv4Address(inner)
        return domain
    if _is_utf8_domain(domain):
        labels = domain.rstrip(".").split(".")
        if any(not label or len(label) > 63 or any(c.isspace() or c in "@[]<>\"\\(),;:"
                                                   for c in label) for label in labels):
            raise ValueError("bad domain")
        return domain.lower()
    if not _DOMAIN.fullmatch(domain) or ".." in domain:
        raise ValueError("bad domain")
    if any(len(label) > 63 for label in domain.split(".")):
        raise ValueError("label too long")
    return domain.lower()


def _local_part(text: str, utf8: bool) -> str:
    if text.startswith('"'):
        m = _QUOTED.fullmatch(text)
        if m is None:
            raise ValueError("bad quoted string")
        inner = re.sub(r"\\(.)", r"\1", m.group(1))
        if any(ord(c) < 32 or ord(c) == 127 for c in inner):
            raise ValueError("control character")
        if _DOT_ATOM.fullmatch(inner):
            return inner
        return '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if utf8 and any(ord(c) > 127 for c in text):
        if any(c.isspace() or c in '@<>()[]\\,;:"' for c in text):
            raise ValueError("bad local part")
        return text
    if not _DOT_STRING.fullmatch(text):
        raise ValueError("bad local part")
    return text


def parse_path(text: str, utf8: bool = False, allow_null: bool = False,
               allow_bare: bool = True) -> tuple[Path, str]:
    """Parse a path at the start of ``text``; returns it and the rest (parameters).

    ``<>`` only when ``allow_null``; an address without ``@`` is returned with
    domain ``""`` (the caller decides whether that is acceptable).
    """
    text = text.lstrip(" ")
    if text.startswith("<"):
        end = _closing_bracket(text)
        inner, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(" "):
            raise ValueError("junk after path")
    elif allow_bare:
        inner, _, rest = text.partition(" ")
    else:
        raise ValueError("path must be in angle brackets")
    if len(inner.encode("utf-8")) > MAX_PATH:
        raise ValueError("path too long")
    route: tuple[str, ...] = ()
    m = _ROUTE.match(inner)
    if m:
        route = tuple(hop[1:] for hop in m.group(0)[:-1].split(","))
        inner = inner[m.end():]
    if not inner:
        if allow_null and not route:
            return NULL_PATH, rest.strip(" ")
        raise ValueError("empty path")
    at = _split_at(inner)
    if at < 0:
        local, domain = _local_part(inner, utf8), ""
    else:
        local = _local_part(inner[:at], utf8)
        domain = check_domain(inner[at + 1:])
    if not local or len(local.encode("utf-8")) > MAX_LOCAL:
        raise ValueError("bad local part length")
    return Path(local, domain, route), rest.strip(" ")


def _closing_bracket(text: str) -> int:
    """Index of the ``>`` closing the path, skipping quoted strings."""
    if '"' not in text:                     # the usual case: nothing is quoted
        end = text.find(">", 1)
        if end < 0:
            raise ValueError("missing '>'")
        return end
    quoted = escaped = False
    for i, ch in enumerate(text[1:], 1):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
    raise ValueError("missing '>'")


def _split_at(mailbox: str) -> int:
    """Index of the ``@`` separating local part and domain (outside quotes), or -1."""
    if '"' not in mailbox:
        return mailbox.rfind("@")
    quoted = escaped = False
    last = -1
    for i, ch in enumerate(mailbox):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "@" and not quoted:
            last = i
    return last


# -- MAIL / RCPT ---------------------------------------------------------------------------

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


@dataclass
class MailArgs:
    path: Path
    params: dict[str, str | None] = field(default_factory=dict)


def parse_params(text: str) -> dict[str, str | None]:
    """``KEY[=VALUE]`` words; keys upper-cased; duplicates and bad characters refused."""
    params: dict[str, str | None] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not _KEYWORD.fullmatch(key) or (eq and not value):
            raise SyntaxProblem(501, "5.5.4", "syntax error in parameters")
        if any(ord(c) < 33 or c == "=" or ord(c) == 127 for c in value):
            raise SyntaxProblem(501, "5.5.4", "syntax error in parameters")
        key = key.upper()
        if key in params:
            raise SyntaxProblem(501, "5.5.4", "duplicate parameter")
        params[key] = value if eq else None
    return params


def parse_mail_or_rcpt(arg: bytes, keyword: str, utf8_allowed: bool,
                       utf8: bool = False) -> MailArgs:
    """``FROM:<path> params`` (keyword ``FROM``) or ``TO:<path> params`` (``TO``).

    ``utf8_allowed``: SMTPUTF8 was advertised (MAIL may then switch it on with
    its parameter); ``utf8``: this transaction uses SMTPUTF8 (RCPT).
    """
    what = "sender" if keyword == "FROM" else "recipient"
    enhanced = "5.1.7" if keyword == "FROM" else "5.1.3"
    head = arg[:len(keyword) + 1]
    if head.upper() != keyword.encode() + b":":
        raise SyntaxProblem(501, "5.5.4", f"syntax error (expected {keyword}:)")
    rest = arg[len(keyword) + 1:]
    if keyword == "FROM" and utf8_allowed and re.search(rb"(?i)(^|\s)SMTPUTF8(\s|$)", rest):
        utf8 = True
    text = decode_argument(rest, utf8)
    try:
        path, tail = parse_path(text, utf8=utf8, allow_null=(keyword == "FROM"))
    except ValueError:
        raise SyntaxProblem(501, enhanced, f"bad {what} address syntax") from None
    return MailArgs(path, parse_params(tail))


_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")


def decode_xtext(text: str) -> str:
    """RFC 3461 xtext: ``+XX`` hex escapes; anything else malformed is refused."""
    if any(ord(c) < 33 or ord(c) > 126 or c == "=" for c in text):
        raise ValueError("bad xtext")
    if re.search(r"\+(?![0-9A-F]{2})", text):
        raise ValueError("bad xtext")
    decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), text)
    if any(ord(c) < 32 or ord(c) == 127 for c in decoded):
        raise ValueError("control character in xtext")
    return decoded
