"""Listener plumbing: certificates, reverse DNS, tcp-environ, factory checks."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer, task
from twisted.names import dns

from indimail_tw.errors import ConfigError
from indimail_tw.policy.base import Client
from indimail_tw.smtp import service
from indimail_tw.smtp.service import CertificateSource, SMTPFactory, load_certificate, tcp_environ
from indimail_tw.tlsutil import make_self_signed
from tests.smtp.support import Site


def test_certificate_source_reloads(tmp_path):
    clock = task.Clock()
    path = str(tmp_path / "servercert.pem")
    source = CertificateSource(path, clock.seconds)
    assert not source.available()
    with pytest.raises(ConfigError):
        source.options()
    make_self_signed(path, "mx.example.com")
    assert not source.available()              # checked less than a second ago
    clock.advance(1)
    first = source.options()
    assert source.available()
    make_self_signed(path, "mx.example.com")
    clock.advance(1)
    assert source.options() is not first
    with open(path, "w") as f:
        f.write("garbage\n")
    clock.advance(1)
    assert source.options() is not None        # a broken file keeps the last good one


def test_load_certificate_with_chain(tmp_path):
    a, b = str(tmp_path / "a.pem"), str(tmp_path / "b.pem")
    make_self_signed(a, "a.example")
    make_self_signed(b, "b.example")
    with open(b, "rb") as f:
        chain_cert = f.read().split(b"-----END PRIVATE KEY-----\n", 1)[1]
    with open(a, "ab") as f:
        f.write(chain_cert)
    options = load_certificate(a)
    assert len(options.extraCertChain) == 1
    with open(b, "w") as f:
        f.write("no pem here")
    with pytest.raises(ConfigError):
        load_certificate(b)


def test_tcp_environ():
    env = tcp_environ(Client("2001:db8::1", 4000, "2001:db8::25", 25, "h.example"))
    assert env == {"PROTO": "TCP6", "TCPREMOTEIP": "2001:db8::1", "TCPREMOTEPORT": "4000",
                   "TCPLOCALIP": "2001:db8::25", "TCPLOCALPORT": "25",
                   "TCPREMOTEHOST": "h.example"}


def _answers(records):
    return defer.succeed((records, [], []))


def test_reverse_dns_is_verified_forwards(monkeypatch):
    from twisted.names import client as dns_client

    ptr = dns.RRHeader("10.2.0.192.in-addr.arpa", dns.PTR,
                       payload=dns.Record_PTR("mail.partner.example"))
    good = dns.RRHeader("mail.partner.example", dns.A, payload=dns.Record_A("192.0.2.10"))
    bad = dns.RRHeader("mail.partner.example", dns.A, payload=dns.Record_A("192.0.2.99"))
    monkeypatch.setattr(dns_client, "lookupPointer", lambda name, timeout=None: _answers([ptr]))
    monkeypatch.setattr(dns_client, "lookupAddress", lambda name, timeout=None: _answers([good]))
    result = []
    service.reverse_dns("192.0.2.10").addCallback(result.append)
    assert result == ["mail.partner.example"]
    monkeypatch.setattr(dns_client, "lookupAddress", lambda name, timeout=None: _answers([bad]))
    service.reverse_dns("192.0.2.10").addCallback(result.append)
    assert result[-1] is None
    monkeypatch.setattr(dns_client, "lookupPointer",
                        lambda name, timeout=None: defer.fail(OSError("timeout")))
    service.reverse_dns("192.0.2.10").addCallback(result.append)
    assert result[-1] is None
    service.reverse_dns("not an ip").addCallback(result.append)
    assert result[-1] is None


def test_factory_refuses_unknown_service():
    site = Site()
    try:
        with pytest.raises(ValueError):
            SMTPFactory(site.context(), "pop3", clock=task.Clock())
    finally:
        site.cleanup()


def test_certificate_path(tmp_path):
    site = Site()
    try:
        assert service.certificate_path(site.context()) == os.path.join(site.paths.certs,
                                                                        "servercert.pem")
        site.environ["SERVERCERT"] = "/etc/other.pem"
        assert service.certificate_path(site.context()) == "/etc/other.pem"
    finally:
        site.cleanup()
