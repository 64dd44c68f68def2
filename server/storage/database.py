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
from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

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
# A pooled connection idle for longer than this is pinged before use (one round trip); one
# in steady use is not: if the database went away meanwhile, the call fails as UNAVAILABLE
# and the pool drops every connection older than the failure (SQLAlchemy's pool invalidation).
_PING_AFTER_IDLE_SECONDS = 1.0
# The statement_timeout a connection already has is kept when it is within this share below
# the call's remaining time: a steady stream of calls with one client timeout sets it once.
_TIMEOUT_SLACK = 0.1
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


def _on_cursor_execute(
    _conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
) -> None:
    if context is None or not context.execution_options.get("orders_setup", False):
        count_statement()


class Database:
    """One engine per process; one connection per RPC, opened by `read()` or `write()`."""

    def __init__(self, url: str, pool_size: int = 16, transaction_pooling: bool = False) -> None:
        """`transaction_pooling`: a pooler in transaction mode (PgBouncer) sits between this
        process and PostgreSQL, so a database connection keeps nothing from one transaction
        to the next: no connection-level statement_timeout, no prepared statements."""
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.is_postgresql = self.url.get_backend_name() == "postgresql"
        if not (self.is_sqlite or self.is_postgresql):
            raise ValueError(f"unsupported database {self.url.get_backend_name()!r}")
        # Connection-level settings only where the connection is this process's own.
        self._session_state = self.is_postgresql and not transaction_pooling
        kwargs: dict[str, Any] = {}
        if self.is_postgresql:
            connect_args: dict[str, Any] = {"connect_timeout": 5}
            if transaction_pooling:
                connect_args["prepare_threshold"] = None  # psycopg's automatic PREPARE
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=5,
                connect_args=connect_args,
            )
        else:
            # The driver's own transaction handling is switched off so that BEGIN is ours to send.
            kwargs.update(connect_args={"check_same_thread": False, "timeout": 30})
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        else:
            _ping_when_idle(self.engine)
        event.listen(self.engine, "before_cursor_execute", _on_cursor_execute)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read. On PostgreSQL the connection runs in autocommit: each statement sees its
        own snapshot, exactly as in a READ COMMITTED transaction, without the BEGIN and
        COMMIT round trips. On SQLite the statements share one read transaction (one
        snapshot; BEGIN and COMMIT cost no round trip there)."""
        remaining = self._remaining_checked()
        with self._errors_mapped(), self.engine.connect() as connection:
            if self._session_state:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                _bound(connection, remaining)
                yield connection
            else:
                with connection.begin():
                    if self.is_postgresql and remaining is not None:
                        _bound_transaction(connection, remaining)
                    yield connection

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: on SQLite it takes the write lock up front (BEGIN IMMEDIATE),
        so two writers queue instead of failing with 'database is locked' half-way."""
        remaining = self._remaining_checked()
        with self._errors_mapped(), self._sessions() as session:
            # Leaving the block by an exception closes the session, which rolls back.
            if self.is_sqlite:
                session.connection(execution_options={"orders_write": True})
            elif self._session_state:
                # Before the transaction's first statement, so before psycopg's BEGIN.
                _bound(session.connection(), remaining)
            elif remaining is not None:
                _bound_transaction(session.connection(), remaining)
            yield session
            session.commit()

    def _remaining_checked(self) -> float | None:
        remaining = _remaining_seconds()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(
                "the call's deadline passed before the database was reached",
                reason="DEADLINE_EXCEEDED",
            )
        return remaining

    @contextmanager
    def _errors_mapped(self) -> Iterator[None]:
        try:
            yield
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

    def dispose(self) -> None:
        self.engine.dispose()


def _bound(connection: Connection, remaining: float | None) -> None:
    """Makes PostgreSQL give up when the call's deadline passes: the remaining time becomes
    the connection's statement_timeout (0, unbounded, without a deadline). Set outside any
    transaction, so that a rollback cannot undo it, and only when the connection's current
    value is not already within _TIMEOUT_SLACK below the remaining time. Setup, not a counted
    statement; sent through SQLAlchemy so that a dead connection is noticed and dropped.
    SQLite needs nothing here: the progress handler every connection got at connect time
    reads the call's deadline itself."""
    wanted = 0 if remaining is None else max(1, int(remaining * 1000))
    current = connection.info.get("orders_statement_timeout_ms")
    if current is not None and (
        current == wanted == 0 or (0 < wanted * (1 - _TIMEOUT_SLACK) <= current <= wanted)
    ):
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    in_autocommit = driver.autocommit
    driver.autocommit = True  # psycopg has not sent this transaction's BEGIN yet
    try:
        connection.exec_driver_sql(
            "SELECT set_config('statement_timeout', %(ms)s, false)",
            {"ms": str(wanted)},
            execution_options={"orders_setup": True},
        )
    finally:
        if not driver.closed:
            driver.autocommit = in_autocommit
    connection.info["orders_statement_timeout_ms"] = wanted


def _bound_transaction(connection: Connection, remaining: float) -> None:
    """_bound for a connection that keeps nothing between transactions (a pooler in
    transaction mode): statement_timeout for this transaction only, on every call."""
    connection.exec_driver_sql(
        "SELECT set_config('statement_timeout', %(ms)s, true)",
        {"ms": str(max(1, int(remaining * 1000)))},
        execution_options={"orders_setup": True},
    )


def _ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping costs a round trip on every checkout; this pings only a connection that
    sat idle in the pool for a while (a database restarted meanwhile is the likely case)."""

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        last_used = record.info.get("orders_last_used")
        if last_used is None or time.monotonic() - last_used < _PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool drops this connection and checks out (or opens) another.
            raise exc.DisconnectionError(str(error)) from error

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["orders_last_used"] = time.monotonic()


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
