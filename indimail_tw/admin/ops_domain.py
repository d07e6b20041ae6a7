"""Domain operations behind vadddomain, vdeldomain, vaddaliasdomain, vmoddomain, vdominfo.

A domain is its directory ``domains/<domain>/`` (delivery settings:
``.qmail-default``, ``.base_path``, ``.users_per_level``, ``hash_method``,
``.aliasdomains``), its control-file entries (rcpthosts, virtualdomains, ...)
and its rows in the user database.  An alias domain is a symlink
``domains/<alias> -> <real>`` plus an ``aliasdomain`` row and its own control
entries.  Each operation is all-or-nothing (see :class:`~indimail_tw.admin.site.Undo`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from indimail_tw import fsutil
from indimail_tw.admin import controlfiles
from indimail_tw.admin.ops_user import (
    NewUser, _as_password, _quota_arg, bury_home, insert_user, real_domain,
)
from indimail_tw.admin.secret import Password, parse_method
from indimail_tw.admin.site import FAILED, Site, Undo, bury, fs_error, make_dirs, write_file
from indimail_tw.admin.site import remove_file
from indimail_tw.admin.validate import check_base_path, check_domain, check_handler
from indimail_tw.delivery.catchall import (
    DEFAULT_HANDLER, PROGRAMS, QMAIL_DEFAULT, parse_qmail_default, qmail_default_line,
)
from indimail_tw.errors import AdminError
from indimail_tw.maildir.quota import Quota
from indimail_tw.storage.engine import Txn
from indimail_tw.storage.store import REPOS
from indimail_tw.storage.users import User

BUCKETS = ("A2E", "F2K", "L2P", "Q2S", "T2Zsym")
ALIASDOMAINS = ".aliasdomains"


def qmail_default(handler: str = DEFAULT_HANDLER, vfilter: bool = False) -> str:
    """The one program line of ``.qmail-default``; our delivery agent reads it itself."""
    return qmail_default_line(handler, vfilter)


def catchall(site: Site, domain: str) -> tuple[str, str] | None:
    path = os.path.join(site.domain_dir(domain), QMAIL_DEFAULT)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            found = parse_qmail_default(f.read())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise fs_error("cannot read", path, e) from e
    return found.program, found.handler


def is_alias_domain(site: Site, domain: str) -> bool:
    return os.path.islink(site.domain_dir(domain))


# -- add ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class DomainAdded:
    domain: str
    postmaster: User
    control_files: list[str] = field(default_factory=list)


def add_domain(site: Site, domain: str, password: Password | str | None, *,
               base_path: str | None = None, users_per_level: int | None = None,
               quota: str | Quota | None = None, handler: str | None = None,
               use_vfilter: bool = False, chkrcpt: bool = False, etrn: bool = False,
               hash_method: str | None = None) -> DomainAdded:
    """Create a virtual domain with its active ``postmaster`` (vadddomain).

    ``password`` is the postmaster's (clear text or :class:`Password`);
    ``handler`` the catch-all (``bounce-no-mailbox`` by default, or an address or
    absolute Maildir, vadddomain -E); ``hash_method`` is also written as the
    domain's ``hash_method`` file.  Creates the database and its tables if needed.
    """
    check_domain(domain)
    handler = check_handler(handler) if handler is not None else DEFAULT_HANDLER
    base = check_base_path(base_path) if base_path else None
    if users_per_level is not None and users_per_level < 1:
        raise AdminError("users per level must be at least 1", 100)
    method = parse_method(hash_method) if hash_method else None
    postmaster_quota = _quota_arg(site, quota)
    secret = _as_password(password)
    if secret.method is None and method:
        secret = dataclasses.replace(secret, method=method)
    directory = site.domain_dir(domain)
    if os.path.lexists(directory):
        raise AdminError(f"domain {domain} exists", FAILED)
    site.prepare(create=True)
    undo = Undo()

    def operation() -> DomainAdded:
        make_dirs(directory, undo, 0o750)
        write_file(os.path.join(directory, QMAIL_DEFAULT), qmail_default(handler, use_vfilter),
                   None)
        if base:
            write_file(os.path.join(directory, ".base_path"), base + "\n", None)
        if users_per_level:
            write_file(os.path.join(directory, ".users_per_level"), f"{users_per_level}\n",
                       None)
        if method:
            write_file(os.path.join(directory, "hash_method"), method + "\n", None)
        changed = controlfiles.add_local_domain(site.control, domain, undo,
                                                chkrcpt=chkrcpt, etrn=etrn)
        postmaster = site.engine().run_sync(_add_domain_rows, site, domain, secret,
                                            postmaster_quota, base, users_per_level, undo)
        return DomainAdded(domain, postmaster, changed)

    return undo.run(operation)


def _add_domain_rows(txn: Txn, site: Site, domain: str, secret: Password,
                     quota: Quota | None, base: str | None, users_per_level: int | None,
                     undo: Undo) -> User:
    if REPOS.aliasdomains.real_domain(txn, domain) is not None:
        raise AdminError(f"domain {domain} exists as an alias domain", FAILED)
    spec = NewUser("postmaster", domain, secret, "Postmaster", quota, base,
                   users_per_level, True, secret.method)
    user = insert_user(txn, site, spec, undo)
    for alias in ("abuse", "mailer-daemon"):
        REPOS.aliases.add(txn, alias, domain, f"&postmaster@{domain}")
    return user


# -- alias domains --------------------------------------------------------------------------

def add_alias_domain(site: Site, alias: str, domain: str) -> str:
    """``alias`` answers for every account of ``domain`` (vaddaliasdomain); returns the
    real domain (an alias of an alias domain points at its real domain)."""
    check_domain(alias, "alias domain")
    check_domain(domain)
    if alias == domain:
        raise AdminError("a domain cannot be an alias of itself", 100)
    if os.path.lexists(site.domain_dir(alias)):
        raise AdminError(f"domain {alias} exists", FAILED)
    if not site.domain_exists(domain):
        raise AdminError(f"domain {domain} does not exist", FAILED)
    undo = Undo()

    def transaction(txn: Txn) -> str:
        if REPOS.aliasdomains.real_domain(txn, alias) is not None:
            raise AdminError(f"domain {alias} exists as an alias domain", FAILED)
        real = real_domain(txn, site, domain)
        REPOS.aliasdomains.add(txn, alias, real)
        link = site.domain_dir(alias)
        try:
            fsutil.symlink(real, link)
        except OSError as e:
            raise fs_error("cannot create symlink", link, e) from e
        undo.push(os.unlink, link)
        controlfiles.add_local_domain(site.control, alias, undo)
        lines = site.domain_lines(real, ALIASDOMAINS)
        if alias not in lines:
            write_file(os.path.join(site.domain_dir(real), ALIASDOMAINS),
                       "".join(f"{x}\n" for x in lines + [alias]), undo, 0o640)
        return real

    return undo.run(lambda: site.write(transaction))


def alias_domains_of(txn: Txn, site: Site, domain: str) -> list[str]:
    """Alias domains of ``domain``: rows, ``.aliasdomains`` lines and symlinks."""
    names = set(REPOS.aliasdomains.aliases_of(txn, domain))
    names.update(site.domain_lines(domain, ALIASDOMAINS))
    try:
        with os.scandir(site.paths.domains) as entries:
            for entry in entries:
                if entry.is_symlink() and site.symlink_target(entry.name) == domain:
                    names.add(entry.name)
    except FileNotFoundError:
        pass
    return sorted(n for n in names if n != domain)


# -- delete -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DomainDeleted:
    domain: str
    real_domain: str | None  # set when an alias domain was deleted
    users: int = 0
    alias_domains: list[str] = field(default_factory=list)


def delete_domain(site: Site, domain: str) -> DomainDeleted:
    """vdeldomain: an alias domain loses only its alias; a real domain loses
    everything, including the alias domains that point to it (as IndiMail does)."""
    check_domain(domain)
    directory = site.domain_dir(domain)
    if not os.path.lexists(directory):
        raise AdminError(f"domain {domain} does not exist", FAILED)
    undo = Undo()

    def transaction(txn: Txn) -> DomainDeleted:
        real = REPOS.aliasdomains.real_domain(txn, domain)
        if os.path.islink(directory) or (real is not None and not os.path.isdir(directory)):
            real = real or site.symlink_target(domain)
            _delete_alias(txn, site, domain, real, undo)
            return DomainDeleted(domain, real)
        return _delete_real(txn, site, domain, undo)

    return undo.run(lambda: site.write(transaction))


def _delete_alias(txn: Txn, site: Site, alias: str, real: str | None, undo: Undo) -> None:
    REPOS.aliasdomains.delete(txn, alias)
    REPOS.ipmap.delete_domain(txn, alias)
    bury(site.domain_dir(alias), undo)
    controlfiles.remove_local_domain(site.control, alias, undo)
    if real and site.domain_exists(real):
        lines = site.domain_lines(real, ALIASDOMAINS)
        if alias in lines:
            path = os.path.join(site.domain_dir(real), ALIASDOMAINS)
            rest = [x for x in lines if x != alias]
            if rest:
                write_file(path, "".join(f"{x}\n" for x in rest), undo, 0o640)
            else:
                remove_file(path, undo)


def _delete_real(txn: Txn, site: Site, domain: str, undo: Undo) -> DomainDeleted:
    aliases = alias_domains_of(txn, site, domain)
    for alias in aliases:
        if os.path.islink(site.domain_dir(alias)) or not os.path.lexists(
                site.domain_dir(alias)):
            _delete_alias(txn, site, alias, None, undo)
    users = REPOS.users.list_domain(txn, domain)
    REPOS.users.delete_domain(txn, domain)
    REPOS.aliases.delete_domain(txn, domain)
    REPOS.lastauth.delete_domain(txn, domain)
    REPOS.dircontrol.delete_domain(txn, domain)
    REPOS.aliasdomains.delete_domain(txn, domain)
    REPOS.ipmap.delete_domain(txn, domain)
    REPOS.vlimits.delete_domain(txn, domain)
    REPOS.atrn.delete_domain(txn, domain)
    REPOS.userquota.delete_domain(txn, domain)
    # Homes: whole BASE/<bucket>/<domain> trees where they hold the homes, else
    # each home on its own (a user moved elsewhere).
    bases = {site.base_path(domain), site.paths.mail}
    trees = set()
    for user in users:
        tree = _domain_tree(user.dir, domain)
        if tree:
            trees.add(tree)
        else:
            bury_home(user, undo)
    for base in bases:
        trees.update(os.path.join(base, b, domain) for b in BUCKETS)
    for tree in sorted(trees):
        bury(tree, undo)
    bury(site.domain_dir(domain), undo)
    controlfiles.remove_local_domain(site.control, domain, undo)
    return DomainDeleted(domain, None, len(users), aliases)


def _domain_tree(home: str, domain: str) -> str | None:
    """``BASE/<bucket>/<domain>`` above ``home``, if the home sits in that layout."""
    parts = os.path.normpath(home).split(os.sep) if os.path.isabs(home or "") else []
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == domain and parts[i - 1] in BUCKETS:
            return os.sep.join(parts[:i + 1]) or None
    return None


# -- modify -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DomainSettings:
    domain: str
    program: str
    handler: str
    hash_method: str | None
    domain_limits: bool


def modify_domain(site: Site, domain: str, *, handler: str | None = None,
                  use_vfilter: bool | None = None, hash_method: str | None = None,
                  domain_limits: bool | None = None) -> DomainSettings:
    """vmoddomain: the catch-all handler / vfilter switch, hash method, domain limits.

    Handlers: ``bounce-no-mailbox``, ``delete``, an absolute Maildir path, an
    e-mail address, or ``host:ip:port``.  An alias domain changes its real domain.
    """
    check_domain(domain)
    if not site.domain_exists(domain):
        raise AdminError(f"domain {domain} does not exist", FAILED)
    if handler is not None:
        handler = check_handler(handler)
    method = parse_method(hash_method, "-H") if hash_method else None
    real = site.symlink_target(domain) or domain
    directory = site.domain_dir(real)
    undo = Undo()

    def operation() -> DomainSettings:
        program, current = catchall(site, real) or (PROGRAMS[0], DEFAULT_HANDLER)
        new_handler = handler if handler is not None else current
        vfilter = (program == PROGRAMS[1]) if use_vfilter is None else use_vfilter
        if handler is not None or use_vfilter is not None:
            write_file(os.path.join(directory, QMAIL_DEFAULT),
                       qmail_default(new_handler, vfilter), undo)
        if method:
            write_file(os.path.join(directory, "hash_method"), method + "\n", undo, 0o644)
        limits_file = os.path.join(directory, ".domain_limits")
        if domain_limits is True:
            write_file(limits_file, "", undo)
        elif domain_limits is False:
            remove_file(limits_file, undo)
        return DomainSettings(real, PROGRAMS[1] if vfilter else PROGRAMS[0], new_handler,
                              site.domain_file(real, "hash_method"),
                              os.path.exists(limits_file))

    return undo.run(operation)


# -- info ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DomainInfo:
    domain: str
    real_domain: str | None  # set for an alias domain
    directory: str
    base_path: str
    users: int | None  # None for an alias domain
    alias_domains: list[str]
    program: str | None
    handler: str | None
    hash_method: str | None
    users_per_level: int
    domain_limits: bool


def domain_info(site: Site, domain: str) -> DomainInfo:
    check_domain(domain)
    if not site.domain_exists(domain):
        raise AdminError(f"domain {domain} does not exist", FAILED)
    return site.read(_info, site, domain)


def all_domain_info(site: Site) -> list[DomainInfo]:
    domains = site.list_domains()

    def transaction(txn: Txn) -> list[DomainInfo]:
        return [_info(txn, site, d) for d in domains]

    return site.read(transaction)


def _info(txn: Txn, site: Site, domain: str) -> DomainInfo:
    real = REPOS.aliasdomains.real_domain(txn, domain) or site.symlink_target(domain)
    target = real or domain
    program, handler = catchall(site, target) or (None, None)
    return DomainInfo(
        domain=domain, real_domain=real,
        directory=os.path.realpath(site.domain_dir(domain)),
        base_path=site.base_path(target),
        users=None if real else REPOS.users.count_domain(txn, domain),
        alias_domains=[] if real else alias_domains_of(txn, site, domain),
        program=program, handler=handler,
        hash_method=site.domain_file(target, "hash_method"),
        users_per_level=site.users_per_level(target),
        domain_limits=os.path.exists(os.path.join(site.domain_dir(target), ".domain_limits")),
    )
