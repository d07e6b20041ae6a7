"""The lines local delivery requests and results travel in between the server and its
delivery helper process (:mod:`indimail_tw.delivery.lspawn`, :mod:`~indimail_tw.delivery.lhelper`).

One JSON object per line (``json.dumps`` never writes a raw newline; strings with
undecodable bytes keep them as lone surrogates, which JSON escapes and gives back).

server -> helper::

    {"n": N, "m": ID, "p": PATH, "z": SIZE, "q": QUEUE, "e": ENVELOPE, "r": RECIPIENT}
        deliver message ID (its bytes are [0, SIZE) of PATH) to RECIPIENT
    {"fr": N, "id": QUEUE_ID}  |  {"fr": N, "t": TEXT, "x": ENHANCED, "perm": BOOL}
        the answer to forward N

helper -> server::

    {"n": N, "s": STATUS, "t": TEXT, "x": ENHANCED}       the result of delivery N
    {"f": N, "e": ENVELOPE, "dt": DTLINE, "p": PATH, "z": SIZE}
        forward N: queue a new message, DTLINE then bytes [0, SIZE) of PATH

ENVELOPE holds the envelope's fields that are not at their defaults (the delivery
request leaves the recipients out: RECIPIENT is the one at hand); RECIPIENT is
``[address, notify, orcpt]``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from indimail_tw.delivery.result import DeliveryResult
from indimail_tw.queue.envelope import Envelope, Recipient

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Envelope)
             if f.name not in ("sender", "recipients", "extra")}
_encode = json.JSONEncoder(separators=(",", ":")).encode
decode = json.JSONDecoder().decode


def line(record: dict[str, Any]) -> bytes:
    """One record as a line of the wire."""
    return _encode(record).encode("ascii") + b"\n"


def recipient_out(recipient: Recipient) -> list[Any]:
    return [recipient.address, list(recipient.notify), recipient.orcpt]


def recipient_in(value: list[Any]) -> Recipient:
    address, notify, orcpt = value
    return Recipient(str(address), tuple(str(n) for n in notify),
                     None if orcpt is None else str(orcpt))


def envelope_out(envelope: Envelope, recipients: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"sender": envelope.sender}
    for name, default in _DEFAULTS.items():
        value = getattr(envelope, name)
        if value != default:
            out[name] = value
    if envelope.extra:
        out["extra"] = envelope.extra
    if recipients:
        out["recipients"] = [recipient_out(r) for r in envelope.recipients]
    return out


def envelope_in(value: dict[str, Any]) -> Envelope:
    fields = {k: v for k, v in value.items() if k in _DEFAULTS}
    return Envelope(sender=str(value["sender"]),
                    recipients=[recipient_in(r) for r in value.get("recipients", ())],
                    extra={str(k): str(v) for k, v in (value.get("extra") or {}).items()},
                    **fields)


def result_out(number: int, result: DeliveryResult) -> bytes:
    return line({"n": number, "s": result.status, "t": result.text, "x": result.enhanced})


def result_in(record: dict[str, Any]) -> DeliveryResult:
    return DeliveryResult(str(record["s"]), str(record["t"]), str(record["x"]))
