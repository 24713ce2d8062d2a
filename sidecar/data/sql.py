"""One SQL interface over SQLite (the embedded default: a file beside the vectors) and PostgreSQL (a catalog
shared by several sidecar processes). The catalog writes its SQL once, with `?` placeholders, in the part of
SQL both accept; `Database` runs it and translates the little that differs.

What differs, and how it is handled:
- placeholders: `?` here; psycopg wants `%s` (and a literal `%` doubled);
- `FOR UPDATE` (lock the rows read) and `Tx.lock` (an advisory lock on a name), so that concurrent processes
  take turns: PostgreSQL only; SQLite's `BEGIN IMMEDIATE` already takes the whole file for the transaction;
- the write token (`Database.writes`): SQLite's data_version and total_changes, PostgreSQL's
  `catalog_stamp` counter, bumped by a trigger on every write and visible only once its transaction commits;
- DDL: each migration is given per dialect where they differ (identity columns, triggers).
Rows come back as mappings (r["column"], dict(r)) from both.
"""
from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: str | Path) -> bool:
    return str(target).startswith(POSTGRES_SCHEMES)


class DatabaseError(RuntimeError):
    """The catalog database cannot be reached or opened; the message says which and why."""


class Database:
    dialect: str

    def query(self, sql: str, args: Iterable[Any] = ()) -> list:
        """One statement in a transaction of its own; its rows (empty for a write)."""
        raise NotImplementedError

    def transaction(self):
        """A context manager giving a Tx: its statements commit together, or none do."""
        raise NotImplementedError

    def writes(self) -> tuple:
        """A token that changes once any write to the catalog commits, by this process or another; cheap."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Tx:
    """The statements of one transaction (sqlite3 and psycopg cursors both fetch the same way)."""

    def __init__(self, run, run_many, lock=None):
        self._run, self._run_many, self._lock = run, run_many, lock

    def lock(self, key: str) -> None:
        """Hold a lock named `key` until the transaction ends, so that concurrent transactions about the same thing
        (the same audio) take turns even when the rows they look for do not exist yet. SQLite's transactions
        already take turns."""
        if self._lock is not None:
            self._lock(key)

    def execute(self, sql: str, args: Iterable[Any] = ()):
        return self._run(sql, tuple(args))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._run_many(sql, [tuple(r) for r in rows])


class SqliteDatabase(Database):
    """One connection behind a lock; every call is a short transaction (WAL, so readers in other processes
    are not blocked)."""

    dialect = "sqlite"
    _FOR_UPDATE = re.compile(r"\s+FOR UPDATE\b", re.I)

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")

    def _sql(self, sql: str) -> str:
        return self._FOR_UPDATE.sub("", sql)

    def query(self, sql: str, args: Iterable[Any] = ()) -> list:
        with self._lock:
            return self._db.execute(self._sql(sql), tuple(args)).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(lambda s, a: self._db.execute(self._sql(s), a), lambda s, rows: self._db.executemany(self._sql(s), rows))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def script(self, sql: str) -> None:
        with self._lock:
            self._db.executescript(sql)

    def writes(self) -> tuple:
        with self._lock:
            return self._db.execute("PRAGMA data_version").fetchone()[0], self._db.total_changes

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresDatabase(Database):
    """A small pool of psycopg 3 connections (the catalog is called from the event loop and worker threads)."""

    dialect = "postgres"
    _PLACEHOLDER = re.compile(r"\?")

    def __init__(self, url: str, *, max_connections: int = 8):
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.url = url
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_connections, kwargs={"row_factory": dict_row, "autocommit": False}, open=False,
            name="sidecar-catalog",
        )
        try:
            self._pool.open(wait=True, timeout=15)
        except (psycopg.Error, Exception) as e:  # PoolTimeout carries the last connection error in its message
            self._pool.close()
            raise DatabaseError(f"cannot connect to the catalog database {_redact(url)}: {e}") from None
        self._sql_cache: dict[str, str] = {}

    def _sql(self, sql: str) -> str:
        out = self._sql_cache.get(sql)
        if out is None:
            out = self._sql_cache[sql] = self._PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
        return out

    def query(self, sql: str, args: Iterable[Any] = ()) -> list:
        with self._pool.connection() as conn:  # commits when the block ends, rolls back on an error
            cur = conn.execute(self._sql(sql), tuple(args))
            return cur.fetchall() if cur.description else []

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._pool.connection() as conn:
            with conn.transaction():
                def many(s: str, rows: list) -> None:
                    with conn.cursor() as cur:
                        cur.executemany(self._sql(s), rows)

                yield Tx(
                    lambda s, a: conn.execute(self._sql(s), a), many,
                    lambda key: conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,)),
                )

    def script(self, sql: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(sql)

    def writes(self) -> tuple:
        return (self.query("SELECT writes FROM catalog_stamp")[0]["writes"],)

    def close(self) -> None:
        self._pool.close()


def _redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_database(target: str | Path) -> Database:
    """A PostgreSQL URL (postgresql://user:password@host:port/db), or the path of an SQLite file."""
    if is_postgres(target):
        return PostgresDatabase(str(target))
    return SqliteDatabase(Path(target))
