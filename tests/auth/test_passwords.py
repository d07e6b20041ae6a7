"""Stored password forms, checked against vectors from tools that are not our code.

Literal vectors below name the command that produced them (openssl 3.0, mkpasswd
from Debian's ``whois`` package, htpasswd from ``apache2-utils``, RFC texts).  The
``test_fresh_*`` tests run those tools again at test time with a random password;
a missing tool skips them, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
import warnings

import pytest

from indimail_tw.auth import passwords
from indimail_tw.auth.passwords import (
    CRAM_ALGORITHMS,
    METHODS,
    cram_secret,
    make_cram_record,
    make_hash,
    make_scram_record,
    parse_hash_method,
    saslprep,
    scram_secrets,
    verify,
    verify_cram,
    yescrypt_available,
)
from indimail_tw.errors import ConfigError

PASSWORD = "Tr0ub4dor&3"
PACKAGES = {"openssl": "openssl", "mkpasswd": "whois", "htpasswd": "apache2-utils"}


def _missing(what: str) -> None:
    """Skip outside CI; in CI (CI=true) a missing prerequisite is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not available")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} (apt-get install {PACKAGES[name]})")
    return path


def _run(*argv: str, stdin: bytes | None = None) -> str:
    done = subprocess.run([_tool(argv[0]), *argv[1:]], input=stdin, capture_output=True,
                          check=True, timeout=60)
    return done.stdout.decode().strip()


def _need_yescrypt() -> None:
    if not yescrypt_available():
        _missing("libxcrypt with yescrypt support (libcrypt1)")


def _need_libxcrypt() -> None:
    if passwords._xcrypt() is None:
        _missing("libxcrypt (libcrypt1)")


def _random_password() -> str:
    # Never starts with "-": tools take the password as an argument and would
    # read it as an option.  Some non-ASCII too, sent to tools as UTF-8.
    return "p" + secrets.token_urlsafe(12) + "-Ä"


def _wrong(password: str) -> str:
    """A different password that differs early (DES reads 8 bytes, bcrypt 72)."""
    return ("?" if password[:1] != "?" else "!") + password[1:]


# --------------------------------------------------------------------------- crypt(3)

CRYPT_VECTORS = [
    # mkpasswd -m descrypt -S ab 'Tr0ub4dor&3'
    pytest.param("abWL7Sj501Z46", PASSWORD, id="des"),
    # openssl passwd -1 -salt saltsalt 'Tr0ub4dor&3'  (mkpasswd -m md5crypt: the same)
    pytest.param("$1$saltsalt$ueg/7ujBFDpyKLR2vs28p1", PASSWORD, id="md5"),
    # openssl passwd -5 -salt 0123456789abcdef 'Tr0ub4dor&3'  (mkpasswd -m sha256crypt: same)
    pytest.param("$5$0123456789abcdef$gnBVv3wdgcWKdbaVBnC/PNoHCRK2ztDQY/VgCmsQCP4",
                 PASSWORD, id="sha256"),
    # openssl passwd -6 -salt 0123456789abcdef 'Tr0ub4dor&3'
    pytest.param("$6$0123456789abcdef$qyuvBrh3303/TMqALTZatADhsJXNYwV5CagfQDpITVMVeXagfR6L"
                 "XvFzrp4nYExqIqa8h7vJxFQDNOVMZdjVv1", PASSWORD, id="sha512"),
    # mkpasswd -m sha512crypt -R 10000 -S ./ABCxyz09 'Tr0ub4dor&3'
    pytest.param("$6$rounds=10000$./ABCxyz09$IYwCcqFMZoqlEDRDQoyusBvIdX1ku89vSnUHGCkN/50pXi"
                 "1..dvjK1J.4KUcmJxn0edqHk8IVlN9rrbWhSAix0", PASSWORD, id="sha512-rounds"),
    # openssl passwd -6 -salt saltsaltsaltsalt 'pässwörd'  (UTF-8 locale)
    pytest.param("$6$saltsaltsaltsalt$0OIGPDuiRPKNh88M0FmGG9U7BYCvo0nHRIKXtLm6h.s3IpT2dycI8d"
                 "jpM2Nhd7bEUCkEMhwvDfAYRqNrQ0Qc8/", "pässwörd", id="sha512-utf8"),
    # mkpasswd -m bcrypt 'Tr0ub4dor&3'
    pytest.param("$2b$05$ScUgZXstx0.MbgpgnSqM7e/qb0M39tguFSEsKFI83WyP9Tu8CCIf6",
                 PASSWORD, id="bcrypt-2b"),
    # mkpasswd -m bcrypt-a -R 6 -S abcdefghijklmnopqrstuu 'Tr0ub4dor&3'
    pytest.param("$2a$06$abcdefghijklmnopqrstuuKwILTLRSdS9UdxKFjAjMmRwtSeiJ6dy",
                 PASSWORD, id="bcrypt-2a"),
    # htpasswd -nbB -C 5 user 'Tr0ub4dor&3'
    pytest.param("$2y$05$9BuRYamwJrIoGnynhNkoQ.IS5n.9gmYxRAiW5kkhG.zz24voN.fNy",
                 PASSWORD, id="bcrypt-2y"),
    # htpasswd -nbB -C 4 user "$(python3 -c "print('x' * 80)")"
    pytest.param("$2y$04$LzbX1/jt5JEtcsnXuTdj0.Qs5X0Et4MDxJBqQLkb.YeSy6TDrK6Oa",
                 "x" * 80, id="bcrypt-80-bytes"),
]
# mkpasswd -m yescrypt 'Tr0ub4dor&3'
YESCRYPT_VECTOR = "$y$j9T$0r7rvOO2KAxzeRsA.okYz.$5cJqFQLF5qpx5yJ8rRPOjX0o4G3AkaKbDqXyo9t953."
# Other $id$ schemes crypt(3) knows; IndiMail hands any "$..." string to crypt(3).
XCRYPT_ONLY_VECTORS = [
    # mkpasswd -m gost-yescrypt 'Tr0ub4dor&3'
    "$gy$j9T$tEfrlu7I728deAJ/rCQfO0$tgPfoU6m4d.PryaR4B5r.UJtUpfKt7XYQkzR6d3fvc.",
    # mkpasswd -m scrypt 'Tr0ub4dor&3'
    "$7$CU..../....ddbCXFhTs6ddOujuM4zHa.$5bS68YKD/hDoX.iZELW.2e84XQLihdheJnHb5/syWj3",
    # mkpasswd -m sunmd5 'Tr0ub4dor&3'
    "$md5,rounds=47359$vqpt43Sn$$RLVzDhiilhiRAwXZlkK2B1",
]


