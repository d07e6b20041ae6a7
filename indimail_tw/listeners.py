"""The protocols ``twistd indimail`` can listen for, and their standard ports.

Each protocol package registers a ``build(context, description) -> IService``
here when it exists; until then its option is refused at startup with a clear
message, never silently ignored.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from collections.abc import Callable


@dataclass
class ProtocolSpec:
    name: str
    description: str
    default: str
    demo_port: int
    tls: bool = False
    build: str | None = None      # "module:function" building the listener service

    def builder(self) -> Callable:
        """The function ``build(context, spec, description) -> IService``."""
        module, _, name = self.build.partition(":")
        return getattr(importlib.import_module(module), name)

    def demo_description(self, certificate: str) -> str:
        """An unprivileged loopback listener for the demo (``make run``)."""
        if self.tls:
            return (f"ssl:{self.demo_port}:interface=127.0.0.1:"
                    f"privateKey={_escape(certificate)}")
        return f"tcp:{self.demo_port}:interface=127.0.0.1"


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:")


PROTOCOLS: dict[str, ProtocolSpec] = {spec.name: spec for spec in (
    ProtocolSpec("smtp", "SMTP (MX)", "tcp:25", 2525, build="indimail_tw.smtp.service:build"),
    ProtocolSpec("submission", "SMTP submission", "tcp:587", 2587,
                 build="indimail_tw.smtp.service:build"),
    ProtocolSpec("smtps", "SMTP submission over implicit TLS", "ssl:465", 2465, tls=True,
                 build="indimail_tw.smtp.service:build"),
    ProtocolSpec("pop3", "POP3", "tcp:110", 2110, build="indimail_tw.pop3.service:build"),
    ProtocolSpec("pop3s", "POP3 over TLS", "ssl:995", 2995, tls=True,
                 build="indimail_tw.pop3.service:build"),
    ProtocolSpec("imap", "IMAP4", "tcp:143", 2143, build="indimail_tw.imap4.service:build"),
    ProtocolSpec("imaps", "IMAP4 over TLS", "ssl:993", 2993, tls=True,
                 build="indimail_tw.imap4.service:build"),
    ProtocolSpec("qmtp", "QMTP", "tcp:209", 2209),
    ProtocolSpec("qmqp", "QMQP", "tcp:628", 2628),
    ProtocolSpec("odmr", "ODMR/ATRN", "tcp:366", 2366),
)}


def selected(given: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The listeners to start: exactly those given, else every built protocol's default."""
    if given:
        return list(given)
    return [(spec.name, spec.default) for spec in PROTOCOLS.values() if spec.build is not None]
