"""Credentials our protocols hand to the portal, and the outcome of a login.

Every credentials object carries its login context (service, client and
local address) so checkers can apply IndiMail's per-service gating (NO_POP,
NO_IMAP, NO_SMTP) and the vipmap default domain without a portal per service.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from zope.interface import Attribute, Interface, implementer

from indimail_tw.auth import passwords

# IndiMail's AUTH_* method numbers (libqmail authmethods.h), as sent on fd 3.
AUTH_METHODS = {
    "LOGIN": 1, "PLAIN": 2, "CRAM-MD5": 3, "CRAM-SHA1": 4, "CRAM-SHA224": 5,
    "CRAM-SHA256": 6, "CRAM-SHA384": 7, "CRAM-SHA512": 8, "CRAM-RIPEMD": 9,
    "DIGEST-MD5": 10, "SCRAM-SHA-1": 11, "SCRAM-SHA-256": 12, "SCRAM-SHA-512": 13,
}
CRAM_ALGORITHMS = {3: "md5", 4: "sha1", 5: "sha224", 6: "sha256", 7: "sha384",
                   8: "sha512", 9: "ripemd160"}


class ILoginContext(Interface):
    service = Attribute("'smtp', 'pop3', 'imap' or 'webmail'")
    remote_ip = Attribute("The client's address, or ''.")
    local_ip = Attribute("The local address the client connected to, or ''.")


@dataclass
class _Context:
    service: str = "smtp"
    remote_ip: str = ""
    local_ip: str = ""


@implementer(IUsernamePassword, ILoginContext)
class LoginCredentials(_Context):
    """A user name and clear-text password (USER/PASS, LOGIN, AUTH PLAIN/LOGIN)."""

    def __init__(self, username: bytes | str, password: bytes | str, service: str = "smtp",
                 remote_ip: str = "", local_ip: str = "", method: int = 2) -> None:
        super().__init__(service, remote_ip, local_ip)
        self.username = username.encode() if isinstance(username, str) else username
        self.password = password.encode() if isinstance(password, str) else password
        self.method = method

    def checkPassword(self, password: bytes) -> bool:  # noqa: N802 - Twisted's name
        return hmac.compare_digest(password, self.password)

    def __repr__(self) -> str:  # never show the password
        return f"<LoginCredentials {self.username!r} service={self.service}>"


@implementer(IUsernameHashedPassword, ILoginContext)
class ChallengeCredentials(_Context):
    """A challenge/response login (CRAM-MD5 and the other CRAM flavours)."""

    def __init__(self, username: bytes | str, challenge: bytes, response: str,
                 method: int = 3, service: str = "smtp", remote_ip: str = "",
                 local_ip: str = "") -> None:
        super().__init__(service, remote_ip, local_ip)
        self.username = username.encode() if isinstance(username, str) else username
        self.challenge = challenge
        self.response = response.lower()
        self.method = method
        self.algorithm = CRAM_ALGORITHMS.get(method, "md5")

    def checkPassword(self, password: bytes | str) -> bool:  # noqa: N802
        """Check against a clear-text secret, constant time."""
        secret = password.encode() if isinstance(password, str) else password
        try:
            digest = hmac.new(secret, self.challenge, self.algorithm).hexdigest()
        except ValueError:  # the digest is not available in this OpenSSL
            return False
        return hmac.compare_digest(digest, self.response)

    def __repr__(self) -> str:
        return f"<ChallengeCredentials {self.username!r} service={self.service}>"


class LoginDenied(UnauthorizedLogin):
    """The password was right but the account may not use this service.

    A chain stops here (IndiMail's vchkpass does not try the next module).
    The peer sees the same reply as for a wrong password.
    """


class TemporaryLoginFailure(Exception):
    """The credential source could not be asked (database down, checker timed out)."""


class AvatarId(bytes):
    """``user@domain`` plus what the checker learnt, so the realm need not ask again."""

    user = None          # storage.User when the store checker authenticated
    no_relay = False     # authenticated, but relaying is not allowed (exit 3)
    inactive = False     # the user row is in indibak (reactivated by POP3/IMAP login)

    @classmethod
    def make(cls, address: str, user=None, no_relay: bool = False,
             inactive: bool = False) -> AvatarId:
        avatar = cls(address.encode())
        avatar.user = user
        avatar.no_relay = no_relay
        avatar.inactive = inactive
        return avatar


class PasswordProof:
    """Checks a stored pw_passwd against a clear-text password (LOGIN/PLAIN)."""

    def __init__(self, password: str, allow_clear: bool = False) -> None:
        self._password = password
        self._allow_clear = allow_clear

    def check(self, stored: str) -> bool:
        return passwords.verify(stored, self._password, allow_clear=self._allow_clear)


class ChallengeProof:
    """Checks a challenge/response against the stored record's CRAM secret."""

    def __init__(self, credentials: IUsernameHashedPassword, enable_cram: bool = False) -> None:
        self._credentials = credentials
        self._enable_cram = enable_cram

    def check(self, stored: str) -> bool:
        secret = passwords.cram_secret(stored, enable_cram=self._enable_cram)
        if secret is None:
            return False
        return bool(self._credentials.checkPassword(secret.encode("utf-8", "surrogateescape")))


def proof_for(credentials, allow_clear: bool = False, enable_cram: bool = False):
    """The proof object for any credentials our checkers accept."""
    if IUsernamePassword.providedBy(credentials):
        password = credentials.password
        if isinstance(password, bytes):
            password = password.decode("utf-8", "surrogateescape")
        return PasswordProof(password, allow_clear)
    return ChallengeProof(credentials, enable_cram)


def context_of(credentials) -> _Context:
    if ILoginContext.providedBy(credentials):
        return _Context(credentials.service, credentials.remote_ip, credentials.local_ip)
    return _Context()
