"""Where mail for a domain goes: ``smtproutes`` (and ``moresmtproutes.cdb``) or MX.

qmail-remote's rules (qmail-remote(8), indimail-mta's get_relayhost):

* ``moresmtproutes.cdb`` maps one recipient address to a relay and wins over
  everything (looked up by :func:`more_route` in a thread; key ``!@`` for
  bounces);
* in ``smtproutes``, null-sender mail first looks for ``!@``; then the domain
  itself, then each ``.suffix`` of it from the longest (``.af.mil`` matches
  ``x.af.mil``, never ``af.mil``), then the default route (an empty domain).
  The first matching line wins.  A match with an empty relay means "use MX"
  and ends the search;
* ``relay`` is a host name (its A/AAAA records are used, never its MX), a
  dotted IP or ``[ip]``; ``:port`` follows (465 means implicit TLS); then
  ``:penalty:max_tolerance`` for the tcpto table (penalty 0 turns it off);
* ``user password [envstr]`` after a blank gives AUTH credentials; envstr is
  ``VAR=value,...`` (``VAR=`` unsets) as IndiMail's parse_env reads it:
  ``AUTH_SMTP`` chooses the mechanism and ``SECURE_AUTH`` whether PLAIN and
  LOGIN need TLS (on by default here; ``SECURE_AUTH=0`` or ``SECURE_AUTH=``
  allows them in the clear);
* instead of them, ``/s``, ``/r`` or ``/token`` take ``user password [envstr]``
  from ``remote_auth.cdb`` in the control directory, looked up by the envelope
  sender, the (first) recipient, or ``token`` (:func:`remote_auth`, in a
  thread).  Keys are the address as written, or ``!`` + the address (the
  form IndiMail's cdb tools write for ``=address`` lines); not found: no AUTH.

A relay route is "artificial": no CNAME following and no check that the
relay is ourselves (qmail sets prefme beyond reach for it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from indimail_tw.config.parsers import ParseError, SmtpRoute, parse_route
from indimail_tw.remote.addresses import address_literal, is_ip
from indimail_tw.remote.client_parser import Credentials

log = Logger()

NULL_SENDER_KEY = "!@"
MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
_OFF = ("0", "no", "false", "off", "")


@dataclass(frozen=True)
class NextHop:
    """How to reach the recipients of one domain."""

    host: str                        # the domain (MX lookup) or the relay (host, IP, [ip])
    port: int | None = None          # None: the agent's SMTP port (25)
    use_mx: bool = True
    artificial: bool = False         # from a route: no ipme check
    implicit_tls: bool = False       # port 465
    credentials: Credentials | None = None
    penalty: int | None = None       # tcpto penalty (None: MIN_PENALTY / 3600)
    max_tolerance: int | None = None
    origin: str = "MX"               # for logs: "MX", "smtproutes line 3", ...

    @property
    def key(self) -> tuple:
        """Recipients with equal keys can share one transaction."""
        return (self.host.lower(), self.port, self.use_mx, self.implicit_tls,
                self.credentials, self.penalty, self.max_tolerance)


def is_null_sender(sender: str) -> bool:
    return sender in ("", "#@[]")


def find_route(routes: Sequence[SmtpRoute], domain: str, sender: str) -> SmtpRoute | None:
    """The smtproutes entry for ``domain`` (None: no entry, use MX)."""
    by_key = _route_index(routes)
    keys = [NULL_SENDER_KEY] if is_null_sender(sender) else []
    host = domain.lower()
    keys.append(host)
    keys += [host[i:] for i, ch in enumerate(host) if ch == "."]
    keys.append("")
    for key in keys:
        if key in by_key:
            return by_key[key]
    return None


_index_cache: tuple[Any, dict[str, SmtpRoute]] = ((), {})


def _route_index(routes: Sequence[SmtpRoute]) -> dict[str, SmtpRoute]:
    """``routes`` by lowercased domain (the first entry wins).  The settings' routes
    are a tuple replaced, never changed, on reload: the index of the last tuple is
    kept (one per message otherwise, on the reactor thread, for every delivery)."""
    global _index_cache
    cached, by_key = _index_cache
    if cached is routes:
        return by_key
    by_key = {}
    for route in routes:
        by_key.setdefault(route.domain.lower(), route)
    if isinstance(routes, tuple):
        _index_cache = (routes, by_key)
    return by_key


def next_hop(domain: str, route: SmtpRoute | None, environ: Mapping[str, str],
             origin: str = "smtproutes",
             looked_up: Mapping[str, Sequence[str]] | None = None, sender: str = "",
             recipient: str = "") -> NextHop:
    """Turn a route (or None) into a :class:`NextHop` for ``domain``.

    ``looked_up`` holds the ``remote_auth.cdb`` entries found for routes whose
    credentials are ``/s``, ``/r`` or ``/token`` (see :func:`remote_auth`).
    """
    if route is None or not route.relay:
        return NextHop(domain, use_mx=True, origin="MX")
    penalty, tolerance = (_number(x) for x in (tuple(route.extra) + ("", ""))[:2])
    where = f"{origin} line {route.line}" if route.line else origin
    relay = route.relay
    words: Sequence[str] = route.auth
    if words and words[0].startswith("/"):
        key = remote_auth_key(words[0], sender, recipient)
        words = (looked_up or {}).get(key, ())
        if not words:
            log.warn("{where}: no {name} entry for {key}; delivering without AUTH",
                     where=where, name=REMOTE_AUTH_CDB, key=key)
        where = f"{where} ({REMOTE_AUTH_CDB})"
    return NextHop(relay, port=route.port, use_mx=False, artificial=True,
                   implicit_tls=route.port == 465,
                   credentials=credentials(words, environ, where),
                   penalty=penalty, max_tolerance=tolerance, origin=where)


def relay_address(host: str) -> str | None:
    """The IP of a relay given as ``[ip]`` or as a plain dotted/colon IP, else None."""
    literal = address_literal(host)
    if literal is not None:
        return literal
    return host if is_ip(host) else None


def credentials(words: Sequence[str], environ: Mapping[str, str],
                where: str = "smtproutes") -> Credentials | None:
    """AUTH credentials from a route's ``user password [envstr]`` words."""
    if not words:
        return None
    if words[0].startswith("/"):
        log.warn("{where}: {words} needs a {name} lookup first; delivering without AUTH",
                 where=where, words=words[0], name=REMOTE_AUTH_CDB)
        return None
    if len(words) < 2:
        log.warn("{where}: a user without a password; delivering without AUTH", where=where)
        return None
    env = dict(environ)
    if len(words) > 2:
        env.update(parse_env(" ".join(words[2:])))
        for name in [k for k, v in env.items() if v is None]:
            env[name] = ""
    mechanism = (env.get("AUTH_SMTP") or "").upper() or None
    if mechanism not in (None, *MECHANISMS):
        log.warn("{where}: AUTH_SMTP={mechanism} is not supported; using the best offered",
                 where=where, mechanism=mechanism)
        mechanism = None
    secure = env.get("SECURE_AUTH")
    plaintext_ok = secure is not None and secure.strip().lower() in _OFF
    return Credentials(words[0], words[1], mechanism, plaintext_ok)


