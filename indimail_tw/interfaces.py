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


class IQueue(Interface):
    """The durable queue (ARCHITECTURE.md section 4)."""

    def enqueue(envelope, message):
        """Store a message durably.

        ``message`` is bytes or a readable binary file object.  Returns a
        Deferred firing with the queue id only after the message and its
        envelope are on disk (data fsynced, commit step done, directory
        fsynced); it fails with a MailError (temporary, e.g. 452 4.3.1 for a
        full disk) when that is impossible, leaving nothing half-committed.
        """

    def writer(envelope):
        """A :class:`IMessageWriter` for streaming a message in (SMTP DATA/BDAT)."""

    def flush(domain=None):
        """Retry now the recipients (of ``domain``, or all): ETRN/ATRN and ALRM."""


class IMessageWriter(Interface):
    """A message being received: write chunks, then commit or abort."""

    size = Attribute("Bytes written so far.")

    def write(data):
        """Append bytes (bounded memory: large messages spill to disk off the reactor)."""

    def commit():
        """Deferred[queue id], firing once the message is durable (see IQueue.enqueue)."""

    def abort():
        """Throw the partial message away."""


class IDeliveryAgent(Interface):
    """Delivers one queued message to one recipient (local or remote channel)."""

    def deliver(message, recipient):
        """Deferred[DeliveryResult]; ``message`` provides IQueuedMessage."""


class IQueuedMessage(Interface):
    id = Attribute("The queue id (str).")
    envelope = Attribute("The Envelope.")
    path = Attribute("Path of the message file (read it in a thread, never on the reactor). "
                     "The message is its first ``size`` bytes only (the queue's envelope "
                     "follows): read it with indimail_tw.datafile.open_data(path, size).")
    size = Attribute("Size of the message in bytes.")
