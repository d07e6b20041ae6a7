"""The realm: what an authenticated user gets (one for POP3, IMAP4 and submission)."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import implementer

from indimail_tw.auth.flags import Flags
from indimail_tw.interfaces import IMailbox
from indimail_tw.storage.users import User


@implementer(IMailbox)
@dataclass
class MailUser:
    """A virtual user's mailbox location and account flags."""

    user: User
    no_relay: bool = False
    inactive: bool = False

    @property
    def address(self) -> str:
        return self.user.address

    @property
    def home(self) -> str:
        return self.user.dir

    @property
    def maildir(self) -> str:
        return self.user.maildir

    @property
    def flags(self) -> int:
        return self.user.gid

    @property
    def relay_allowed(self) -> bool:
        return not (self.no_relay or self.user.gid & Flags.NO_RELAY)


@implementer(IRealm)
class MaildirRealm:
    """Hands out :class:`MailUser` avatars.

    The store checker already read the user row and passes it on the avatar
    id; for ids from other checkers (an external checkpassword program) the
    row is looked up here, and a login without a mailbox is refused.
    Protocol packages register adapters from IMailbox to their own avatar
    interfaces; the realm answers IMailbox itself.
    """

    def __init__(self, store) -> None:
        self.store = store

    @defer.inlineCallbacks
    def requestAvatar(self, avatarId, mind, *interfaces):  # noqa: N802
        if IMailbox not in interfaces:
            raise NotImplementedError("MaildirRealm only provides IMailbox avatars")
        user = getattr(avatarId, "user", None)
        if user is None:
            address = avatarId.decode() if isinstance(avatarId, bytes) else str(avatarId)
            name, _, domain = address.partition("@")
            user, _real = yield self.store.get_user(name.lower(), domain.lower())
            if user is None:
                raise UnauthorizedLogin()
        avatar = MailUser(user, no_relay=getattr(avatarId, "no_relay", False),
                          inactive=getattr(avatarId, "inactive", False))
        return (IMailbox, avatar, lambda: None)
