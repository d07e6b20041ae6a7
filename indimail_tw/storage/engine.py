"""Database engines: SQLite (embedded default) and MySQL/MariaDB (IndiMail's).

An engine owns the connection details and the SQL dialect; repositories write
their statements once, with ``?`` placeholders, as plain synchronous
functions of a :class:`Txn`.  The server runs them in the adbapi thread pool
(:meth:`Engine.runInteraction`, a Deferred); CLIs and ``vchkpass`` run them
inline (:meth:`Engine.run_sync`).  Server code that already runs in a worker
thread (local delivery, the recipient check) reads through
:meth:`Engine.run_read` on that thread's own connection, without a second hop
to the pool.  Repository code never asks which engine it runs on.

Driver exceptions are translated at this boundary: an unreachable or failing
database becomes :class:`StoreUnavailable` (a temporary failure, never a
bounce), a key collision :class:`DuplicateEntry`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar
from collections.abc import Callable, Mapping

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from indimail_tw.errors import DuplicateEntry, SchemaTooNew, StoreError, StoreUnavailable

T = TypeVar("T")

#: Version of the schema this code writes and understands.
SCHEMA_VERSION = 1
#: pw_gid flag encoding in use (IndiMail's values as of 2024-05-28; see auth.flags).
FLAG_ENCODING = 2024

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class TableNames:
    """Table names IndiMail lets the environment override."""

    indimail: str = "indimail"
    indibak: str = "indibak"
    relay: str = "relay"
    hostcntrl: str = "hostcntrl"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TableNames:
        names = cls(
            indimail=environ.get("MYSQL_TABLE") or "indimail",
            indibak=environ.get("MYSQL_INACTIVE_TABLE") or "indibak",
            relay=environ.get("RELAY_TABLE") or "relay",
            hostcntrl=environ.get("CNTRL_TABLE") or "hostcntrl",
        )
        for value in (names.indimail, names.indibak, names.relay, names.hostcntrl):
            if not _IDENT.match(value):
                raise StoreError(f"invalid table name in the environment: {value!r}")
        return names


class Txn:
    """A cursor in the engine's dialect: ``?`` placeholders everywhere."""

    def __init__(self, cursor: Any, engine: Engine) -> None:
        self._cursor = cursor
        self.engine = engine
        self.tables = engine.tables

    def execute(self, sql: str, params: tuple | list = ()) -> int:
        self._cursor.execute(self.engine.dialect_sql(sql), tuple(params))
        return self._cursor.rowcount

    def executemany(self, sql: str, rows: list) -> None:
        self._cursor.executemany(self.engine.dialect_sql(sql), rows)

    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        self._cursor.execute(self.engine.dialect_sql(sql), tuple(params))
        return list(self._cursor.fetchall())

    def query_one(self, sql: str, params: tuple | list = ()) -> tuple | None:
        self._cursor.execute(self.engine.dialect_sql(sql), tuple(params))
        return self._cursor.fetchone()

    def columns(self, table: str) -> set[str]:
        return self.engine.columns(self, table)


