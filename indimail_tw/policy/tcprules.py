"""tcpserver connection rules (``tcp/tcp.smtp``) and the ``tcprules`` compiler.

Rule syntax (ucspi-tcp ``tcprules(1)`` as IndiMail extends it), one per line,
``#`` comments and blank lines ignored::

    address:allow|deny[,VAR="value"][,!VAR]...

The quote may be any character repeated (``RELAYCLIENT=/@fix.me/``); ``!VAR``
unsets a variable.  Addresses:

==========================  =================================================
``1.2.3.4``                 one IPv4 address
``1.2.3.`` ``1.2.``         an IPv4 prefix (ending in a dot)
``1.2.3.37-53``             a range in the last given octet (``10.2-3.`` too)
``10.0.0.0/8`` ``127.0/8``  IPv4 CIDR (missing octets are 0)
``2001:db8::1``             one IPv6 address
``2001:db8::/32``           IPv6 CIDR
``=host.example.com``       the client's verified host name
``=.example.com``           every host name under example.com
``=``                       any client with a host name
(empty)                     everyone else: the default rule
==========================  =================================================

Lookup order (first hit wins): the exact address, ``=host``, then prefixes
from the longest (CIDR networks and dotted prefixes by their length),
``=.suffix`` from the longest, ``=``, and the default rule.  No rule at all
means allow.

The compiled form is IndiMail's: a cdb whose keys are the addresses as
written (ranges expanded; IPv6 addresses in full form; CIDR networks as
``_`` + bits for IPv4 and ``^`` + bits for IPv6, as ucspi-tcp6 does) and whose
values are ``D\\0`` for deny, ``+VAR=value\\0`` and ``-VAR\\0``.

The server reads ``tcp.smtp.cdb`` and falls back to the text ``tcp.smtp``;
it notices a changed file within a second (:class:`RulesFile`).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import cdbx
from twisted.logger import Logger

from indimail_tw import fsutil

log = Logger()


class RulesError(ValueError):
    """A rule that cannot be parsed; ``line`` is its line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Action:
    """What a rule says: allow or deny, and environment to set (value) or unset (None)."""

    allow: bool = True
    env: tuple[tuple[str, str | None], ...] = ()

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        out = dict(base or {})
        for name, value in self.env:
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        return out

    @property
    def unset(self) -> tuple[str, ...]:
        return tuple(name for name, value in self.env if value is None)

    def encode(self) -> bytes:
        data = b"" if self.allow else b"D\0"
        for name, value in self.env:
            raw = name.encode("utf-8", "surrogateescape")
            if value is None:
                data += b"-" + raw + b"\0"
            else:
                data += b"+" + raw + b"=" + value.encode("utf-8", "surrogateescape") + b"\0"
        return data

    @classmethod
    def decode(cls, data: bytes) -> Action:
        allow, env = True, []
        for item in data.split(b"\0"):
            if not item:
                continue
            text = item.decode("utf-8", "surrogateescape")
            if text[0] == "D":
                allow = False
            elif text[0] == "+" and "=" in text:
                name, _, value = text[1:].partition("=")
                env.append((name, value))
            elif text[0] == "-":
                env.append((text[1:], None))
        return cls(allow, tuple(env))


@dataclass(frozen=True)
class Rule:
    line: int
    address: str
    action: Action
    keys: tuple[str, ...]


_VAR = re.compile(r"[^=,\s\0!][^=,\s\0]*")


def parse_action(text: str, line: int = 0) -> Action:
    """``allow|deny`` followed by ``,VAR=<q>value<q>`` and ``,!VAR`` items."""
    if text.startswith("deny"):
        allow, rest = False, text[4:]
    elif text.startswith("allow"):
        allow, rest = True, text[5:]
    else:
        raise RulesError(line, "instructions must start with allow or deny")
    env: list[tuple[str, str | None]] = []
    while rest:
        if rest[0] != ",":
            raise RulesError(line, f"expected ',' at {rest!r}")
        rest = rest[1:]
        if rest.startswith("!"):
            name, _, rest = rest[1:].partition(",")
            rest = "," + rest if _ else ""
            if not _VAR.fullmatch(name):
                raise RulesError(line, f"bad variable name {name!r}")
            env.append((name, None))
            continue
        name, eq, rest = rest.partition("=")
        if not eq or not _VAR.fullmatch(name):
            raise RulesError(line, f"bad variable setting near {name!r}")
        if not rest:
            raise RulesError(line, f"{name}: missing quoted value")
        quote, rest = rest[0], rest[1:]
        end = rest.find(quote)
        if end < 0:
            raise RulesError(line, f"{name}: unterminated value")
        value, rest = rest[:end], rest[end + 1:]
        if "\0" in value:
            raise RulesError(line, f"{name}: NUL in value")
        env.append((name, value))
    return Action(allow, tuple(env))


