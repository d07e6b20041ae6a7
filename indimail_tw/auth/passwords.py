"""The password forms IndiMail stores in ``pw_passwd``: verify them and create them.

Forms (spec §3.1, libqmail ``in_crypt.c``, ``get_scram_secrets.c``, ``pw_comp.c``):

* crypt(3) strings: DES, ``$1$`` MD5, ``$5$`` SHA-256, ``$6$`` SHA-512, bcrypt
  ``$2a$``/``$2b$``/``$2y$`` (all through libpass) and ``$y$`` yescrypt (through
  libxcrypt, which libpass lacks).  Like IndiMail, which hands any ``$`` string to
  crypt(3), other ``$id$`` schemes libxcrypt knows are verified through it too.
* ``{CRAM}<clear>,<crypt>``: clear text for CRAM-*, the crypt string for LOGIN/PLAIN.
* ``{SCRAM-SHA-1|256|512}iter,salt,stored_key,server_key[:hex_salted_pw:clear],<crypt>``.
* Bare clear text, accepted for LOGIN/PLAIN only with ``allow_clear``
  (IndiMail's TRIVIAL_PASSWORDS).

Passwords are ``str``; they are encoded as UTF-8 with ``surrogateescape`` so a
protocol layer that decoded raw bytes the same way round-trips them exactly.
Nothing here logs, and no exception message carries a password.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import functools
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field

from passlib.hash import bcrypt as _bcrypt
from passlib.hash import des_crypt, md5_crypt, sha256_crypt, sha512_crypt

from indimail_tw.errors import ConfigError

__all__ = [
    "CRAM_ALGORITHMS", "METHODS", "ScramSecrets", "cram_secret", "make_cram_record",
    "make_hash", "make_scram_record", "parse_hash_method", "saslprep", "scram_secrets",
    "verify", "verify_cram", "yescrypt_available",
]

METHODS = ("DES", "MD5", "SHA-256", "SHA-512", "YESCRYPT")
"""IndiMail's ``-h`` names; ``PASSWORD_HASH`` numbers them 0..4 in this order."""

_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SALT_RE = re.compile(r"[./0-9A-Za-z]+")
_DES_RE = re.compile(r"[./0-9A-Za-z]{13}")
# (default length, longest accepted) of a crypt salt; IndiMail's makesalt.c lengths.
_SALT_LENGTHS = {"DES": (2, 2), "MD5": (8, 8), "SHA-256": (16, 16), "SHA-512": (16, 16),
                 "BCRYPT": (22, 22), "YESCRYPT": (22, 64)}
_SHA_CRYPT_ROUNDS = 5000  # glibc's default, written implicitly ("$6$salt$..."), as IndiMail does
_BCRYPT_MAX_BYTES = 72    # crypt(3) ignores the rest, so verification truncates as well
_BCRYPT_COST = 12

_PASSLIB_SCHEMES = (("$1$", md5_crypt), ("$5$", sha256_crypt), ("$6$", sha512_crypt),
                    ("$2a$", _bcrypt), ("$2b$", _bcrypt), ("$2y$", _bcrypt))

# verified through libxcrypt when it is there (see _verify_native); libpass otherwise
_NATIVE_PREFIXES = ("$1$", "$5$", "$6$")
_XCRYPT_MAX_SECRET = 512  # libxcrypt's CRYPT_MAX_PASSPHRASE_SIZE; longer ones go to libpass

_SCRAM_DIGESTS = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
_SCRAM_CREATABLE = ("SCRAM-SHA-1", "SCRAM-SHA-256")  # what IndiMail writes (gsasl_mkpasswd.c)
_SCRAM_SALT_BYTES = 12                                 # gsasl_mkpasswd.c DEFAULT_SALT_SIZE
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


def _digest_available(name: str) -> bool:
    try:
        hashlib.new(name)
    except ValueError:
        return False
    return True


CRAM_ALGORITHMS = tuple(
    name for name in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")
    if _digest_available(name))
"""HMAC digests usable by :func:`verify_cram` (ripemd160 only if OpenSSL offers it)."""


# --------------------------------------------------------------------------- libxcrypt

_CRYPT_DATA_SIZE = 32768   # sizeof(struct crypt_data) in libxcrypt
_GENSALT_OUTPUT_SIZE = 192  # CRYPT_GENSALT_OUTPUT_SIZE


