"""Value types of control files, and the two lists with structure of their own.

A parser takes the text of a value (or the numbered entries of a list) and returns
the typed value, or raises :class:`ParseError` with a short reason; the caller adds
where the text came from (file and line, or environment variable).

Numbers follow qmail where qmail tolerates odd values (a negative ``maxrecipients``
means 0, a zero ``maxhops`` means 100, ...), but text that is not a number at all
is an error: qmail would silently use the default, which hides typos.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

Entries = Sequence[tuple[int, str]]  # (line number, entry) pairs


class ParseError(ValueError):
    """A value that cannot be used; ``line`` is set for an entry of a list."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


# -- one-value types -------------------------------------------------------------

_INT = re.compile(r"[+-]?[0-9]+")
_HOST = re.compile(r"(?!-)(?!\.)[\w.-]*\w[\w.-]*\+?|\[(IPv6:)?[0-9A-Fa-f:.]+\]")


def parse_str(text: str) -> str:
    return text


def parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ParseError(f"not a number: {text!r}")
    return int(text)


def nonnegative(text: str) -> int:
    """An integer; negative values mean 0, as qmail-smtpd treats them."""
    return max(parse_int(text), 0)


def at_least(minimum: int) -> Callable[[str], int]:
    """An integer that must be ``minimum`` or more (no qmail value to mimic here)."""

    def parse(text: str) -> int:
        value = parse_int(text)
        if value < minimum:
            raise ParseError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


def positive_or(fallback: int) -> Callable[[str], int]:
    """An integer where zero or less means ``fallback`` (qmail's maxhops, timeoutsmtpd)."""

    def parse(text: str) -> int:
        value = parse_int(text)
        return value if value > 0 else fallback

    return parse


_TRUE = {"yes", "true", "on"}
_FALSE = {"", "no", "false", "off"}


