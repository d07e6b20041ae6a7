"""The zope Interfaces that join the packages."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IUserStore(Interface):
    """Asynchronous access to IndiMail's user database (every method returns a Deferred)."""

    engine = Attribute("The storage engine (SQLite or MySQL/MariaDB).")

    def prepare():
        """Create missing tables; fail with SchemaTooNew on a newer database."""

    def get_user(name, domain):
        """(User or None, real domain); alias domains resolve to their real domain."""

    def alias_lines(alias, domain):
        """The valias delivery lines of alias@domain."""

    def record_lastauth(user, domain, service, remote_ip, quota=0, gecos=""):
        """Write a lastauth row."""

    def set_active(name, domain, active):
        """Move a user between indimail and indibak."""

    def add_relay(email, ipaddr, when):
        """Record a POP/IMAP-before-SMTP relay grant."""

    def relay_allowed(ipaddr, since, email=None):
        """Whether a relay grant for ipaddr exists since the given Unix time."""

    def atrn_domains(user, domain):
        """Domains the user may pull with ATRN."""

    def ip_domain(ipaddr):
        """The domain assumed for bare logins on this local IP (vipmap)."""


class IMailbox(Interface):
    """What an authenticated mail user gets from the realm (POP3, IMAP, submission)."""

    user = Attribute("The storage.User row.")
    address = Attribute("user@domain")
    home = Attribute("The user's home directory (pw_dir).")
    maildir = Attribute("The user's Maildir path.")
    flags = Attribute("pw_gid flag bits.")
    relay_allowed = Attribute("False when the account has NO_RELAY.")
