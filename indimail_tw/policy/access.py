"""Access lists from control files: badhelo, badmailfrom, badrcptto, goodrcptto, ...

Matching follows IndiMail's ``address_match``:

* an entry equal to the address (case-insensitive), or ``@domain`` for every
  address in that domain; ``NAME.cdb`` wins over the text file for these
  exact lookups (qmail-cdb keys);
* entries with shell wildcards (``*``, ``?``, ``[...]``) match as patterns,
  or, with ``QREGEX`` (env or ``qregex`` control file), every entry is a
  regular expression searched in the address;
* the ``*patterns`` companion files (``badmailpatterns``, ``badrcptpatterns``)
  hold shell patterns; a line ``!pattern`` exempts what it matches; the first
  matching line decides.  They are ignored when QREGEX is set.
"""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache
from typing import Any

from twisted.logger import Logger

from indimail_tw.policy.base import Check, RcptRequest, Reject, SessionContext, Verdict

log = Logger()

_WILD = re.compile(r"[*?\[]")

BAD_HELO = Reject(553, "5.7.1", "sorry, your HELO/EHLO greeting is in my badhelo list")
BAD_MAIL_FROM = Reject(553, "5.7.1", "sorry, your envelope sender has been denied")
BAD_RCPT_TO = Reject(553, "5.7.1", "sorry, your envelope recipient has been denied")


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern | None:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error:
        log.warn("ignoring invalid regular expression {pattern!r} in an access list",
                 pattern=pattern)
        return None


def _domain_key(key: str) -> str | None:
    at = key.rfind("@")
    return key[at:] if at >= 0 and at < len(key) - 1 else None


def list_matches(settings: Any, name: str, key: str, patterns: str | None = None) -> bool:
    """Whether ``key`` (an address or a host name) is caught by list ``name``."""
    if settings.list_is_empty(name) and (not patterns or not settings.get(patterns)):
        return False
    key = key.lower()
    if not key:
        return False
    domain = _domain_key(key)
    if settings.in_list(name, key) or (domain and settings.in_list(name, domain)):
        return True
    entries = settings.get(name)
    if settings.qregex:
        return any((rx := _regex(e)) is not None and rx.search(key) for e in entries)
    for entry in entries:
        if _WILD.search(entry):
            entry = entry.lower()
            if fnmatch.fnmatchcase(key, entry) or (
                    domain and entry.startswith("@") and fnmatch.fnmatchcase(domain, entry)):
                return True
    if patterns:
        return pattern_matches(settings.get(patterns), key)
    return False


def pattern_matches(lines: tuple[str, ...], key: str) -> bool:
    """The ``*patterns`` files: the first matching line decides; ``!`` exempts."""
    for line in lines:
        negate = line.startswith("!")
        pattern = (line[1:] if negate else line).lower()
        if pattern and fnmatch.fnmatchcase(key, pattern):
            return not negate
    return False


class BadHelo(Check):
    """``badhelo``: refuse a HELO/EHLO name on the list (env ``BADHELO`` names another file)."""

    def helo(self, ctx: SessionContext, name: str) -> Verdict:
        if list_matches(ctx.settings, "badhelo", name):
            return BAD_HELO
        return None


class BadMailFrom(Check):
    """``badmailfrom`` (+ ``@domain`` entries, ``badmailpatterns``): refuse the sender."""

    def mail(self, ctx: SessionContext, sender: Any, params: dict) -> Verdict:
        address = sender.address
        if address and list_matches(ctx.settings, "badmailfrom", address, "badmailpatterns"):
            return BAD_MAIL_FROM
        return None


class BadRcptTo(Check):
    """``goodrcptto`` whitelists; otherwise ``badrcptto`` (+ patterns) refuses."""

    def rcpt(self, ctx: SessionContext, request: RcptRequest) -> Verdict:
        settings = ctx.settings
        if list_matches(settings, "goodrcptto", request.address):
            request.whitelisted = True
            return None
        if list_matches(settings, "badrcptto", request.address, "badrcptpatterns"):
            return BAD_RCPT_TO
        return None
