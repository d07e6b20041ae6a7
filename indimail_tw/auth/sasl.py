"""SASL mechanisms as pure state machines, shared by SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE.

A :class:`Mechanism` takes decoded client responses and answers with either a
:class:`Challenge` (send it, wait for the next response) or :class:`Done`
holding the credentials object for the portal
(:class:`~indimail_tw.auth.credentials.LoginCredentials` for PLAIN and LOGIN,
:class:`~indimail_tw.auth.credentials.ChallengeCredentials` for CRAM-MD5).  No
mechanism checks a password: that is the checker's job, where the comparison
is constant-time (``hmac.compare_digest``).

:class:`SASLExchange` adds the transport encoding every one of our protocols
uses: base64 lines, ``*`` to cancel, ``=`` for an empty initial response
(RFC 4954, 5034, 9051).  Errors say what went wrong so each protocol can pick
its reply (SMTP: bad base64 ``501 5.5.2``, cancel ``501 5.0.0``, malformed
``501 5.5.4``, refused authorization identity ``535 5.7.8``).

Limits: an encoded line is at most :data:`MAX_LINE` bytes (RFC 4954's 12288),
a user name or password at most :data:`MAX_FIELD` bytes (IndiMail's
checkpassword protocol carries at most 512 bytes in all).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from indimail_tw.auth.credentials import AUTH_METHODS, ChallengeCredentials, LoginCredentials

MAX_LINE = 12288
MAX_FIELD = 512


class SASLError(Exception):
    """The exchange is over without credentials."""


class SASLCancelled(SASLError):
    """The client sent ``*``."""


class SASLBadEncoding(SASLError):
    """A response that is not valid base64 (or an over-long line)."""


class SASLMalformed(SASLError):
    """A response that decodes but makes no sense for the mechanism."""


class SASLAuthzRefused(SASLError):
    """An authorization identity other than the authentication identity (no proxy logins)."""


@dataclass(frozen=True)
class Challenge:
    """Send ``data`` (raw; the exchange base64-encodes it) and wait for a response."""

    data: bytes


@dataclass(frozen=True)
class Done:
    """The client has said everything: hand ``credentials`` to the portal."""

    credentials: LoginCredentials | ChallengeCredentials


Step = Challenge | Done


@dataclass(frozen=True)
class SASLContext:
    """What the credentials carry besides the secret, and what CRAM challenges need."""

    service: str = "smtp"
    remote_ip: str = ""
    local_ip: str = ""
    hostname: str = "localhost"                     # the domain of a CRAM challenge
    now: Callable[[], float] = field(default=time.time)
    nonce: Callable[[], str] = field(default=lambda: str(secrets.randbits(63)))


def _check_field(value: bytes, what: str) -> bytes:
    if not value:
        raise SASLMalformed(f"empty {what}")
    if len(value) > MAX_FIELD:
        raise SASLMalformed(f"{what} too long")
    if b"\0" in value:
        raise SASLMalformed(f"NUL in {what}")
    return value


class Mechanism:
    """One SASL mechanism for one login attempt (server side)."""

    name: ClassVar[str] = ""
    #: the password crosses the wire in clear: offer it only inside TLS
    plaintext: ClassVar[bool] = True

    def __init__(self, context: SASLContext) -> None:
        self.context = context

    def start(self, initial: bytes | None) -> Step:
        """Begin; ``initial`` is the decoded initial response, ``None`` when absent."""
        raise NotImplementedError

    def step(self, response: bytes) -> Step:
        """Continue with the next decoded response."""
        raise NotImplementedError

    def _login(self, username: bytes, password: bytes) -> Done:
        ctx = self.context
        return Done(LoginCredentials(username, password, service=ctx.service,
                                     remote_ip=ctx.remote_ip, local_ip=ctx.local_ip,
                                     method=AUTH_METHODS[self.name]))


class Plain(Mechanism):
    """RFC 4616: ``authzid NUL authcid NUL passwd`` in one response."""

    name = "PLAIN"

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"")
        return self.step(initial)

    def step(self, response: bytes) -> Step:
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise SASLMalformed("PLAIN needs authzid NUL authcid NUL password")
        authzid, authcid, password = parts
        _check_field(authcid, "user name")
        _check_field(password, "password")
        if len(authzid) > MAX_FIELD:
            raise SASLMalformed("authorization identity too long")
        if authzid and authzid != authcid:
            raise SASLAuthzRefused("proxy authorization is not supported")
        return self._login(authcid, password)


class Login(Mechanism):
    """The LOGIN mechanism (draft-murchison-sasl-login): user name, then password."""

    name = "LOGIN"

    def __init__(self, context: SASLContext) -> None:
        super().__init__(context)
        self._username: bytes | None = None

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"Username:")
        return self.step(initial)

    def step(self, response: bytes) -> Step:
        if self._username is None:
            self._username = _check_field(response, "user name")
            return Challenge(b"Password:")
        return self._login(self._username, _check_field(response, "password"))


_HEX_DIGEST = re.compile(rb"[0-9a-fA-F]{32}")


class CramMD5(Mechanism):
    """RFC 2195: challenge ``<random.time@host>``, response ``user SP hex-hmac-md5``."""

    name = "CRAM-MD5"
    plaintext = False

    def __init__(self, context: SASLContext) -> None:
        super().__init__(context)
        self.challenge = (f"<{context.nonce()}.{int(context.now())}@{context.hostname}>"
                          .encode("ascii", "replace"))

    def start(self, initial: bytes | None) -> Step:
        if initial:
            raise SASLMalformed("CRAM-MD5 has no initial response")
        return Challenge(self.challenge)

    def step(self, response: bytes) -> Step:
        username, sep, digest = response.rpartition(b" ")
        if not sep or not _HEX_DIGEST.fullmatch(digest):
            raise SASLMalformed("CRAM-MD5 needs user SP 32 hex digits")
        _check_field(username, "user name")
        ctx = self.context
        return Done(ChallengeCredentials(username, self.challenge, digest.decode("ascii"),
                                         method=AUTH_METHODS[self.name], service=ctx.service,
                                         remote_ip=ctx.remote_ip, local_ip=ctx.local_ip))


#: Every mechanism we implement, by its IANA name.
MECHANISMS: dict[str, type[Mechanism]] = {m.name: m for m in (Plain, Login, CramMD5)}

#: IndiMail's per-mechanism switches (qmail-smtpd(8)): set (even empty) means "do not offer".
DISABLE_VARIABLES = {"PLAIN": "DISABLE_AUTH_PLAIN", "LOGIN": "DISABLE_AUTH_LOGIN",
                     "CRAM-MD5": "DISABLE_CRAM_MD5"}


def enabled_mechanisms(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The mechanisms to offer, in preference order, minus those switched off.

    CRAM-MD5 needs the password in clear on the server (a ``{CRAM}`` record from
    ``vadduser -C``, or a clear ``pw_passwd``); with the usual crypt hashes it can
    never succeed, and clients that prefer it (mbsync, Thunderbird, mutt) would
    then fail to log in at all.  So it is offered only when the admin says the
    store can serve it: ``ENABLE_CRAM`` set (IndiMail's vchkpass switch).
    """
    env = environ or {}
    return tuple(name for name in ("PLAIN", "LOGIN", "CRAM-MD5")
                 if DISABLE_VARIABLES[name] not in env
                 and (name != "CRAM-MD5" or "ENABLE_CRAM" in env))


