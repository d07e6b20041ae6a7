"""vuserinfo [-a|-n|-p|-u|-g|-c|-d|-q|-l] user@domain: show a user."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from indimail_tw.admin import cli
from indimail_tw.admin.cli import Opt
from indimail_tw.admin.ops_user import UserInfo, user_info
from indimail_tw.auth.flags import Flags
from indimail_tw.maildir.quota import parse_quota

COMMAND = cli.Command(
    "vuserinfo", "[-a|-n|-p|-u|-g|-c|-d|-q|-l] user@domain",
    """Show a user: name, password hash type, uid, gid flags, comment, home,
quota and current usage, active or inactive, lastauth times and forwardings.
Clear-text passwords (and the clear text inside {CRAM}/{SCRAM} records) are
never shown.  Without field options everything is shown.""",
    [
        Opt("a", "all", None, "all fields (the default)"),
        Opt("n", "name", None, "name"),
        Opt("p", "passwd", None, "password hash"),
        Opt("u", "uid", None, "uid"),
        Opt("g", "gid", None, "gid flags"),
        Opt("c", "gecos", None, "comment (gecos)"),
        Opt("d", "dir", None, "home directory"),
        Opt("q", "quota", None, "quota and current usage"),
        Opt("l", "lastauth", None, "lastauth times"),
    ],
    operands=(1, 1))

FLAG_TEXT = [
    (Flags.NO_PASSWD_CHNG, "password can not be changed by user"),
    (Flags.NO_POP, "pop access closed"),
    (Flags.NO_WEBMAIL, "webmail access closed"),
    (Flags.NO_IMAP, "imap access closed"),
    (Flags.NO_SMTP, "smtp access closed"),
    (Flags.BOUNCE_MAIL, "mail will be bounced back to sender"),
    (Flags.NO_RELAY, "user not allowed to relay mail"),
    (Flags.NO_DIALUP, "no dialup flag has been set"),
    (Flags.QA_ADMIN, "has qmailadmin administrator privileges"),
    (Flags.V_OVERRIDE, "has domain limit skip privileges"),
    (Flags.V_USER0, "user flag 0 is set"),
    (Flags.V_USER1, "user flag 1 is set"),
    (Flags.V_USER2, "user flag 2 is set"),
    (Flags.V_USER3, "user flag 3 is set"),
]
_CRYPT = [("$1$", "MD5"), ("$5$", "SHA-256"), ("$6$", "SHA-512"), ("$y$", "YESCRYPT"),
          ("$2a$", "BCRYPT"), ("$2b$", "BCRYPT"), ("$2y$", "BCRYPT")]
_DES = re.compile(r"[./0-9A-Za-z]{13}")
LASTAUTH = [("add", "Added On"), ("pop3", "last  POP3"), ("imap", "last  IMAP"),
            ("webm", "last  Web "), ("pass", "PassChange"), ("INAC", "Inact Date"),
            ("ACTI", "Activ Date")]


def password_text(stored: str) -> str:
    """The stored hash with its type; records and clear text show no secret."""
    if stored.startswith("{CRAM}"):
        return "{CRAM} record (not shown)"
    if stored.startswith("{SCRAM-"):
        return stored[:stored.find("}") + 1] + " record (not shown)"
    for prefix, name in _CRYPT:
        if stored.startswith(prefix):
            return f"{stored} ({name})"
    if _DES.fullmatch(stored):
        return f"{stored} (DES)"
    return "clear text (not shown)" if stored else "none"


def size_text(value: int) -> str:
    mib = value / (1024 * 1024)
    return f"{mib:.2f} MiB" if mib < 1024 else f"{mib / 1024:.2f} GiB"


def line(label: str, value: object) -> str:
    return f"{label:<14}: {value}"


def render(info: UserInfo, fields: set[str]) -> list[str]:
    user, every = info.user, not fields
    out = []
    if every or "n" in fields:
        out.append(line("name", user.address))
    if every or "p" in fields:
        out.append(line("passwd", password_text(user.secret)))
    if every or "u" in fields:
        out.append(line("uid", user.uid))
    if every or "g" in fields:
        out.append(line("gid", user.gid))
        texts = [text for flag, text in FLAG_TEXT if user.gid & flag]
        for text in texts or ["all services available"]:
            out.append(f"{'':16}-{text}")
    if every or "c" in fields:
        out.append(line("gecos", user.gecos))
    if every or "d" in fields:
        missing = "" if os.path.isdir(user.dir) else " (missing)"
        out.append(line("dir", f"{user.dir}{missing}"))
    if every or "q" in fields:
        try:
            quota = parse_quota(user.shell or "NOQUOTA")
        except ValueError:
            quota = None
            out.append(line("quota", f"{user.shell} (unreadable)"))
        else:
            if quota is None or quota.bytes == 0:
                text = "unlimited"
            else:
                text = f"{quota.bytes} [{size_text(quota.bytes)}]"
            if quota is not None and quota.count:
                text += f", {quota.count} messages"
            out.append(line("quota", text))
        usage = info.usage
        out.append(line("curr quota", f"{usage[0]}S,{usage[1]}C" if usage else
                        "unknown (no Maildir)"))
    if every:
        out.append(line("account", "active (indimail)" if user.active
                        else "inactive (indibak)"))
    if every or "l" in fields:
        for service, label in LASTAUTH:
            if service in info.lastauth:
                when, ip = info.lastauth[service]
                out.append(line(label, f"({ip}) {when}"))
            elif service in ("add", "pop3", "imap"):
                out.append(line(label, "Not yet logged in" if service != "add"
                                else "Unknown"))
    if every:
        for forwarding in info.forwardings:
            out.append(line("forwarding", forwarding))
    return out


def body(args: cli.Args) -> int:
    fields = set() if args.all else set(args.seen) - {"a"}
    site = cli.site_of(args)
    try:
        info = user_info(site, args.operands[0])
    finally:
        site.close()
    print("\n".join(render(info, fields)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, body, argv)
