"""The ``Received:`` line we put on top of every message (qmail's ``received()``, RFC 5321 4.4).

::

    Received: from HELO (HOST [IP])
            (authenticated user alice@example.com)
            by ME with ESMTPSA (TLSv1.3 TLS_AES_256_GCM_SHA384)
            id 9f3c2a...; Tue, 03 Jun 2025 12:00:00 +0000

HOST is the verified reverse DNS name, else ``unknown``.  ``HIDE_HOST``
leaves out the client's host and address.  Everything the client chose (HELO,
the login name) is reduced to printable ASCII without parentheses, so it can
neither end the comment nor inject a header line.  Line endings are LF, as
in the stored message.
"""

from __future__ import annotations

import datetime
import re
from email.utils import format_datetime

_UNSAFE = re.compile(r"[^\x21-\x7e]|[()\\<>;\"]")
MAX_ITEM = 128


def safe(text: str) -> str:
    """Printable ASCII without comment/quote delimiters; at most MAX_ITEM characters."""
    return _UNSAFE.sub("?", text)[:MAX_ITEM] or "?"


def protocol_name(esmtp: bool, tls: bool, auth: bool, smtputf8: bool) -> str:
    """RFC 3848 / RFC 6531 ``with`` keywords: SMTP, ESMTP[S][A], UTF8SMTP[S][A]."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")


_last_date: tuple[int, str] = (-1, "")


def rfc5322_date(when: float) -> str:
    """The date of a Received line (UTC, whole seconds; formatted once per second)."""
    global _last_date
    second = int(when)
    cached = _last_date
    if cached[0] == second:
        return cached[1]
    text = format_datetime(datetime.datetime.fromtimestamp(second, datetime.UTC))
    _last_date = (second, text)
    return text


def received_header(*, helo: str | None, remote_ip: str, remote_host: str | None,
                    hostname: str, protocol: str, tls: tuple[str, str] | None,
                    auth_user: str | None,
                    txid: str, when: float, hide_host: bool = False) -> bytes:
    """The complete header field, folded, ending in LF; ``tls`` is (version, cipher)."""
    first = f"Received: from {safe(helo or 'unknown')}"
    if not hide_host:
        host = safe(remote_host) if remote_host else "unknown"
        literal = f"IPv6:{remote_ip}" if ":" in remote_ip else remote_ip
        first += f" ({host} [{safe(literal)}])"
    lines = [first]
    if auth_user:
        lines.append(f"\t(authenticated user {safe(auth_user)})")
    by = f"\tby {safe(hostname)} with {protocol}"
    if tls:
        by += f" ({safe(tls[0])} {safe(tls[1])})"
    lines.append(by)
    lines.append(f"\tid {safe(txid)}; {rfc5322_date(when)}")
    return ("\n".join(lines) + "\n").encode("ascii")
