"""Checks of what an admin types: domain names, user names, addresses, gecos,
catch-all handlers, alias lines and IP addresses.

Every check raises :class:`~indimail_tw.errors.AdminError` with status 100 (a
permanent usage error, as IndiMail's tools exit for bad input) and a message that
says what is wrong and never echoes a password.

Upper case: IndiMail lower-cases names on add and vmoduser rejects upper case.
We reject upper case everywhere, with the lower-case spelling in the message, so
a name always means exactly what was typed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from indimail_tw.errors import AdminError
from indimail_tw.auth.loginname import canonical_ip  # noqa: F401 (re-exported)

USAGE = 100  # exit status for bad input (IndiMail: strerr_die...(100, ...))

MAX_DOMAIN = 67   # pw_domain char(67)
MAX_USER = 40     # pw_name char(40)
MAX_GECOS = 48    # pw_gecos char(48)
MAX_ALIAS_LINE = 190  # valias_line char(190)

_DOMAIN_CHARS = re.compile(r"[a-z0-9.-]+")
_USER_BASE = set("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_NEVER_IN_USER = set(":/@\\\"'`$*?[]{}()<>;|&!~ \t")
_HANDLERS = ("bounce-no-mailbox", "delete")


def bad(message: str) -> AdminError:
    return AdminError(message, USAGE)


def _printable(text: str) -> str:
    """``text`` with control characters escaped, for an error message."""
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")


def check_domain(domain: str, what: str = "domain") -> str:
    """A domain name: lower-case alphanumerics, ``-`` and ``.``; no empty labels.

    It may not start or end with ``-`` or ``.`` (nor may a label), and is at
    most 67 characters (the width of ``pw_domain``).
    """
    if not domain:
        raise bad(f"empty {what} name")
    if len(domain) > MAX_DOMAIN:
        raise bad(f"{what} name longer than {MAX_DOMAIN} characters: {_printable(domain[:80])}")
    if domain != domain.lower():
        raise bad(f"{what} [{_printable(domain)}] has an uppercase character "
                  f"(use {_printable(domain.lower())})")
    if not _DOMAIN_CHARS.fullmatch(domain):
        raise bad(f"invalid {what} name [{_printable(domain)}]: only a-z, 0-9, '-' and '.' "
                  "are allowed")
    for label in domain.split("."):
        if not label:
            raise bad(f"invalid {what} name [{domain}]: empty label (leading, trailing "
                      "or double '.')")
        if label.startswith("-") or label.endswith("-"):
            raise bad(f"invalid {what} name [{domain}]: a label starts or ends with '-'")
    return domain


def allowed_user_chars(environ: Mapping[str, str]) -> set[str]:
    """IndiMail's user-name characters plus those ``ALLOWCHARS`` adds.

    Characters that would break paths or the ``user@domain`` syntax (``/ : @``,
    whitespace, quotes and shell metacharacters) stay forbidden whatever
    ALLOWCHARS says, because a user name becomes a directory name.
    """
    extra = set(environ.get("ALLOWCHARS", ""))
    return _USER_BASE | {c for c in extra if c.isprintable() and c not in _NEVER_IN_USER
                         and not c.isupper()}


def check_user(name: str, environ: Mapping[str, str] | None = None,
               what: str = "user") -> str:
    """A local part: alphanumerics and ``. - _`` (plus ALLOWCHARS), 1..40 characters."""
    env = os.environ if environ is None else environ
    if not name:
        raise bad(f"empty {what} name")
    if len(name) > MAX_USER:
        raise bad(f"{what} name longer than {MAX_USER} characters: {_printable(name[:60])}")
    if any(not c.isprintable() or c.isspace() for c in name):
        raise bad(f"{what} name [{_printable(name)}] contains whitespace or control characters")
    if name != name.lower():
        raise bad(f"{what} name [{name}] has an uppercase character (use {name.lower()})")
    if ".." in name:
        raise bad(f"{what} name [{name}] contains '..'")
    for forbidden in (":", "/", "@"):
        if forbidden in name:
            raise bad(f"{what} name [{name}] contains {forbidden!r}")
    allowed = allowed_user_chars(env)
    wrong = sorted({c for c in name if c not in allowed})
    if wrong:
        raise bad(f"{what} name [{name}] contains characters not allowed: "
                  f"{''.join(wrong)!r} (allowed: a-z 0-9 . - _ and ALLOWCHARS)")
    if name.startswith(".") or name.endswith("."):
        raise bad(f"{what} name [{name}] starts or ends with '.'")
    return name


def split_address(address: str, default_domain: str | None = None) -> tuple[str, str]:
    """``user@domain`` (or ``user%domain``) into its parts; a bare user takes the default.

    Only splits; check the parts with :func:`check_user` / :func:`check_domain`.
    """
    if not address:
        raise bad("empty address")
    for sep in ("@", "%"):
        if sep in address:
            user, _, domain = address.rpartition(sep)
            return user, domain
    if default_domain:
        return address, default_domain
    raise bad(f"[{_printable(address)}]: no domain given and no default domain "
              "(set DEFAULT_DOMAIN or control/defaultdomain)")


def check_address(address: str, environ: Mapping[str, str] | None = None,
                  default_domain: str | None = None) -> tuple[str, str]:
    """Split and check ``user@domain``; returns ``(user, domain)``."""
    user, domain = split_address(address, default_domain)
    check_domain(domain)
    check_user(user, environ)
    return user, domain


def check_gecos(gecos: str) -> str:
    if len(gecos) > MAX_GECOS:
        raise bad(f"comment (gecos) longer than {MAX_GECOS} characters")
    if ":" in gecos:
        raise bad("':' not allowed in the comment (gecos)")
    if any(not c.isprintable() for c in gecos):
        raise bad("control characters not allowed in the comment (gecos)")
    return gecos


def _looks_like_address(text: str) -> bool:
    local, at, domain = text.rpartition("@")
    if not (at and local and domain) or any(c.isspace() or not c.isprintable() for c in text):
        return False
    if any(c in text for c in "'\"`|\\"):
        return False
    try:
        check_domain(domain)
    except AdminError:
        return False
    return True


def check_handler(handler: str) -> str:
    """A catch-all handler for ``.qmail-default`` (vdelivermail's last argument).

    ``bounce-no-mailbox``, ``delete``, an absolute Maildir path (must exist and
    hold cur/new/tmp), an e-mail address, or an SMTPROUTE ``host:ip:port``.
    """
    if handler in _HANDLERS:
        return handler
    if any(c.isspace() or not c.isprintable() or c in "'\"`\\|;" for c in handler):
        raise bad(f"invalid handler [{_printable(handler)}]: no blanks, quotes or shell "
                  "characters allowed")
    if handler.startswith("/"):
        path = handler
        if not all(os.path.isdir(os.path.join(path, sub)) for sub in ("cur", "new", "tmp")):
            raise bad(f"handler {path}: not a Maildir (needs cur, new and tmp)")
        return handler
    if "@" in handler:
        if _looks_like_address(handler):
            return handler.lstrip("&")
        raise bad(f"invalid handler [{handler}]: not an e-mail address")
    if handler.count(":") == 2 and all(handler.split(":")[:2]):
        port = handler.rsplit(":", 1)[1]
        if port and not port.isdigit():
            raise bad(f"invalid SMTPROUTE handler [{handler}]: bad port")
        return handler
    raise bad(f"invalid handler [{handler}]: use bounce-no-mailbox, delete, an absolute "
              "Maildir path, an e-mail address or host:ip:port")


def check_alias_line(line: str) -> str:
    """One valias delivery line: ``&address``, ``address``, ``/path/Maildir/`` or ``|program``."""
    line = line.lstrip(" ")
    if not line:
        raise bad("you cannot have an empty alias line")
    if len(line) > MAX_ALIAS_LINE:
        raise bad(f"alias line longer than {MAX_ALIAS_LINE} characters")
    if any(not c.isprintable() for c in line):
        raise bad("control characters not allowed in an alias line")
    if line.startswith("|"):
        if not line[1:].strip():
            raise bad("alias line '|' needs a program")
        return line
    if line.startswith("/"):
        return line
    target = line[1:] if line.startswith("&") else line
    if _looks_like_address(target):
        return line
    raise bad(f"invalid alias line [{line}]: use &user@domain, user@domain, "
              "/path/Maildir/ or |program")


def check_ip(text: str) -> str:
    """An IPv4 or IPv6 address in its canonical text form (see :func:`canonical_ip`)."""
    try:
        return canonical_ip(text)
    except ValueError:
        raise bad(f"invalid IP address [{_printable(text)}]") from None


def check_positive_int(text: str, option: str, maximum: int = 2**31 - 1) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise bad(f"option {option}: not a number: {_printable(text)}") from None
    if not 0 < value <= maximum:
        raise bad(f"option {option}: must be between 1 and {maximum}")
    return value


def check_base_path(text: str, option: str = "-B") -> str:
    if not text.startswith("/"):
        raise bad(f"option {option}: base path must be absolute: {_printable(text)}")
    if any(not c.isprintable() for c in text) or "/../" in text + "/":
        raise bad(f"option {option}: invalid base path {_printable(text)}")
    return os.path.normpath(text)
