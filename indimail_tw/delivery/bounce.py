"""Bounces as RFC 3464 delivery status notifications, with qmail-send's rules.

A bounce goes from the null sender to the original sender and carries three
parts (``multipart/report; report-type=delivery-status``): qmail-send's
human-readable text, a ``message/delivery-status`` part, and the original
message (``message/rfc822``, or only its header as ``text/rfc822-headers``
when the sender asked for ``RET=HDRS``), cut at ``bouncemaxbytes``.

* DSN ``NOTIFY``: a recipient with ``NEVER``, or with a list lacking
  ``FAILURE``, is left out; no recipient left, no bounce.  ``ENVID`` becomes
  ``Original-Envelope-Id``, ``ORCPT`` ``Original-Recipient``.
* Never a bounce to the null sender: a failed bounce (sender ``""``) becomes a
  double bounce from ``#@[]`` to ``doublebounceto@doublebouncehost``; a
  failed double bounce (sender ``#@[]``) is dropped, and so is every double
  bounce when ``doublebounceto`` is empty or starts with ``@``.

:func:`make_bounce` reads the message file: the queue calls it in a thread.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from indimail_tw.datafile import read_data
from indimail_tw.delivery.message import read_header, rfc2822_date
from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue.envelope import Envelope, Recipient

DOUBLE_BOUNCE_SENDER = "#@[]"
EXPIRED_TEXT = "I'm not going to try again; this message has been in the queue too long."
Failure = tuple[Recipient, DeliveryResult]


def wants_failure_notice(recipient: Recipient) -> bool:
    """RFC 3461 NOTIFY: default (no NOTIFY) and lists with FAILURE want a bounce."""
    notify = {n.upper() for n in recipient.notify}
    if not notify:
        return True
    if "NEVER" in notify:
        return False
    return "FAILURE" in notify


def _setting(settings: Any, name: str, default: Any) -> Any:
    try:
        value = getattr(settings, name)
    except AttributeError:
        return default
    return default if value is None else value


def double_bounce_recipient(settings: Any) -> str | None:
    """``doublebounceto@doublebouncehost``; None when double bounces are dropped."""
    me = _setting(settings, "me", "localhost")
    to = str(_setting(settings, "doublebounceto", "postmaster")).strip()
    if not to or to.startswith("@"):
        return None
    if "@" in to:
        return to
    return f"{to}@{_setting(settings, 'doublebouncehost', me) or me}"


def _clean(value: str) -> str:
    """Header-safe: no CR/LF inside a field."""
    return value.replace("\r", " ").replace("\n", " ").strip()


def _status(result: DeliveryResult, expired: bool) -> str:
    """A 5.x.y status for a failed recipient (an expired temporary keeps its detail)."""
    parts = result.enhanced.split(".") if result.enhanced else []
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in ("4", "5"):
        return f"5.{parts[1]}.{parts[2]}"
    return "5.4.7" if expired else "5.0.0"


def _typed(value: str, default_type: str) -> str:
    """``type; value`` as RFC 3464 fields want it."""
    kind, sep, rest = value.partition(";")
    if sep and kind.strip() and " " not in kind.strip():
        return f"{kind.strip()}; {rest.strip()}"
    return f"{default_type}; {value.strip()}"


def _ran_out_of_time(result: DeliveryResult) -> bool:
    """A failure that was temporary until the queue lifetime ran out (the queue
    keeps its 4.x.y status, or the result is still marked temporary)."""
    return result.is_temporary or result.enhanced.startswith("4.")


def _human_text(me: str, selected: Sequence[Failure], double: bool, expired: bool,
                copy_note: str) -> str:
    lines = [f"Hi. This is the qmail-send program at {me}."]
    if double:
        lines.append("I tried to deliver a bounce message to this address, "
                     "but the bounce bounced!")
    else:
        lines += ["I'm afraid I wasn't able to deliver your message to the following "
                  "addresses.",
                  "This is a permanent error; I've given up. Sorry it didn't work out."]
    lines.append("")
    timed_out = [_ran_out_of_time(result) for _, result in selected]
    if expired and not any(timed_out):
        timed_out = [True] * len(selected)
    for (recipient, result), late in zip(selected, timed_out, strict=True):
        lines.append(f"<{recipient.address}>:")
        lines += ((result.text or "").strip() or "delivery failed").splitlines()
        if expired and late:
            lines.append(EXPIRED_TEXT)
        lines.append("")
    lines.append(copy_note)
    lines.append("")
    return "\n".join(lines)


def _status_part(me: str, envelope: Envelope, selected: Sequence[Failure], now: float,
                 expired: bool) -> str:
    fields = [f"Reporting-MTA: dns; {me}"]
    if envelope.envid:
        fields.append(f"Original-Envelope-Id: {_clean(envelope.envid)}")
    if envelope.received_at:
        fields.append(f"Arrival-Date: {rfc2822_date(envelope.received_at)}")
    groups = ["\n".join(fields)]
    for recipient, result in selected:
        group = []
        if recipient.orcpt:
            group.append(f"Original-Recipient: {_typed(_clean(recipient.orcpt), 'rfc822')}")
        group += [f"Final-Recipient: rfc822; {_clean(recipient.address)}",
                  "Action: failed", f"Status: {_status(result, expired)}"]
        if result.remote_mta:
            group.append(f"Remote-MTA: {_typed(_clean(result.remote_mta), 'dns')}")
        if result.diagnostic:
            group.append(f"Diagnostic-Code: {_typed(_clean(result.diagnostic), 'smtp')}")
        group.append(f"Last-Attempt-Date: {rfc2822_date(now)}")
        groups.append("\n".join(group))
    return "\n\n".join(groups) + "\n"


def _original(path: str, headers_only: bool, limit: int, size: int | None = None
              ) -> tuple[bytes, bool]:
    """The copy to enclose (cut at the last line end within ``limit``) and whether cut.
    The message is the first ``size`` bytes of ``path`` (None: the whole file)."""
    if headers_only:
        data = read_header(path, size=size).header
    else:
        data = read_data(path, size, limit + 1 if limit > 0 else None)
    if limit <= 0 or len(data) <= limit:
        return data, False
    cut = data.rfind(b"\n", 0, limit)
    return (data[:cut + 1] if cut >= 0 else data[:limit]), True


def make_bounce(message: Any, failures: Sequence[Failure], settings: Any, *,
                expired: bool = False,
                now: float | None = None) -> tuple[Envelope, bytes] | None:
    """The bounce (envelope, message bytes) for ``failures`` of ``message``, or None.

    ``message`` provides IQueuedMessage (``id``, ``envelope``, ``path``);
    ``failures`` pairs each failed :class:`Recipient` with its result;
    ``settings`` provides ``me``, ``bouncefrom``, ``bouncehost``,
    ``bouncesubject``, ``doublebounceto``, ``doublebouncehost``,
    ``doublebouncesubject`` and ``bouncemaxbytes`` (0 = no limit).
    """
    envelope: Envelope = message.envelope
    if envelope.sender == DOUBLE_BOUNCE_SENDER or not failures:
        return None
    now = time.time() if now is None else now
    me = str(_setting(settings, "me", "localhost"))
    double = envelope.sender == ""
    if double:
        to = double_bounce_recipient(settings)
        if to is None:
            return None
        selected = list(failures)
        sender, subject = DOUBLE_BOUNCE_SENDER, _setting(
            settings, "doublebouncesubject", "failure notice")
    else:
        selected = [f for f in failures if wants_failure_notice(f[0])]
        if not selected:
            return None
        to, sender = envelope.sender, ""
        subject = _setting(settings, "bouncesubject", "failure notice")
    headers_only = (envelope.ret or "").upper() == "HDRS"
    limit = int(_setting(settings, "bouncemaxbytes", 50000) or 0)
    original, cut = _original(message.path, headers_only, limit,
                              getattr(message, "size", None))
    if headers_only:
        note = "--- Enclosed are the original headers of the message."
    else:
        note = "--- Enclosed is a copy of the message."
    if cut:
        note = note[:-1] + f" (truncated to {len(original)} bytes; the rest was stripped)."
    human = _human_text(me, selected, double, expired, note)
    status = _status_part(me, envelope, selected, now, expired)
    boundary = _boundary(original)
    bounce_from = f"{_setting(settings, 'bouncefrom', 'MAILER-DAEMON')}@" \
                  f"{_setting(settings, 'bouncehost', me) or me}"
    head = "\n".join([
        f"Date: {rfc2822_date(now)}",
        f"From: {bounce_from}",
        f"To: {_clean(to)}",
        f"Subject: {_clean(str(subject))}",
        f"Message-ID: <{uuid.uuid4().hex}.bounce@{me}>",
        "X-Bounced-Address: " + ",\n ".join(_clean(r.address) for r, _ in selected),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "", "This is a MIME-encapsulated message.", ""])
    human_charset = "us-ascii" if human.isascii() else "utf-8"
    encoding = "7bit" if original.isascii() else "8bit"
    kind = "text/rfc822-headers" if headers_only else "message/rfc822"
    parts = [
        head.encode("utf-8"),
        f"--{boundary}\nContent-Type: text/plain; charset={human_charset}\n"
        f"Content-Transfer-Encoding: {'7bit' if human.isascii() else '8bit'}\n\n".encode(),
        human.encode("utf-8", "surrogateescape"), b"\n",
        f"--{boundary}\nContent-Type: message/delivery-status\n\n".encode(),
        status.encode("utf-8", "surrogateescape"), b"\n",
        f"--{boundary}\nContent-Type: {kind}\nContent-Transfer-Encoding: {encoding}\n\n"
        .encode(),
        original if original.endswith(b"\n") or not original else original + b"\n",
        f"\n--{boundary}--\n".encode(),
    ]
    bounce = Envelope(sender=sender, recipients=[Recipient(to)], protocol="LOCAL",
                      received_at=now, smtputf8=not to.isascii())
    return bounce, b"".join(parts)


def _boundary(original: bytes) -> str:
    while True:
        boundary = f"=_bounce_{uuid.uuid4().hex}"
        if boundary.encode() not in original:
            return boundary