class _XCrypt:
    """The two reentrant libxcrypt calls we need (``crypt_rn``, ``crypt_gensalt_rn``)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._crypt_rn = lib.crypt_rn
        self._crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                                   ctypes.c_int]
        self._crypt_rn.restype = ctypes.c_char_p
        self._gensalt_rn = lib.crypt_gensalt_rn
        self._gensalt_rn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                     ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._gensalt_rn.restype = ctypes.c_char_p
        self.yescrypt = self._probe_yescrypt()

    def crypt(self, secret: bytes, setting: bytes) -> bytes | None:
        """crypt(3) of ``secret`` under ``setting``; None when libxcrypt rejects it."""
        data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
        out = self._crypt_rn(secret, setting, data, _CRYPT_DATA_SIZE)
        if not out or out.startswith(b"*"):
            return None
        return out

    def gensalt(self, prefix: bytes) -> bytes | None:
        """A fresh setting for ``prefix`` at libxcrypt's default cost, random salt."""
        buf = ctypes.create_string_buffer(_GENSALT_OUTPUT_SIZE)
        out = self._gensalt_rn(prefix, 0, None, 0, buf, _GENSALT_OUTPUT_SIZE)
        return out or None

    def _probe_yescrypt(self) -> bool:
        setting = self.gensalt(b"$y$")
        return bool(setting) and self.crypt(b"probe", setting) is not None


@functools.cache
def _xcrypt() -> _XCrypt | None:
    """libxcrypt if the system has it (Debian's libcrypt.so.1 is libxcrypt)."""
    names = [ctypes.util.find_library("crypt"), "libcrypt.so.1"]
    for name in filter(None, names):
        try:
            return _XCrypt(ctypes.CDLL(name))
        except (OSError, AttributeError):  # not loadable, or a libcrypt without the _rn API
            continue
    return None


def yescrypt_available() -> bool:
    """True when ``$y$`` hashes can be verified and created (libxcrypt with yescrypt)."""
    lib = _xcrypt()
    return lib is not None and lib.yescrypt


# --------------------------------------------------------------------------- crypt(3)

def parse_hash_method(text: str) -> str:
    """Normalise a ``-h`` name, a ``PASSWORD_HASH`` number ("0".."4") or "BCRYPT"."""
    value = text.strip()
    if value in ("0", "1", "2", "3", "4"):
        return METHODS[int(value)]
    upper = value.upper()
    if upper in METHODS or upper == "BCRYPT":
        return upper
    raise ValueError(f"unknown password hash method {text!r}; "
                     f"use one of {', '.join(METHODS)}, BCRYPT or 0-4")


def _encode(password: str) -> bytes:
    return password.encode("utf-8", "surrogateescape")


def _secret_for_new_hash(password: str) -> bytes:
    """Encode a password we are about to store, refusing what crypt(3) cannot hold."""
    if not password:
        raise ValueError("refusing an empty password: anyone could log in with it")
    if "\0" in password:
        raise ValueError("a password cannot contain a NUL character")
    return _encode(password)


def _checked_salt(method: str, salt: str | None) -> str:
    default, longest = _SALT_LENGTHS[method]
    if salt is None:
        if method == "BCRYPT":  # the 22nd character carries only 2 bits
            return "".join(secrets.choice(_SALT_CHARS) for _ in range(21)) + \
                secrets.choice(".Oeu")
        return "".join(secrets.choice(_SALT_CHARS) for _ in range(default))
    shortest = default if method in ("DES", "BCRYPT") else 1
    if not (shortest <= len(salt) <= longest and _SALT_RE.fullmatch(salt)):
        size = str(longest) if shortest == longest else f"{shortest}-{longest}"
        raise ValueError(f"a {method} salt is {size} characters from [./0-9A-Za-z]")
    if method == "BCRYPT" and salt[-1] not in ".Oeu":
        raise ValueError("the last character of a bcrypt salt must be one of . O e u")
    return salt


