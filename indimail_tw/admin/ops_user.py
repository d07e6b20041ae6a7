"""User operations behind vadduser, vdeluser, vpasswd, vmoduser, vsetuserquota, vuserinfo.

Each operation validates its input, then does its database work and its
filesystem work in ONE transaction function; filesystem changes are recorded in
an :class:`~indimail_tw.admin.site.Undo` and reverted if anything (including
the commit) fails.  So there is never a user row without its home, nor a home
without its row.

Home layout (spec §2.4): ``BASE/<bucket>/<domain>/[hash/]<user>`` with the
bucket chosen by the first character (A2E, F2K, L2P, Q2S, T2Zsym) and the hash
directory allocated by ``dir_control``, ``users_per_level`` users per directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from indimail_tw import fsutil
from indimail_tw.admin.secret import Password, method_for, parse_method
from indimail_tw.admin.site import FAILED, Site, Undo, bury, fs_error, make_dirs, snapshot
from indimail_tw.admin.validate import bad, check_address, check_base_path, check_gecos
from indimail_tw.errors import AdminError, ConfigError
from indimail_tw.maildir import quota as quotas
from indimail_tw.maildir.quota import Quota
from indimail_tw.storage.engine import Txn
from indimail_tw.storage.store import REPOS
from indimail_tw.storage.users import User

MAX_DIR = 156  # pw_dir char(156)
#: RFC 2142 mailboxes that are always created active (IndiMail's vadduser).
ALWAYS_ACTIVE = ("postmaster", "abuse")
_BUCKETS = (("abcde", "A2E"), ("fghijk", "F2K"), ("lmnop", "L2P"), ("qrs", "Q2S"))


def bucket(name: str) -> str:
    """The first-letter bucket of a user's home (IndiMail's get_Mplexdir)."""
    first = name[:1].lower()
    for letters, directory in _BUCKETS:
        if first and first in letters:
            return directory
    return "T2Zsym"


def home_of(base: str, name: str, domain: str, hashdir: str) -> str:
    parts = [base, bucket(name), domain] + ([hashdir] if hashdir else []) + [name]
    return os.path.join(*parts)


def lastauth_ip(site: Site) -> str:
    return site.environ.get("TCPREMOTEIP") or "localhost"


# -- resolving an address ------------------------------------------------------------

def parse_address(site: Site, address: str) -> tuple[str, str]:
    """Check ``user@domain`` (a bare user takes the default domain); the domain must exist."""
    name, domain = check_address(address, site.environ, site.default_domain())
    if not site.domain_exists(domain):
        raise AdminError(f"domain {domain} does not exist", FAILED)
    return name, domain


def real_domain(txn: Txn, site: Site, domain: str) -> str:
    """The real domain of ``domain`` (itself unless it is an alias domain)."""
    return REPOS.aliasdomains.real_domain(txn, domain) or site.symlink_target(domain) or domain


def _get(txn: Txn, site: Site, name: str, domain: str) -> User:
    real = real_domain(txn, site, domain)
    user = REPOS.users.get(txn, name, real)
    if user is None:
        raise AdminError(f"no such user {name}@{domain}", FAILED)
    return user


def parse_quota_text(text: str, current: Quota | None = None,
                     relative_ok: bool = False) -> Quota | None:
    """A ``-q`` argument (k/m/g, NOQUOTA, ``+N``/``-N`` only with ``relative_ok``)."""
    if not relative_ok and text.strip().startswith(("+", "-")):
        raise bad(f"invalid quota {text!r}: a relative quota needs vmoduser -q")
    try:
        return quotas.parse_quota_arg(text, current)
    except ValueError as e:
        raise bad(str(e)) from None


def current_quota(user: User) -> Quota | None:
    """The user's quota; a pw_shell we cannot read counts as none."""
    try:
        return quotas.parse_quota(user.shell or "NOQUOTA")
    except ValueError:
        return None