REMOTE_AUTH_CDB = "remote_auth.cdb"


def remote_auth_key(token: str, sender: str, recipient: str) -> str:
    """What ``/s``, ``/r`` or ``/token`` looks up in ``remote_auth.cdb``."""
    if token == "/s":
        return sender
    if token == "/r":
        return recipient
    return token[1:]


def remote_auth(control_path: str, keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``remote_auth.cdb`` entries for ``keys``: key -> (user, password[, envstr]).

    Blocking (call it in a thread).  Keys not found, and a missing file, are left
    out; a value without a password is logged and left out.
    """
    import cdbx

    path = os.path.join(control_path, REMOTE_AUTH_CDB)
    try:
        db = cdbx.CDB(path)
    except OSError:
        return {}
    found: dict[str, tuple[str, ...]] = {}
    try:
        for key in dict.fromkeys(keys):
            if not key:
                continue
            for candidate in ("!" + key, key, "!" + key.lower(), key.lower()):
                value = db.get(candidate.encode("utf-8", "surrogateescape"))
                if value is not None:
                    break
            if value is None:
                continue
            words = value.decode("utf-8", "replace").strip().split(None, 2)
            if len(words) < 2:
                log.warn("{path}: the entry for {key} has no password", path=path, key=key)
                continue
            found[key] = tuple(words)
    finally:
        db.close()
    return found


def parse_env(text: str) -> dict[str, str | None]:
    """IndiMail's envstr: ``A=1,B=2``; ``B=`` unsets B (None); ``\\,`` is a literal comma."""
    out: dict[str, str | None] = {}
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    for part in parts:
        name, eq, value = part.strip().partition("=")
        if name and eq:
            out[name] = value if value else None
    return out


def more_routes(control_path: str, environ: Mapping[str, str], addresses: Sequence[str],
                sender: str) -> list[SmtpRoute | None]:
    """The ``moresmtproutes.cdb`` route of each recipient (blocking: call it in a thread)."""
    import cdbx

    name = environ.get("MORESMTPROUTESCDB") or "moresmtproutes.cdb"
    path = name if os.path.isabs(name) else os.path.join(control_path, name)
    try:
        db = cdbx.CDB(path)
    except OSError:
        return [None] * len(addresses)
    try:
        return [_more_route(db, path, address, sender) for address in addresses]
    finally:
        db.close()


def _more_route(db: Any, path: str, address: str, sender: str) -> SmtpRoute | None:
    keys = ([NULL_SENDER_KEY] if is_null_sender(sender) else []) + [address, address.lower()]
    for key in keys:
        value = db.get(key.encode("utf-8", "surrogateescape"))
        if value is None:
            continue
        try:
            return parse_route(":" + value.decode("utf-8", "replace").strip())
        except ParseError as e:
            log.warn("{path}: bad route for {key}: {error}", path=path, key=key, error=e.reason)
            return None
    return None


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None
