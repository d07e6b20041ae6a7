"""The steps of a local delivery that are plain functions: the environment knobs,
the per-recipient job, and the blocking checks and bookkeeping the agent runs
in threads (or, for the ``*_txn`` ones, in the database pool).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from indimail_tw.auth.flags import Flags
from indimail_tw.delivery.mailbox import QuotaPolicy
from indimail_tw.delivery.message import (
    MAX_HEADER_SCAN, HeaderScan, dtline_address, read_message_start, scan_header,
)
from indimail_tw.maildir import quota as mq
from indimail_tw.queue.envelope import Recipient
from indimail_tw.storage.engine import Txn
from indimail_tw.storage.store import REPOS
from indimail_tw.storage.users import User

log = Logger()


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return bool(environ.get(name, ""))


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(environ[name])
    except (KeyError, ValueError):
        return default


@dataclass(frozen=True)
class LocalOptions:
    """The environment knobs vdelivermail reads (see :meth:`from_environ`)."""

    allow_inactive: bool = False
    maildirfolder: str | None = None
    discard_bounce: bool = False
    qmail_ext: bool = False
    program_timeout: float = 3600.0
    quota: QuotaPolicy = QuotaPolicy()

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> LocalOptions:
        """ALLOW_INACTIVE, MAILDIRFOLDER, DISCARD_BOUNCE, QMAIL_EXT, PROGRAM_TIMEOUT,
        OVERQUOTA_MAILSIZE, HOLDOVERQUOTA, MAILDIRSIZE_MAX_SIZE, MAILDIRSIZE_MAX_AGE,
        FAST_QUOTA, INCLUDE_TRASH (parsed once per set of values: every delivery asks)."""
        key = tuple(env.get(name) for name in _OPTION_NAMES)
        options = _options_seen.get(key)
        if options is None:
            options = cls._parse(env)
            if len(_options_seen) >= 64:
                _options_seen.clear()
            _options_seen[key] = options
        return options

    @classmethod
    def _parse(cls, env: Mapping[str, str]) -> LocalOptions:
        policy = QuotaPolicy(
            overquota_mailsize=int(_number(env, "OVERQUOTA_MAILSIZE", mq.OVERQUOTA_MAILSIZE)),
            holdoverquota=env.get("HOLDOVERQUOTA") or "holdoverquota",
            max_size=int(_number(env, "MAILDIRSIZE_MAX_SIZE", mq.MAILDIRSIZE_MAX_SIZE)),
            max_age=_number(env, "MAILDIRSIZE_MAX_AGE", mq.MAILDIRSIZE_MAX_AGE),
            fast=_flag(env, "FAST_QUOTA"), include_trash=_flag(env, "INCLUDE_TRASH"))
        return cls(allow_inactive=_flag(env, "ALLOW_INACTIVE"),
                   maildirfolder=env.get("MAILDIRFOLDER") or None,
                   discard_bounce=_flag(env, "DISCARD_BOUNCE"), qmail_ext=_flag(env, "QMAIL_EXT"),
                   program_timeout=_number(env, "PROGRAM_TIMEOUT", 3600.0), quota=policy)


_OPTION_NAMES = ("ALLOW_INACTIVE", "MAILDIRFOLDER", "DISCARD_BOUNCE", "QMAIL_EXT",
                 "PROGRAM_TIMEOUT", "OVERQUOTA_MAILSIZE", "HOLDOVERQUOTA",
                 "MAILDIRSIZE_MAX_SIZE", "MAILDIRSIZE_MAX_AGE", "FAST_QUOTA", "INCLUDE_TRASH")
_options_seen: dict[tuple[str | None, ...], LocalOptions] = {}


@dataclass
class Job:
    """One recipient of one message, as the agent works on it."""

    message: Any
    recipient: Recipient
    local: str  # lower-cased local part ("postmaster" when empty)
    domain: str  # as addressed (an alias domain stays an alias here)
    sender: str
    dtline: bytes
    rpline: bytes
    scan: HeaderScan
    opts: LocalOptions
    qmail_local: str = ""  # the local part qmail-send would deliver to: <prefix>-<user>
    newsender: str = ""  # the sender of forwards when it is not ``sender`` (-owner)
    real_domain: str = ""
    domain_dir: str = ""

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def header(self) -> bytes:
        """What a Maildir copy gets in front: Return-Path, Delivered-To, QQEH."""
        qqeh = self.message.envelope.extra.get("qqeh", "") if self.message.envelope else ""
        if qqeh and not qqeh.endswith("\n"):
            qqeh += "\n"
        return self.rpline + self.dtline + qqeh.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Precheck:
    size: int
    scan: HeaderScan
    max_delivered_to: int
    blackholed: bool
    data: bytes | None = None   # the whole message file, when reading the header took it all


def split_address(address: str, default_domain: str = "") -> tuple[str, str]:
    """(local, domain), lower-cased, quotes removed, empty local -> postmaster."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, default_domain
    local = local.strip()
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = local[1:-1]
    return (local.lower() or "postmaster"), domain.strip().lower().rstrip(".")


