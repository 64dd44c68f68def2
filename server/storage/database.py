"""Engines and connections: the one place that opens them, bounds them by the call's deadline
and counts the call's statements."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from .. import calls, tracing
from ..domain.errors import DeadlineExceeded, Unavailable
from ..observability import DB_READS
from .replica import REPLAYED_SQL, Replica, parse_lsn

__all__ = ["Database", "Rows", "Sql", "count_statement"]


log = logging.getLogger("orders.database")

_DRIVER_ERRORS = (psycopg.Error, sqlite3.Error)
# Errors that mean "the database cannot be reached or is busy", not "the request is wrong":
# the caller may retry. SQLAlchemy wraps the driver's; the bulk paths meet the driver's own.
_UNREACHABLE = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.TimeoutError,
    psycopg.OperationalError,
    sqlite3.OperationalError,
)


# A pooled connection idle for longer than this is pinged before use (one round trip); one
# in steady use is not: if the database went away meanwhile, the call fails as UNAVAILABLE
# and the pool drops every connection older than the failure (SQLAlchemy's pool invalidation).
_PING_AFTER_IDLE_SECONDS = 1.0
# The statement_timeout a connection already has is kept when it is within this share below
# the call's remaining time: a steady stream of calls with one client timeout sets it once.
_TIMEOUT_SLACK = 0.1


def _deadline_passed() -> int:
    call = calls.current()
    return int(call is not None and call.ends is not None and time.monotonic() > call.ends)


def _remaining_seconds() -> float | None:
    """What is left of the current call's deadline (None: no deadline, or no call)."""
    call = calls.current()
    return None if call is None else call.remaining()


def _is_timeout(exc: BaseException) -> bool:
    """A statement cut short by the deadline (PostgreSQL's query_canceled, SQLite's
    interrupt), as opposed to a database that cannot be reached."""
    original = getattr(exc, "orig", exc)
    if isinstance(original, psycopg.errors.QueryCanceled):
        return True
    return isinstance(original, sqlite3.OperationalError) and "interrupt" in str(original)


def count_statement() -> None:
    """Counts one statement for the current call; the paths that bypass SQLAlchemy's
    execution (Rows, COPY) call it themselves."""
    call = calls.current()
    if call is not None:
        call.statements += 1


def _on_cursor_execute(
    _conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool
) -> None:
    if context is None or not context.execution_options.get("orders_setup", False):
        count_statement()


class Sql:
    """One read statement, written once for both databases and rendered for each when the
    module loads: `:name` is a parameter (values come as a dict), `$us(column)` a timestamp
    column as microseconds since the epoch (UTC; what a protobuf Timestamp is built from, with
    no datetime per field), `$in(:name)` "is one of this list" (Rows.ids makes its value).
    `sqlite` is SQLite's own text where PostgreSQL's would not do there."""

    __slots__ = ("postgresql", "prepare", "sqlite")

    def __init__(self, template: str, sqlite: str | None = None, prepare: bool = True) -> None:
        """`prepare`: PostgreSQL prepares it on each connection the first time it runs there
        (unless a pooler in transaction mode is in between). A statement whose best plan
        depends on its values (a LIKE pattern) is planned for them on every call instead."""
        postgresql = _US.sub(r"(extract(epoch FROM \1) * 1000000)::int8", template)
        postgresql = _IN.sub(r"= ANY(\1)", postgresql)
        self.postgresql = _PARAMETER.sub(r"%(\1)s", postgresql)
        # SQLAlchemy stores SQLite timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC. The
        # whole seconds and the microseconds are read apart: strftime rounds to milliseconds,
        # which turns 21.999845 into 22.
        self.sqlite = _US.sub(
            r"(CAST(strftime('%s', substr(\1, 1, 19)) AS INTEGER) * 1000000"
            r" + CAST(substr(\1, 21, 6) AS INTEGER))",
            template if sqlite is None else sqlite,
        )
        self.sqlite = _IN.sub(r"IN (SELECT value FROM json_each(\1))", self.sqlite)
        self.prepare = prepare


_US = re.compile(r"\$us\(([\w.]+)\)")
_IN = re.compile(r"\$in\((:\w+)\)")
_PARAMETER = re.compile(r"(?<![:\w]):([a-z_]\w*)")