class Engine:
    """Base class: schema preparation and the two ways of running a transaction."""

    name = "engine"
    schema_file = ""
    driver: Any = None

    def __init__(self, tables: TableNames | None = None) -> None:
        self.tables = tables or TableNames()
        self._pool: adbapi.ConnectionPool | None = None
        self._column_cache: dict[str, set[str]] = {}
        self._local = threading.local()          # each worker thread's read connection
        self._readers: set[Any] = set()          # all of them, closed by close()
        self._readers_lock = threading.Lock()
        self._generation = 0                     # close() makes held connections stale

    # -- dialect -----------------------------------------------------------
    def dialect_sql(self, sql: str) -> str:
        return sql

    def begin(self, cursor: Any) -> None:
        """Start a transaction on ``cursor`` (the driver's implicit BEGIN by default)."""

    def begin_read(self, cursor: Any) -> None:
        """Start a transaction that only reads (the driver's implicit BEGIN by default)."""

    def columns(self, txn: Txn, table: str) -> set[str]:
        raise NotImplementedError

    # -- connections (subclasses) --------------------------------------------
    def _connect(self) -> Any:
        raise NotImplementedError

    def _make_pool(self) -> adbapi.ConnectionPool:
        raise NotImplementedError

    # -- running transactions -------------------------------------------------
    def run_sync(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(txn, *args)`` in one transaction on a fresh connection, blocking."""
        try:
            conn = self._connect()
        except Exception as e:  # noqa: BLE001 - any driver error means "unreachable"
            raise self.translate(e) from e
        try:
            cursor = conn.cursor()
            try:
                self.begin(cursor)
                result = fn(Txn(cursor, self), *args, **kw)
            except BaseException as e:
                with contextlib.suppress(Exception):
                    conn.rollback()
                raise self.translate(e) from e
            try:
                conn.commit()
            except Exception as e:  # noqa: BLE001
                raise self.translate(e) from e
            return result
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def run_read(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(txn, *args)``, which only reads, in one transaction on the calling
        thread's own connection, blocking.

        For server code that already runs in a worker thread.  The connection stays
        open for the thread's next call; one that fails is closed, and when it had
        been open before (a server may drop idle connections) the read is tried
        once more on a new one.  :meth:`close` closes them all.  Writes go through
        :meth:`runInteraction`.
        """
        conn = self._reader()
        reused = conn is not None
        if conn is None:
            conn = self._new_reader()
        try:
            return self._read(conn, fn, args, kw)
        except StoreUnavailable:
            if not reused:
                raise
        return self._read(self._new_reader(), fn, args, kw)

    def _reader(self) -> Any:
        held = getattr(self._local, "reader", None)
        if held is None or held[0] != self._generation:
            return None
        return held[1]

    def _new_reader(self) -> Any:
        try:
            conn = self._connect()
        except Exception as e:  # noqa: BLE001 - any driver error means "unreachable"
            raise self.translate(e) from e
        with self._readers_lock:
            self._readers.add(conn)
            self._local.reader = (self._generation, conn)
        return conn

    def _read(self, conn: Any, fn: Callable[..., T], args: tuple, kw: dict) -> T:
        try:
            cursor = conn.cursor()
            self.begin_read(cursor)
            result = fn(Txn(cursor, self), *args, **kw)
            conn.commit()           # ends the transaction: the next call sees new rows
            return result
        except BaseException as e:
            self._local.reader = None
            with self._readers_lock:
                self._readers.discard(conn)
            with contextlib.suppress(Exception):
                conn.close()
            raise self.translate(e) from e

    def runInteraction(self, fn: Callable[..., T], *args: Any, **kw: Any) -> Deferred:
        """Run ``fn(txn, *args)`` in one transaction in the thread pool."""
        if self._pool is None:
            self._pool = self._make_pool()

        def interaction(cursor: Any) -> T:
            self.begin(cursor)
            return fn(Txn(cursor, self), *args, **kw)

        d = self._pool.runInteraction(interaction)
        d.addErrback(self._translate_failure)
        return d

    def _translate_failure(self, failure: Failure) -> Failure:
        error = failure.value
        translated = self.translate(error)
        if translated is error:
            return failure
        return Failure(translated)

    def translate(self, error: BaseException) -> BaseException:
        """Map a driver exception to the store's error family (others pass through)."""
        if isinstance(error, StoreError) or self.driver is None:
            return error
        if isinstance(error, self.driver.IntegrityError):
            return DuplicateEntry(str(error))
        if isinstance(error, (self.driver.OperationalError, self.driver.InterfaceError,
                              self.driver.InternalError, OSError)):
            return StoreUnavailable(f"{self.name} database unavailable: {error}")
        if isinstance(error, self.driver.Error):
            return StoreError(f"{self.name} database error: {error}")
        return error

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        with self._readers_lock:
            readers, self._readers = self._readers, set()
            self._generation += 1
        for conn in readers:
            with contextlib.suppress(Exception):
                conn.close()

    # -- schema ---------------------------------------------------------------
    def schema_statements(self) -> list[str]:
        text = resources.files("indimail_tw.storage").joinpath(
            "schema", self.schema_file).read_text()
        text = "\n".join(line for line in text.splitlines()
                         if not line.lstrip().startswith("--"))
        text = text.format(**vars(self.tables))
        return [s.strip() for s in text.split(";") if s.strip()]

    def prepare(self, txn: Txn) -> None:
        """Create missing tables and check the schema version (a txn function)."""
        for statement in self.schema_statements():
            txn.execute(statement)
        row = txn.query_one("SELECT version, flag_encoding FROM indimail_tw_schema WHERE id = 1")
        if row is None:
            txn.execute("INSERT INTO indimail_tw_schema (id, version, flag_encoding) "
                        "VALUES (1, ?, ?)", (SCHEMA_VERSION, FLAG_ENCODING))
        else:
            check_version(row[0])

    def check(self, txn: Txn) -> None:
        """Refuse a database written by newer code, without creating anything."""
        try:
            row = txn.query_one("SELECT version FROM indimail_tw_schema WHERE id = 1")
        except Exception as e:  # noqa: BLE001 - no version table: an IndiMail database
            translated = self.translate(e)
            if isinstance(translated, StoreUnavailable) and not _is_missing_table(e):
                raise translated from e
            return
        if row is not None:
            check_version(row[0])


def _is_missing_table(error: BaseException) -> bool:
    text = str(error).lower()
    return "no such table" in text or "doesn't exist" in text or "1146" in text


def check_version(version: int) -> None:
    if int(version) > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the database has schema version {version}, newer than this "
            f"indimail_tw understands ({SCHEMA_VERSION}); upgrade indimail_tw")