@pytest.mark.parametrize(("stored", "password"), CRYPT_VECTORS)
def test_crypt_vectors(stored, password):
    assert verify(stored, password)
    assert not verify(stored, _wrong(password))
    assert not verify(stored, "")


def test_yescrypt_vector():
    _need_yescrypt()
    assert verify(YESCRYPT_VECTOR, PASSWORD)
    assert not verify(YESCRYPT_VECTOR, PASSWORD + "x")


@pytest.mark.parametrize("stored", XCRYPT_ONLY_VECTORS)
def test_other_crypt_schemes_go_through_libxcrypt(stored):
    _need_libxcrypt()
    assert verify(stored, PASSWORD)
    assert not verify(stored, PASSWORD + "x")


def test_des_like_crypt_uses_eight_characters():
    assert verify("abWL7Sj501Z46", PASSWORD[:8] + "anything")


def test_bcrypt_uses_72_bytes_like_crypt():
    stored = CRYPT_VECTORS[-1].values[0]
    assert verify(stored, "x" * 72)
    assert not verify(stored, "x" * 71)


def test_nul_in_password_never_matches():
    stored = make_hash("abc", "SHA-512")
    assert not verify(stored, "abc\0def")
    assert not verify(make_hash("abcdefgh", "DES"), "abcdefgh\0")


@pytest.mark.parametrize("method", ["DES", "MD5", "SHA-256", "SHA-512", "BCRYPT", "YESCRYPT"])
def test_make_hash_round_trip(method):
    if method == "YESCRYPT":
        _need_yescrypt()
    stored = make_hash(PASSWORD, method)
    assert verify(stored, PASSWORD)
    assert not verify(stored, _wrong(PASSWORD))
    assert make_hash(PASSWORD, method) != stored  # a fresh salt every time


