"""Which hosts get STARTTLS: tlshosts, exhaustivelist, notlshosts, notlhosts."""

from __future__ import annotations

import os

from indimail_tw.remote.client_parser import TLSMode
from indimail_tw.remote.tls import OpportunisticTLS, host_tls, tls_options, verified_tls
from indimail_tw.tlsutil import make_self_signed


def test_default_is_opportunistic(tmp_path):
    decision = host_tls(str(tmp_path), "mx.example.com", "example.com")
    assert decision.mode is TLSMode.OPPORTUNISTIC
    assert isinstance(tls_options("mx.example.com", decision), OpportunisticTLS)


def test_tlshosts_pem_requires_verified_tls(tmp_path):
    cert = tmp_path / "server.pem"
    make_self_signed(str(cert), "mx.example.com")
    os.makedirs(tmp_path / "tlshosts")
    (tmp_path / "tlshosts" / "mx.example.com.pem").write_bytes(cert.read_bytes())
    decision = host_tls(str(tmp_path), "MX.example.com", "example.com")
    assert decision.mode is TLSMode.REQUIRED and b"BEGIN CERTIFICATE" in decision.ca_pem
    assert verified_tls("mx.example.com", decision.ca_pem) is not None


def test_exhaustivelist_turns_tls_off_elsewhere(tmp_path):
    os.makedirs(tmp_path / "tlshosts")
    (tmp_path / "tlshosts" / "exhaustivelist").write_text("")
    assert host_tls(str(tmp_path), "mx.example.com", "example.com").mode is TLSMode.NONE


def test_notlshosts_and_notlhosts(tmp_path):
    os.makedirs(tmp_path / "notlshosts")
    (tmp_path / "notlshosts" / "bad.example.net").write_text("")
    (tmp_path / "notlshosts" / "plain.example").write_text("")
    certs = str(tmp_path)
    assert host_tls(certs, "bad.example.net", "x.example").mode is TLSMode.NONE
    assert host_tls(certs, "mx.plain.example", "plain.example").mode is TLSMode.NONE
    assert host_tls(certs, "mx.y.example", "y.example", ["Y.example"]).mode is TLSMode.NONE
    assert host_tls(certs, "../etc", "../passwd").mode is TLSMode.OPPORTUNISTIC
