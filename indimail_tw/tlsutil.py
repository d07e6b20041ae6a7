"""TLS material: the server certificate (IndiMail's ``certs/servercert.pem``).

Shared by the SMTP, POP3 and IMAP listeners: :class:`CertificateSource` (the
certificate, re-read when the file changes), :func:`load_certificate`,
:func:`certificate_path` (``SERVERCERT`` or ``certs/servercert.pem``) and
:func:`implicit_tls_description` (``ssl:`` without TLS material listens as
``tcp:`` and the protocol starts TLS itself).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import ssl
from twisted.logger import Logger

from indimail_tw import fsutil
from indimail_tw.errors import ConfigError

log = Logger()


def make_self_signed(path: str, hostname: str, days: int = 825) -> None:
    """Write a private key and a self-signed certificate for ``hostname`` into one PEM file.

    The file holds the key first, then the certificate, as IndiMail's
    servercert.pem does; Twisted's ``ssl:`` endpoint reads both from it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pem += cert.public_bytes(serialization.Encoding.PEM)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fsutil.atomic_write(path, pem, mode=0o600)


class CertificateSource:
    """The server certificate, re-read when the file changes (checked at most once a second)."""

    def __init__(self, path: str, now: Callable[[], float]) -> None:
        self.path = path
        self._now = now
        self._checked: float | None = None
        self._stamp: tuple | None = None
        self._options: ssl.CertificateOptions | None = None

    def _refresh(self) -> None:
        now = self._now()
        if self._checked is not None and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._options = None, None
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            self._options = load_certificate(self.path)
            self._stamp = stamp
        except Exception as e:  # noqa: BLE001 -- keep what we had, say why
            log.error("cannot load TLS certificate {path}: {error}", path=self.path, error=e)

    def available(self) -> bool:
        self._refresh()
        return self._options is not None

    def options(self) -> ssl.CertificateOptions:
        self._refresh()
        if self._options is None:
            raise ConfigError(f"{self.path}: no usable TLS certificate")
        return self._options


_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.S)


def load_certificate(path: str) -> ssl.CertificateOptions:
    """CertificateOptions from one PEM holding the private key and the certificate chain."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(path, "rb") as f:
        data = f.read()
    key, certs = None, []
    for match in _PEM.finditer(data):
        kind = match.group(1)
        if kind.endswith(b"PRIVATE KEY") and key is None:
            key = serialization.load_pem_private_key(match.group(0), password=None)
        elif kind == b"CERTIFICATE":
            certs.append(x509.load_pem_x509_certificate(match.group(0)))
    if key is None or not certs:
        raise ConfigError(f"{path}: needs a private key and a certificate")
    return ssl.CertificateOptions(privateKey=key, certificate=certs[0],
                                  extraCertChain=certs[1:],
                                  raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def certificate_path(context: Any) -> str:
    return context.environ.get("SERVERCERT") or os.path.join(context.paths.certs,
                                                             "servercert.pem")


_TLS_MATERIAL = {"privatekey", "certkey", "sslmethod", "extracertchain", "dhparameters",
                 "cacertsdir", "method"}


def implicit_tls_description(description: str) -> str | None:
    """``tcp:...`` for an ``ssl:`` description that names no TLS material, else None."""
    kind, _, rest = description.partition(":")
    if kind != "ssl":
        return None
    keys = {part.split("=", 1)[0].lower() for part in rest.split(":") if "=" in part}
    if keys & _TLS_MATERIAL:
        return None
    return "tcp:" + rest


@dataclass(frozen=True)
class ListenerTLS:
    """How one listener does TLS (see :func:`listener_tls`)."""

    reactor: Any
    description: str                # what to listen on
    implicit: bool                  # TLS from the first byte (smtps, pop3s, imaps)
    tls_on_connect: bool            # ...started by the protocol itself (``ssl:`` became ``tcp:``)
    certificate: CertificateSource


def listener_tls(context: Any, spec: Any, description: str, implicit_name: str) -> ListenerTLS:
    """The TLS side of a listener, the same for every protocol: an ``ssl:``
    description without TLS material becomes ``tcp:`` and the protocol starts TLS
    itself with ``certs/servercert.pem`` (``SERVERCERT``), re-read when it changes;
    a missing certificate is logged (connections are refused until it exists)."""
    reactor = context.reactor
    if reactor is None:
        from twisted.internet import reactor
    cert = certificate_path(context)
    implicit = spec.name == implicit_name or description.split(":", 1)[0] == "ssl"
    tcp = implicit_tls_description(description) if implicit else None
    if tcp is not None:
        description = tcp
        if not os.path.exists(cert):
            log.error("--{name}: TLS certificate {cert} does not exist: connections are "
                      "refused until it does", name=spec.name, cert=cert)
    return ListenerTLS(reactor, description, implicit, tcp is not None,
                       CertificateSource(cert, reactor.seconds))
