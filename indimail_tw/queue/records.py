"""The queue's on-disk records: plain lines, self-delimiting, with end markers.

Pure functions (no I/O).  A record is one line::

    TAG key=VALUE key=VALUE ...\\n

Every VALUE is typed by its first character: ``-`` None, ``s`` text, ``i``
integer, ``f`` float, ``b0``/``b1`` boolean, ``t`` a comma-separated tuple of
texts.  Text is UTF-8 with every byte outside ``!``..``~`` and the bytes ``%``,
``,`` and ``=`` written as ``%XX``, so a value never contains a space, a comma or
a newline.

An envelope record is a header line, records, and an end line
``END <crc32 of everything before it>``; a reader rejects a record whose end line
is missing or whose checksum does not match.  It is stored after the message
bytes at the end of ``mess/ID`` (format 2), followed by a fixed-length trailer
``ITWQ2 <record length, 8 hex digits>\n`` (:func:`encode_trailer`) so a reader
finds it from the end; an old format-1 message has it in a file of its own
(``info/ID``).  A state log (``state/ID``) is a
sequence of ``S`` records, each ending with its own checksum field ``c=``; a line
that is cut short or fails its checksum is ignored (the last one is what a crash
in the middle of an append leaves).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Iterator

from indimail_tw.queue.envelope import Envelope, Recipient

MAGIC = b"indimail-tw-queue envelope 1\n"
_KEEP = frozenset(range(0x21, 0x7F)) - {ord("%"), ord(","), ord("=")}
_ENVELOPE_FIELDS = [f.name for f in dataclasses.fields(Envelope)
                    if f.name not in ("recipients", "extra")]
_RECIPIENT_FIELDS = [f.name for f in dataclasses.fields(Recipient)]


class CorruptRecord(ValueError):
    """A queue file that is incomplete or damaged."""


# -- values -------------------------------------------------------------------------


_KEEP_BYTES = bytes(sorted(_KEEP))


#: A text that needs no %XX: ASCII with nothing outside _KEEP (the usual case).
_PLAIN = re.compile(r"[!-$&-+\--<>-~]*").fullmatch


def quote(text: str) -> str:
    if _PLAIN(text):
        return text
    raw = text.encode("utf-8", "surrogatepass")
    return "".join(chr(b) if b in _KEEP else f"%{b:02X}" for b in raw)


def unquote(text: str) -> str:
    if "%" not in text:
        return text
    out = bytearray()
    i, raw = 0, text.encode("ascii")
    while i < len(raw):
        if raw[i] == ord("%"):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogatepass")


def encode_value(value: object) -> str:
    if type(value) is str:                          # the usual case first
        return "s" + quote(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "b1" if value else "b0"
    if isinstance(value, int):
        return f"i{value}"
    if isinstance(value, float):
        return f"f{value!r}"
    if isinstance(value, str):
        return "s" + quote(value)
    if isinstance(value, (tuple, list)):
        return "t" + ",".join(quote(str(v)) for v in value)
    raise TypeError(f"cannot store {type(value).__name__} in a queue record")


def decode_value(text: str) -> object:
    kind, body = text[:1], text[1:]
    if kind == "-" and not body:
        return None
    if kind == "s":
        return unquote(body)
    if kind == "i":
        return int(body)
    if kind == "f":
        return float(body)
    if kind == "b" and body in ("0", "1"):
        return body == "1"
    if kind == "t":
        return tuple(unquote(v) for v in body.split(",")) if body else ()
    raise ValueError(f"bad value {text!r}")


def encode_line(tag: str, fields: dict[str, object]) -> str:
    keys = _KEYS
    parts = [tag]
    for k, v in fields.items():
        key = keys.get(k)
        if key is None:
            key = quote(k) + "="
            if len(keys) < 256:                     # field names: a small, fixed set
                keys[k] = key
        parts.append(key + encode_value(v))
    return " ".join(parts)


_KEYS: dict[str, str] = {}


def decode_line(line: str) -> tuple[str, dict[str, object]]:
    tag, *parts = line.split(" ")
    fields: dict[str, object] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"bad field {part!r}")
        fields[unquote(key)] = decode_value(value)
    return tag, fields


# -- envelope files -------------------------------------------------------------------


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def encode_envelope(envelope: Envelope, size: int) -> bytes:
    """The envelope record of a message of ``size`` bytes."""
    lines = [encode_line("M", {"size": size}),
             encode_line("E", {name: getattr(envelope, name) for name in _ENVELOPE_FIELDS})]
    lines += [encode_line("R", {name: getattr(r, name) for name in _RECIPIENT_FIELDS})
              for r in envelope.recipients]
    lines += [encode_line("X", {"k": k, "v": v}) for k, v in envelope.extra.items()]
    body = MAGIC + "".join(line + "\n" for line in lines).encode("ascii")
    return body + f"END {_crc(body)}\n".encode("ascii")


def decode_envelope(data: bytes) -> tuple[Envelope, int]:
    """Parse an envelope record: (envelope, message size); CorruptRecord if damaged."""
    if not data.startswith(MAGIC):
        raise CorruptRecord("not a queue envelope file (bad header)")
    if not data.endswith(b"\n"):
        raise CorruptRecord("no end marker")
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1
    end = data[cut:-1]
    if not end.startswith(b"END ") or end[4:].decode("ascii", "replace") != _crc(data[:cut]):
        raise CorruptRecord("missing end marker or bad checksum")
    size, scalars, recipients, extra = None, None, [], {}
    try:
        for line in data[len(MAGIC):cut].decode("ascii").splitlines():
            tag, fields = decode_line(line)
            if tag == "M":
                size = int(fields["size"])  # type: ignore[arg-type]
            elif tag == "E":
                scalars = {k: v for k, v in fields.items() if k in _ENVELOPE_FIELDS}
            elif tag == "R":
                recipients.append(Recipient(**{k: v for k, v in fields.items()
                                               if k in _RECIPIENT_FIELDS}))
            elif tag == "X":
                extra[str(fields["k"])] = str(fields["v"])
            else:
                raise ValueError(f"unknown record {tag!r}")
        if size is None or scalars is None:
            raise ValueError("no M or E record")
        envelope = Envelope(recipients=recipients, extra=extra, **scalars)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CorruptRecord(f"bad record: {e}") from e
    return envelope, size


# -- the trailer of a format-2 message file -----------------------------------------

TRAILER_MAGIC = b"ITWQ2 "
#: Length of the trailer that ends a format-2 message file.
TRAILER_SIZE = len(TRAILER_MAGIC) + 8 + 1


def encode_trailer(record_size: int) -> bytes:
    """The trailer after an envelope record of ``record_size`` bytes."""
    if not 0 < record_size <= 0xFFFFFFFF:
        raise ValueError(f"envelope record of {record_size} bytes")
    return TRAILER_MAGIC + b"%08x\n" % record_size


def decode_trailer(data: bytes) -> int:
    """The envelope record's length from a trailer; CorruptRecord if it is not one."""
    if (len(data) != TRAILER_SIZE or not data.startswith(TRAILER_MAGIC)
            or not data.endswith(b"\n")):
        raise CorruptRecord("no queue trailer at the end of the message file")
    digits = data[len(TRAILER_MAGIC):-1]
    if not re.fullmatch(rb"[0-9a-f]{8}", digits):
        raise CorruptRecord("bad queue trailer")
    size = int(digits, 16)
    if size == 0:
        raise CorruptRecord("bad queue trailer")
    return size


# -- state logs -------------------------------------------------------------------------


def encode_state(fields: dict[str, object]) -> bytes:
    """One state-log line (``S ... c=CRC``) for a recipient's new state."""
    line = encode_line("S", fields)
    return f"{line} c={_crc(line.encode('ascii'))}\n".encode("ascii")


def decode_states(data: bytes) -> tuple[list[dict[str, object]], int]:
    """The valid state lines of a log, in order, and how many lines were rejected."""
    good: list[dict[str, object]] = []
    bad = 0
    for line in _lines(data):
        if line is None:
            bad += 1
            continue
        head, sep, crc = line.rpartition(b" c=")
        try:
            if not sep or crc.decode("ascii") != _crc(head):
                raise ValueError("bad checksum")
            tag, fields = decode_line(head.decode("ascii"))
            if tag != "S":
                raise ValueError("not a state line")
        except (ValueError, UnicodeDecodeError):
            bad += 1
            continue
        good.append(fields)
    return good, bad


def _lines(data: bytes) -> Iterator[bytes | None]:
    """Complete lines; None for a last line without its newline."""
    *complete, tail = data.split(b"\n")
    yield from complete
    if tail:
        yield None