def decode_response(line: bytes) -> bytes:
    """Strict base64 (no whitespace, correct padding); ``SASLBadEncoding`` otherwise."""
    if len(line) > MAX_LINE:
        raise SASLBadEncoding("response line too long")
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise SASLBadEncoding("not base64") from None


def encode_challenge(data: bytes) -> bytes:
    return base64.b64encode(data)


class SASLExchange:
    """One mechanism driven over base64 lines (protocol-neutral).

    ``start`` takes the initial response as sent on the command line (``None``
    when absent, ``b"="`` for an empty one); ``respond`` each further line.  Both
    return :class:`Challenge` (with ``encoded`` ready to send) or :class:`Done`.
    """

    def __init__(self, mechanism: Mechanism) -> None:
        self.mechanism = mechanism

    @property
    def name(self) -> str:
        return self.mechanism.name

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return self.mechanism.start(None)
        if initial == b"=":
            return self.mechanism.start(b"")
        if initial == b"*":
            raise SASLCancelled("cancelled")
        return self.mechanism.start(decode_response(initial))

    def respond(self, line: bytes) -> Step:
        if line == b"*":
            raise SASLCancelled("cancelled")
        return self.mechanism.step(decode_response(line))

    @staticmethod
    def encoded(challenge: Challenge) -> bytes:
        return encode_challenge(challenge.data)


def exchange(name: str, context: SASLContext) -> SASLExchange | None:
    """A new exchange for mechanism ``name`` (case-insensitive); ``None`` if unknown."""
    cls = MECHANISMS.get(name.upper())
    return SASLExchange(cls(context)) if cls else None
