"""TLS for remote delivery: which hosts get STARTTLS, and how it is verified.

IndiMail's files, under the certificate directory (``CERTDIR``, ``paths.certs``):

* ``tlshosts/<host>.pem`` -- TLS is *required* with the exchanger ``<host>``
  and its certificate must chain to a CA in that file and match the name;
* ``tlshosts/exhaustivelist`` -- no TLS with hosts that have no such file;
* ``notlshosts/<host>`` or ``notlshosts/<recipient domain>`` -- no TLS;
* control file ``notlhosts`` -- recipient domains without TLS;
* ``clientcert.pem`` (or ``CLIENTCERT``) -- key and certificate we present.

Everything else gets opportunistic STARTTLS without verification (as Postfix's
"may"): unlike qmail-remote we do not need ``clientcert.pem`` to try TLS.
A failed opportunistic handshake makes the agent retry that address in the
clear (qmail-remote does the same); a failed required one never does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from indimail_tw.remote.addresses import is_ip
from indimail_tw.remote.client_parser import TLSMode

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class HostTLS:
    """The TLS decision for one exchanger."""

    mode: TLSMode
    ca_pem: bytes | None = None        # REQUIRED: the trusted CA certificates
    source: str = ""                   # the file that decided, for logs


def _exists(directory: str, name: str) -> bool:
    return bool(_SAFE_NAME.match(name)) and os.path.exists(os.path.join(directory, name))


def host_tls(certs: str, host: str, domain: str, notlhosts: Sequence[str] = ()) -> HostTLS:
    """Decide TLS for exchanger ``host`` of recipient ``domain`` (blocking: reads files)."""
    tlshosts = os.path.join(certs, "tlshosts")
    host, domain = host.lower().rstrip("."), domain.lower()
    if _SAFE_NAME.match(host):
        pem = os.path.join(tlshosts, host + ".pem")
        try:
            with open(pem, "rb") as f:
                return HostTLS(TLSMode.REQUIRED, f.read(), pem)
        except FileNotFoundError:
            pass
    if os.path.exists(os.path.join(tlshosts, "exhaustivelist")):
        return HostTLS(TLSMode.NONE, source=os.path.join(tlshosts, "exhaustivelist"))
    notlshosts = os.path.join(certs, "notlshosts")
    for name in (host, domain):
        if _exists(notlshosts, name):
            return HostTLS(TLSMode.NONE, source=os.path.join(notlshosts, name))
    if domain in (d.strip().lower() for d in notlhosts):
        return HostTLS(TLSMode.NONE, source="notlhosts")
    return HostTLS(TLSMode.OPPORTUNISTIC)


def client_certificate_path(certs: str, environ: Mapping[str, str]) -> str:
    return environ.get("CLIENTCERT") or os.path.join(certs, "clientcert.pem")


def load_client_certificate(path: str) -> ssl.PrivateCertificate | None:
    """Our client certificate (key and certificate in one PEM), if the file exists."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return ssl.PrivateCertificate.loadPEM(data)


def _sni(hostname: str) -> bytes | None:
    name = hostname.strip("[]")
    if not name or is_ip(name):
        return None
    return name.encode("ascii", "ignore") or None


@implementer(IOpenSSLClientConnectionCreator)
class OpportunisticTLS:
    """A client TLS connection that accepts any certificate (it still sends SNI)."""

    def __init__(self, hostname: str, client: ssl.PrivateCertificate | None = None) -> None:
        kw: dict[str, Any] = {}
        if client is not None:
            kw = {"privateKey": client.privateKey.original.to_cryptography_key(),
                  "certificate": client.original.to_cryptography()}
        self._context = ssl.CertificateOptions(verify=False, **kw).getContext()
        self._sni = _sni(hostname)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        return connection


def verified_tls(hostname: str, ca_pem: bytes,
                 client: ssl.PrivateCertificate | None = None) -> Any:
    """A client TLS connection that verifies the chain against ``ca_pem`` and the name."""
    certificates = [ssl.Certificate.loadPEM(m.group(0)) for m in _PEM_CERT.finditer(ca_pem)]
    if not certificates:
        raise ValueError("no CA certificate in the tlshosts file")
    return ssl.optionsForClientTLS(hostname.strip("[]"),
                                   trustRoot=ssl.trustRootFromCertificates(certificates),
                                   clientCertificate=client)


def tls_options(hostname: str, decision: HostTLS,
                client: ssl.PrivateCertificate | None = None) -> Any | None:
    """The connection creator for ``decision`` (None when TLS is off)."""
    if decision.mode is TLSMode.REQUIRED:
        assert decision.ca_pem is not None
        return verified_tls(hostname, decision.ca_pem, client)
    if decision.mode is TLSMode.OPPORTUNISTIC:
        return OpportunisticTLS(hostname, client)
    return None