class SQLiteEngine(Engine):
    """The embedded default: one SQLite file in WAL mode."""

    name = "sqlite"
    schema_file = "sqlite.sql"
    driver = sqlite3

    def __init__(self, path: str, tables: TableNames | None = None, *,
                 create: bool = True) -> None:
        super().__init__(tables)
        self.path = path
        self.create = create

    def _open(self) -> sqlite3.Connection:
        if self.create:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        else:
            if not os.path.exists(self.path):
                raise StoreUnavailable(f"no user database at {self.path}")
            conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=30,
                                   check_same_thread=False)
        self._configure(conn)
        return conn

    @staticmethod
    def _configure(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")

    def _connect(self) -> sqlite3.Connection:
        return self._open()

    def begin(self, cursor: Any) -> None:
        # Take the write lock up front: a deferred transaction that reads and
        # then writes cannot upgrade when another process (a CLI, a second
        # server) committed meanwhile, and fails at once instead of waiting.
        # BEGIN IMMEDIATE waits (busy_timeout) and then holds the lock.
        cursor.execute("BEGIN IMMEDIATE")

    def begin_read(self, cursor: Any) -> None:
        # A read needs no write lock: in WAL mode it sees one snapshot and never
        # waits for writers, nor makes them wait.
        cursor.execute("BEGIN")

    def _make_pool(self) -> adbapi.ConnectionPool:
        if not self.create and not os.path.exists(self.path):
            raise StoreUnavailable(f"no user database at {self.path}")
        if self.create:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # One connection: SQLite serialises writers anyway, and one thread
        # avoids "database is locked" between our own connections.
        return adbapi.ConnectionPool(
            "sqlite3", self.path, timeout=30, check_same_thread=False,
            cp_min=1, cp_max=1, cp_noisy=False, cp_openfun=self._configure)

    def columns(self, txn: Txn, table: str) -> set[str]:
        if table not in self._column_cache:
            rows = txn.query(f"PRAGMA table_info({table})")
            self._column_cache[table] = {row[1] for row in rows}
        return self._column_cache[table]


@dataclass(frozen=True)
class MySQLParams:
    host: str = "localhost"
    user: str = "indimail"
    password: str = "ssh-1.5-"
    database: str = "indimail"
    port: int = 3306
    socket: str | None = None
    ssl: bool = False
    extra: dict = field(default_factory=dict)

    def connect_kwargs(self) -> dict:
        kw: dict[str, Any] = dict(host=self.host, user=self.user, password=self.password,
                                  database=self.database, charset="utf8mb4",
                                  autocommit=False, connect_timeout=10)
        if self.socket:
            kw["unix_socket"] = self.socket
        else:
            kw["port"] = self.port
        if self.ssl:
            kw["ssl"] = {"check_hostname": False}
        kw.update(self.extra)
        return kw


def parse_host_mysql(text: str, environ: Mapping[str, str] | None = None,
                     source: str = "host.mysql") -> MySQLParams:
    """Parse IndiMail's ``host.mysql``: ``host`` or ``host:user:password:socket_or_port[:ssl]``.

    ``MYSQL_HOST``, ``MYSQL_USER``, ``MYSQL_PASSWD``, ``MYSQL_DATABASE``,
    ``MYSQL_VPORT`` and ``MYSQL_SOCKET`` override the file, as IndiMail's
    variables override its control files.  ``host:root::3306`` means user root
    with an empty password; a missing password field means IndiMail's default.
    """
    env = os.environ if environ is None else environ
    line = next((ln.strip() for ln in text.splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")), "")
    fields = line.split(":") if line else []
    defaults = MySQLParams()
    host = fields[0] if fields and fields[0] else defaults.host
    user = fields[1] if len(fields) > 1 and fields[1] else defaults.user
    # An empty password field is an explicit empty password; only a missing
    # field falls back to IndiMail's default.
    password = fields[2] if len(fields) > 2 else defaults.password
    port, socket = defaults.port, None
    if len(fields) > 3 and fields[3]:
        if fields[3].startswith("/"):
            socket = fields[3]
        else:
            port = _port(fields[3], source)
    ssl = len(fields) > 4 and fields[4].strip().lower() in ("ssl", "1", "yes", "true")
    if env.get("MYSQL_VPORT"):
        port = _port(env["MYSQL_VPORT"], "MYSQL_VPORT")
    return MySQLParams(
        host=env.get("MYSQL_HOST") or host,
        user=env.get("MYSQL_USER") or user,
        password=env.get("MYSQL_PASSWD") or password,
        database=env.get("MYSQL_DATABASE") or defaults.database,
        port=port,
        socket=env.get("MYSQL_SOCKET") or socket,
        ssl=ssl,
    )


def _port(text: str, source: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise StoreError(f"{source}: not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise StoreError(f"{source}: port out of range: {port}")
    return port


class MySQLEngine(Engine):
    """MySQL/MariaDB through PyMySQL; the server side runs on adbapi's pool."""

    name = "mysql"
    schema_file = "mysql.sql"

    def __init__(self, params: MySQLParams, tables: TableNames | None = None) -> None:
        super().__init__(tables)
        import pymysql

        self.driver = pymysql
        self.params = params
        self._sql_cache: dict[str, str] = {}

    def dialect_sql(self, sql: str) -> str:
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = sql.replace("%", "%%").replace("?", "%s")
            self._sql_cache[sql] = cached
        return cached

    def _connect(self) -> Any:
        return self.driver.connect(**self.params.connect_kwargs())

    def _make_pool(self) -> adbapi.ConnectionPool:
        return adbapi.ConnectionPool(
            "pymysql", cp_min=1, cp_max=5, cp_reconnect=True, cp_noisy=False,
            **self.params.connect_kwargs())

    def columns(self, txn: Txn, table: str) -> set[str]:
        if table not in self._column_cache:
            rows = txn.query(f"SHOW COLUMNS FROM {table}")
            self._column_cache[table] = {row[0] for row in rows}
        return self._column_cache[table]


def open_engine(paths: Any, environ: Mapping[str, str] | None = None, *,
                create: bool = True) -> Engine:
    """The engine an installation uses: MySQL when ``control/host.mysql`` exists,
    as in IndiMail, otherwise the embedded SQLite file."""
    env = os.environ if environ is None else environ
    tables = TableNames.from_env(env)
    host_file = os.path.join(paths.control, "host.mysql")
    if os.path.exists(host_file):
        with open(host_file) as f:
            params = parse_host_mysql(f.read(), env, source=host_file)
        return MySQLEngine(params, tables)
    return SQLiteEngine(paths.sqlite_file, tables, create=create)