def default_quota(site: Site) -> Quota | None:
    """``HARD_QUOTA`` from the environment, else no quota."""
    text = site.environ.get("HARD_QUOTA")
    if not text:
        return None
    try:
        return quotas.parse_quota_arg(text)
    except ValueError as e:
        raise ConfigError(f"HARD_QUOTA: {e}") from None


def _quota_arg(site: Site, value: str | Quota | None) -> Quota | None:
    if value is None:
        return default_quota(site)
    if isinstance(value, Quota):
        return None if value.unlimited else value
    return parse_quota_text(value)


def _as_password(password: Password | str | None) -> Password:
    if isinstance(password, Password):
        return password
    if password is None:
        raise AdminError("no password given", 100)
    return Password(clear=password)


def _set_maildirsize(user: User, quota: Quota | None, undo: Undo) -> None:
    """Write (or remove, for no quota) ``maildirsize`` if the Maildir exists."""
    maildir = user.maildir
    if not os.path.isdir(maildir):
        return
    path = os.path.join(maildir, quotas.MAILDIRSIZE)
    snapshot(path, undo)
    try:
        quotas.write_header(maildir, quota)
    except OSError as e:
        raise fs_error("cannot update", path, e) from e


# -- add -------------------------------------------------------------------------------

@dataclass(frozen=True)
class NewUser:
    """Everything needed to create one user in its real domain."""

    name: str
    domain: str
    password: Password = field(repr=False)
    gecos: str = ""
    quota: Quota | None = None
    base_path: str | None = None
    users_per_level: int | None = None
    active: bool = True
    hash_method: str | None = None


def insert_user(txn: Txn, site: Site, spec: NewUser, undo: Undo) -> User:
    """Transaction function: the row, the home with its Maildir, maildirsize, lastauth."""
    if REPOS.users.get(txn, spec.name, spec.domain) is not None:
        raise AdminError(f"user {spec.name}@{spec.domain} exists", FAILED)
    passwd, scram = spec.password.record(method_for(site, spec.domain, spec.hash_method))
    base = site.base_path(spec.domain, spec.base_path)
    hashdir = REPOS.dircontrol.allocate(txn, spec.domain,
                                        site.users_per_level(spec.domain, spec.users_per_level))
    home = home_of(base, spec.name, spec.domain, hashdir)
    if len(home) > MAX_DIR:
        raise AdminError(f"home directory {home} longer than {MAX_DIR} characters", FAILED)
    if os.path.lexists(home):
        raise AdminError(f"home directory {home} exists already", FAILED)
    active = spec.active or spec.name in ALWAYS_ACTIVE
    user = User(name=spec.name, domain=spec.domain, passwd=passwd, uid=1, gid=0,
                gecos=spec.gecos, dir=home, shell=quotas.format_quota(spec.quota),
                scram=scram, active=active)
    REPOS.users.add(txn, user)
    make_dirs(home, undo)
    try:
        fsutil.make_maildir(user.maildir)
    except OSError as e:
        raise fs_error("cannot create directory", user.maildir, e) from e
    if spec.quota is not None and not spec.quota.unlimited:
        try:
            quotas.write_header(user.maildir, spec.quota)
        except OSError as e:
            raise fs_error("cannot write", os.path.join(user.maildir, "maildirsize"), e) from e
    REPOS.lastauth.record(txn, spec.name, spec.domain, "add", lastauth_ip(site), 0, spec.gecos)
    return user


