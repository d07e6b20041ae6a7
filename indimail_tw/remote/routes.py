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
  allows them in the clear).

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
    by_key: dict[str, SmtpRoute] = {}
    for route in routes:
        by_key.setdefault(route.domain.lower(), route)
    keys = [NULL_SENDER_KEY] if is_null_sender(sender) else []
    host = domain.lower()
    keys.append(host)
    keys += [host[i:] for i, ch in enumerate(host) if ch == "."]
    keys.append("")
    for key in keys:
        if key in by_key:
            return by_key[key]
    return None


def next_hop(domain: str, route: SmtpRoute | None, environ: Mapping[str, str],
             origin: str = "smtproutes") -> NextHop:
    """Turn a route (or None) into a :class:`NextHop` for ``domain``."""
    if route is None or not route.relay:
        return NextHop(domain, use_mx=True, origin="MX")
    penalty, tolerance = (_number(x) for x in (tuple(route.extra) + ("", ""))[:2])
    where = f"{origin} line {route.line}" if route.line else origin
    relay = route.relay
    return NextHop(relay, port=route.port, use_mx=False, artificial=True,
                   implicit_tls=route.port == 465,
                   credentials=credentials(route.auth, environ, where),
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
        log.warn("{where}: credentials from remote_auth.cdb ({words}) are not supported; "
                 "delivering without AUTH", where=where, words=words[0])
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