@pytest.mark.parametrize(("method", "prefix", "salt_length"), [
    ("DES", "", 2), ("MD5", "$1$", 8), ("SHA-256", "$5$", 16), ("SHA-512", "$6$", 16),
    ("BCRYPT", "$2b$12$", 22),
])
def test_make_hash_prefix_and_salt(method, prefix, salt_length):
    stored = make_hash(PASSWORD, method)
    assert stored.startswith(prefix)
    if method == "DES":
        assert len(stored) == 13
        salt = stored[:2]
    elif method == "BCRYPT":
        salt = stored[len(prefix):len(prefix) + 22]
    else:
        salt = stored[len(prefix):].split("$")[0]
    assert len(salt) == salt_length
    assert set(salt) <= set("./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def test_make_hash_yescrypt_prefix():
    _need_yescrypt()
    assert make_hash(PASSWORD, "YESCRYPT").startswith("$y$j9T$")


@pytest.mark.parametrize(("method", "salt", "expected"), [
    ("DES", "ab", "abWL7Sj501Z46"),
    ("MD5", "saltsalt", "$1$saltsalt$ueg/7ujBFDpyKLR2vs28p1"),
    ("SHA-256", "0123456789abcdef", CRYPT_VECTORS[2].values[0]),
    ("SHA-512", "0123456789abcdef", CRYPT_VECTORS[3].values[0]),
    # mkpasswd -m bcrypt -R 12 -S abcdefghijklmnopqrstuu 'Tr0ub4dor&3'
    ("BCRYPT", "abcdefghijklmnopqrstuu",
     "$2b$12$abcdefghijklmnopqrstuuRI/kALEsLPxQo9AQB.2slJ/0SAZskBG"),
    ("YESCRYPT", "0r7rvOO2KAxzeRsA.okYz.", YESCRYPT_VECTOR),
])
def test_make_hash_with_salt_matches_the_tools(method, salt, expected):
    if method == "YESCRYPT":
        _need_yescrypt()
    assert make_hash(PASSWORD, method, salt=salt) == expected


def test_make_hash_accepts_password_hash_numbers():
    assert make_hash(PASSWORD, "0", salt="ab") == "abWL7Sj501Z46"
    assert make_hash(PASSWORD, "3").startswith("$6$")
    assert make_hash(PASSWORD).startswith("$6$")


@pytest.mark.parametrize(("method", "salt"), [
    ("DES", "a"), ("DES", "abc"), ("MD5", "123456789"), ("SHA-512", "x" * 17),
    ("SHA-256", "bad salt"), ("SHA-512", "sälz"), ("SHA-512", ""), ("BCRYPT", "short"),
    ("BCRYPT", "abcdefghijklmnopqrstuv"),  # last character carries padding bits
])
def test_make_hash_rejects_bad_salts(method, salt):
    with pytest.raises(ValueError) as info:
        make_hash(PASSWORD, method, salt=salt)
    assert PASSWORD not in str(info.value)


def test_make_hash_rejects_bad_yescrypt_salt():
    _need_yescrypt()
    with pytest.raises(ValueError):
        make_hash(PASSWORD, "YESCRYPT", salt="abc")


@pytest.mark.parametrize("password", ["", "abc\0def"])
def test_make_hash_refuses_unstorable_passwords(password):
    with pytest.raises(ValueError) as info:
        make_hash(password)
    assert not password or password not in str(info.value)


def test_make_hash_refuses_long_bcrypt_passwords():
    with pytest.raises(ValueError) as info:
        make_hash("y" * 73, "BCRYPT")
    assert "y" * 73 not in str(info.value)


def test_without_libxcrypt(monkeypatch):
    monkeypatch.setattr(passwords, "_xcrypt", lambda: None)
    assert not yescrypt_available()
    assert verify(YESCRYPT_VECTOR, PASSWORD) is False
    assert verify(XCRYPT_ONLY_VECTORS[0], PASSWORD) is False
    with pytest.raises(ConfigError, match=r"YESCRYPT.*libxcrypt"):
        make_hash(PASSWORD, "YESCRYPT")
    assert verify(CRYPT_VECTORS[3].values[0], PASSWORD)  # libpass schemes still work


NATIVE_VECTORS = [v for v in CRYPT_VECTORS if v.values[0].startswith(("$1$", "$5$", "$6$"))]


@pytest.mark.parametrize(("stored", "password"), NATIVE_VECTORS)
def test_md5_and_sha_crypt_verify_through_libxcrypt(monkeypatch, stored, password):
    """With libxcrypt, MD5/SHA-crypt never reach libpass's pure-Python code."""
    _need_libxcrypt()
    for _prefix, handler in passwords._PASSLIB_SCHEMES:
        monkeypatch.setattr(handler, "verify", _never)
    assert verify(stored, password)
    assert not verify(stored, _wrong(password))
    assert not verify(stored, "")


@pytest.mark.parametrize(("stored", "password"), NATIVE_VECTORS)
def test_libxcrypt_and_libpass_agree(monkeypatch, stored, password):
    _need_libxcrypt()
    secret = password.encode()
    for candidate in (secret, _wrong(password).encode(), secret + b"x", b"x" * 512):
        for end in (len(stored), len(stored) - 1, stored.rindex("$") + 1):
            native = passwords._verify_native(stored[:end], candidate)
            monkeypatch.setattr(passwords, "_xcrypt", lambda: None)
            assert passwords._verify_crypt(stored[:end], candidate) is bool(native)
            monkeypatch.undo()


def test_passwords_longer_than_libxcrypt_takes_go_to_libpass():
    _need_libxcrypt()
    long_password = "p" * 600                         # libxcrypt refuses over 512 bytes
    stored = passwords.sha512_crypt.using(salt="0123456789abcdef", rounds=5000).hash(
        long_password)
    assert verify(stored, long_password)
    assert not verify(stored, "p" * 601)


def _never(*_args, **_kwargs):
    raise AssertionError("libpass was used")


@pytest.mark.parametrize(("text", "expected"), [
    ("DES", "DES"), ("des", "DES"), ("MD5", "MD5"), ("md5", "MD5"),
    ("SHA-256", "SHA-256"), ("sha-256", "SHA-256"), ("SHA-512", "SHA-512"),
    ("Sha-512", "SHA-512"), ("YESCRYPT", "YESCRYPT"), ("yescrypt", "YESCRYPT"),
    ("BCRYPT", "BCRYPT"), ("bcrypt", "BCRYPT"),
    ("0", "DES"), ("1", "MD5"), ("2", "SHA-256"), ("3", "SHA-512"), ("4", "YESCRYPT"),
    ("3\n", "SHA-512"),  # as read from a control file
])
def test_parse_hash_method(text, expected):
    assert parse_hash_method(text) == expected


@pytest.mark.parametrize("text", ["", "5", "-1", "01", "SHA512", "SHA1", "crypt", "SHA-384"])
def test_parse_hash_method_rejects(text):
    with pytest.raises(ValueError):
        parse_hash_method(text)


def test_methods_constant():
    assert METHODS == ("DES", "MD5", "SHA-256", "SHA-512", "YESCRYPT")


# --------------------------------------------------------------------------- malformed

GARBAGE = [
    "", "$", "$1$", "$1$saltsalt", "$1$saltsalt$", "$5$", "$6$abc$", "$2b$", "$2b$05$",
    "$2b$99$ScUgZXstx0.MbgpgnSqM7e/qb0M39tguFSEsKFI83WyP9Tu8CCIf6",
    "$5$rounds=10$0123456789abcdef$gnBVv3wdgcWKdbaVBnC/PNoHCRK2ztDQY/VgCmsQCP4",
    "$y$", "$y$j9T$abc$", "$y$zzz$0r7rvOO2KAxzeRsA.okYz.$", "$99$abc$def", "*", "!", "!!",
    "*LK*", "x", "abWL7Sj501Z4", "abWL7Sj501Z46!", "ab L7Sj501Z46", "é" * 13, "\0",
    "abWL7Sj501Z46\0", "$6$" + "a" * 5000, "z" * 100_000, "{", "{}", "{CRYPT}abc",
    "{CRAM}", "{CRAM},", "{SCRAM-SHA-1}", "{SCRAM-SHA-256}", "{SCRAM-SHA-256}4096",
]


@pytest.mark.filterwarnings("ignore::passlib.exc.PasslibHashWarning")  # "salt too large"
@pytest.mark.parametrize("stored", GARBAGE)
def test_garbage_never_verifies(stored):
    for password in (PASSWORD, "", "pw", "\ud800", stored):
        assert verify(stored, password) is False
    assert cram_secret(stored) is None


def test_libpass_warnings_as_errors_do_not_escape():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify("$6$" + "a" * 5000, PASSWORD) is False


@pytest.mark.parametrize(("stored", "password"), CRYPT_VECTORS)
def test_every_truncation_of_a_vector_fails(stored, password):
    for end in range(len(stored)):
        assert verify(stored[:end], password) is False


def test_truncated_yescrypt_fails():
    for stored in (YESCRYPT_VECTOR[:-1], YESCRYPT_VECTOR[:-20], YESCRYPT_VECTOR[:30],
                   YESCRYPT_VECTOR[:8]):
        assert verify(stored, PASSWORD) is False


@pytest.mark.parametrize("stored", [None, 42, b"$1$saltsalt$ueg/7ujBFDpyKLR2vs28p1"])
def test_non_string_stored_values(stored):
    assert verify(stored, PASSWORD) is False
    assert cram_secret(stored, enable_cram=True) is None


# --------------------------------------------------------------------------- clear text

def test_clear_text_only_with_allow_clear():
    assert verify("plain secret", "plain secret") is False
    assert verify("plain secret", "plain secret", allow_clear=True)
    assert not verify("plain secret", "plain secreT", allow_clear=True)
    assert not verify("plain secret", "", allow_clear=True)
    assert verify("$ecret", "$ecret", allow_clear=True)  # "$" alone does not make a hash


def test_clear_text_that_looks_like_des_works_both_ways():
    assert verify("abWL7Sj501Z46", "abWL7Sj501Z46", allow_clear=True)
    assert verify("abWL7Sj501Z46", PASSWORD, allow_clear=True)
    assert not verify("abWL7Sj501Z46", "abWL7Sj501Z46")


@pytest.mark.parametrize("stored", [CRYPT_VECTORS[1].values[0], CRYPT_VECTORS[3].values[0],
                                    CRYPT_VECTORS[6].values[0], YESCRYPT_VECTOR])
def test_a_hash_string_is_never_its_own_password(stored):
    assert not verify(stored, stored, allow_clear=True)


# --------------------------------------------------------------------------- {CRAM}

# RFC 2195 section 2: key "tanstaaftanstaaf", this challenge, CRAM-MD5 digest below.
RFC2195_KEY = "tanstaaftanstaaf"
RFC2195_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
# printf %s '<1896.697170952@postoffice.reston.mci.net>' | openssl dgst -$ALG -hmac tanstaaftanstaaf
RFC2195_RESPONSES = {
    "md5": "b913a602c7eda7a495b4e6e7334d3890",  # also the RFC's own value
    "sha1": "8cb10ed0a8b764ab0e05125dd6eaa295f19b5943",
    "sha224": "6bb3fff1eedc3994d2dee93e183de8756658ff4b09948b92b9879b13",
    "sha256": "f0011bbf7c1618ef90e3f18148e5eda4e15631c9c38ebef062bf7143ff72e944",
    "sha384": "47b2fa97df600103deab5fdbbdd27dbe8d8048d810a491811b6d738bf344efaef2e260bf"
              "b881c782a0a36a3fb9885442",
    "sha512": "f2fde77a96bdf186bec491a4b02c90ff793d1954bdd5a243a735e682482bd879d50782b0"
              "9411ad5beb1bf145b792597e3aa76b53f3e4f79f842d490892b9f6ad",
    "ripemd160": "cffc7b822ea4e76d51c984d4211cf9b900a82930",
}
# openssl passwd -6 -salt cramcramcramcram tanstaaftanstaaf
RFC2195_CRYPT = ("$6$cramcramcramcram$o28NavIdR29XkAQTs/fUn2WloCQp7U8fPSwk6q2pdaLoWHFr1bcmP2"
                 "FymoahJnozR7yXTXfBKmyi3xJiM0qw7/")
CRAM_RECORD = f"{{CRAM}}{RFC2195_KEY},{RFC2195_CRYPT}"


def test_cram_record_login_uses_the_hash():
    assert verify(CRAM_RECORD, RFC2195_KEY)
    assert not verify(CRAM_RECORD, "tanstaaf")
    assert not verify(CRAM_RECORD, RFC2195_CRYPT, allow_clear=True)
    assert cram_secret(CRAM_RECORD) == RFC2195_KEY


@pytest.mark.parametrize("algorithm", sorted(RFC2195_RESPONSES))
def test_verify_cram_rfc2195(algorithm):
    if algorithm not in CRAM_ALGORITHMS:
        pytest.skip(f"hashlib has no {algorithm}")
    response = RFC2195_RESPONSES[algorithm]
    assert verify_cram(CRAM_RECORD, RFC2195_CHALLENGE, response, algorithm)
    assert verify_cram(CRAM_RECORD, RFC2195_CHALLENGE, response, algorithm.upper())
    assert not verify_cram(CRAM_RECORD, RFC2195_CHALLENGE, response.upper(), algorithm)
    assert not verify_cram(CRAM_RECORD, RFC2195_CHALLENGE + b"x", response, algorithm)
    assert not verify_cram(CRAM_RECORD, RFC2195_CHALLENGE, response[:-1], algorithm)


def test_cram_algorithms():
    assert CRAM_ALGORITHMS[:6] == ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
    assert set(CRAM_ALGORITHMS) <= set(RFC2195_RESPONSES)


def test_verify_cram_bad_input():
    response = RFC2195_RESPONSES["md5"]
    assert not verify_cram(CRAM_RECORD, b"", response)
    assert not verify_cram(CRAM_RECORD, RFC2195_CHALLENGE, "")
    assert not verify_cram(CRAM_RECORD, RFC2195_CHALLENGE, "ü" * 32)
    assert not verify_cram(CRAM_RECORD, RFC2195_CHALLENGE, "\udcff" * 32)
    assert not verify_cram(CRAM_RECORD, RFC2195_CHALLENGE, None)
    for stored in GARBAGE:
        assert not verify_cram(stored, RFC2195_CHALLENGE, response)
    with pytest.raises(ValueError):
        verify_cram(CRAM_RECORD, RFC2195_CHALLENGE, response, "md4")


def test_cram_record_without_comma():
    stored = "{CRAM}" + RFC2195_KEY  # IndiMail: the whole rest is both clear and "hash"
    assert verify(stored, RFC2195_KEY) is False
    assert verify(stored, RFC2195_KEY, allow_clear=True)
    assert cram_secret(stored) == RFC2195_KEY


def test_cram_record_clear_text_may_hold_commas():
    stored = make_cram_record("a,b,c", "MD5")
    assert stored.startswith("{CRAM}a,b,c,$1$")
    assert cram_secret(stored) == "a,b,c"
    assert verify(stored, "a,b,c")
    assert not verify(stored, "a")


def test_cram_record_with_empty_clear_text_gives_no_secret():
    stored = "{CRAM}," + RFC2195_CRYPT
    assert cram_secret(stored) is None
    assert verify(stored, RFC2195_KEY)


@pytest.mark.parametrize("method", ["DES", "MD5", "SHA-256", "SHA-512", "BCRYPT"])
def test_make_cram_record(method):
    stored = make_cram_record(PASSWORD, method)
    assert stored.startswith("{CRAM}" + PASSWORD + ",")
    assert verify(stored, PASSWORD)
    assert not verify(stored, _wrong(PASSWORD))
    digest = hmac.new(PASSWORD.encode(), RFC2195_CHALLENGE, "md5").hexdigest()
    assert verify_cram(stored, RFC2195_CHALLENGE, digest)


def test_make_cram_record_refuses_empty_password():
    with pytest.raises(ValueError):
        make_cram_record("")


def test_enable_cram_uses_the_stored_string():
    stored = CRYPT_VECTORS[3].values[0]
    assert cram_secret(stored) is None
    assert cram_secret(stored, enable_cram=True) == stored
    # printf %s '<1896.697170952@postoffice.reston.mci.net>' | openssl dgst -md5 -hmac \
    #   '$6$0123456789abcdef$qyuvBrh3303/...DNOVMZdjVv1'   (the whole stored string)
    response = "7db577b8e60f72c888540881aa903064"
    assert not verify_cram(stored, RFC2195_CHALLENGE, response)
    assert verify_cram(stored, RFC2195_CHALLENGE, response, enable_cram=True)


# --------------------------------------------------------------------------- SCRAM

# From libqmail base/get_scram_secrets.c (IndiMail's own example, password "pass").
# Cross-checked: openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt pass:pass
#   -kdfopt hexsalt:1a9a6413d17ddb345c8aeca4 -kdfopt iter:4096 PBKDF2  -> 86e34654...
# and openssl passwd -1 -salt GsamfuEK pass -> $1$GsamfuEK$eSxzR6dswY.kaNTtPNi5c1
INDIMAIL_KEYS = ("{SCRAM-SHA-256}4096,GppkE9F92zRciuyk,"
                 "n9boN+EV/P7i+Uxn063JLcppQnyOrIktX81FCy8iibk=,"
                 "cVjrqEdR7DuGDAwKMLrn6YOp5Z4w7zOBjrxo+1mGmfE=")
INDIMAIL_SALTED_HEX = "86e346545877b822f8d904ae90595f3f7050d453b33eaf6b78dc95b4a3bfde3b"
INDIMAIL_CRYPT = "$1$GsamfuEK$eSxzR6dswY.kaNTtPNi5c1"
INDIMAIL_RECORD = f"{INDIMAIL_KEYS}:{INDIMAIL_SALTED_HEX}:pass,{INDIMAIL_CRYPT}"
INDIMAIL_RECORD_NO_CLEAR = f"{INDIMAIL_KEYS},{INDIMAIL_CRYPT}"

# RFC 5802 section 5 (SCRAM-SHA-1) and RFC 7677 section 3 (SCRAM-SHA-256): user "user",
# password "pencil", iteration count 4096.  The keys come from, for SHA-1:
#   sp=$(openssl kdf -keylen 20 -kdfopt digest:SHA1 -kdfopt pass:pencil \
#        -kdfopt hexsalt:$(printf %s QSXCR+Q6sek8bf92 | base64 -d | xxd -p) \
#        -kdfopt iter:4096 PBKDF2 | tr -d :)
#   printf 'Client Key' | openssl dgst -sha1 -mac HMAC -macopt hexkey:$sp -binary \
#        | openssl dgst -sha1 -binary | base64                      # StoredKey
#   printf 'Server Key' | openssl dgst -sha1 -mac HMAC -macopt hexkey:$sp -binary | base64
# and likewise with SHA256 (-keylen 32) and SHA512 (-keylen 64).
RFC_EXCHANGES = {
    "SCRAM-SHA-1": {
        "salt": "QSXCR+Q6sek8bf92",
        "stored_key": "6dlGYMOdZcOPutkcNY8U2g7vK9Y=",
        "server_key": "D+CSWLOshSulAsxiupA+qs2/fTE=",
        "auth_message": "n=user,r=fyko+d2lbbFgONRv9qkxdawL,"
                        "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096,"
                        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
        "proof": "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        "verifier": "rmF9pqV8S7suAoZWja4dJRkFsKQ="},
    "SCRAM-SHA-256": {
        "salt": "W22ZaJ0SNY7soEsUEjb6gQ==",
        "stored_key": "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
        "server_key": "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "auth_message": "n=user,r=rOprNGfwEbeRWgbNEkqO,"
                        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                        "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
                        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "proof": "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "verifier": "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="},
}
# openssl passwd -6 -salt pencilpencilpenc pencil
PENCIL_CRYPT = ("$6$pencilpencilpenc$/9PsSToz0Wq9s8HKj0nMUddxpGdWpj406FNqTr9vbDjVa6N9hHa0saH"
                "HUl3PhhiM1lm6LFl0M9jEUbb2n5rB41")
# SCRAM-SHA-512 keys for "pencil" with the RFC 5802 salt, by the openssl commands above.
SHA512_RECORD = ("{SCRAM-SHA-512}4096,QSXCR+Q6sek8bf92,"
                 "Lm7w6zPGAx+UoahlEm1whIN7PS1KGU+9+V5PyudK6c/mWVVtkXSCpVPmUKQLYDKR7v0uSkxr"
                 "BzPm7HuSwZ/ytw==,"
                 "b/Ph5kGCpfdw2MyLh0C8l10iiFENloZLKPiJIHv57J3BRD9++4RvoYjTKhOehyHgJS/nsxnN"
                 "B17UKgNU7nRy6g==," + PENCIL_CRYPT)


def test_indimail_example_record():
    assert verify(INDIMAIL_RECORD, "pass")
    assert not verify(INDIMAIL_RECORD, "pass2")
    assert cram_secret(INDIMAIL_RECORD) == "pass"
    # printf %s '<1896.697170952@postoffice.reston.mci.net>' | openssl dgst -md5 -hmac pass
    assert verify_cram(INDIMAIL_RECORD, RFC2195_CHALLENGE, "224f8af1bf9bcf26f4ef0329e061405c")
    found = scram_secrets(INDIMAIL_RECORD)
    assert found.mechanism == "SCRAM-SHA-256"
    assert found.digest == "sha256"
    assert found.iterations == 4096
    assert found.salt == bytes.fromhex("1a9a6413d17ddb345c8aeca4")
    assert found.stored_key == base64.b64decode("n9boN+EV/P7i+Uxn063JLcppQnyOrIktX81FCy8iibk=")
    assert found.server_key == base64.b64decode("cVjrqEdR7DuGDAwKMLrn6YOp5Z4w7zOBjrxo+1mGmfE=")
    assert found.stored_key.hex() not in repr(found)


def test_indimail_example_record_without_clear_text():
    assert verify(INDIMAIL_RECORD_NO_CLEAR, "pass")
    assert scram_secrets(INDIMAIL_RECORD_NO_CLEAR) == scram_secrets(INDIMAIL_RECORD)
    assert cram_secret(INDIMAIL_RECORD_NO_CLEAR) is None
    assert cram_secret(INDIMAIL_RECORD_NO_CLEAR, enable_cram=True) == INDIMAIL_CRYPT  # vchkpass.c
    # printf %s '<1896...>' | openssl dgst -sha256 -hmac '$1$GsamfuEK$eSxzR6dswY.kaNTtPNi5c1'
    response = "9c61fac313ddecd11acf35dd40ed12d932e058eb0183aef9a486b6f7074bca20"
    assert not verify_cram(INDIMAIL_RECORD_NO_CLEAR, RFC2195_CHALLENGE, response, "sha256")
    assert verify_cram(INDIMAIL_RECORD_NO_CLEAR, RFC2195_CHALLENGE, response, "sha256",
                       enable_cram=True)


def test_make_scram_record_reproduces_indimail_example():
    salt = base64.b64decode("GppkE9F92zRciuyk")
    made = make_scram_record("pass", "SCRAM-SHA-256", 4096, salt=salt, keep_clear=True)
    head, _, crypt_hash = made.rpartition(",")
    assert head == f"{INDIMAIL_KEYS}:{INDIMAIL_SALTED_HEX}:pass"
    assert crypt_hash.startswith("$6$") and verify(made, "pass")
    plain = make_scram_record("pass", "SCRAM-SHA-256", 4096, salt=salt, method="MD5")
    assert plain.rpartition(",")[0] == INDIMAIL_KEYS
    assert plain.rpartition(",")[2].startswith("$1$")


def _server_check(found, exchange):
    """The SCRAM server's checks (RFC 5802 section 3) on the RFC's recorded exchange."""
    auth_message = exchange["auth_message"].encode()
    signature = hmac.digest(found.stored_key, auth_message, found.digest)
    proof = base64.b64decode(exchange["proof"])
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    assert hashlib.new(found.digest, client_key).digest() == found.stored_key
    assert hmac.digest(found.server_key, auth_message, found.digest) == \
        base64.b64decode(exchange["verifier"])


@pytest.mark.parametrize("mechanism", sorted(RFC_EXCHANGES))
def test_scram_rfc_vectors(mechanism):
    exchange = RFC_EXCHANGES[mechanism]
    salt = base64.b64decode(exchange["salt"])
    made = make_scram_record("pencil", mechanism, 4096, salt=salt)
    assert made.startswith(f"{{{mechanism}}}4096,{exchange['salt']},"
                           f"{exchange['stored_key']},{exchange['server_key']},")
    found = scram_secrets(made)
    assert (found.mechanism, found.iterations, found.salt) == (mechanism, 4096, salt)
    _server_check(found, exchange)
    literal = (f"{{{mechanism}}}4096,{exchange['salt']},{exchange['stored_key']},"
               f"{exchange['server_key']},{PENCIL_CRYPT}")
    assert scram_secrets(literal) == found
    assert verify(literal, "pencil") and not verify(literal, "pencil!")


def test_scram_sha512_record_is_parsed():
    found = scram_secrets(SHA512_RECORD)
    assert found.mechanism == "SCRAM-SHA-512" and found.digest == "sha512"
    assert len(found.stored_key) == len(found.server_key) == 64
    assert verify(SHA512_RECORD, "pencil")
    assert cram_secret(SHA512_RECORD) is None


def test_make_scram_record_defaults():
    made = make_scram_record(PASSWORD)
    found = scram_secrets(made)
    assert made.startswith("{SCRAM-SHA-256}4096,")
    assert len(found.salt) == 12
    assert verify(made, PASSWORD) and not verify(made, PASSWORD + "x")
    assert cram_secret(made) is None
    assert cram_secret(make_scram_record(PASSWORD, keep_clear=True)) == PASSWORD
    assert scram_secrets(make_scram_record(PASSWORD, "scram-sha-1")).mechanism == "SCRAM-SHA-1"


def test_make_scram_record_saslprep():
    # SASLprep maps U+00AA to "a" and drops U+00AD before PBKDF2 (RFC 4013 section 3).
    salt = b"0123456789ab"
    assert make_scram_record("p\u00aas\u00ads", salt=salt).rpartition(",")[0] == \
        make_scram_record("pass", salt=salt).rpartition(",")[0]


@pytest.mark.parametrize(("kwargs", "password"), [
    ({"mechanism": "SCRAM-SHA-512"}, PASSWORD),  # IndiMail writes only SHA-1 and SHA-256
    ({"mechanism": "CRAM-MD5"}, PASSWORD),
    ({"iterations": 0}, PASSWORD),
    ({"iterations": True}, PASSWORD),
    ({"salt": b""}, PASSWORD),
    ({"keep_clear": True}, "pass,word"),  # get_scram_secrets() would misread it
    ({}, ""),
    ({}, "bell\u0007"),  # SASLprep prohibits control characters
])
def test_make_scram_record_rejects(kwargs, password):
    with pytest.raises(ValueError) as info:
        make_scram_record(password, **kwargs)
    assert not password or password not in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    # RFC 4013 section 3 examples
    ("I\u00adX", "IX"), ("user", "user"), ("USER", "USER"), ("\u00aa", "a"),
    ("\u2168", "IX"), ("a\u00a0b", "a b"),
])
def test_saslprep(text, expected):
    assert saslprep(text) == expected


@pytest.mark.parametrize("text", ["\u0007", "\u0627\u0031"])  # RFC 4013 section 3 errors
def test_saslprep_rejects(text):
    with pytest.raises(ValueError):
        saslprep(text)


def _bad_scram_records():
    keys = INDIMAIL_KEYS.split(",")
    good_salt, good_stored, good_server = keys[1], keys[2], keys[3]
    tail = f"{good_server},{INDIMAIL_CRYPT}"

    def record(iterations="4096", salt=good_salt, stored=good_stored, rest=tail,
               mech="{SCRAM-SHA-256}"):
        return f"{mech}{iterations},{salt},{stored},{rest}"

    return [
        record(salt="Gppk!E9F92zRciuyk"), record(salt="GppkE9F92zRciuy"), record(salt=""),
        record(salt="GppkE9F92zRciuyké"), record(stored="n9boN+EV/P7i+Uxn063JLcppQnyOrIktX81"),
        record(stored=good_stored.rstrip("=")), record(stored="6dlGYMOdZcOPutkcNY8U2g7vK9Y="),
        record(rest=f"*{good_server[1:]},{INDIMAIL_CRYPT}"),
        record(rest=f"{good_server}:{INDIMAIL_SALTED_HEX},{INDIMAIL_CRYPT}"),
        record(rest=f"{good_server}:{INDIMAIL_SALTED_HEX}:,{INDIMAIL_CRYPT}"),
        record(rest=f"{good_server}::pass,{INDIMAIL_CRYPT}"),
        record(rest=f"{good_server}:{INDIMAIL_SALTED_HEX[:-2]}:pass,{INDIMAIL_CRYPT}"),
        record(rest=f"{good_server}:{'zz' * 32}:pass,{INDIMAIL_CRYPT}"),
        record(rest=good_server), record(rest=f"{good_server},"),
        record(iterations="abc"), record(iterations="0"), record(iterations="-1"),
        record(iterations=""), record(iterations=" 4096"), record(iterations="99999999999"),
        record(mech="{SCRAM-SHA-384}"),
        record(mech="{SCRAM-SHA-256"), record(mech="{SCRAM-SHA-1}"),
        f"{{SCRAM-SHA-256}}4096,{good_salt},{INDIMAIL_CRYPT}",
        "{SCRAM-SHA-256}4096,,,,,", "{SCRAM-SHA-256},,,,",
    ]


@pytest.mark.parametrize("stored", _bad_scram_records())
def test_malformed_scram_records(stored):
    assert scram_secrets(stored) is None
    assert cram_secret(stored) is None
    assert cram_secret(stored, enable_cram=True) is None
    for allow_clear in (False, True):
        assert verify(stored, "pass", allow_clear=allow_clear) is False
        assert verify(stored, stored, allow_clear=allow_clear) is False


def test_scram_prefix_is_case_sensitive():
    stored = INDIMAIL_RECORD_NO_CLEAR.replace("{SCRAM-SHA-256}", "{scram-sha-256}")
    assert scram_secrets(stored) is None  # as in IndiMail, just an unrecognised plain value
    assert not verify(stored, "pass")


def test_scram_record_with_bad_crypt_part():
    stored = f"{INDIMAIL_KEYS},notahash"
    assert scram_secrets(stored) is not None
    assert not verify(stored, "pass")


def test_every_truncation_of_a_scram_record_fails():
    for end in range(len(INDIMAIL_RECORD)):
        assert verify(INDIMAIL_RECORD[:end], "pass") is False


# --------------------------------------------------------------------------- fresh tool runs

MKPASSWD_METHODS = ["descrypt", "md5crypt", "sha256crypt", "sha512crypt", "bcrypt", "bcrypt-a",
                    "yescrypt"]


@pytest.mark.parametrize("method", MKPASSWD_METHODS)
def test_fresh_mkpasswd(method):
    if method == "yescrypt":
        _need_yescrypt()
    password = _random_password()
    stored = _run("mkpasswd", "-m", method, "--stdin", stdin=password.encode())
    if method == "descrypt":
        password = password[:8]  # DES reads 8 characters; the rest is noise
    assert verify(stored, password)
    assert not verify(stored, _wrong(password))


@pytest.mark.parametrize("flag", ["-1", "-5", "-6"])
def test_fresh_openssl_passwd(flag):
    password = _random_password()
    stored = _run("openssl", "passwd", flag, "-stdin", stdin=password.encode() + b"\n")
    assert verify(stored, password)
    assert not verify(stored, password + "x")


def test_fresh_htpasswd_bcrypt():
    password = _random_password()
    line = _run("htpasswd", "-nbB", "-C", "5", "user", password)
    stored = line.partition(":")[2]
    assert stored.startswith("$2y$05$")
    assert verify(stored, password)
    assert not verify(stored, password + "x")


@pytest.mark.parametrize(("method", "argv"), [
    ("DES", ["mkpasswd", "-m", "descrypt", "-S"]), ("MD5", ["openssl", "passwd", "-1", "-salt"]),
    ("SHA-256", ["openssl", "passwd", "-5", "-salt"]),
    ("SHA-512", ["openssl", "passwd", "-6", "-salt"]),
])
def test_fresh_tools_agree_with_make_hash(method, argv):
    password = _random_password()
    stored = make_hash(password, method)
    salt = stored[:2] if method == "DES" else stored.split("$")[2]
    assert _run(*argv, salt, password) == stored


@pytest.mark.parametrize("method", ["DES", "MD5", "SHA-256", "SHA-512", "BCRYPT", "YESCRYPT"])
def test_fresh_htpasswd_verifies_make_hash(method, tmp_path):
    """htpasswd -v checks bcrypt itself and everything else with the system crypt(3)."""
    if method == "YESCRYPT":
        _need_yescrypt()
    password = _random_password()
    path = tmp_path / "htpasswd"
    path.write_text(f"user:{make_hash(password, method)}\n")
    _run("htpasswd", "-vb", str(path), "user", password)
    with pytest.raises(subprocess.CalledProcessError):
        _run("htpasswd", "-vb", str(path), "user", _wrong(password))


def _openssl_scram_keys(digest: str, password: str, salt: bytes, iterations: int):
    size = hashlib.new(digest).digest_size
    salted = _run("openssl", "kdf", "-keylen", str(size), "-kdfopt", f"digest:{digest}",
                  "-kdfopt", f"pass:{password}", "-kdfopt", f"hexsalt:{salt.hex()}",
                  "-kdfopt", f"iter:{iterations}", "PBKDF2").replace(":", "").lower()

    def mac(message: bytes) -> bytes:
        out = _run("openssl", "dgst", f"-{digest}", "-mac", "HMAC", "-macopt",
                   f"hexkey:{salted}", "-r", stdin=message)
        return bytes.fromhex(out.split()[0])

    stored_key = bytes.fromhex(_run("openssl", "dgst", f"-{digest}", "-r",
                                    stdin=mac(b"Client Key")).split()[0])
    return salted, stored_key, mac(b"Server Key")


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_fresh_openssl_scram_keys(mechanism):
    password = secrets.token_urlsafe(12)  # ASCII: SASLprep leaves it alone
    salt = secrets.token_bytes(12)
    iterations = 1000 + secrets.randbelow(4000)
    digest = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}[mechanism]
    salted, stored_key, server_key = _openssl_scram_keys(digest, password, salt, iterations)
    made = make_scram_record(password, mechanism, iterations, salt=salt, keep_clear=True)
    found = scram_secrets(made)
    assert (found.iterations, found.salt) == (iterations, salt)
    assert found.stored_key == stored_key
    assert found.server_key == server_key
    assert f":{salted}:{password}," in made


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha224", "sha256", "sha384", "sha512",
                                       "ripemd160"])
def test_fresh_openssl_hmac(algorithm):
    if algorithm not in CRAM_ALGORITHMS:
        pytest.skip(f"hashlib has no {algorithm}")
    password = _random_password()
    challenge = f"<{secrets.randbelow(10**9)}.{secrets.randbelow(10**9)}@example.com>".encode()
    response = _run("openssl", "dgst", f"-{algorithm}", "-hmac", password, "-r",
                    stdin=challenge).split()[0]
    stored = make_cram_record(password, "MD5")
    assert verify_cram(stored, challenge, response, algorithm)
    assert not verify_cram(stored, challenge + b".", response, algorithm)