def _split_rule(text: str, line: int) -> tuple[str, str]:
    """Split at the colon that starts the instructions (IPv6 addresses hold colons)."""
    start = 0
    while True:
        colon = text.find(":", start)
        if colon < 0:
            raise RulesError(line, "no ':allow' or ':deny' in rule")
        if text.startswith(("allow", "deny"), colon + 1):
            return text[:colon], text[colon + 1:]
        start = colon + 1


def _bits(packed: bytes, length: int) -> str:
    return "".join(f"{byte:08b}" for byte in packed)[:length]


def _ipv4_octets(text: str, line: int) -> list[int]:
    parts = text.split(".")
    if not all(p.isdigit() and int(p) <= 255 for p in parts) or len(parts) > 4:
        raise RulesError(line, f"bad IPv4 address {text!r}")
    return [int(p) for p in parts]


def address_keys(address: str, line: int = 0) -> tuple[str, ...]:
    """The cdb keys a rule's address stands for (see the module docstring)."""
    if address == "" or address.startswith("=") or "@" in address:
        return (address.lower(),)
    if "/" in address:
        net, _, length = address.partition("/")
        if not length.isdigit():
            raise RulesError(line, f"bad prefix length in {address!r}")
        n = int(length)
        if ":" in net:
            if not 0 < n <= 128:
                raise RulesError(line, f"bad IPv6 prefix length in {address!r}")
            try:
                packed = ipaddress.IPv6Address(net).packed
            except ValueError:
                raise RulesError(line, f"bad IPv6 network {address!r}") from None
            return ("^" + _bits(packed, n),)
        if not 0 < n <= 32:
            raise RulesError(line, f"bad IPv4 prefix length in {address!r}")
        octets = _ipv4_octets(net.rstrip("."), line)
        packed = bytes(octets + [0] * (4 - len(octets)))
        return ("_" + _bits(packed, n),)
    if ":" in address:
        try:
            return (ipaddress.IPv6Address(address).exploded,)
        except ValueError:
            raise RulesError(line, f"bad IPv6 address {address!r}") from None
    return tuple(_ipv4_keys(address, line))


def _ipv4_keys(address: str, line: int) -> Iterator[str]:
    prefix = address.endswith(".")
    body = address[:-1] if prefix else address
    parts = body.split(".")
    if not body or len(parts) > 4 or (prefix and len(parts) > 3) or (
            not prefix and len(parts) != 4):
        raise RulesError(line, f"bad IPv4 address or prefix {address!r}")
    ranged = [i for i, p in enumerate(parts) if "-" in p]
    if len(ranged) > 1 or (ranged and ranged[0] != len(parts) - 1):
        raise RulesError(line, f"a range must be the last octet given: {address!r}")
    low, high = _range(parts[-1], address, line)
    head = [int(p) if p.isdigit() and int(p) <= 255 else -1 for p in parts[:-1]]
    if -1 in head:
        raise RulesError(line, f"bad IPv4 address or prefix {address!r}")
    for value in range(low, high + 1):
        key = ".".join(str(p) for p in [*head, value])
        yield key + "." if prefix else key


def _range(part: str, address: str, line: int) -> tuple[int, int]:
    low, dash, high = part.partition("-")
    if not low.isdigit() or (dash and not high.isdigit()):
        raise RulesError(line, f"bad IPv4 address or prefix {address!r}")
    lo, hi = int(low), min(int(high), 255) if dash else int(low)
    if lo > 255 or lo > hi:
        raise RulesError(line, f"bad range in {address!r}")
    return lo, hi