class Rows:
    """The read path's way to the database: SQL on the driver's own connection, rows back as
    plain tuples. SQLAlchemy's execution layer (compiling, parameter processing, result
    objects) cost more CPU than PostgreSQL spent running the reads; writes keep it."""

    __slots__ = ("_driver", "_postgresql", "_prepare", "pooled")

    def __init__(
        self,
        driver: Any,
        postgresql: bool,
        prepare: bool | None,
        pooled: PoolProxiedConnection | None = None,
    ) -> None:
        self._driver = driver
        self._postgresql = postgresql
        self._prepare = prepare
        self.pooled = pooled  # the pool's connection, when the read checked one out itself

    def all(self, sql: Sql, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        if tracing.tracer is not None and tracing.recording():
            system, text = (
                ("postgresql", sql.postgresql) if self._postgresql else ("sqlite", sql.sqlite)
            )
            return tracing.statement(system, text, lambda: self._run(sql, params), len)
        return self._run(sql, params)

    def _run(self, sql: Sql, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        count_statement()
        if self._postgresql:
            prepare = self._prepare and sql.prepare
            # Binary results: integers and booleans come back without parsing text (about a
            # tenth less CPU for a page's rows).
            with self._driver.cursor(binary=True) as cursor:
                rows: list[tuple[Any, ...]] = cursor.execute(
                    sql.postgresql, params, prepare=prepare
                ).fetchall()
            return rows
        cursor = self._driver.execute(sql.sqlite, params)
        try:
            return cursor.fetchall()  # type: ignore[no-any-return]
        finally:
            cursor.close()

    def first(self, sql: Sql, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        found = self.all(sql, params)
        return found[0] if found else None

    def ids(self, values: Sequence[int]) -> Any:
        """The value of `$in(:name)`: an array on PostgreSQL, a JSON array on SQLite."""
        return list(values) if self._postgresql else json.dumps(list(values))


class _ReplicaRows(Rows):
    """Rows on the read replica. A statement that fails there for a reason of the replica's
    (it stopped or restarted, or cancelled the statement for a conflict with recovery) runs
    again on the primary, and so does the rest of the read: the caller sees no failure. The
    primary is at least as far ahead as the replica, so a read that moves over mid-way sees
    newer rows, as each statement of a READ COMMITTED read may."""

    __slots__ = ("_open_primary", "_primary", "_replica", "_replica_database")

    def __init__(
        self,
        rows: Rows,
        replica_database: Database,
        replica: Replica,
        open_primary: Callable[[], Rows],
    ) -> None:
        super().__init__(rows._driver, rows._postgresql, rows._prepare, rows.pooled)
        self._replica_database = replica_database
        self._replica = replica
        self._open_primary = open_primary
        self._primary: Rows | None = None

    def all(self, sql: Sql, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        if self._primary is None:
            try:
                return super().all(sql, params)
            except psycopg.OperationalError as error:
                if isinstance(error, psycopg.errors.QueryCanceled):
                    raise  # the call's deadline: the primary would be no faster
                assert self.pooled is not None
                self._replica_database._drop_if_gone(self.pooled, self._driver, error)
                self._replica.failed(error)
                self._replica.fallback("error")
                self._primary = self._open_primary()
        return self._primary.all(sql, params)


class Database:
    """One engine per process; one connection per RPC, opened by `read()` or `write()`."""

    def __init__(
        self,
        url: str,
        pool_size: int = 16,
        transaction_pooling: bool = False,
        *,
        read_url: str | None = None,
        max_replica_lag: float = 1.0,
        replica_wait: float = 0.1,
        connect_timeout: int = 5,
    ) -> None:
        """`transaction_pooling`: a pooler in transaction mode (PgBouncer) sits between this
        process and PostgreSQL, so a database connection keeps nothing from one transaction
        to the next: no connection-level statement_timeout, no prepared statements.

        `read_url`: a hot standby of this PostgreSQL (replica.py) for the reads of the calls
        that may use one (calls.Call.replica); writes, and what they read, stay here."""
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.is_postgresql = self.url.get_backend_name() == "postgresql"
        if not (self.is_sqlite or self.is_postgresql):
            raise ValueError(f"unsupported database {self.url.get_backend_name()!r}")
        # Connection-level settings only where the connection is this process's own.
        self._session_state = self.is_postgresql and not transaction_pooling
        # Prepared statements live on the server's connection, which a pooler in transaction
        # mode hands to another client between two transactions.
        self._prepare: bool | None = None if transaction_pooling else True
        kwargs: dict[str, Any] = {}
        if self.is_postgresql:
            connect_args: dict[str, Any] = {"connect_timeout": connect_timeout}
            if transaction_pooling:
                connect_args["prepare_threshold"] = None  # psycopg's automatic PREPARE
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=5,
                pool_use_lifo=True,
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
        if tracing.tracer is not None:
            tracing.instrument_engine(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.replica: Replica | None = None
        self.replica_database: Database | None = None
        if read_url is not None:
            if not self.is_postgresql:
                raise ValueError("a read replica needs PostgreSQL as the primary")
            # A replica that does not answer at once is passed over for the primary, within
            # the caller's deadline, rather than waited for.
            self.replica_database = Database(
                read_url, pool_size, transaction_pooling, connect_timeout=1
            )
            if not self.replica_database.is_postgresql:
                raise ValueError("the read replica must be PostgreSQL")
            self.replica = Replica(
                _conninfo(self.url),
                _conninfo(self.replica_database.url),
                max_lag=max_replica_lag,
                wait=replica_wait,
            )
            self._reads_on = {name: DB_READS.labels(name) for name in ("primary", "replica")}
            self.replica.start()

    def read(self) -> AbstractContextManager[Rows]:
        """A read (see _read), in a span of its own when the call is sampled."""
        if tracing.tracer is None or not tracing.recording():
            return self._reading() if self.replica is None else self._read()
        return tracing.database_work("read", self._read(), self._system)

    @property
    def _system(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    @contextmanager
    def _read(self) -> Iterator[Rows]:
        """A read (see _reading); on the read replica when the call may use one and the
        replica is fit to answer it (replica.py), else here."""
        call = calls.current()
        if self.replica is None or call is None or not call.replica:
            with self._reading() as rows:
                yield rows
            return
        with ExitStack() as stack:
            routed = self._on_replica(stack, call.min_lsn)
            if routed is None:
                self._reads_on["primary"].inc()
                routed = stack.enter_context(self._reading())
            yield routed

    def _on_replica(self, stack: ExitStack, min_lsn: int | None) -> Rows | None:
        """Rows on the replica, its connection left in `stack`; None when the primary must
        answer (the reason counted)."""
        replica, database = self.replica, self.replica_database
        assert replica is not None and database is not None
        reason = replica.refusal(min_lsn)
        if reason is not None and (
            reason != "lsn" or min_lsn is None or not replica.may_reach(min_lsn)
        ):
            replica.fallback(reason)
            return None
        attempt = ExitStack()
        try:
            rows = attempt.enter_context(database._reading())
            if reason == "lsn":
                assert min_lsn is not None and rows.pooled is not None
                try:
                    caught_up = self._wait_replayed(rows.pooled, min_lsn)
                except BaseException:
                    # Through the connection's own handling (a dead one is dropped).
                    if not attempt.__exit__(*sys.exc_info()):
                        raise
                    raise AssertionError("unreachable") from None
                if not caught_up:
                    attempt.close()
                    replica.fallback("lsn")
                    return None
        except Unavailable as error:
            replica.failed(error)
            replica.fallback("down")
            return None
        stack.enter_context(attempt)
        self._reads_on["replica"].inc()
        return _ReplicaRows(rows, database, replica, lambda: self._primary_instead(stack))

    def _primary_instead(self, stack: ExitStack) -> Rows:
        self._reads_on["primary"].inc()
        return stack.enter_context(self._reading())

    def _wait_replayed(self, pooled: PoolProxiedConnection, min_lsn: int) -> bool:
        """Whether the replica replays `min_lsn` within the replica's wait (and the call's
        deadline), asked on the read's own connection."""
        replica = self.replica
        assert replica is not None
        remaining = _remaining_seconds()
        wait = replica.wait if remaining is None else min(replica.wait, remaining / 2)
        give_up = time.monotonic() + wait
        driver: Any = pooled.driver_connection
        pause = 0.001
        while True:
            count_statement()
            row = driver.execute(REPLAYED_SQL).fetchone()
            replayed = parse_lsn(str(row[0]))
            replica.saw_replayed(replayed)
            if replayed >= min_lsn:
                return True
            if time.monotonic() + pause > give_up:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    @contextmanager
    def _reading(self) -> Iterator[Rows]:
        """A read, on the driver's own connection (see Rows). On PostgreSQL the connection runs
        in autocommit: each statement sees its own snapshot, exactly as in a READ COMMITTED
        transaction, without the BEGIN and COMMIT round trips. On SQLite the statements share
        one read transaction (one snapshot; BEGIN costs no round trip there). A transaction a
        read opened ends when the pool takes the connection back (its reset rolls back)."""
        remaining = self._remaining_checked()
        with self._errors_mapped():
            pooled = self.engine.raw_connection()
            driver: Any = pooled.driver_connection
            try:
                if self._session_state:
                    driver.autocommit = True
                    _bound_read(pooled, remaining)
                elif self.is_sqlite:
                    driver.execute("BEGIN")  # ours to send: isolation_level is None
                elif remaining is not None:
                    # A pooler in transaction mode: psycopg's implicit BEGIN comes first.
                    driver.execute(_SET_TRANSACTION_TIMEOUT, (_milliseconds(remaining),))
                yield Rows(driver, self.is_postgresql, self._prepare, pooled)
            except _DRIVER_ERRORS as error:
                self._drop_if_gone(pooled, driver, error)
                raise
            finally:
                if self._session_state and pooled.is_valid and not driver.closed:
                    driver.autocommit = False  # as SQLAlchemy's sessions expect it
                pooled.close()

    def _drop_if_gone(self, pooled: PoolProxiedConnection, driver: Any, error: Exception) -> None:
        if self.engine.dialect.is_disconnect(cast(Any, error), driver, None):
            # As SQLAlchemy does on a disconnect: this connection is dropped, and so is every
            # other one the pool holds (they went away with the same server).
            pooled.invalidate(error)
            self.engine.dispose()

    def write(self) -> AbstractContextManager[Session]:
        """A write transaction (see _write), in a span of its own when the call is sampled."""
        if tracing.tracer is None or not tracing.recording():
            return self._write()
        return tracing.database_work("write", self._write(), self._system)

    @contextmanager
    def _write(self) -> Iterator[Session]:
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
        if self.replica is not None:
            self._note_commit_position()

    def _note_commit_position(self) -> None:
        """Tells the caller where the primary's WAL stood once this write had committed (at
        or past its commit record): with it, its next reads wait for a replica to get there.
        A failure here costs the caller only that: the write has committed."""
        call = calls.current()
        if call is None:
            return
        try:
            with self._reading() as rows:
                found = rows.first(_WAL_POSITION, {})
        except (Unavailable, DeadlineExceeded) as error:
            log.warning("commit position unknown: %s", error)
            return
        if found is not None:
            call.lsn = str(found[0])

    def rows(self, session: Session) -> Rows:
        """The read path's statements inside a write's transaction (what it reads back)."""
        driver = session.connection().connection.driver_connection
        return Rows(driver, self.is_postgresql, self._prepare)

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
        if self.replica is not None:
            self.replica.stop()
        if self.replica_database is not None:
            self.replica_database.dispose()
        self.engine.dispose()


_WAL_POSITION = Sql("SELECT pg_current_wal_lsn()::text")


def _conninfo(url: Any) -> str:
    """libpq's form of an SQLAlchemy URL (the monitor's own connections)."""
    return str(url.set(drivername="postgresql").render_as_string(hide_password=False))


_SET_TIMEOUT = "SELECT set_config('statement_timeout', %s, false)"
_SET_TRANSACTION_TIMEOUT = "SELECT set_config('statement_timeout', %s, true)"


def _timeout_to_set(info: dict[Any, Any], remaining: float | None) -> int | None:
    """Makes PostgreSQL give up when the call's deadline passes: the remaining time becomes
    the connection's statement_timeout (0, unbounded, without a deadline), to be set outside
    any transaction, so that a rollback cannot undo it. None when the connection's current
    value (kept in its pool entry's `info`) is already within _TIMEOUT_SLACK below the
    remaining time: a steady stream of calls with one client timeout sets it once. SQLite needs
    nothing here: the progress handler every connection got at connect time reads the call's
    deadline itself."""
    wanted = 0 if remaining is None else max(1, int(remaining * 1000))
    current = info.get("orders_statement_timeout_ms")
    if current is not None and (
        current == wanted == 0 or (0 < wanted * (1 - _TIMEOUT_SLACK) <= current <= wanted)
    ):
        return None
    return wanted


def _bound(connection: Connection, remaining: float | None) -> None:
    """_timeout_to_set for a write's connection, before its transaction begins. Setup, not a
    counted statement; sent through SQLAlchemy so that a dead connection is noticed and
    dropped."""
    wanted = _timeout_to_set(connection.info, remaining)
    if wanted is None:
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    in_autocommit = driver.autocommit
    driver.autocommit = True  # psycopg has not sent this transaction's BEGIN yet
    try:
        connection.exec_driver_sql(
            _SET_TIMEOUT, (str(wanted),), execution_options={"orders_setup": True}
        )
    finally:
        if not driver.closed:
            driver.autocommit = in_autocommit
    connection.info["orders_statement_timeout_ms"] = wanted


def _bound_read(pooled: PoolProxiedConnection, remaining: float | None) -> None:
    """_timeout_to_set for a read's connection, already in autocommit."""
    wanted = _timeout_to_set(pooled.info, remaining)
    if wanted is not None:
        pooled.driver_connection.execute(_SET_TIMEOUT, (str(wanted),))  # type: ignore[union-attr]
        pooled.info["orders_statement_timeout_ms"] = wanted


def _bound_transaction(connection: Connection, remaining: float) -> None:
    """_bound for a connection that keeps nothing between transactions (a pooler in
    transaction mode): statement_timeout for this transaction only, on every call."""
    connection.exec_driver_sql(
        _SET_TRANSACTION_TIMEOUT,
        (_milliseconds(remaining),),
        execution_options={"orders_setup": True},
    )


def _milliseconds(remaining: float) -> str:
    return str(max(1, int(remaining * 1000)))


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