def add_user(site: Site, address: str, password: Password | str | None, *,
             gecos: str = "", quota: str | Quota | None = None, base_path: str | None = None,
             users_per_level: int | None = None, active: bool = True,
             hash_method: str | None = None) -> User:
    """Create ``user@domain`` (vadduser); returns the stored :class:`User`.

    ``password``: clear text (hashed with the domain's method) or a
    :class:`Password`.  ``quota``: ``"5M"``, ``"NOQUOTA"``, a :class:`Quota`, or
    None for ``$HARD_QUOTA`` / no quota.  An alias domain adds to its real domain.
    """
    name, domain = parse_address(site, address)
    check_gecos(gecos)
    spec_quota = _quota_arg(site, quota)
    base = check_base_path(base_path) if base_path else None
    secret = _as_password(password)
    method = parse_method(hash_method) if hash_method else None
    if users_per_level is not None and users_per_level < 1:
        raise bad("users per level must be at least 1")
    undo = Undo()

    def transaction(txn: Txn) -> User:
        real = real_domain(txn, site, domain)
        spec = NewUser(name, real, secret, gecos, spec_quota, base, users_per_level,
                       active, method)
        return insert_user(txn, site, spec, undo)

    return undo.run(lambda: site.write(transaction))


# -- delete ------------------------------------------------------------------------------

def delete_user(site: Site, address: str) -> User:
    """Remove a user (vdeluser): rows (user, valias, lastauth, atrn_map), home tree,
    and one dir_control slot.  Returns the deleted user."""
    name, domain = parse_address(site, address)
    undo = Undo()

    def transaction(txn: Txn) -> User:
        user = _get(txn, site, name, domain)
        remove_user_rows(txn, user)
        bury_home(user, undo)
        return user

    return undo.run(lambda: site.write(transaction))


def remove_user_rows(txn: Txn, user: User) -> None:
    REPOS.users.delete(txn, user.name, user.domain)
    REPOS.aliases.delete(txn, user.name, user.domain)
    REPOS.lastauth.delete_user(txn, user.name, user.domain)
    REPOS.atrn.delete_user(txn, user.name, user.domain)
    REPOS.userquota.delete_user(txn, user.name, user.domain)
    REPOS.dircontrol.release(txn, user.domain)


def bury_home(user: User, undo: Undo) -> None:
    """Move the home aside (removed at commit) if it plausibly is this user's home."""
    home = os.path.normpath(user.dir) if user.dir else ""
    if not os.path.isabs(home) or os.path.basename(home) != user.name:
        return  # not a home we made: never remove an arbitrary directory
    bury(home, undo)


# -- password ------------------------------------------------------------------------------

def set_password(site: Site, address: str, password: Password | str) -> User:
    """vpasswd: store a new password (and the scram column); lastauth ``pass``."""
    name, domain = parse_address(site, address)
    secret = _as_password(password)

    def transaction(txn: Txn) -> User:
        user = _get(txn, site, name, domain)
        passwd, scram = secret.record(method_for(site, user.domain, secret.method))
        REPOS.users.set_password(txn, user.name, user.domain, passwd, scram)
        REPOS.lastauth.record(txn, user.name, user.domain, "pass", lastauth_ip(site), 0,
                              user.gecos)
        return user.with_(passwd=passwd, scram=scram)

    return site.write(transaction)


# -- modify --------------------------------------------------------------------------------

@dataclass
class UserChanges:
    """What vmoduser changes; None / False / 0 leaves a field alone."""

    toggle_active: bool = False
    quota: str | None = None  # absolute, NOQUOTA, or relative +N / -N
    gecos: str | None = None
    password: Password | None = field(default=None, repr=False)
    flags: int = 0  # pw_gid bits to set (or toggle)
    toggle_flags: bool = False
    clear_flags: bool = False

    @property
    def empty(self) -> bool:
        return not (self.toggle_active or self.quota is not None or self.gecos is not None
                    or self.password is not None or self.flags or self.clear_flags)