def make_hash(password: str, method: str = "SHA-512", salt: str | None = None) -> str:
    """Hash ``password`` as the crypt(3) string IndiMail would store for ``method``."""
    method = parse_hash_method(method)
    secret = _secret_for_new_hash(password)
    if method == "YESCRYPT":  # without a salt, libxcrypt's gensalt picks one
        return _make_yescrypt(secret, None if salt is None else _checked_salt(method, salt))
    salt = _checked_salt(method, salt)
    if method == "DES":
        return des_crypt.using(salt=salt).hash(secret)
    if method == "MD5":
        return md5_crypt.using(salt=salt).hash(secret)
    if method in ("SHA-256", "SHA-512"):
        handler = sha256_crypt if method == "SHA-256" else sha512_crypt
        return handler.using(salt=salt, rounds=_SHA_CRYPT_ROUNDS).hash(secret)
    if len(secret) > _BCRYPT_MAX_BYTES:  # BCRYPT is all that is left
        raise ValueError("bcrypt uses only the first 72 bytes of a password; "
                         "choose a shorter password or another method")
    return _bcrypt.using(salt=salt, ident="2b", rounds=_BCRYPT_COST).hash(secret)


def _make_yescrypt(secret: bytes, salt: str | None) -> str:
    lib = _xcrypt()
    if lib is None or not lib.yescrypt:
        raise ConfigError("YESCRYPT password hashes need libxcrypt with yescrypt support "
                          "(libcrypt.so.1); choose another hash method such as SHA-512")
    setting = lib.gensalt(b"$y$")
    if setting is None:
        raise ConfigError("libxcrypt could not generate a yescrypt setting")
    if salt is not None:  # keep "$y$j9T$" (the default cost), replace the salt
        setting = setting[:setting.rindex(b"$") + 1] + salt.encode("ascii")
    hashed = lib.crypt(secret, setting)
    if hashed is None:
        raise ValueError("libxcrypt rejected this yescrypt salt")
    return hashed.decode("ascii")


def _verify_crypt(hashed: str, secret: bytes) -> bool:
    """crypt(3)-compare ``secret`` with ``hashed``; False for anything malformed."""
    if not hashed or b"\0" in secret:  # crypt(3) would stop at the NUL
        return False
    try:
        if hashed.startswith("$"):
            if hashed.startswith(_NATIVE_PREFIXES) and len(secret) <= _XCRYPT_MAX_SECRET:
                native = _verify_native(hashed, secret)
                if native is not None:
                    return native
            for prefix, handler in _PASSLIB_SCHEMES:
                if hashed.startswith(prefix):
                    if handler is _bcrypt:
                        secret = secret[:_BCRYPT_MAX_BYTES]
                    return bool(handler.verify(secret, hashed))
            return _verify_xcrypt(hashed, secret)  # $y$ and any other $id$ libxcrypt knows
        if _DES_RE.fullmatch(hashed):
            return bool(des_crypt.verify(secret, hashed))
    except (ValueError, TypeError, Warning):  # libpass: malformed hash or unusable secret;
        return False                           # Warning when its warnings are made errors
    return False


def _verify_native(hashed: str, secret: bytes) -> bool | None:
    """MD5/SHA-crypt through libxcrypt; None when it is missing or rejects the setting.

    Same digests as libpass (and as IndiMail's crypt(3) with strcmp), but in C and
    without the interpreter lock: libpass 1.9 has only its pure-Python backend,
    ~15 ms of held lock per SHA-512 login, which stalls every other connection.
    """
    lib = _xcrypt()
    if lib is None:
        return None
    setting = hashed.encode("ascii")  # ValueError for non-ASCII, caught by the caller
    out = lib.crypt(secret, setting)
    if out is None:
        return None
    return hmac.compare_digest(out, setting)


def _verify_xcrypt(hashed: str, secret: bytes) -> bool:
    lib = _xcrypt()
    if lib is None:
        return False
    setting = hashed.encode("ascii")  # ValueError for non-ASCII, caught by the caller
    out = lib.crypt(secret, setting)
    return out is not None and hmac.compare_digest(out, setting)


def _looks_hashed(value: str) -> bool:
    """A "$id$..." string is never taken as clear text, so a leaked hash is no password."""
    return value.startswith("$") and "$" in value[1:]


