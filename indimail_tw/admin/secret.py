"""What to store as a password: the admin tools' password options turned into records.

A :class:`Password` says where the password comes from (clear text to hash, a
value to store verbatim with ``-e``, or a random one with ``-r``) and how to
store it (``-h`` hash method, ``-m`` CRAM/SCRAM, ``-C`` keep clear text, ``-S``
salt, ``-I`` SCRAM iterations).  :meth:`Password.record` gives the
``pw_passwd`` value and the ``scram`` column value.

The hash method, when ``-h`` is not given: the domain's ``hash_method`` file,
then ``PASSWORD_HASH``, then ``control/hash_method``, then SHA-512.

Nothing here prints or logs a password; error messages never contain one.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string
from dataclasses import dataclass, field

from indimail_tw.admin.validate import bad
from indimail_tw.config import parsers
from indimail_tw.errors import AdminError, ConfigError

DEFAULT_METHOD = "SHA-512"
MECHANISMS = ("CRAM", "SCRAM-SHA-1", "SCRAM-SHA-256")
_RANDOM_CHARS = string.ascii_letters + string.digits
MAX_RANDOM = 128


def parse_method(text: str, what: str = "-h") -> str:
    """``DES``, ``MD5``, ``SHA-256``/``SHA256``, ``SHA-512``/``SHA512``, ``YESCRYPT`` or 0..4."""
    try:
        return parsers.parse_hash_method(text)
    except ValueError:
        raise bad(f"option {what}: wrong hash method {text!r}; supported: DES MD5 SHA-256 "
                  "SHA-512 YESCRYPT (or 0-4)") from None


def parse_mechanism(text: str) -> str:
    upper = text.strip().upper()
    upper = {"SCRAM-SHA1": "SCRAM-SHA-1", "SCRAM-SHA256": "SCRAM-SHA-256"}.get(upper, upper)
    if upper not in MECHANISMS:
        raise bad(f"option -m: wrong method {text!r}; supported: {' '.join(MECHANISMS)}")
    return upper


@dataclass
class Password:
    """A password to store and how to store it."""

    clear: str | None = field(default=None, repr=False)
    verbatim: str | None = field(default=None, repr=False)
    generated: bool = False
    method: str | None = None
    mechanism: str | None = None
    keep_clear: bool = False
    salt: str | None = None
    iterations: int = 4096

    @classmethod
    def random(cls, length: int = 8, **options: object) -> Password:
        if not 1 <= length <= MAX_RANDOM:
            raise bad(f"option -r: length must be between 1 and {MAX_RANDOM}")
        text = "".join(secrets.choice(_RANDOM_CHARS) for _ in range(length))
        return cls(clear=text, generated=True, **options)  # type: ignore[arg-type]

    @property
    def given(self) -> bool:
        return self.clear is not None or self.verbatim is not None

    def record(self, default_method: str = DEFAULT_METHOD) -> tuple[str, str | None]:
        """``(pw_passwd, scram_column)`` for this password, stored as IndiMail does.

        ``pw_passwd`` holds the crypt hash; a ``{CRAM}clear`` or
        ``{SCRAM-...}iter,salt,keys`` record goes in the ``scram`` column, and
        authentication uses ``scram + "," + pw_passwd`` (``User.secret``,
        IndiMail's sql_getpw.c).  A ``-e`` value in that combined form is split
        the same way; any other ``-e`` value goes to ``pw_passwd`` as it is.
        """
        if self.verbatim is not None:
            value = self.verbatim
            if not value or any(c in value for c in "\n\r\0"):
                raise bad("option -e: the stored password cannot be empty or hold a "
                          "line break or NUL")
            if value.startswith(("{SCRAM-", "{CRAM}")) and "," in value:
                return split_record(value)
            return value, None
        if self.clear is None:
            raise AdminError("no password given", 100)
        from indimail_tw.auth import passwords  # passlib: only tools that hash pay for it

        method = self.method or default_method
        mechanism = self.mechanism or ("CRAM" if self.keep_clear else None)
        try:
            if mechanism == "CRAM":
                return split_record(passwords.make_cram_record(self.clear, method))
            if mechanism is not None:
                return split_record(passwords.make_scram_record(
                    self.clear, mechanism, self.iterations, self._scram_salt(),
                    self.keep_clear, method))
            return passwords.make_hash(self.clear, method, self.salt), None
        except ConfigError as e:
            raise AdminError(str(e), 1) from None
        except ValueError as e:  # the passwords module never puts the password in these
            raise bad(str(e)) from None

    def _scram_salt(self) -> bytes | None:
        if self.salt is None:
            return None
        if "," in self.salt:
            raise bad("option -S: salt cannot have a comma character")
        try:
            return base64.b64decode(self.salt.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeError):
            raise bad("option -S: the SCRAM salt must be base64") from None


def split_record(record: str) -> tuple[str, str]:
    """``{...}data,crypt`` into ``(crypt, {...}data)``: crypt strings hold no comma."""
    head, _, crypt_hash = record.rpartition(",")
    return crypt_hash, head


def method_for(site, domain: str, explicit: str | None = None) -> str:
    """Hash method: ``-h`` > domain ``hash_method`` > PASSWORD_HASH > control > SHA-512."""
    if explicit:
        return explicit
    text = site.domain_file(domain, "hash_method")
    source = f"{site.domain_dir(domain)}/hash_method"
    if text is None:
        text = site.environ.get("PASSWORD_HASH") or None
        source = "PASSWORD_HASH"
    if text is None:
        text = site.control.value("hash_method")
        source = site.control.file("hash_method")
    if text is None:
        return DEFAULT_METHOD
    try:
        return parsers.parse_hash_method(text)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
