"""Database plumbing: the declarative base, a UTC timestamp type, engines for SQLite and PostgreSQL,
and the unit-of-work wrappers that commit at the edge.

SQLite runs in WAL mode. Writers open their transaction with ``BEGIN IMMEDIATE`` so that all writes are
serialized by the database (the "single writer"), while readers keep reading a consistent snapshot.
PostgreSQL serializes writers per organization with row locks taken by the services.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, Engine, Integer, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool, QueuePool, StaticPool
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: A 64-bit integer primary key that autoincrements on both databases.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on both databases.

    PostgreSQL stores ``timestamptz``; SQLite stores the UTC wall time as text of fixed width, so
    string comparison in SQL orders correctly. Naive datetimes are refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine configured for our use of each database."""
    if is_sqlite(url):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        poolclass = kwargs.pop("poolclass", None) or _sqlite_pool(path)
        if poolclass is QueuePool:
            # As many pooled connections as the server's thread pool has threads (40), so busy
            # moments never close and reopen connections (each open re-runs the PRAGMAs).
            kwargs.setdefault("pool_size", 40)
            kwargs.setdefault("max_overflow", 10)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=poolclass,
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def _sqlite_pool(path: str) -> Any:
    if not path or path == ":memory:":
        return StaticPool
    return QueuePool if path else NullPool


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself, so writers can ask for IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """An engine plus the two ways to use it: ``read()`` and ``write()``.

    Services receive a ``Session`` and never commit; these wrappers commit (or roll back) at the edge.
    """

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.dialect = self.engine.dialect.name
        writer = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE")
            if self.dialect == "sqlite"
            else self.engine
        )
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        # The hot path's single-statement reads (:func:`fetch_one`). On PostgreSQL a small pool of
        # their own in autocommit (one round trip per read: no BEGIN, no ROLLBACK, no ping; a
        # dropped connection is replaced and the read retried once); at most 8 connections, so
        # a burst waits for one instead of opening more. On SQLite the main engine.
        self.hot_engine = (
            self.engine
            if self.dialect == "sqlite"
            else make_engine(
                url,
                isolation_level="AUTOCOMMIT",
                pool_pre_ping=False,
                pool_size=8,
                max_overflow=0,
                pool_reset_on_return=None,
            )
        )
        self._writer = sessionmaker(writer, expire_on_commit=False)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed when the block ends without error."""
        with self._writer() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work; its transaction is rolled back when the block ends (closing a
        session keeps the objects it loaded readable)."""
        with self._reader() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self.hot_engine is not self.engine:
            self.hot_engine.dispose()


def driver_timestamp(dialect: str, value: datetime | None) -> object:
    """A UTC timestamp as the driver wants it for a raw statement: the same text SQLAlchemy writes on
    SQLite, an aware datetime on PostgreSQL."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    if dialect == "sqlite":
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def bulk_insert(
    session: Session, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Insert many rows in the session's transaction with no per-row ORM or SQLAlchemy bind work: one
    ``COPY … FROM STDIN`` on PostgreSQL (one statement, not one per row), one driver-level
    ``executemany`` elsewhere. Values must already be in the driver's types (see
    :func:`driver_timestamp`; JSON as text). A failure raises SQLAlchemy's exception for it (an
    ``IntegrityError`` for a constraint), as a statement would."""
    if not rows:
        return
    conn = session.connection()
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        sql = f"COPY {table} ({names}) FROM STDIN"
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            with raw.cursor() as cur, cur.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error) from exc
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {table} ({names}) "  # noqa: S608 - names are ours, never input
        f"VALUES ({', '.join([mark] * len(columns))})"
    )
    conn.exec_driver_sql(sql, rows)


_PG_PARAMS = re.compile(r"(?<![:\w]):(\w+)")


@functools.lru_cache(maxsize=64)
def _for_dialect(sql: str, dialect: str) -> str:
    return sql if dialect == "sqlite" else _PG_PARAMS.sub(r"%(\1)s", sql)


def fetch_one(engine: Engine, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """One row of one read-only statement on a pooled driver connection of ``engine`` (a
    :attr:`Database.hot_engine`): the hot path's read, with no ORM session and no statement building
    per call. ``sql`` names its parameters ``:name`` (rewritten once to psycopg's ``%(name)s`` on
    PostgreSQL); values must be in the driver's types (see :func:`driver_timestamp`). One statement
    reads one consistent snapshot of committed rows."""
    if engine.dialect.name == "sqlite":
        conn = engine.raw_connection()
        try:
            cur = conn.cursor()  # autocommit mode: the statement is its own read transaction
            cur.execute(sql, params)
            row = cur.fetchone()
            cur.close()
        finally:
            conn.close()
        return None if row is None else tuple(row)
    statement = _for_dialect(sql, "postgresql")
    for attempt in (1, 2):
        conn = engine.raw_connection()
        try:
            row = conn.driver_connection.execute(statement, params).fetchone()  # type: ignore[union-attr]
        except engine.dialect.loaded_dbapi.OperationalError:
            conn.invalidate()  # the server closed it (a restart, an idle timeout): use a new one
            if attempt == 2:
                raise
            continue
        finally:
            conn.close()
        return None if row is None else tuple(row)
    raise AssertionError("unreachable")
