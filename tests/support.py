"""Shared test helpers: engines on both backends, temporary roots."""

from __future__ import annotations

import itertools
import os
import tempfile
import unittest

from indimail_tw.storage.engine import MySQLEngine, MySQLParams, SQLiteEngine, TableNames

IN_CI = os.environ.get("CI", "").lower() == "true"
_counter = itertools.count()


def mysql_server_params(database: str = "mysql") -> MySQLParams:
    """The MariaDB tests use: 127.0.0.1:3306 as root with an empty password
    (overridable with TEST_MYSQL_HOST/PORT/USER/PASSWORD)."""
    return MySQLParams(
        host=os.environ.get("TEST_MYSQL_HOST", "127.0.0.1"),
        port=int(os.environ.get("TEST_MYSQL_PORT", "3306")),
        user=os.environ.get("TEST_MYSQL_USER", "root"),
        password=os.environ.get("TEST_MYSQL_PASSWORD", ""),
        database=database,
    )


def mysql_available() -> str | None:
    """None when MariaDB answers, else the reason it does not."""
    import pymysql

    try:
        conn = pymysql.connect(**mysql_server_params().connect_kwargs())
    except Exception as e:  # noqa: BLE001
        return f"MariaDB not reachable: {e}"
    conn.close()
    return None


def require_mysql(testcase: unittest.TestCase) -> None:
    """Skip when MariaDB is absent, except in CI where that is a failure."""
    reason = mysql_available()
    if reason is None:
        return
    if IN_CI:
        testcase.fail(reason + " (CI requires MariaDB)")
    testcase.skipTest(reason)


def create_mysql_database() -> tuple[MySQLParams, callable]:
    """A fresh, empty database; returns its parameters and a function that drops it."""
    import pymysql

    name = f"itw_test_{os.getpid()}_{next(_counter)}"
    admin = pymysql.connect(**mysql_server_params().connect_kwargs())
    try:
        with admin.cursor() as c:
            c.execute(f"DROP DATABASE IF EXISTS {name}")
            c.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        admin.commit()
    finally:
        admin.close()

    def drop() -> None:
        conn = pymysql.connect(**mysql_server_params().connect_kwargs())
        try:
            with conn.cursor() as c:
                c.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.commit()
        finally:
            conn.close()

    return mysql_server_params(name), drop


class EngineMixin:
    """Gives a test case ``self.engine`` (prepared) for the backend in ``backend``."""

    backend = "sqlite"

    def make_engine(self, tables: TableNames | None = None):
        if self.backend == "sqlite":
            directory = tempfile.mkdtemp(prefix="itw-db-")
            engine = SQLiteEngine(os.path.join(directory, "indimail.sqlite"), tables)
            self.addCleanup(lambda: __import__("shutil").rmtree(directory, True))
        else:
            require_mysql(self)
            params, drop = create_mysql_database()
            engine = MySQLEngine(params, tables)
            self.addCleanup(drop)
        self.addCleanup(engine.close)
        return engine
