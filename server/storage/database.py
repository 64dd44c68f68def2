"""Engines and sessions: the one place that opens them, and the per-call statement count."""

from __future__ import annotations

import contextvars
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ..domain.errors import DeadlineExceeded, Unavailable

__all__ = ["Database", "StatementCount", "count_statement", "statements_counted"]


log = logging.getLogger("orders.database")

# Errors that mean "the database cannot be reached or is busy", not "the request is wrong":
# the caller may retry. SQLAlchemy wraps the driver's; the bulk paths meet the driver's own.
_UNREACHABLE = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.TimeoutError,
    psycopg.OperationalError,
    sqlite3.OperationalError,
)


_LONGEST_TIMEOUT_MS = 2**31 - 1  # PostgreSQL's statement_timeout is an int of milliseconds
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "orders_deadline", default=None
)


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Bounds every transaction opened inside by a call's remaining time (None: unbounded).
    A deadline beyond what PostgreSQL's statement_timeout can hold (some proxies send
    'practically infinite') counts as none."""
    if seconds is not None and seconds * 1000 > _LONGEST_TIMEOUT_MS:
        seconds = None
    token = _deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _deadline_passed() -> int:
    ends = _deadline.get()
    return int(ends is not None and time.monotonic() > ends)


def _remaining_seconds() -> float | None:
    ends = _deadline.get()
    return None if ends is None else ends - time.monotonic()


def _is_timeout(exc: BaseException) -> bool:
    """A statement cut short by the deadline (PostgreSQL's query_canceled, SQLite's
    interrupt), as opposed to a database that cannot be reached."""
    original = getattr(exc, "orig", exc)
    if isinstance(original, psycopg.errors.QueryCanceled):
        return True
    return isinstance(original, sqlite3.OperationalError) and "interrupt" in str(original)


class StatementCount:
    """How many SQL statements the current call executed (one per round trip to the database)."""

    def __init__(self) -> None:
        self.value = 0


_current_count: contextvars.ContextVar[StatementCount | None] = contextvars.ContextVar(
    "orders_statement_count", default=None
)


@contextmanager
def statements_counted() -> Iterator[StatementCount]:
    count = StatementCount()
    token = _current_count.set(count)
    try:
        yield count
    finally:
        _current_count.reset(token)


def count_statement() -> None:
    """Counts one statement; bulk paths that bypass SQLAlchemy (COPY) call it themselves."""
    count = _current_count.get()
    if count is not None:
        count.value += 1


def _on_cursor_execute(*_args: Any, **_kwargs: Any) -> None:
    count_statement()


class Database:
    """One engine per process; one session per RPC, opened by `session()` or `write()`."""

    def __init__(self, url: str, pool_size: int = 16) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.is_postgresql = self.url.get_backend_name() == "postgresql"
        if not (self.is_sqlite or self.is_postgresql):
            raise ValueError(f"unsupported database {self.url.get_backend_name()!r}")
        kwargs: dict[str, Any] = {}
        if self.is_postgresql:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_timeout=5,
                connect_args={"connect_timeout": 5},
            )
        else:
            # The driver's own transaction handling is switched off so that BEGIN is ours to send.
            kwargs.update(connect_args={"check_same_thread": False, "timeout": 30})
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        event.listen(self.engine, "before_cursor_execute", _on_cursor_execute)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read transaction."""
        with self._transaction(write=False) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: on SQLite it takes the write lock up front (BEGIN IMMEDIATE),
        so two writers queue instead of failing with 'database is locked' half-way."""
        with self._transaction(write=True) as session:
            yield session

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Session]:
        # Leaving the block by an exception closes the session, which rolls back.
        remaining = _remaining_seconds()
        try:
            with self._sessions() as session:
                if (write and self.is_sqlite) or remaining is not None:
                    options = {"orders_write": True} if write and self.is_sqlite else {}
                    driver = session.connection(execution_options=options).connection
                if remaining is None:
                    yield session
                    session.commit()
                else:
                    with self._bounded(driver.driver_connection, remaining):
                        yield session
                        session.commit()
        except _UNREACHABLE as exc:
            if _is_timeout(exc):
                raise DeadlineExceeded(
                    "the call's deadline passed while the database was working; nothing was "
                    "changed",
                    reason="DEADLINE_EXCEEDED",
                ) from exc
            log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else exc)
            raise Unavailable(
                "the database is unavailable; try again shortly", reason="DATABASE_UNAVAILABLE"
            ) from exc

    @contextmanager
    def _bounded(self, driver: Any, remaining: float) -> Iterator[None]:
        """Makes the database give up when the call's deadline passes: the remaining time
        becomes PostgreSQL's statement_timeout for this transaction, or a progress handler
        interrupting SQLite. Sent on the driver's connection: setup, not a counted statement."""
        if remaining <= 0:
            raise DeadlineExceeded(
                "the call's deadline passed before the database was reached",
                reason="DEADLINE_EXCEEDED",
            )
        if self.is_postgresql:
            driver.execute(
                "SELECT set_config('statement_timeout', %s, true)",
                (str(max(1, int(remaining * 1000))),),
            )
            yield
            return
        # SQLite: the progress handler every connection got at connect time reads the same
        # deadline from this call's context, so nothing is set here or undone after commit.
        yield

    def dispose(self) -> None:
        self.engine.dispose()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.close()
        # Interrupts a statement once the calling RPC's deadline has passed; the deadline is
        # the caller's context variable, so a connection carries nothing from call to call.
        dbapi_connection.set_progress_handler(_deadline_passed, 10_000)

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Sent on the driver's connection: transaction control is not counted as a statement,
        # as psycopg's implicit BEGIN on PostgreSQL is not.
        immediate = conn.get_execution_options().get("orders_write", False)
        conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
