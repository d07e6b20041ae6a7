"""Per-connection IMAP settings: control files + the connection's environment, read once.

Environment knobs (process environment or a tcprules rule in ``tcp/tcp.imap``):

======================  ===========================================================
``SECURE_AUTH``         default on (as for SMTP AUTH): before TLS, LOGIN is refused
                        with ``NO [PRIVACYREQUIRED]``, ``LOGINDISABLED`` is
                        advertised and only mechanisms that do not send the
                        password in clear (CRAM-MD5) are offered.  ``0`` allows
                        LOGIN, PLAIN and LOGIN in plaintext.
``DISABLE_AUTH_PLAIN``, ``DISABLE_AUTH_LOGIN``, ``DISABLE_CRAM_MD5``
                        do not offer that mechanism
``IMAP_TIMEOUT``        autologout of an authenticated session, seconds (1800;
                        RFC 9051 asks for at least 30 minutes)
``IMAP_PREAUTH_TIMEOUT``
                        autologout before login, seconds (60)
``APPENDLIMIT``         the largest message APPEND accepts, bytes (default:
                        ``control/databytes`` when set, else 64 MiB)
``SHUTDOWN``            greet with ``* BYE`` (the value is the text) and close
``MAXPERIP``, ``MAXDAEMONS``  see :mod:`indimail_tw.policy.limits`
======================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from indimail_tw.auth import sasl

_FALSE = ("0", "no", "false", "off")
DEFAULT_APPEND_LIMIT = 64 * 1024 * 1024


def _seconds(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(env.get(name, "").strip() or default)
    except ValueError:
        return default
    return value if value > 0 else default


@dataclass(frozen=True)
class IMAPConfig:
    hostname: str = "localhost"
    tls_available: bool = False        # a certificate exists: STARTTLS can be offered
    secure_auth: bool = True
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5")
    timeout: int = 1800                # authenticated autologout
    preauth_timeout: int = 60
    append_limit: int = DEFAULT_APPEND_LIMIT
    shutdown: str | None = None
    max_bad_commands: int = 20         # consecutive BADs before BYE
    idle_poll: float = 0.5             # seconds between checks while in IDLE

    @classmethod
    def from_settings(cls, settings: Any, env: Mapping[str, str],
                      tls_available: bool = False) -> IMAPConfig:
        secure = env.get("SECURE_AUTH")
        limit = DEFAULT_APPEND_LIMIT
        databytes = getattr(settings, "databytes", 0) or 0
        if databytes > 0:
            limit = databytes
        try:
            if env.get("APPENDLIMIT", "").strip():
                limit = max(int(env["APPENDLIMIT"]), 1)
        except ValueError:
            pass
        return cls(
            hostname=getattr(settings, "me", "localhost") or "localhost",
            tls_available=tls_available,
            secure_auth=secure is None or secure.strip().lower() not in _FALSE,
            mechanisms=sasl.enabled_mechanisms(dict(env)),
            timeout=max(_seconds(env, "IMAP_TIMEOUT", 1800), 60),
            preauth_timeout=_seconds(env, "IMAP_PREAUTH_TIMEOUT", 60),
            append_limit=limit,
            shutdown=env.get("SHUTDOWN"),
        )
