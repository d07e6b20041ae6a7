"""TLS material: the server certificate (IndiMail's ``certs/servercert.pem``)."""

from __future__ import annotations

import datetime
import os

from indimail_tw import fsutil


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
