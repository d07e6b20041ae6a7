"""Small repositories over IndiMail's other local tables.

Each method is a synchronous transaction function ``method(txn, ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, UTC

from indimail_tw.storage.engine import Txn


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


class Aliases:
    """``valias``: one delivery instruction per row (``&addr``, ``/Maildir/``, ``|prog``)."""

    def add(self, txn: Txn, alias: str, domain: str, line: str) -> bool:
        if txn.query_one("SELECT 1 FROM valias WHERE alias = ? AND domain = ? "
                         "AND valias_line = ?", (alias, domain, line)):
            return False
        txn.execute("INSERT INTO valias (alias, domain, valias_line) VALUES (?, ?, ?)",
                    (alias, domain, line))
        return True

    def delete(self, txn: Txn, alias: str, domain: str, line: str | None = None) -> int:
        if line is None:
            return txn.execute("DELETE FROM valias WHERE alias = ? AND domain = ?",
                               (alias, domain))
        return txn.execute("DELETE FROM valias WHERE alias = ? AND domain = ? "
                           "AND valias_line = ?", (alias, domain, line))

    def replace_line(self, txn: Txn, alias: str, domain: str, old: str, new: str) -> int:
        return txn.execute("UPDATE valias SET valias_line = ? WHERE alias = ? AND domain = ? "
                           "AND valias_line = ?", (new, alias, domain, old))

    def lines(self, txn: Txn, alias: str, domain: str) -> list[str]:
        rows = txn.query("SELECT valias_line FROM valias WHERE alias = ? AND domain = ? "
                         "ORDER BY valias_line", (alias, domain))
        return [r[0] for r in rows]

    def list_domain(self, txn: Txn, domain: str) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in txn.query(
            "SELECT alias, valias_line FROM valias WHERE domain = ? "
            "ORDER BY alias, valias_line", (domain,))]

    def list_all(self, txn: Txn) -> list[tuple[str, str, str]]:
        """Every row as (alias, domain, line), by domain and alias (valias -s)."""
        return [(r[0], r[1], r[2]) for r in txn.query(
            "SELECT alias, domain, valias_line FROM valias "
            "ORDER BY domain, alias, valias_line")]

    def reverse(self, txn: Txn, target: str) -> list[tuple[str, str, str]]:
        """Aliases whose lines deliver to ``target`` (valias -S)."""
        rows = txn.query("SELECT alias, domain, valias_line FROM valias "
                         "WHERE valias_line = ? OR valias_line = ? ORDER BY domain, alias",
                         (target, "&" + target))
        return [(r[0], r[1], r[2]) for r in rows]

    def delete_domain(self, txn: Txn, domain: str) -> int:
        return txn.execute("DELETE FROM valias WHERE domain = ?", (domain,))


class LastAuth:
    """``lastauth``: when a user last did what (pop3, imap, add, pass, ACTI, INAC, ...)."""

    def record(self, txn: Txn, user: str, domain: str, service: str, remote_ip: str,
               quota: int = 0, gecos: str = "") -> None:
        txn.execute("REPLACE INTO lastauth (user, domain, service, remote_ip, quota, gecos, "
                    "timestamp) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (user, domain, service, remote_ip, quota, gecos[:48], _now_text()))

    def get(self, txn: Txn, user: str, domain: str) -> dict[str, tuple[str, str]]:
        """service -> (timestamp, remote_ip)."""
        rows = txn.query("SELECT service, timestamp, remote_ip FROM lastauth "
                         "WHERE user = ? AND domain = ?", (user, domain))
        return {r[0]: (str(r[1]), r[2]) for r in rows}

    def delete_user(self, txn: Txn, user: str, domain: str) -> int:
        return txn.execute("DELETE FROM lastauth WHERE user = ? AND domain = ?", (user, domain))

    def delete_domain(self, txn: Txn, domain: str) -> int:
        return txn.execute("DELETE FROM lastauth WHERE domain = ?", (domain,))



class UserQuota:
    """``userquota``: the usage recorded when a user went over quota (vset_lastdeliver)."""

    def set(self, txn: Txn, user: str, domain: str, quota: int) -> None:
        txn.execute("REPLACE INTO userquota (user, domain, quota, timestamp) "
                    "VALUES (?, ?, ?, ?)", (user, domain, max(0, int(quota)), _now_text()))

    def get(self, txn: Txn, user: str, domain: str) -> int | None:
        row = txn.query_one("SELECT quota FROM userquota WHERE user = ? AND domain = ?",
                            (user, domain))
        return int(row[0]) if row else None

    def delete_user(self, txn: Txn, user: str, domain: str) -> int:
        return txn.execute("DELETE FROM userquota WHERE user = ? AND domain = ?",
                           (user, domain))

    def delete_domain(self, txn: Txn, domain: str) -> int:
        return txn.execute("DELETE FROM userquota WHERE domain = ?", (domain,))


class Relay:
    """``relay``: POP/IMAP-before-SMTP rows (email, ipaddr, Unix time)."""

    def add(self, txn: Txn, email: str, ipaddr: str, when: int) -> None:
        table = txn.tables.relay
        txn.execute(f"REPLACE INTO {table} (email, ipaddr, timestamp) VALUES (?, ?, ?)",
                    (email, ipaddr, int(when)))

    def allowed(self, txn: Txn, ipaddr: str, since: int, email: str | None = None) -> bool:
        table = txn.tables.relay
        if email is None:
            row = txn.query_one(f"SELECT 1 FROM {table} WHERE ipaddr = ? AND timestamp >= ?",
                                (ipaddr, int(since)))
        else:
            row = txn.query_one(f"SELECT 1 FROM {table} WHERE ipaddr = ? AND timestamp >= ? "
                                "AND LOWER(email) = ?", (ipaddr, int(since), email.lower()))
        return row is not None

    def expire(self, txn: Txn, before: int) -> int:
        return txn.execute(f"DELETE FROM {txn.tables.relay} WHERE timestamp < ?", (int(before),))


class AtrnMap:
    """``atrn_map``: which user may pull (ATRN) which domains."""

    def add(self, txn: Txn, user: str, domain: str, atrn_domain: str) -> bool:
        if txn.query_one("SELECT 1 FROM atrn_map WHERE pw_name = ? AND pw_domain = ? "
                         "AND domain_list = ?", (user, domain, atrn_domain)):
            return False
        txn.execute("INSERT INTO atrn_map (pw_name, pw_domain, domain_list) VALUES (?, ?, ?)",
                    (user, domain, atrn_domain))
        return True

    def delete(self, txn: Txn, user: str, domain: str, atrn_domain: str) -> int:
        return txn.execute("DELETE FROM atrn_map WHERE pw_name = ? AND pw_domain = ? "
                           "AND domain_list = ?", (user, domain, atrn_domain))

    def rename(self, txn: Txn, user: str, domain: str, old: str, new: str) -> int:
        return txn.execute("UPDATE atrn_map SET domain_list = ? WHERE pw_name = ? "
                           "AND pw_domain = ? AND domain_list = ?", (new, user, domain, old))

    def domains_of(self, txn: Txn, user: str, domain: str) -> list[str]:
        return [r[0] for r in txn.query(
            "SELECT domain_list FROM atrn_map WHERE pw_name = ? AND pw_domain = ? "
            "ORDER BY domain_list", (user, domain))]

    def list(self, txn: Txn, domain: str | None = None) -> list[tuple[str, str, str]]:
        if domain is None:
            rows = txn.query("SELECT pw_name, pw_domain, domain_list FROM atrn_map "
                             "ORDER BY pw_domain, pw_name, domain_list")
        else:
            rows = txn.query("SELECT pw_name, pw_domain, domain_list FROM atrn_map "
                             "WHERE domain_list = ? ORDER BY pw_domain, pw_name", (domain,))
        return [(r[0], r[1], r[2]) for r in rows]

    def delete_user(self, txn: Txn, user: str, domain: str) -> int:
        return txn.execute("DELETE FROM atrn_map WHERE pw_name = ? AND pw_domain = ?",
                           (user, domain))

    def delete_domain(self, txn: Txn, domain: str) -> int:
        """Rows of the users of ``domain`` and every grant to pull ``domain`` (vdeldomain)."""
        return txn.execute("DELETE FROM atrn_map WHERE pw_domain = ? OR domain_list = ?",
                           (domain, domain))


class IpAliasMap:
    """``ip_alias_map``: the domain assumed for bare logins on a local IP (vipmap)."""

    def set(self, txn: Txn, ipaddr: str, domain: str) -> None:
        txn.execute("REPLACE INTO ip_alias_map (ipaddr, domain, timestamp) VALUES (?, ?, ?)",
                    (ipaddr, domain, _now_text()))

    def delete(self, txn: Txn, ipaddr: str, domain: str | None = None) -> int:
        if domain is None:
            return txn.execute("DELETE FROM ip_alias_map WHERE ipaddr = ?", (ipaddr,))
        return txn.execute("DELETE FROM ip_alias_map WHERE ipaddr = ? AND domain = ?",
                           (ipaddr, domain))

    def domain_for(self, txn: Txn, ipaddr: str) -> str | None:
        row = txn.query_one("SELECT domain FROM ip_alias_map WHERE ipaddr = ?", (ipaddr,))
        return row[0] if row else None

    def list(self, txn: Txn, domain: str | None = None) -> list[tuple[str, str]]:
        if domain is None:
            rows = txn.query("SELECT ipaddr, domain FROM ip_alias_map ORDER BY ipaddr")
        else:
            rows = txn.query("SELECT ipaddr, domain FROM ip_alias_map WHERE domain = ? "
                             "ORDER BY ipaddr", (domain,))
        return [(r[0], r[1]) for r in rows]

    def delete_domain(self, txn: Txn, domain: str) -> int:
        return txn.execute("DELETE FROM ip_alias_map WHERE domain = ?", (domain,))


class AliasDomains:
    """``aliasdomain``: alias domain -> real domain."""

    def add(self, txn: Txn, alias: str, domain: str) -> None:
        txn.execute("INSERT INTO aliasdomain (alias, domain) VALUES (?, ?)", (alias, domain))

    def delete(self, txn: Txn, alias: str) -> int:
        return txn.execute("DELETE FROM aliasdomain WHERE alias = ?", (alias,))

    def real_domain(self, txn: Txn, alias: str) -> str | None:
        row = txn.query_one("SELECT domain FROM aliasdomain WHERE alias = ?", (alias,))
        return row[0] if row else None

    def aliases_of(self, txn: Txn, domain: str) -> list[str]:
        return [r[0] for r in txn.query(
            "SELECT alias FROM aliasdomain WHERE domain = ? ORDER BY alias", (domain,))]

    def delete_domain(self, txn: Txn, domain: str) -> int:
        return txn.execute("DELETE FROM aliasdomain WHERE domain = ? OR alias = ?",
                           (domain, domain))


#: Characters of IndiMail's hashed directory names (62 values).
DIR_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
MAX_LEVELS = 3


def hash_dir(slot: int) -> str:
    """The hash directory of allocation slot ``slot``.

    Slot 0 is the domain directory itself (the first users sit directly under
    it), then the 62 one-level directories ``0`` .. ``z``, then the 62² two-level
    ones ``0/0`` .. ``z/z``, then three levels.
    """
    if slot <= 0:
        return ""
    slot -= 1
    for depth in range(1, MAX_LEVELS + 1):
        size = len(DIR_CHARS) ** depth
        if slot < size:
            parts = []
            for _ in range(depth):
                slot, digit = divmod(slot, len(DIR_CHARS))
                parts.append(DIR_CHARS[digit])
            return "/".join(reversed(parts))
        slot -= size
    raise OverflowError("the domain's hashed directory space is full")


@dataclass(frozen=True)
class DirState:
    cur_users: int
    the_dir: str


class DirControl:
    """``dir_control``: the allocator of hashed user directories per domain.

    ``cur_users`` counts users placed in the domain (vadduser increments,
    vdeluser decrements, as IndiMail does); the directory of the next user is
    derived from it, ``users_per_level`` users per directory.
    """

    def allocate(self, txn: Txn, domain: str, users_per_level: int) -> str:
        row = txn.query_one("SELECT cur_users FROM dir_control WHERE domain = ?", (domain,))
        current = int(row[0] or 0) if row else 0
        the_dir = hash_dir(current // max(1, users_per_level))
        depth = the_dir.count("/") + 1 if the_dir else 0
        if row is None:
            txn.execute(
                "INSERT INTO dir_control (domain, cur_users, level_cur, level_max, "
                "level_start0, level_start1, level_start2, level_end0, level_end1, level_end2,"
                " level_mod0, level_mod1, level_mod2, level_index0, level_index1, level_index2,"
                " the_dir) VALUES (?, ?, ?, ?, 0, 0, 0, 61, 61, 61, 0, 2, 4, 0, 0, 0, ?)",
                (domain, current + 1, depth, MAX_LEVELS, the_dir))
        else:
            txn.execute("UPDATE dir_control SET cur_users = ?, level_cur = ?, the_dir = ?, "
                        "timestamp = CURRENT_TIMESTAMP WHERE domain = ?",
                        (current + 1, depth, the_dir, domain))
        return the_dir

    def release(self, txn: Txn, domain: str) -> None:
        txn.execute("UPDATE dir_control SET cur_users = cur_users - 1 "
                    "WHERE domain = ? AND cur_users > 0", (domain,))

    def get(self, txn: Txn, domain: str) -> DirState | None:
        row = txn.query_one("SELECT cur_users, the_dir FROM dir_control WHERE domain = ?",
                            (domain,))
        return DirState(int(row[0] or 0), row[1] or "") if row else None

    def delete_domain(self, txn: Txn, domain: str) -> int:
        return txn.execute("DELETE FROM dir_control WHERE domain = ?", (domain,))


@dataclass(frozen=True)
class DomainLimits:
    domain: str
    domain_expiry: int = -1
    passwd_expiry: int = -1
    defaultquota: int = 0
    defaultmaxmsgcount: int = 0


class VLimits:
    """``vlimits``: per-domain limits (read side; vlimit is a later tool)."""

    def get(self, txn: Txn, domain: str) -> DomainLimits | None:
        row = txn.query_one("SELECT domain_expiry, passwd_expiry, defaultquota, "
                            "defaultmaxmsgcount FROM vlimits WHERE domain = ?", (domain,))
        if row is None:
            return None
        return DomainLimits(domain, int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def delete_domain(self, txn: Txn, domain: str) -> int:
        return txn.execute("DELETE FROM vlimits WHERE domain = ?", (domain,))
