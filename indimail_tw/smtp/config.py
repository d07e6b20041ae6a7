"""Per-connection SMTP settings: control files + the connection's environment, read once.

Environment knobs (process environment or a tcprules rule), besides the
control-file settings Settings already resolves (``DATABYTES``,
``MAXRECIPIENTS``, ``TARPITCOUNT``, ``TARPITDELAY``, ``GREETDELAY``,
``BADMAILFROM`` ...):

==================  ===========================================================
``SECURE_AUTH``     default on: no AUTH offered or accepted before TLS; ``0``
                    allows AUTH (PLAIN, LOGIN, CRAM-MD5) in plaintext
``FORCE_TLS``       refuse AUTH and MAIL before STARTTLS (``530 5.7.0``)
``REQUIREAUTH``     port 25 too requires AUTH before MAIL (587/465 always do)
``DISABLE_AUTH_PLAIN``, ``DISABLE_AUTH_LOGIN``, ``DISABLE_CRAM_MD5``
                    do not offer that mechanism
``DISABLE_VRFY``    VRFY answers 502 (otherwise always 252, revealing nothing)
``DISABLE_HELP``    HELP answers 502
``SHUTDOWN``        greet with 421 (the value is the text) and close
``HIDE_HOST``       no client host/IP in our Received line
``RELAYCLIENT``, ``CHECKRELAY``, ``RELAY_CLEAR_MINUTES``, ``AUTH_ALL``,
``CHECKRECIPIENT``, ``MAX_RCPT_ERRCOUNT``   see :mod:`indimail_tw.policy`
``MAXPERIP``, ``MAXDAEMONS``                 see :mod:`indimail_tw.policy.limits`
==================  ===========================================================

Control files: ``me``, ``smtpgreeting``, ``databytes``, ``maxrecipients``,
``maxcmdlen`` (0: RFC 5321's 1000; never above 16384), ``timeoutsmtpd``,
``tarpitcount``, ``tarpitdelay``, ``greetdelay``, ``maxhops``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from indimail_tw.auth import sasl
from indimail_tw.smtp import parser as p

_FALSE = ("0", "no", "false", "off")


def _set(env: Mapping[str, str], name: str) -> bool:
    return name in env


@dataclass(frozen=True)
class SessionConfig:
    hostname: str = "localhost"
    greeting: tuple[str, ...] = ()
    service: str = "smtp"
    tls_available: bool = False        # a certificate exists: STARTTLS can be offered
    secure_auth: bool = True
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5")
    vrfy: bool = True
    help: bool = True
    databytes: int = 0
    maxrecipients: int = 0
    tarpitcount: int = 0
    tarpitdelay: int = 5
    line_limit: int = p.DEFAULT_LINE_LIMIT
    timeout: int = 1200
    greetdelay: int = 0
    shutdown: str | None = None
    hide_host: bool = False
    max_errors: int = 20
    max_auth_failures: int = 5

    @classmethod
    def from_settings(cls, settings: Any, env: Mapping[str, str], service: str = "smtp",
                      tls_available: bool = False) -> SessionConfig:
        secure = env.get("SECURE_AUTH")
        return cls(
            hostname=settings.me,
            greeting=tuple(settings.smtpgreeting),
            service=service,
            tls_available=tls_available,
            secure_auth=secure is None or secure.strip().lower() not in _FALSE,
            mechanisms=sasl.enabled_mechanisms(dict(env)),
            vrfy=not _set(env, "DISABLE_VRFY"),
            help=not _set(env, "DISABLE_HELP"),
            databytes=settings.databytes,
            maxrecipients=settings.maxrecipients,
            tarpitcount=settings.tarpitcount,
            tarpitdelay=settings.tarpitdelay,
            line_limit=min(settings.maxcmdlen or p.DEFAULT_LINE_LIMIT, p.HARD_LINE_CAP),
            timeout=settings.timeoutsmtpd,
            greetdelay=settings.greetdelay,
            shutdown=env.get("SHUTDOWN"),
            hide_host=_set(env, "HIDE_HOST"),
        )
