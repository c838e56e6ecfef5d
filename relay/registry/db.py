"""Database URLs and async engines: SQLite (aiosqlite) or PostgreSQL (asyncpg).

Several processes (``serve`` and CLI commands, or several relays) share one database,
so SQLite runs in WAL mode with a busy timeout, and writes take the lock up front
(``BEGIN IMMEDIATE``): a deferred transaction that later upgrades to a writer fails
at once with "database is locked" instead of waiting.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from shared.config import ConfigError

DEFAULT_SQLITE_BUSY_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
WRITE_OPTION = "onprem_write"

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def resolve_url(database_url: str, base_dir: str | Path = ".") -> URL:
    """Parse ``database_url``, pick the async driver, and anchor a relative SQLite path
    at ``base_dir`` (the config file's folder). Raises ``ConfigError``."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise ConfigError(f"database_url: cannot parse {database_url!r}") from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ConfigError(
            f"database_url: unsupported database {url.drivername!r}; "
            "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB"
        )
    url = url.set(drivername=driver)
    if driver.startswith("sqlite") and url.database and not is_memory(url):
        path = Path(url.database).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        url = url.set(database=str(path.resolve()))
    return url


def is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and (
        not url.database or url.database == ":memory:" or url.query.get("mode") == "memory"
    )


def display_url(url: URL) -> str:
    """The URL without its password, for messages and logs."""
    return url.render_as_string(hide_password=True)


def create_engine(
    url: URL,
    *,
    sqlite_busy_timeout_s: float = DEFAULT_SQLITE_BUSY_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> AsyncEngine:
    # Parameters never end up in exception messages: they may hold token hashes.
    kwargs: dict[str, Any] = {"hide_parameters": True}
    backend = url.get_backend_name()
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": sqlite_busy_timeout_s}
        if is_memory(url):
            kwargs["poolclass"] = StaticPool
    else:
        kwargs["connect_args"] = {"timeout": connect_timeout_s}
        kwargs["pool_pre_ping"] = True
    engine = create_async_engine(url, **kwargs)
    if backend == "sqlite":
        _setup_sqlite(engine, sqlite_busy_timeout_s)
    return engine


def _enable_wal(cur: Any, busy_timeout_s: float) -> None:
    """``PRAGMA journal_mode = WAL`` needs an exclusive lock on a fresh file, and SQLite
    answers "database is locked" at once there instead of honouring busy_timeout when
    several processes open the same new database together: retry within that bound.
    The sleeps are short and happen only in that race, when a connection opens."""
    deadline = time.monotonic() + busy_timeout_s
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _setup_sqlite(engine: AsyncEngine, busy_timeout_s: float) -> None:
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
            _enable_wal(cur, busy_timeout_s)
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def describe_error(exc: BaseException) -> str:
    """One line for a database failure: the driver's message without SQL or parameters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        text = str(exc.orig) or type(exc.orig).__name__
    elif isinstance(exc, SQLAlchemyError):
        text = str(exc.args[0]) if exc.args else type(exc).__name__
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split("\n", 1)[0].split())