def _verify_field(hashed: str, secret: bytes, allow_clear: bool) -> bool:
    """pw_comp.c for LOGIN/PLAIN: crypt compare, then clear text if allowed.

    DES strings cannot be told from 13-character clear passwords, so with
    ``allow_clear`` both readings are tried, as IndiMail does.
    """
    if _verify_crypt(hashed, secret):
        return True
    if allow_clear and not _looks_hashed(hashed):
        try:
            return hmac.compare_digest(_encode(hashed), secret)
        except UnicodeError:
            return False
    return False


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class ScramSecrets:
    """What a SCRAM server needs from a ``{SCRAM-...}`` record (RFC 5802)."""

    mechanism: str  # "SCRAM-SHA-1", "SCRAM-SHA-256" or "SCRAM-SHA-512"
    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        """The hashlib name of the mechanism's hash function."""
        return _SCRAM_DIGESTS[self.mechanism]


@dataclass(frozen=True)
class _ScramRecord:
    secrets: ScramSecrets
    cleartext: str | None
    crypt_hash: str


def _b64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _parse_scram(stored: str) -> _ScramRecord | None:
    """Parse a ``{SCRAM-...}`` record strictly; None if it is not one or is malformed."""
    if not stored.startswith("{SCRAM-"):
        return None
    mechanism, brace, body = stored[1:].partition("}")
    digest = _SCRAM_DIGESTS.get(mechanism)
    head, comma, crypt_hash = body.rpartition(",")  # crypt strings never hold a comma
    if not (brace and digest and comma and crypt_hash):
        return None
    fields = head.split(",", 3)
    if len(fields) != 4:
        return None
    iter_text, salt_text, stored_text, server_field = fields
    server_text, *extra = server_field.split(":", 2)
    cleartext = None
    size = hashlib.new(digest).digest_size
    if extra:  # ":hex_salted_pw:cleartext"; get_scram_secrets() demands both
        if len(extra) != 2 or not extra[1] or not _HEX_RE.fullmatch(extra[0]) \
                or len(extra[0]) != 2 * size:
            return None
        cleartext = extra[1]
    if not _DIGITS_RE.fullmatch(iter_text) or int(iter_text) < 1:
        return None
    try:
        salt, stored_key, server_key = _b64(salt_text), _b64(stored_text), _b64(server_text)
    except ValueError:  # binascii.Error and non-ASCII text
        return None
    if not salt or len(stored_key) != size or len(server_key) != size:
        return None
    return _ScramRecord(ScramSecrets(mechanism, int(iter_text), salt, stored_key, server_key),
                        cleartext, crypt_hash)


def scram_secrets(stored: str) -> ScramSecrets | None:
    """The SCRAM parameters of a ``{SCRAM-...}`` record, or None for any other value."""
    record = _parse_scram(stored)
    return record.secrets if record else None


def _split_cram(stored: str) -> tuple[str, str]:
    """(clear, crypt) of a ``{CRAM}`` record; without a comma both are the whole rest.

    IndiMail splits at the last comma (so clear text may contain commas) and uses
    the whole rest for both parts when there is none.
    """
    clear, comma, hashed = stored[len("{CRAM}"):].rpartition(",")
    return (clear, hashed) if comma else (hashed, hashed)


def verify(stored: str, password: str, *, allow_clear: bool = False) -> bool:
    """LOGIN/PLAIN check of ``password`` against a ``pw_passwd`` value.

    ``allow_clear`` is IndiMail's TRIVIAL_PASSWORDS: a stored value that does not
    verify as a hash is compared as clear text.  Never raises for bad stored data.
    """
    try:
        secret = _encode(password)
    except (UnicodeError, AttributeError):
        return False
    if not stored or not isinstance(stored, str):
        return False
    if stored.startswith("{CRAM}"):
        return _verify_field(_split_cram(stored)[1], secret, allow_clear)
    if stored.startswith("{SCRAM-"):
        record = _parse_scram(stored)
        return record is not None and _verify_field(record.crypt_hash, secret, allow_clear)
    return _verify_field(stored, secret, allow_clear)


def cram_secret(stored: str, *, enable_cram: bool = False) -> str | None:
    """The HMAC key for CRAM-* logins, or None when the record offers none.

    ``{CRAM}`` and SCRAM records with clear text give the clear text.  With
    ``enable_cram`` (IndiMail's ENABLE_CRAM) a plain record gives the whole stored
    string and a SCRAM record without clear text its crypt string (vchkpass.c).
    """
    if not stored or not isinstance(stored, str):
        return None
    if stored.startswith("{CRAM}"):
        return _split_cram(stored)[0] or None
    if stored.startswith("{SCRAM-"):
        record = _parse_scram(stored)
        if record is None:
            return None
        if record.cleartext:
            return record.cleartext
        return record.crypt_hash if enable_cram else None
    return stored if enable_cram else None


