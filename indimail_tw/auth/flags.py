"""pw_gid flag bits, IndiMail's encoding of 2024-05-28 (indimail.h).

Older IndiMail releases used other values for the bits above 0x80
(V_OVERRIDE 0x100, NO_SMTP 0x200, V_USER0..3 0x400..0x2000); the schema table
records which encoding a database uses (``engine.FLAG_ENCODING``).
"""

from __future__ import annotations

import enum


class Flags(enum.IntFlag):
    NO_PASSWD_CHNG = 0x01
    NO_POP = 0x02
    NO_WEBMAIL = 0x04
    NO_IMAP = 0x08
    BOUNCE_MAIL = 0x10
    NO_RELAY = 0x20
    NO_DIALUP = 0x40
    QA_ADMIN = 0x80
    NO_SMTP = 0x100
    V_USER0 = 0x200
    V_USER1 = 0x400
    V_USER2 = 0x800
    V_USER3 = 0x1000
    V_OVERRIDE = 0x2000


#: The flag that gates each login service.
SERVICE_FLAGS = {
    "pop3": Flags.NO_POP,
    "imap": Flags.NO_IMAP,
    "smtp": Flags.NO_SMTP,
    "webmail": Flags.NO_WEBMAIL,
}


def describe(value: int) -> str:
    """Human-readable list of the flags set in ``value``."""
    names = [f.name for f in Flags if value & f.value]
    return ", ".join(n for n in names if n) or "none"
