"""Admitting a connection, the same for every listener: the tcprules decision
(allow/deny and the rule's variables, tcpserver's ``tcp/tcp.<service>.cdb``), the
connection's tcpserver environment, then the connection limits (MAXDAEMONS /
``concurrencyincoming``, MAXPERIP).  The protocol turns the outcome into its
own reply."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from indimail_tw.policy.base import Client
from indimail_tw.policy.limits import max_connections, max_per_ip
from indimail_tw.policy.tcprules import Action

log = Logger()


def tcp_environ(client: Client) -> dict[str, str]:
    """tcpserver's environment for a connection (tcp-environ(5))."""
    env = {"PROTO": "TCP6" if ":" in client.remote_ip else "TCP",
           "TCPREMOTEIP": client.remote_ip, "TCPREMOTEPORT": str(client.remote_port),
           "TCPLOCALIP": client.local_ip, "TCPLOCALPORT": str(client.local_port)}
    if client.remote_host:
        env["TCPREMOTEHOST"] = client.remote_host
    return env


@dataclass(frozen=True)
class Admission:
    """``env`` for an admitted connection; else ``denied`` (a tcprules deny) or
    ``refused`` (the limiter's refusal, with ``.text``)."""

    env: dict = field(default_factory=dict)
    denied: bool = False
    refused: Any = None

    @property
    def admitted(self) -> bool:
        return not self.denied and self.refused is None


def admit(service: str, rules: Any, environ: Mapping[str, str], client: Client,
          limiter: Any, concurrency: str | None = None) -> Admission:
    """Decide on one connection; a positive answer holds a slot in ``limiter``."""
    found = rules.match(client.remote_ip, client.remote_host) if rules is not None else None
    action = found[1] if found else Action()
    if not action.allow:
        log.info("{service} connection from {ip} denied by rule {rule!r}", service=service,
                 ip=client.remote_ip, rule=found[0] if found else "")
        return Admission(denied=True)
    env = action.environ({**environ, **tcp_environ(client)})
    refused = limiter.admit(client.remote_ip, max_connections(env, concurrency),
                            max_per_ip(env))
    if refused is not None:
        log.info("{service} connection from {ip} refused: {why}", service=service,
                 ip=client.remote_ip, why=refused.text)
        return Admission(env, refused=refused)
    return Admission(env)