def parse_rules(text: str) -> list[Rule]:
    """Every rule of a ``tcp.smtp`` text; :class:`RulesError` names the bad line."""
    rules = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip(" \t\r")
        if not line or line.startswith("#"):
            continue
        address, instructions = _split_rule(line, number)
        rules.append(Rule(number, address, parse_action(instructions, number),
                          address_keys(address, number)))
    return rules


# -- lookups ------------------------------------------------------------------------------

def normalise_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def candidate_keys(ip: str, host: str | None = None) -> Iterator[str]:
    """The keys tcpserver would try for a client, most specific first."""
    address = normalise_ip(ip)
    host = host.lower().rstrip(".") if host else None
    if address is not None:
        yield address.exploded if address.version == 6 else str(address)
    if host:
        yield "=" + host
    if address is not None:
        bits = _bits(address.packed, address.max_prefixlen)
        mark = "_" if address.version == 4 else "^"
        octets = str(address).split(".") if address.version == 4 else []
        for n in range(address.max_prefixlen, 0, -1):
            yield mark + bits[:n]
            if octets and n % 8 == 0 and n < 32:
                yield ".".join(octets[:n // 8]) + "."
    if host:
        labels = host.split(".")
        for i in range(1, len(labels)):
            yield "=." + ".".join(labels[i:])
        yield "="
    yield ""


class RuleSet:
    """Rules ready for lookups, from a text file or a compiled cdb."""

    def __init__(self, get: Callable[[str], bytes | None], uses_hosts: bool,
                 source: str = "") -> None:
        self._get = get
        self.uses_hosts = uses_hosts
        self.source = source

    @classmethod
    def from_rules(cls, rules: list[Rule], source: str = "") -> RuleSet:
        table: dict[str, bytes] = {}
        for rule in rules:
            data = rule.action.encode()
            for key in rule.keys:
                table.setdefault(key, data)
        return cls(table.get, any(k.startswith("=") or "@=" in k for k in table), source)

    @classmethod
    def from_cdb(cls, path: str) -> RuleSet:
        db = cdbx.CDB(path)
        uses_hosts = any(k.startswith(b"=") for k in db)

        def get(key: str) -> bytes | None:
            return db.get(key.encode("utf-8", "surrogateescape"))

        return cls(get, uses_hosts, path)

    def match(self, ip: str, host: str | None = None) -> tuple[str, Action] | None:
        """``(key, action)`` of the first rule for this client, or None (no rule: allow)."""
        for key in candidate_keys(ip, host):
            data = self._get(key)
            if data is not None:
                return key, Action.decode(data)
        return None


def compile_rules(rules: list[Rule]) -> bytes:
    """The cdb file for ``rules`` (first rule wins for a duplicated key)."""
    with tempfile.TemporaryFile() as scratch:
        maker = cdbx.CDB.make(scratch)
        seen: set[str] = set()
        for rule in rules:
            data = rule.action.encode()
            for key in rule.keys:
                if key not in seen:
                    seen.add(key)
                    maker.add(key.encode("utf-8", "surrogateescape"), data)
        maker.commit().close()
        scratch.seek(0)
        return scratch.read()


def write_cdb(rules: list[Rule], cdb_path: str, tmp_path: str) -> None:
    """tcprules' way: write ``tmp_path``, fsync it, rename it over ``cdb_path``."""
    data = compile_rules(rules)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fsutil.write_all(fd, data)
        fsutil.fsync_file(fd)
    finally:
        os.close(fd)
    fsutil.rename(tmp_path, cdb_path)
    fsutil.fsync_dir(os.path.dirname(os.path.abspath(cdb_path)))


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class RulesFile:
    """``DIR/NAME.cdb``, else ``DIR/NAME``, re-read when either changes.

    ``current()`` checks the files at most once every ``interval`` seconds of
    ``now()``; a file that cannot be read or parsed keeps the previous rules
    (and is logged).  ``None`` means there are no rules: allow everyone.
    """

    def __init__(self, directory: str, name: str = "tcp.smtp",
                 now: Callable[[], float] | None = None, interval: float = 1.0) -> None:
        import time
        self.text_path = os.path.join(directory, name)
        self.cdb_path = self.text_path + ".cdb"
        self._now = now or time.monotonic
        self._interval = interval
        self._checked: float | None = None
        self._stamps: tuple = ()
        self._rules: RuleSet | None = None

    def current(self) -> RuleSet | None:
        now = self._now()
        if self._checked is not None and now - self._checked < self._interval:
            return self._rules
        self._checked = now
        stamps = (_stamp(self.cdb_path), _stamp(self.text_path))
        if stamps != self._stamps:
            self._reload(stamps)
        return self._rules

    def _reload(self, stamps: tuple) -> None:
        cdb_stamp, text_stamp = stamps
        try:
            if cdb_stamp is not None:
                rules = RuleSet.from_cdb(self.cdb_path)
                if text_stamp is not None and text_stamp[1] > cdb_stamp[1]:
                    log.warn("{text} is newer than {cdb}: run tcprules to recompile it",
                             text=self.text_path, cdb=self.cdb_path)
            elif text_stamp is not None:
                with open(self.text_path, encoding="utf-8", errors="surrogateescape") as f:
                    rules = RuleSet.from_rules(parse_rules(f.read()), self.text_path)
            else:
                rules = None
        except (OSError, ValueError) as e:  # RulesError is a ValueError
            log.error("connection rules not reloaded, keeping the previous ones: "
                      "{path}: {error}", path=self.text_path, error=str(e))
            return
        self._stamps = stamps
        self._rules = rules


# -- the command ---------------------------------------------------------------------------

USAGE = """\
tcprules CDB TMP < RULES     compile RULES (stdin) into CDB, atomically via TMP
tcprules --root DIR [NAME]   compile DIR/tcp/NAME into DIR/tcp/NAME.cdb (NAME: tcp.smtp;
                             TCPDIR/SYSCONFDIR are honoured as by the server)
tcprules --check IP [--host NAME] FILE
                             show the rule FILE (a .cdb or a text file) applies to a client
"""


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tcprules", usage=USAGE,
        description="Compile tcpserver connection rules (tcp.smtp) into a cdb, as ucspi-tcp's "
                    "tcprules does, or show which rule applies to a client.",
        epilog="Rule format: address:allow|deny[,VAR=\"value\"][,!VAR]; addresses: IPv4/IPv6, "
               "prefixes like 1.2.3., ranges 1.2.3.4-20, CIDR 10.0.0.0/8, =hostname, "
               "=.domain, and an empty default. Exit status 100: bad rules; 111: I/O error.")
    parser.add_argument("files", nargs="*",
                        help="CDB TMP, or NAME with --root, or FILE with --check")
    parser.add_argument("--root", help="data root (as twistd indimail --root)")
    parser.add_argument("--check", metavar="IP", help="client address to look up")
    parser.add_argument("--host", help="client host name for --check")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        if args.check is not None:
            return _check(args)
        if args.root is not None:
            from indimail_tw.paths import Paths
            name = args.files[0] if args.files else "tcp.smtp"
            if len(args.files) > 1 or "/" in name:
                print("tcprules: usage: tcprules --root DIR [NAME]", file=sys.stderr)
                return 100
            tcp = Paths.resolve(args.root, os.environ).tcp
            source = os.path.join(tcp, name)
            with open(source, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
            cdb_path, tmp_path = source + ".cdb", source + ".tmp"
        else:
            if len(args.files) != 2:
                print("tcprules: usage: tcprules rules.cdb rules.tmp", file=sys.stderr)
                return 100
            cdb_path, tmp_path = args.files
            text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
        rules = parse_rules(text)
        write_cdb(rules, cdb_path, tmp_path)
    except RulesError as e:
        print(f"tcprules: fatal: unable to parse {e}", file=sys.stderr)
        return 100
    except OSError as e:
        print(f"tcprules: fatal: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 111
    if args.root is not None:
        print(f"tcprules: {len(rules)} rules compiled into {cdb_path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    if len(args.files) != 1:
        print("tcprules: usage: tcprules --check IP [--host NAME] FILE", file=sys.stderr)
        return 100
    path = args.files[0]
    if path.endswith(".cdb"):
        ruleset = RuleSet.from_cdb(path)
    else:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            ruleset = RuleSet.from_rules(parse_rules(f.read()), path)
    found = ruleset.match(args.check, args.host)
    if found is None:
        print("default: allow (no rule matches)")
        return 0
    key, action = found
    print(f"rule {key!r}: {'allow' if action.allow else 'deny'}")
    for name, value in action.env:
        print(f"unset {name}" if value is None else f"set {name}={value!r}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
