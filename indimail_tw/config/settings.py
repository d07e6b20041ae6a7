"""Typed settings: every known control file, read once into an immutable snapshot.

Each setting is resolved as IndiMail does (reference, conventions): environment
override -> control file -> default, where the default may be derived from another
setting (most host names default to ``me``; ``me`` itself defaults to the host's
FQDN).  A value that cannot be parsed raises :class:`ConfigError` naming the file
and line (or the environment variable), so a snapshot is either wholly valid or
not built at all.

The registry below is the single list of known files; :data:`REGISTRY` maps a
setting name to its :class:`Setting`.  Environment overrides come in three kinds
(:class:`EnvMode`): the variable holds the value, names another file to read, or
holds the value with "set but empty" meaning "none" (``EXTRAQUEUE``).
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cdbx

from indimail_tw.config import parsers as p
from indimail_tw.config.control import (
    BLANKS,
    ControlDir,
    Stamp,
    cdb_lookup,
    numbered_entries,
    open_cdb,
    read_lines,
    stamp_of,
)
from indimail_tw.errors import ConfigError


class Kind(enum.Enum):
    VALUE = "value"  # first line of the file
    LIST = "list"  # one entry per line
    CDB = "cdb"  # list that may also be compiled to NAME.cdb (which then wins)


class EnvMode(enum.Enum):
    VALUE = "value"  # a non-empty variable replaces the file
    FILE = "file"  # a non-empty variable names the file to read instead
    VALUE_OR_NONE = "value-or-none"  # as VALUE; set but empty means "no value"


@dataclass(frozen=True)
class Derived:
    """A default computed from other settings; ``text`` documents it."""

    compute: Callable[[_Builder], Any]
    text: str


@dataclass(frozen=True)
class Setting:
    """One known setting.  ``file`` is ``None`` for an environment-only knob."""

    name: str
    kind: Kind
    type: str
    parse: Callable[[Any], Any]
    default: Any = None
    env: str | None = None
    env_mode: EnvMode = EnvMode.VALUE
    file: str | None = ""  # "" means: the same as name
    first_entry: bool = False  # value is the first entry (comments skipped), not line 1
    keep_empty: bool = False  # an empty existing file is the value "" (not the default)
    doc: str = ""

    @property
    def filename(self) -> str | None:
        return self.name if self.file == "" else self.file


def _value(name: str, type: str, parse: Callable[[str], Any], default: Any = None,
           **kw: Any) -> Setting:
    return Setting(name, Kind.VALUE, type, parse, default, **kw)


def _list(name: str, parse: Callable[[p.Entries], Any] = p.as_tuple, default: Any = (),
          cdb: bool = False, type: str = "list", **kw: Any) -> Setting:
    return Setting(name, Kind.CDB if cdb else Kind.LIST, type, parse, default, **kw)


_FQDN = Derived(lambda b: b.fqdn(), "the host's FQDN")
ME = Derived(lambda b: b.get("me"), "me")
ME_LIST = Derived(lambda b: (b.get("me"),), "(me,)")
_host, _uint = p.parse_hostname, p.nonnegative

_SETTINGS = [
    # identity (qmail-control(5), qmail-inject(8), qmail-send(8))
    _value("me", "hostname", _host, _FQDN, doc="this host's FQDN; default of most names"),
    _value("defaultdomain", "hostname", _host, ME, env="QMAILDEFAULTDOMAIN"),
    _value("defaulthost", "hostname", _host, ME, env="QMAILDEFAULTHOST"),
    _value("plusdomain", "hostname", _host, ME, env="QMAILPLUSDOMAIN"),
    _value("idhost", "hostname", _host, ME, env="QMAILIDHOST", doc="Message-ID host"),
    _value("envnoathost", "hostname", _host, ME, doc="domain of addresses without @"),
    _value("localiphost", "hostname", _host, ME, doc="replaces [local-ip] in addresses"),
    _value("helohost", "hostname", _host, ME, doc="our EHLO name as an SMTP client"),
    _value("login_domain", "hostname", _host, Derived(lambda b: b.get("defaultdomain"),
           "defaultdomain"), env="DEFAULT_DOMAIN", file=None,
           doc="domain of a login without @ (vchkpass, IMAP/POP3)"),
    _list("smtpgreeting", default=ME_LIST, doc="220 banner; one line per entry"),
    # domains we accept and deliver
    _list("locals", default=ME_LIST, doc="exact domains delivered locally"),
    _list("rcpthosts", default=ME_LIST,
          doc="domains accepted by SMTP (.suffix = subdomains); missing means (me,)"),
    _list("morercpthosts", cdb=True, doc="more rcpthosts; only the .cdb is consulted"),
    _list("virtualdomains", p.parse_virtualdomains, p.VirtualDomains(),
          type="virtualdomains", doc="domain:prefix, .suffix:prefix, user@domain:prefix"),
    _list("percenthack", doc="domains where user%host@domain is rewritten"),
    _list("etrnhosts", doc="domains that may be flushed with ETRN/ATRN"),
    _list("chkrcptdomains", cdb=True, doc="domains whose recipients are checked"),
    _list("relayclients", doc="ip-prefix:append entries allowed to relay"),
    _list("relaydomains", doc="client host names allowed to relay"),
    _list("relaymailfrom", cdb=True, doc="senders allowed to relay"),
    _list("authdomains", cdb=True, doc="sender domains that must authenticate"),
    _list("nodnscheck", doc="sender domains exempt from the DNS check"),
    # access lists; the variable names another file (smtpd.c open_control_once)
    _list("badmailfrom", cdb=True, env="BADMAILFROM", env_mode=EnvMode.FILE),
    _list("badmailpatterns", env="BADMAILPATTERNS", env_mode=EnvMode.FILE),
    _list("badrcptto", cdb=True, env="BADRCPTTO", env_mode=EnvMode.FILE),
    _list("badrcptpatterns", env="BADRCPTPATTERNS", env_mode=EnvMode.FILE),
    _list("goodrcptto", cdb=True, env="GOODRCPTTO", env_mode=EnvMode.FILE),
    _list("blackholedsender", cdb=True, env="BLACKHOLEDSENDER", env_mode=EnvMode.FILE),
    _list("blackholedrcpt", cdb=True, env="BLACKHOLEDRCPT", env_mode=EnvMode.FILE),
    _list("badhelo", cdb=True, env="BADHELO", env_mode=EnvMode.FILE),
    _value("qregex", "bool", p.parse_bool, False, env="QREGEX",
           doc="match access lists as regular expressions"),
    # SMTP server limits (qmail-smtpd(8))
    _value("databytes", "int", _uint, 0, env="DATABYTES", doc="0 = no limit"),
    _value("maxhops", "int", p.positive_or(100), 100),
    _value("maxrecipients", "int", _uint, 0, env="MAXRECIPIENTS", doc="0 = no limit"),
    _value("maxcmdlen", "int", _uint, 0, doc="0 = no limit"),
    _value("timeoutsmtpd", "int", p.positive_or(1), 1200),
    _value("timeoutread", "int", p.positive_or(4), 4),
    _value("timeoutwrite", "int", p.positive_or(4), 4),
    _value("tarpitcount", "int", _uint, 0, env="TARPITCOUNT", doc="0 = no tarpit"),
    _value("tarpitdelay", "int", _uint, 5, env="TARPITDELAY"),
    _value("greetdelay", "int", p.parse_int, 0, env="GREETDELAY",
           doc="negative: also drop clients that talk early"),
    # queue and scheduler (qmail-send(8), qmail-queue(8), multi-queue)
    _value("queuelifetime", "int", _uint, 604800),
    _value("concurrencylocal", "int", _uint, 10),
    _value("concurrencyremote", "int", _uint, 20),
    _value("holdlocal", "bool", p.parse_bool, False),
    _value("holdremote", "bool", p.parse_bool, False),
    _value("bouncefrom", "str", p.parse_str, "MAILER-DAEMON"),
    _value("bouncehost", "hostname", _host, ME),
    _value("bouncesubject", "str", p.parse_str, "failure notice"),
    _value("bouncemaxbytes", "int", _uint, 50000),
    _value("doublebounceto", "str", p.parse_str, "postmaster", keep_empty=True,
           doc="empty or starting with @: drop double bounces"),
    _value("doublebouncehost", "hostname", _host, ME),
    _value("doublebouncesubject", "str", p.parse_str, "failure notice"),
    _list("extraqueue", env="EXTRAQUEUE", env_mode=EnvMode.VALUE_OR_NONE,
          doc="extra recipients of every message"),
    _value("queue_base", "str", p.parse_str, None, env="QUEUE_BASE",
           doc="parent of queue1..queueN; None = the installation's queue dir"),
    _value("queue_count", "int", p.at_least(1), 10, env="QUEUE_COUNT", file=None),
    _value("queue_start", "int", p.at_least(0), 1, env="QUEUE_START", file=None),
    # remote delivery (qmail-remote(8))
    _list("smtproutes", p.parse_smtproutes, type="smtproutes", env="SMTPROUTESFILE",
          env_mode=EnvMode.FILE),
    _list("qmtproutes", p.parse_smtproutes, type="smtproutes", env="QMTPROUTESFILE",
          env_mode=EnvMode.FILE),
    _list("outgoingip", env="OUTGOINGIP", doc="source addresses; () = any"),
    _value("timeoutremote", "int", p.positive_or(1200), 1200),
    _value("timeoutconnect", "int", p.positive_or(60), 60),
    # passwords (vd:get_hashmethod.c)
    _value("hash_method", "hash", p.parse_hash_method, "SHA-512", env="PASSWORD_HASH",
           first_entry=True, doc="DES, MD5, SHA-256, SHA-512, YESCRYPT (0-4) or BCRYPT"),
]

REGISTRY: Mapping[str, Setting] = {s.name: s for s in _SETTINGS}


# -- building a snapshot ---------------------------------------------------------

_Raw = dict[str, tuple[Stamp | None, list[str] | None]]  # path -> (stamp, lines)
_Cdbs = dict[str, tuple[Stamp | None, cdbx.CDB | None]]  # path of NAME.cdb -> ...


class _Builder:
    """Resolves settings on demand (so derived defaults can ask for ``me``)."""

    def __init__(self, control: ControlDir, environ: Mapping[str, str],
                 fqdn: Callable[[], str], raw: _Raw, cdbs: _Cdbs) -> None:
        self.control = control
        self.environ = environ
        self._fqdn = fqdn
        self._fqdn_value: str | None = None
        self.raw = raw
        self.cdbs = cdbs
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.paths: dict[str, str] = {}  # setting -> file it was read from

    def fqdn(self) -> str:
        if self._fqdn_value is None:
            self._fqdn_value = p.parse_hostname(self._fqdn())
        return self._fqdn_value

    def get(self, name: str) -> Any:
        if name not in self.values:
            self.values[name], self.sources[name] = self._resolve(REGISTRY[name])
        return self.values[name]

    def read(self, path: str) -> list[str] | None:
        if path not in self.raw:
            stamp = stamp_of(path)  # before reading: a later change is then noticed
            self.raw[path] = (stamp, read_lines(path) if stamp is not None else None)
        return self.raw[path][1]

    def open_cdb(self, path: str) -> None:
        if path not in self.cdbs:
            stamp = stamp_of(path)
            self.cdbs[path] = (stamp, open_cdb(path) if stamp is not None else None)

    def _resolve(self, s: Setting) -> tuple[Any, str]:
        env = self.environ.get(s.env) if s.env else None
        name = s.filename
        if env is not None and s.env_mode is not EnvMode.FILE:
            if env or s.env_mode is EnvMode.VALUE_OR_NONE:
                where = f"environment variable {s.env}"
                text = env.strip(BLANKS) if s.kind is Kind.VALUE else env
                return self._parse(s, [(1, text)] if env else [], where), where
        elif env:
            name = env
        if name is None:
            return self._default(s), "default"
        try:
            path = self.control.file(name)
        except ValueError as e:
            raise ConfigError(f"environment variable {s.env}: {e}") from None
        self.paths[s.name] = path
        if s.kind is Kind.CDB:
            self.open_cdb(path + ".cdb")
        lines = self.read(path)
        if lines is None:
            return self._default(s), "default"
        if s.kind is not Kind.VALUE:
            return self._parse(s, numbered_entries(lines), path), path
        if s.first_entry:
            entries = numbered_entries(lines)
            line, text = entries[0] if entries else (1, "")
        else:
            line, text = 1, (lines[0].strip(BLANKS) if lines else "")
        if not text and not s.keep_empty:
            return self._default(s), "default"
        return self._parse(s, [(line, text)], path), path

    def _parse(self, s: Setting, entries: p.Entries, where: str) -> Any:
        try:
            if s.kind is Kind.VALUE:
                return s.parse(entries[0][1]) if entries else None
            return s.parse(entries)
        except p.ParseError as e:
            line = e.line if e.line is not None else (entries[0][0] if entries else 1)
            at = where if where.startswith("environment") else f"{where} line {line}"
            raise ConfigError(f"{at}: {e.reason}") from None

    def _default(self, s: Setting) -> Any:
        if isinstance(s.default, Derived):
            try:
                return s.default.compute(self)
            except p.ParseError as e:
                raise ConfigError(f"{s.name} (default {s.default.text}): {e.reason}") from None
        return s.default


class Settings:
    """An immutable snapshot of every known setting, parsed once.

    Read values as attributes (``settings.databytes``) or with :meth:`get`.  A
    snapshot never changes: :class:`~indimail_tw.config.reload.Config` swaps in a
    new one, so work in flight keeps the snapshot it started with.
    """

    def __init__(self, builder: _Builder) -> None:
        for name in REGISTRY:
            builder.get(name)
        self.control = builder.control
        self.environ: Mapping[str, str] = dict(builder.environ)
        self._builder = builder
        self._values = builder.values
        self._sources = builder.sources
        self._paths = builder.paths
        self._lower: dict[str, frozenset[str]] = {
            name: frozenset(x.lower() for x in self._values[name])
            for name, s in REGISTRY.items() if s.type == "list"
        }
        self.warnings = tuple(self._check_cdbs())

    @classmethod
    def load(cls, control: ControlDir, *,
             fqdn: Callable[[], str] = socket.getfqdn) -> Settings:
        """Read every setting of ``control`` (blocking I/O: call it off the reactor)."""
        if not os.path.isdir(control.path):
            raise ConfigError(f"{control.path}: control directory does not exist")
        return cls(_Builder(control, control.environ, fqdn, {}, {}))

    def with_environ(self, environ: Mapping[str, str]) -> Settings:
        """This snapshot as seen with extra environment (e.g. from tcp.smtp rules).

        File contents are reused from this snapshot; only a file named by a new
        variable (``BADMAILFROM=...``) is read.  Returns ``self`` when ``environ``
        touches no setting.
        """
        if not any(s.env in environ and environ[s.env] != self.environ.get(s.env)
                   for s in REGISTRY.values() if s.env):
            return self
        b = self._builder
        fqdn = b._fqdn_value
        builder = _Builder(self.control, {**self.environ, **environ},
                           (lambda: fqdn) if fqdn is not None else b._fqdn,
                           dict(b.raw), dict(b.cdbs))
        return Settings(builder)

    # -- reading values -------------------------------------------------------------

    def get(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"unknown setting: {name!r}") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"unknown setting: {name!r}") from None

    def source(self, name: str) -> str:
        """Where the value came from: a file path, ``environment variable X`` or ``default``."""
        self.get(name)
        return self._sources[name]

    def is_set(self, name: str) -> bool:
        """Whether the value came from a file or the environment rather than a default."""
        return self.source(name) != "default"

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    # -- lookups ----------------------------------------------------------------------

    def cdb(self, name: str) -> cdbx.CDB | None:
        """The open ``NAME.cdb`` of a cdb-capable list, if it existed at load time."""
        path = self._paths.get(name)
        if REGISTRY[name].kind is not Kind.CDB or path is None:
            return None
        return self._builder.cdbs[path + ".cdb"][1]

    def list_is_empty(self, name: str) -> bool:
        """Whether list ``name`` can match nothing: no entries and no ``NAME.cdb``
        (what the SMTP access checks test first: most sites have no such lists)."""
        if name not in self._lower:
            raise KeyError(f"not a plain list setting: {name!r}")
        return not self._values[name] and self.cdb(name) is None

    def in_list(self, name: str, key: str) -> bool:
        """Exact, case-insensitive membership; ``NAME.cdb`` wins over the text file.

        Wildcards and regular expressions are the policy layer's business.
        """
        if name not in self._lower:
            raise KeyError(f"not a plain list setting: {name!r}")
        db = self.cdb(name)
        if db is not None:
            return cdb_lookup(db, key.lower(), self._paths[name] + ".cdb")
        return key.lower() in self._lower[name]

    def is_rcpthost(self, domain: str) -> bool:
        """Whether SMTP accepts mail for ``domain`` (qmail's rcpthosts.c).

        ``domain`` or any ``.suffix`` of it listed in rcpthosts or present in
        morercpthosts.cdb matches: ``.example.com`` covers ``a.example.com`` but
        not ``example.com``.  The morercpthosts text file is only the source of
        the cdb (qmail-newmrh), as in qmail.
        """
        host = domain.lower()
        if not host:
            return False
        keys = [host] + [host[i:] for i, ch in enumerate(host) if ch == "."]
        if any(key in self._lower["rcpthosts"] for key in keys):
            return True
        db = self.cdb("morercpthosts")
        if db is None:
            return False
        path = self._paths["morercpthosts"] + ".cdb"
        return any(cdb_lookup(db, key, path) for key in keys)

    def is_local(self, domain: str) -> bool:
        """Whether ``domain`` is listed in ``locals`` (exact, case-insensitive)."""
        return domain.lower() in self._lower["locals"]

    # -- change detection ---------------------------------------------------------------

    def changed(self) -> bool:
        """Whether any file this snapshot read (or found missing) has changed since."""
        known = list(self._builder.raw.items()) + list(self._builder.cdbs.items())
        return any(stamp_of(path) != entry[0] for path, entry in known)

    def _check_cdbs(self) -> Iterator[str]:
        for name, s in REGISTRY.items():
            path = self._paths.get(name)
            if s.kind is not Kind.CDB or path is None:
                continue
            text = self._builder.raw[path][0]
            compiled = self._builder.cdbs[path + ".cdb"][0]
            if text is not None and compiled is not None and text.mtime_ns > compiled.mtime_ns:
                yield f"{path} is newer than {path}.cdb: recompile it"
            elif name == "morercpthosts" and text is not None and compiled is None:
                yield f"{path} exists but {path}.cdb does not: its domains are not accepted"

