"""Per-connection POP3 settings: control files + the connection's environment, read once.

Environment knobs (process environment or a ``tcp/tcp.pop3`` rule):

=====================  ========================================================
``SECURE_AUTH``        default on, as for SMTP: no plaintext login (USER/PASS,
                       AUTH PLAIN, AUTH LOGIN) before TLS; ``0`` allows it.
                       CRAM-MD5 never shows the password and is allowed
                       (Dovecot's ``disable_plaintext_auth`` does the same)
``POP3_TLS_REQUIRED``  Courier's name: set (not ``0``), no login at all before TLS
``DISABLE_AUTH_PLAIN``, ``DISABLE_AUTH_LOGIN``, ``DISABLE_CRAM_MD5``
                       do not offer that SASL mechanism
``POP3_IDLE_TIMEOUT``  seconds of client silence before the connection is
                       closed; default 600 (RFC 1939 section 3: at least 10
                       minutes); values below 600 are raised to 600 unless
                       ``POP3_IDLE_TIMEOUT_FORCE`` is set
``SHUTDOWN``           greet with ``-ERR [SYS/TEMP]`` (the value is the text) and close
``MAXPERIP``, ``MAXDAEMONS``   see :mod:`indimail_tw.policy.limits`
=====================  ========================================================

The greeting names ``control/me``, nothing else (no product, no version).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from indimail_tw.auth import sasl
from indimail_tw.pop3 import parser as p

_FALSE = ("0", "no", "false", "off")
RFC_MIN_TIMEOUT = 600


def _on(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() not in _FALSE


@dataclass(frozen=True)
class POP3Config:
    hostname: str = "localhost"
    tls_available: bool = False          # a certificate exists: STLS can be offered
    secure_auth: bool = True             # no plaintext login before TLS
    tls_required: bool = False           # no login at all before TLS
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5")
    line_limit: int = p.COMMAND_LINE_LIMIT
    timeout: float = RFC_MIN_TIMEOUT
    shutdown: str | None = None
    max_errors: int = 20                 # bad commands before the client is dropped

    @classmethod
    def from_settings(cls, settings: Any, env: Mapping[str, str],
                      tls_available: bool = False) -> POP3Config:
        timeout = float(RFC_MIN_TIMEOUT)
        text = env.get("POP3_IDLE_TIMEOUT")
        if text:
            with contextlib.suppress(ValueError):
                timeout = float(text)
            if timeout <= 0 or (timeout < RFC_MIN_TIMEOUT
                                and "POP3_IDLE_TIMEOUT_FORCE" not in env):
                timeout = float(RFC_MIN_TIMEOUT)
        return cls(
            hostname=getattr(settings, "me", None) or "localhost",
            tls_available=tls_available,
            secure_auth=_on(env.get("SECURE_AUTH"), True),
            tls_required=_on(env.get("POP3_TLS_REQUIRED"), False),
            mechanisms=sasl.enabled_mechanisms(dict(env)),
            timeout=timeout,
            shutdown=env.get("SHUTDOWN"),
        )