def header_text(text: str | None) -> str | None:
    """A DTLINE/RPLINE as a header line (one line ending in a newline), or None."""
    if not text or not text.strip():
        return None
    return text.rstrip("\r\n").replace("\r", "_").replace("\n", "_") + "\n"


# -- blocking helpers (run in threads) ----------------------------------------------------

def qmail_address(settings: Any, local: str, domain: str) -> str:
    """The address qmail-local sees (its Delivered-To line): the ``virtualdomains``
    rewrite ``<prefix>-<user>@<domain>``; IndiMail's ``<domain>-<user>@<domain>``
    when the domain is not listed there."""
    address = f"{local}@{domain}"
    virtual = getattr(settings, "virtualdomains", None)
    rewritten = virtual.rewrite(address) if virtual is not None else None
    return rewritten or dtline_address(local, domain)


def precheck(path: str, sender: str, settings: Any, data: bytes | None = None,
             size: int | None = None) -> Precheck:
    """The message's size and header (from ``data`` when the queue kept the bytes in
    memory, else read from the first ``size`` bytes of ``path``), and the settings'
    verdicts on the sender."""
    if data is not None:
        size, scan = len(data), scan_header(data[:MAX_HEADER_SCAN])
    else:
        size, scan, data = read_message_start(path, size=size)
    return Precheck(size, scan, _max_delivered_to(settings), _blackholed(settings, sender),
                    data)


#: (settings snapshot, its maxdeliveredto): the control file is read once per snapshot,
#: i.e. again after a reload (SIGHUP), as the other control files are.
_max_cache: tuple[Any, int] | None = None


def _max_delivered_to(settings: Any) -> int:
    global _max_cache
    cached = _max_cache
    if cached is not None and cached[0] is settings:
        return cached[1]
    value = _read_max_delivered_to(settings)
    _max_cache = (settings, value)
    return value


def _read_max_delivered_to(settings: Any) -> int:
    control = getattr(settings, "control", None)
    if control is None:
        return 0
    try:
        value = control.value("maxdeliveredto")
        return int(value) if value else 0
    except Exception:  # noqa: BLE001 - unreadable or not a number: qmail's default
        return 0


def _blackholed(settings: Any, sender: str) -> bool:
    if not sender or settings is None or not hasattr(settings, "in_list"):
        return False
    domain = sender.rpartition("@")[2]
    try:
        return settings.in_list("blackholedsender", sender) or bool(
            domain and settings.in_list("blackholedsender", "@" + domain))
    except Exception:  # noqa: BLE001 - a broken cdb never loses mail
        return False


def user_quota(user: User) -> mq.Quota | None:
    try:
        return mq.parse_quota(user.shell or "NOQUOTA")
    except ValueError:
        log.warn("{user}: unreadable quota {shell!r}; delivering without a limit",
                 user=user.address, shell=user.shell)
        return None


def mark_over_quota_txn(txn: Txn, name: str, domain: str, usage: int) -> None:
    """vset_lastdeliver(user, domain, usage): record the usage, set BOUNCE_MAIL."""
    user = REPOS.users.get(txn, name, domain)
    if user is not None and not user.gid & Flags.BOUNCE_MAIL:
        REPOS.users.set_flags(txn, name, domain, user.gid | Flags.BOUNCE_MAIL)
    REPOS.userquota.set(txn, name, domain, usage)


def clear_bounce_mail_txn(txn: Txn, name: str, domain: str) -> None:
    """vset_lastdeliver(user, domain, 0), clearing only BOUNCE_MAIL (IndiMail clears all)."""
    user = REPOS.users.get(txn, name, domain)
    if user is not None and user.gid & Flags.BOUNCE_MAIL:
        REPOS.users.set_flags(txn, name, domain, user.gid & ~Flags.BOUNCE_MAIL)
    REPOS.userquota.set(txn, name, domain, 0)