def verify_cram(stored: str, challenge: bytes, response_hex: str, algorithm: str = "md5",
                *, enable_cram: bool = False) -> bool:
    """CRAM-<algorithm>: does ``response_hex`` equal hex HMAC(secret, challenge)?

    The response must be lower-case hex as pw_comp.c compares it.  Raises
    ValueError only for an algorithm not in :data:`CRAM_ALGORITHMS`.
    """
    name = algorithm.lower()
    if name not in CRAM_ALGORITHMS:
        raise ValueError(f"unsupported CRAM algorithm {algorithm!r}")
    secret = cram_secret(stored, enable_cram=enable_cram)
    if secret is None or not challenge:
        return False
    try:
        key = _encode(secret)
        response = response_hex.encode("utf-8", "surrogateescape")
    except (UnicodeError, AttributeError):
        return False
    expected = hmac.new(key, bytes(challenge), name).hexdigest().encode("ascii")
    return hmac.compare_digest(expected, response)


def make_cram_record(password: str, method: str = "SHA-512") -> str:
    """``{CRAM}clear,hash``: what ``vadduser -C`` stores for CRAM plus LOGIN/PLAIN."""
    return f"{{CRAM}}{password},{make_hash(password, method)}"


def saslprep(text: str, *, allow_unassigned: bool = True) -> str:
    """RFC 4013 SASLprep; unassigned code points pass, as gsasl allows for passwords."""
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch
                     for ch in text if not stringprep.in_table_b1(ch))
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9)
    for ch in prepared:
        if any(table(ch) for table in prohibited) or (
                not allow_unassigned and stringprep.in_table_a1(ch)):
            raise ValueError("the string contains a character SASLprep prohibits")
    right_to_left = any(stringprep.in_table_d1(ch) for ch in prepared)
    if right_to_left and (any(stringprep.in_table_d2(ch) for ch in prepared) or not (
            stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1]))):
        raise ValueError("the string breaks the SASLprep bidirectional rules")
    return prepared


def make_scram_record(password: str, mechanism: str = "SCRAM-SHA-256", iterations: int = 4096,
                      salt: bytes | None = None, keep_clear: bool = False,
                      method: str = "SHA-512") -> str:
    """The ``{SCRAM-...}`` record ``vadduser -m`` writes (gsasl_mkpasswd.c).

    SaltedPassword = PBKDF2(SASLprep(password), salt, iterations); StoredKey =
    H(HMAC(SaltedPassword, "Client Key")); ServerKey = HMAC(SaltedPassword,
    "Server Key").  ``keep_clear`` adds ``:hex_salted_pw:cleartext`` so CRAM works.
    """
    mechanism = mechanism.upper()
    if mechanism not in _SCRAM_CREATABLE:
        raise ValueError(f"cannot create {mechanism!r} records; "
                         f"use one of {', '.join(_SCRAM_CREATABLE)}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError("SCRAM iterations must be a positive integer")
    if salt is None:
        salt = secrets.token_bytes(_SCRAM_SALT_BYTES)
    if not salt:
        raise ValueError("a SCRAM salt cannot be empty")
    if keep_clear and "," in password:
        raise ValueError("IndiMail cannot read a SCRAM record whose clear text holds a comma")
    crypt_hash = make_hash(password, method)  # also refuses empty and NUL passwords
    digest = _SCRAM_DIGESTS[mechanism]
    salted = hashlib.pbkdf2_hmac(digest, saslprep(password).encode("utf-8"), salt, iterations)
    stored_key = hashlib.new(digest, hmac.digest(salted, b"Client Key", digest)).digest()
    server_key = hmac.digest(salted, b"Server Key", digest)
    b64 = [base64.b64encode(value).decode("ascii") for value in (salt, stored_key, server_key)]
    extra = f":{salted.hex()}:{password}" if keep_clear else ""
    return f"{{{mechanism}}}{iterations},{b64[0]},{b64[1]},{b64[2]}{extra},{crypt_hash}"
