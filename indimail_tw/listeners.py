"""The protocols ``twistd indimail`` can listen for, and their standard ports.

Each protocol package registers a ``build(context, description) -> IService``
here when it exists; until then its option is refused at startup with a clear
message, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class ProtocolSpec:
    name: str
    description: str
    default: str
    build: Callable | None = None


PROTOCOLS: dict[str, ProtocolSpec] = {spec.name: spec for spec in (
    ProtocolSpec("smtp", "SMTP (MX)", "tcp:25"),
    ProtocolSpec("submission", "SMTP submission", "tcp:587"),
    ProtocolSpec("smtps", "SMTP submission over implicit TLS", "ssl:465"),
    ProtocolSpec("pop3", "POP3", "tcp:110"),
    ProtocolSpec("pop3s", "POP3 over TLS", "ssl:995"),
    ProtocolSpec("imap", "IMAP4", "tcp:143"),
    ProtocolSpec("imaps", "IMAP4 over TLS", "ssl:993"),
    ProtocolSpec("qmtp", "QMTP", "tcp:209"),
    ProtocolSpec("qmqp", "QMQP", "tcp:628"),
    ProtocolSpec("odmr", "ODMR/ATRN", "tcp:366"),
)}


def selected(given: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The listeners to start: exactly those given, else every built protocol's default."""
    if given:
        return list(given)
    return [(spec.name, spec.default) for spec in PROTOCOLS.values() if spec.build is not None]
