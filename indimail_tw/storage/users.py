"""The user repository: IndiMail's ``indimail`` (active) and ``indibak`` (inactive) tables.

Every method is a plain synchronous transaction function ``method(txn, ...)``;
run it with ``engine.run_sync`` or ``engine.runInteraction``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from indimail_tw.errors import DuplicateEntry
from indimail_tw.storage.engine import Txn

_COLUMNS = "pw_name, pw_domain, pw_passwd, pw_uid, pw_gid, pw_gecos, pw_dir, pw_shell"


@dataclass(frozen=True)
class User:
    """One row of ``indimail``/``indibak``; ``active`` says which table holds it."""

    name: str
    domain: str
    passwd: str
    uid: int = 1          # not a Unix uid: cluster sync state (1 = synced)
    gid: int = 0          # flag bits, see indimail_tw.auth.flags
    gecos: str = ""
    dir: str = ""
    shell: str = "NOQUOTA"  # the quota
    scram: str | None = None
    active: bool = True

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain}"

    @property
    def secret(self) -> str:
        """The password record authentication compares with, as IndiMail's
        sql_getpw builds it: ``scram + "," + pw_passwd`` when the ``scram``
        column is set (``{CRAM}clear`` or ``{SCRAM-...}iter,salt,keys``, with
        the crypt hash in ``pw_passwd``), else ``pw_passwd`` alone."""
        return f"{self.scram},{self.passwd}" if self.scram else self.passwd

    @property
    def maildir(self) -> str:
        return f"{self.dir.rstrip('/')}/Maildir"

    def with_(self, **changes: object) -> User:
        return replace(self, **changes)


def _row_to_user(row: tuple, active: bool) -> User:
    return User(name=row[0], domain=row[1], passwd=row[2] or "",
                uid=int(row[3] or 0), gid=int(row[4] or 0), gecos=row[5] or "",
                dir=row[6] or "", shell=row[7] or "NOQUOTA", active=active)


class Users:
    """Active and inactive users of every domain."""

    @staticmethod
    def _tables(txn: Txn) -> tuple[str, str]:
        return txn.tables.indimail, txn.tables.indibak

    def get(self, txn: Txn, name: str, domain: str) -> User | None:
        """The user, active first; ``None`` when neither table has it.

        ``User.scram`` is filled from the ``scram`` column where the table has one.
        """
        for table, active in zip(self._tables(txn), (True, False), strict=False):
            has_scram = "scram" in txn.columns(table)
            columns = _COLUMNS + (", scram" if has_scram else "")
            row = txn.query_one(f"SELECT {columns} FROM {table} "
                                "WHERE pw_name = ? AND pw_domain = ?", (name, domain))
            if row is not None:
                user = _row_to_user(row, active)
                return user.with_(scram=row[8] or None) if has_scram else user
        return None

    def add(self, txn: Txn, user: User) -> None:
        """Insert a new user; :class:`DuplicateEntry` if either table has it."""
        if self.get(txn, user.name, user.domain) is not None:
            raise DuplicateEntry(f"{user.address} exists")
        self._insert(txn, user)

    def _insert(self, txn: Txn, user: User) -> None:
        table = self._tables(txn)[0 if user.active else 1]
        txn.execute(f"INSERT INTO {table} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (user.name, user.domain, user.passwd, user.uid, user.gid,
                     user.gecos, user.dir, user.shell))
        if user.scram is not None and "scram" in txn.columns(table):
            txn.execute(f"UPDATE {table} SET scram = ? WHERE pw_name = ? AND pw_domain = ?",
                        (user.scram, user.name, user.domain))

    def delete(self, txn: Txn, name: str, domain: str) -> bool:
        count = 0
        for table in self._tables(txn):
            count += txn.execute(f"DELETE FROM {table} WHERE pw_name = ? AND pw_domain = ?",
                                 (name, domain))
        return count > 0

    def _update(self, txn: Txn, name: str, domain: str, assignments: str,
                params: tuple) -> bool:
        count = 0
        for table in self._tables(txn):
            count += txn.execute(
                f"UPDATE {table} SET {assignments}, timestamp = CURRENT_TIMESTAMP "
                "WHERE pw_name = ? AND pw_domain = ?", params + (name, domain))
        return count > 0

    def set_password(self, txn: Txn, name: str, domain: str, passwd: str,
                     scram: str | None = None) -> bool:
        changed = self._update(txn, name, domain, "pw_passwd = ?", (passwd,))
        for table in self._tables(txn):
            if "scram" in txn.columns(table):
                txn.execute(f"UPDATE {table} SET scram = ? WHERE pw_name = ? AND pw_domain = ?",
                            (scram, name, domain))
        return changed

    def set_flags(self, txn: Txn, name: str, domain: str, gid: int) -> bool:
        return self._update(txn, name, domain, "pw_gid = ?", (gid,))

    def set_quota(self, txn: Txn, name: str, domain: str, shell: str) -> bool:
        return self._update(txn, name, domain, "pw_shell = ?", (shell,))

    def set_gecos(self, txn: Txn, name: str, domain: str, gecos: str) -> bool:
        return self._update(txn, name, domain, "pw_gecos = ?", (gecos,))

    def set_dir(self, txn: Txn, name: str, domain: str, directory: str) -> bool:
        return self._update(txn, name, domain, "pw_dir = ?", (directory,))

    def set_active(self, txn: Txn, name: str, domain: str, active: bool) -> bool:
        """Move the row to ``indimail`` (active) or ``indibak``; False if already there."""
        user = self.get(txn, name, domain)
        if user is None or user.active == active:
            return False
        scram = self._scram(txn, user)
        self.delete(txn, name, domain)
        self._insert(txn, user.with_(active=active, scram=scram))
        return True

    def _scram(self, txn: Txn, user: User) -> str | None:
        table = self._tables(txn)[0 if user.active else 1]
        if "scram" not in txn.columns(table):
            return None
        row = txn.query_one(f"SELECT scram FROM {table} WHERE pw_name = ? AND pw_domain = ?",
                            (user.name, user.domain))
        return row[0] if row else None

    def list_domain(self, txn: Txn, domain: str) -> list[User]:
        users = []
        for table, active in zip(self._tables(txn), (True, False), strict=False):
            rows = txn.query(f"SELECT {_COLUMNS} FROM {table} WHERE pw_domain = ? "
                             "ORDER BY pw_name", (domain,))
            users += [_row_to_user(r, active) for r in rows]
        return sorted(users, key=lambda u: u.name)

    def count_domain(self, txn: Txn, domain: str) -> int:
        total = 0
        for table in self._tables(txn):
            row = txn.query_one(f"SELECT COUNT(*) FROM {table} WHERE pw_domain = ?", (domain,))
            total += int(row[0]) if row else 0
        return total

    def delete_domain(self, txn: Txn, domain: str) -> int:
        count = 0
        for table in self._tables(txn):
            count += txn.execute(f"DELETE FROM {table} WHERE pw_domain = ?", (domain,))
        return count