def parse_bool(text: str) -> bool:
    """qmail's booleans are numbers (non-zero is true); yes/no/true/false/on/off too."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    try:
        return parse_int(word) != 0
    except ParseError:
        raise ParseError(f"not a boolean (0/1, yes/no): {text!r}") from None


def parse_hostname(text: str) -> str:
    """A host name (letters, digits, ``-``, ``.``, ``_``, a final ``+``) or ``[ip]``."""
    if not _HOST.fullmatch(text):
        raise ParseError(f"not a host name: {text!r}")
    return text


# IndiMail's hash_method: a number 0..4 or the name (vd:get_hashmethod.c).  BCRYPT
# is ours (indimail_tw.auth.passwords can make bcrypt hashes); it has no number.
HASH_METHODS = ("DES", "MD5", "SHA-256", "SHA-512", "YESCRYPT")
_HASH_NAMES = {name: name for name in (*HASH_METHODS, "BCRYPT")}
_HASH_NAMES.update({"SHA256": "SHA-256", "SHA512": "SHA-512"})


def parse_hash_method(text: str) -> str:
    """The canonical name of a password hash method: ``DES`` ... ``YESCRYPT``, ``BCRYPT``.

    A ``#`` starts a comment, as in IndiMail's reader.
    """
    word = text.split("#", 1)[0].strip().upper()
    if word.isdigit() and int(word) < len(HASH_METHODS):
        return HASH_METHODS[int(word)]
    if word in _HASH_NAMES:
        return _HASH_NAMES[word]
    names = ", ".join((*HASH_METHODS, "BCRYPT"))
    raise ParseError(f"not a hash method (0-4, {names}): {text!r}")


# -- lists ------------------------------------------------------------------------


def as_tuple(entries: Entries) -> tuple[str, ...]:
    return tuple(text for _, text in entries)


class VirtualDomains(Mapping[str, str]):
    """``virtualdomains``: lower-cased key -> prefix, looked up as qmail's todo-proc does.

    Keys are ``domain``, ``.suffix`` (every subdomain of ``suffix``, not ``suffix``
    itself), ``user@domain`` (one address) or empty (the ``:prefix`` catch-all).  For
    ``user@a.b.c`` the first present key among ``user@a.b.c``, ``a.b.c``, ``.b.c``,
    ``.c`` and ``""`` decides.  Its prefix turns the address into the local address
    ``prefix-user@a.b.c``; an empty prefix (``domain:``) means "not virtual" and
    stops the search.  Keys compare without regard to case; when a key is listed
    twice the later line wins (qmail's constmap).
    """

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._map: dict[str, str] = {key.lower(): prefix for key, prefix in pairs}

    def __getitem__(self, key: str) -> str:
        return self._map[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"VirtualDomains({self._map!r})"

    def match(self, address: str) -> tuple[str, str] | None:
        """The ``(key, prefix)`` entry that decides for ``address`` (or a bare domain)."""
        for key in _candidates(address.lower()):
            if key in self._map:
                return key, self._map[key]
        return None

    def lookup(self, address: str) -> str | None:
        """The prefix for ``address``; ``None`` when it is not a virtual address."""
        found = self.match(address)
        return found[1] if found and found[1] else None

    def rewrite(self, address: str) -> str | None:
        """The local address ``prefix-address`` qmail-send delivers to, or ``None``."""
        prefix = self.lookup(address)
        return None if prefix is None else f"{prefix}-{address}"


def _candidates(address: str) -> Iterator[str]:
    at = address.rfind("@")
    if at >= 0:
        yield address
    domain = address[at + 1:]
    yield domain
    for i, ch in enumerate(domain):
        if ch == ".":
            yield domain[i:]
    yield ""


def parse_virtualdomains(entries: Entries) -> VirtualDomains:
    pairs = []
    for line, text in entries:
        key, sep, prefix = text.partition(":")
        if not sep:
            raise ParseError(f"expected 'domain:prefix': {text!r}", line)
        pairs.append((key, prefix))
    return VirtualDomains(pairs)


@dataclass(frozen=True)
class SmtpRoute:
    """One ``smtproutes`` line, parsed but not interpreted.

    ``domain`` is ``""`` for the default route, ``.suffix`` for subdomains, ``!@``
    for null-sender mail; ``relay`` is ``""`` for "use MX", else a host, IP or
    ``[ip]``; ``extra`` holds any fields after the port (penalty, max_tolerance);
    ``auth`` the blank-separated words after the route (user password [env], /s ...).
    """

    domain: str
    relay: str
    port: int | None
    extra: tuple[str, ...] = ()
    auth: tuple[str, ...] = ()
    line: int = 0


def parse_route(text: str, line: int = 0) -> SmtpRoute:
    """Parse ``domain:relay[:port[:more]][ auth words]``."""
    route, *rest = text.split(None, 1)
    auth = tuple(rest[0].split()) if rest else ()
    domain, sep, target = route.partition(":")
    if not sep:
        raise ParseError(f"expected 'domain:relay[:port]': {text!r}", line)
    if target.startswith("["):
        close = target.find("]")
        tail = target[close + 1:]
        if close < 0 or (tail and not tail.startswith(":")):
            raise ParseError(f"unbalanced '[' in relay: {text!r}", line)
        relay, fields = target[: close + 1], tail[1:].split(":") if tail else []
    else:
        relay, *fields = target.split(":")
    port = None
    if fields and fields[0]:
        if not fields[0].isdigit() or not 0 < int(fields[0]) < 65536:
            raise ParseError(f"not a port number: {fields[0]!r}", line)
        port = int(fields[0])
    return SmtpRoute(domain, relay, port, tuple(fields[1:]), auth, line)


def parse_smtproutes(entries: Entries) -> tuple[SmtpRoute, ...]:
    return tuple(parse_route(text, line) for line, text in entries)


def each(parse: Callable[[str], object]) -> Callable[[Entries], tuple]:
    """A list parser that applies a value parser to every entry."""

    def parse_list(entries: Entries) -> tuple:
        out = []
        for line, text in entries:
            try:
                out.append(parse(text))
            except ParseError as e:
                raise ParseError(e.reason, line) from None
        return tuple(out)

    return parse_list
