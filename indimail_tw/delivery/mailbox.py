"""Maildir delivery with IndiMail's Maildir++ quota rules (vdelivermail's ``deliver_mail``).

* Quota: the account's ``pw_shell`` for a user's own Maildir; for other
  Maildir targets (valias, ``.qmail`` and catch-all paths) the header of that
  Maildir's ``maildirsize`` (IndiMail's "AUTO").  The size checked includes
  the header block we add.
* Over quota: a message of at most ``OVERQUOTA_MAILSIZE`` bytes is still
  delivered (admin notices get through); otherwise the delivery fails
  permanently with ``<addr> has insufficient quota. ... indimail (#5.1.4)``,
  or temporarily when the ``holdoverquota`` marker exists.  The caller records
  the usage in ``userquota`` and sets BOUNCE_MAIL (:attr:`MailboxOutcome.mark_usage`).
* BOUNCE_MAIL already set: no folder scan; the flag is cleared once
  1,024,000 more bytes would fit (:func:`locked_account`).

Everything here blocks: the agent runs it in a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.maildir import quota as mq
from indimail_tw.maildir.deliver import MaildirDeliveryError, deliver, folder_path, prepare

#: IndiMail clears BOUNCE_MAIL when a message of this size would fit again.
UNLOCK_ROOM = 1024000
AUTO = "AUTO"


@dataclass(frozen=True)
class QuotaPolicy:
    """The quota knobs (environment variables of the same names)."""

    overquota_mailsize: int = mq.OVERQUOTA_MAILSIZE
    holdoverquota: str = "holdoverquota"
    max_size: int = mq.MAILDIRSIZE_MAX_SIZE
    max_age: float = mq.MAILDIRSIZE_MAX_AGE
    fast: bool = False
    include_trash: bool = False


@dataclass(frozen=True)
class MailboxOutcome:
    result: DeliveryResult
    mark_usage: int | None = None  # record this usage and set BOUNCE_MAIL


def hold_over_quota(policy: QuotaPolicy, maildir: str, home: str | None) -> bool:
    """Whether the ``holdoverquota`` marker asks to defer rather than bounce.

    An absolute ``HOLDOVERQUOTA`` names the file; a plain name is looked up
    in the Maildir (where IndiMail's code looks) and in the home directory.
    """
    name = policy.holdoverquota or "holdoverquota"
    if name.startswith("/"):
        return os.path.exists(name)
    places = [maildir] + ([home] if home else [])
    return any(os.path.exists(os.path.join(p, name)) for p in places)


def quota_text(label: str, size: int, usage: mq.Usage | None, quota: mq.Quota) -> str:
    """IndiMail's over-quota report."""
    cur_bytes, cur_count = (usage.bytes, usage.count) if usage else (0, 0)
    return (f"{label} has insufficient quota. {size}/{cur_bytes}:{cur_count}/"
            f"{quota.count}:{quota.bytes}. indimail (#5.1.4)")


def _auto_quota(maildir: str) -> mq.Quota | None:
    usage = mq.read_usage(maildir)
    return usage.quota if usage is not None and usage.quota and not usage.quota.unlimited \
        else None


#: Maildirs (and folders) :func:`prepare` found complete, so that a delivery does
#: not look at ``cur``/``new``/``tmp`` every time.  When a delivery into one fails,
#: :func:`prepare` runs after all and the delivery is tried once more.
_complete: set[str] = set()
_COMPLETE_MAX = 100_000


def deliver_to_maildir(maildir: str, message_path: str, header: bytes, *,
                       quota: mq.Quota | None | str, label: str, policy: QuotaPolicy,
                       home: str | None = None, folder: str | None = None,
                       message_size: int | None = None,
                       message_data: bytes | None = None) -> MailboxOutcome:
    """Check the quota of ``maildir`` and deliver into it (or its ``folder``).

    ``message_size`` is the size of the message, when the caller knows it: the
    message is then the first ``message_size`` bytes of the file (a queue file
    goes on with its envelope); ``message_data`` the whole message, when the
    caller has read it already.
    """
    root = maildir.rstrip("/") or "/"
    key = f"{root}\0{folder or ''}"
    try:
        known = key in _complete
        target = folder_path(root, folder) if known else prepare(root, folder)
        if message_size is None:
            message_size = os.stat(message_path).st_size
        size = len(header) + message_size
        limit = _auto_quota(root) if isinstance(quota, str) else quota
        mark = None
        if limit is not None and not limit.unlimited:
            check = mq.check_quota(root, limit, size, policy.overquota_mailsize,
                                   include_trash=policy.include_trash,
                                   max_size=policy.max_size, max_age=policy.max_age,
                                   fast=policy.fast)
            if check.over_quota:
                text = quota_text(label, size, check.usage, limit)
                if hold_over_quota(policy, root, home):
                    return MailboxOutcome(DeliveryResult.temporary(text, "4.2.2"))
                usage = check.usage
                already_over = usage is not None and (
                    (limit.bytes and usage.bytes > limit.bytes)
                    or (limit.count and usage.count > limit.count))
                if not check.allowed:
                    return MailboxOutcome(DeliveryResult.permanent(text, "5.2.2"),
                                          usage.bytes if usage else 0)
                if already_over and usage is not None:
                    mark = usage.bytes
        try:
            delivered = deliver(target, message_path, header, message_data, message_size)
        except (MaildirDeliveryError, OSError):
            _complete.discard(key)
            if not known:
                raise
            target = prepare(root, folder)          # as IndiMail does every time
            delivered = deliver(target, message_path, header, message_data, message_size)
        if not known:
            if len(_complete) >= _COMPLETE_MAX:
                _complete.clear()
            _complete.add(key)
        mq.add_usage(root, delivered.size, 1)
    except MaildirDeliveryError as e:
        return MailboxOutcome(DeliveryResult.temporary(e.text, e.enhanced))
    except OSError as e:
        return MailboxOutcome(DeliveryResult.temporary(
            f"Temporary error on maildir delivery to {root}: {e.strerror}. (#4.3.0)", "4.3.0"))
    return MailboxOutcome(DeliveryResult.ok(f"delivered to {target}"), mark)


@dataclass(frozen=True)
class LockState:
    """BOUNCE_MAIL evaluation: refuse with ``result``, or go on (``clear`` the flag?)."""

    result: DeliveryResult | None
    clear: bool


def locked_account(maildir: str, quota: mq.Quota | None, address: str,
                   policy: QuotaPolicy, home: str | None = None) -> LockState:
    """An account flagged BOUNCE_MAIL: unlock it when 1,024,000 more bytes fit.

    Reads ``maildirsize`` (no folder scan unless the file is missing).  A
    NOQUOTA account with the flag stays locked (the flag was set by hand).
    """
    root = maildir.rstrip("/") or "/"
    usage = None
    try:
        usage = mq.read_usage(root)
        if usage is None and os.path.isdir(root):
            usage = mq.recalculate(root, quota, policy.include_trash)
    except OSError:
        usage = None
    cur = usage.bytes if usage else 0
    limit = quota.bytes if quota else 0
    if quota is not None and limit and cur + UNLOCK_ROOM < limit:
        return LockState(None, True)
    text = f"account {address} locked/overquota {cur}/{limit}. indimail (#5.1.1)"
    if hold_over_quota(policy, root, home):
        return LockState(DeliveryResult.temporary(text, "4.2.2"), False)
    return LockState(DeliveryResult.permanent(text, "5.2.2"), False)