def modify_user(site: Site, address: str, changes: UserChanges) -> User:
    """vmoduser: apply ``changes``; returns the user as stored afterwards."""
    name, domain = parse_address(site, address)
    if changes.gecos is not None:
        check_gecos(changes.gecos)
    undo = Undo()

    def transaction(txn: Txn) -> User:
        user = _get(txn, site, name, domain)
        key = (txn, user.name, user.domain)
        gid = 0 if changes.clear_flags else user.gid
        if changes.flags:
            gid = gid ^ changes.flags if changes.toggle_flags else gid | changes.flags
        if gid != user.gid:
            REPOS.users.set_flags(*key, gid)
        if changes.gecos is not None:
            REPOS.users.set_gecos(*key, changes.gecos)
        if changes.password is not None:
            passwd, scram = changes.password.record(
                method_for(site, user.domain, changes.password.method))
            REPOS.users.set_password(*key, passwd, scram)
            REPOS.lastauth.record(txn, user.name, user.domain, "pass", lastauth_ip(site),
                                  0, changes.gecos or user.gecos)
        if changes.quota is not None:
            new = parse_quota_text(changes.quota, current_quota(user), relative_ok=True)
            REPOS.users.set_quota(*key, quotas.format_quota(new))
            _set_maildirsize(user, new, undo)
        if changes.toggle_active:
            REPOS.users.set_active(*key, not user.active)
            REPOS.lastauth.record(txn, user.name, user.domain,
                                  "INAC" if user.active else "ACTI", lastauth_ip(site), 0,
                                  user.gecos)
        result = REPOS.users.get(*key)
        assert result is not None
        return result

    return undo.run(lambda: site.write(transaction))


def set_quota(site: Site, address: str, quota: str | Quota | None) -> User:
    """vsetuserquota: pw_shell and maildirsize; ``NOQUOTA`` (or None) removes the limit."""
    name, domain = parse_address(site, address)
    if isinstance(quota, Quota) or quota is None:
        new = None if quota is None or quota.unlimited else quota
    else:
        new = parse_quota_text(quota)
    undo = Undo()

    def transaction(txn: Txn) -> User:
        user = _get(txn, site, name, domain)
        shell = quotas.format_quota(new)
        REPOS.users.set_quota(txn, user.name, user.domain, shell)
        _set_maildirsize(user, new, undo)
        return user.with_(shell=shell)

    return undo.run(lambda: site.write(transaction))


# -- info ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UserInfo:
    user: User
    queried_domain: str
    lastauth: dict[str, tuple[str, str]]
    forwardings: list[str]
    usage: tuple[int, int] | None  # (bytes, messages); None when there is no Maildir


def user_info(site: Site, address: str) -> UserInfo:
    """vuserinfo's data, read without changing anything."""
    name, domain = parse_address(site, address)

    def transaction(txn: Txn) -> tuple[User, dict, list[str]]:
        user = _get(txn, site, name, domain)
        return (user, REPOS.lastauth.get(txn, user.name, user.domain),
                REPOS.aliases.lines(txn, user.name, user.domain))

    user, lastauth, forwardings = site.read(transaction)
    return UserInfo(user, domain, lastauth, forwardings, maildir_usage(user.maildir))


def maildir_usage(maildir: str) -> tuple[int, int] | None:
    """Current usage: from ``maildirsize`` when it is sound, else by counting files."""
    if not os.path.isdir(maildir):
        return None
    try:
        usage = quotas.read_usage(maildir)
    except OSError:
        usage = None
    if usage is not None and not usage.corrupt and usage.bytes >= 0 and usage.count >= 0:
        return usage.bytes, usage.count
    return _count(maildir)


def _count(maildir: str) -> tuple[int, int]:
    """Bytes and messages in cur/ and new/ of INBOX and folders (not .Trash), read only."""
    dirs = [maildir]
    try:
        with os.scandir(maildir) as entries:
            dirs += [e.path for e in entries if e.name.startswith(".") and e.is_dir()
                     and e.name != ".Trash" and not e.name.startswith(".Trash.")]
    except OSError:
        return 0, 0
    size = count = 0
    for folder in dirs:
        for sub in ("cur", "new"):
            try:
                with os.scandir(os.path.join(folder, sub)) as entries:
                    for entry in entries:
                        if entry.name.startswith(".") or not entry.is_file():
                            continue
                        try:
                            size += entry.stat().st_size
                        except OSError:
                            continue
                        count += 1
            except OSError:
                continue
    return size, count
