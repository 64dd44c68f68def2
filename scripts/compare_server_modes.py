#!/usr/bin/env python
"""Sync grpcio (thread pool) against grpc.aio for this service, measured side by side in one run.

Issue 2 asks to choose between grpcio's sync server and grpc.aio by measuring both on a trivial
RPC and on ListOrders. This script runs, each in its own process on 127.0.0.1 and over one
throwaway PostgreSQL database:

  sync        the real server, `python -m server serve` (one process): ThreadPoolExecutor of
              16 workers, OrdersServicer, CallInterceptor, OrderBook over sync SQLAlchemy
              (pool of 16).
  aio+thread  a grpc.aio server built here (`--serve-aio PORT --db thread`) serving the same
              OrdersService by calling the same OrderBook. Domain and storage stay sync
              SQLAlchemy, so every DB-bound call is `await asyncio.to_thread(book.method, ...)`
              (default executor sized to the same 16 threads, SQLAlchemy pool of 16). An aio
              interceptor does CallInterceptor's work (request id, access check, deadline,
              statement-count trailer, google.rpc.Status mapping, metrics, one log call).
  aio+native  the same aio server (`--db native`) where GetCustomer and ListOrders do their I/O
              on psycopg's AsyncConnection, no thread at all. OrderBook still validates,
              server/storage/repository.py still builds each statement and turns the rows into
              domain records: each call runs against a stand-in for Database.read()'s
              connection that hands out the next statement, which is then compiled by
              SQLAlchemy's psycopg dialect (cached by cache key) and run on psycopg, and the call
              is replayed with the rows fetched so far. The round trips are Database.read()'s:
              the statements alone, in autocommit (pool of 16; the statement_timeout the sync
              path sets when a call's deadline moves below the connection's is not sent). It
              skips SQLAlchemy's engine and Result; SQLAlchemy's own AsyncEngine would not (and
              it needs `greenlet`, which the project does not install). A check before measuring
              shows that it sends the same SQL text as the sync path and returns equal records.
  sync+direct the control for aio+native (`--serve-sync-direct PORT`): the real OrdersServicer
              and CallInterceptor on the sync server, with GetCustomer and ListOrders running
              that same direct psycopg code, sync, on a pool of 16 connections. aio+native
              against sync+direct is asyncio against threads with identical data access;
              sync+direct against sync is what SQLAlchemy's engine and result handling cost. An
              in-process breakdown (one caller, no gRPC) shows the same split.

Load: a grpc.aio client in this process; N clients (1 and 16), each on its own connection,
each making a fixed number of calls back to back after a few warm-up calls, in four rounds per
cell with the servers' order reversed every other round. RPCs: grpc.health.v1.Health/Check (no
database), GetCustomer (one row by primary key, random ids) and ListOrders (page_size 50, first
page: 2 statements, 50 orders x 3 items) over 1000 customers x 5 orders x 3 items loaded with
the Seed RPC. Per cell: calls/s, p50 and p99 latency, server-process CPU per call, client
CPU per call (this process) and the host's CPU use (the 2 cores also run the client and
PostgreSQL: absolute figures are a floor, the ratios are the point). Then one Seed on each of
sync and aio+thread with a GetCustomer probe alongside. Both servers log at WARNING.

    .venv/bin/python scripts/compare_server_modes.py [--admin-url URL] [--scale 1.0]
                                                     [--quiet-wait 15]

--admin-url defaults to $ORDERS_COMPARE_ADMIN_URL or postgresql+psycopg://postgres@127.0.0.1:
5432/postgres; the script creates orders_modes_<random> there, migrates it with
`python -m server migrate`, and drops it at the end. The run stays under 3 minutes (cells that
would not fit are skipped and say so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import queue
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import psycopg  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from orders.v1 import orders_pb2 as pb  # noqa: E402
from orders.v1 import orders_pb2_grpc  # noqa: E402
from psycopg.rows import namedtuple_row  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from server.domain.access import AccessPolicy, Right  # noqa: E402
from server.domain.book import OrderBook  # noqa: E402
from server.domain.records import Customer, Order, OrderFilter, Page  # noqa: E402
from server.domain.validation import Violations  # noqa: E402
from server.observability import configure_logging  # noqa: E402
from server.storage.database import (  # noqa: E402
    Database,
    StatementCount,
    deadline,
    statements_counted,
)
from server.transport import convert  # noqa: E402
from server.transport.app import RIGHTS, access_policy  # noqa: E402
from server.transport.interceptor import STATEMENTS_TRAILER, record_call, request_id  # noqa: E402
from server.transport.status import to_grpc_status, to_status_proto  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TIME_BUDGET = 170.0  # seconds for the whole run, under the 3 minutes asked
WORKERS = 16
SEED_SHAPE = (1000, 5, 3)
PROBE_SEED_SHAPE = (5000, 5, 3)
ROUNDS_HALF = 2  # rounds per cell = 2 * ROUNDS_HALF
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrdersService"].full_name
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# The server variants: `--serve-aio PORT --db thread|native`, `--serve-sync-direct PORT`
# --------------------------------------------------------------------------------------------


def _aio_metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return None


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _AioCall:
    """What the aio interceptor knows about one call while it runs (CallInterceptor's _Call)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK

    async def fail(self, error: BaseException, context: Any, count: StatementCount) -> NoReturn:
        status = to_status_proto(error, request_id.get())
        self.code = _CODES[status.code]
        if self.code == grpc.StatusCode.INTERNAL:
            logging.getLogger("orders.calls").error(
                "unexpected error in %s (request id %s)",
                self.method,
                request_id.get(),
                exc_info=error,
            )
        await context.abort_with_status(
            to_grpc_status(status, ((STATEMENTS_TRAILER, str(count.value)),))
        )
        raise AssertionError("abort_with_status returned")

    def finish(self, count: StatementCount) -> None:
        record_call(self.method, self.code, time.perf_counter() - self.started, count.value)


class AioCallInterceptor(grpc.aio.ServerInterceptor):
    """CallInterceptor's work for coroutines: request id, timing, access check (`rights` maps
    the service's methods to the right each needs), the call's deadline for the database,
    statement-count trailer, domain errors -> google.rpc.Status, anything else -> INTERNAL,
    metrics, one log call. Not its shutdown gate: the aio server stops on its own terms."""

    def __init__(self, policy: AccessPolicy, rights: Mapping[str, Right]) -> None:
        self._policy = policy
        self._rights = rights

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        policy = self._policy
        needed = self._rights.get(method)

        def guard(context: Any) -> None:
            if needed is not None:
                policy.check(needed, _aio_metadata(context, "authorization"))

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary and inspect.iscoroutinefunction(handler.unary_unary):
            behavior = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                token = request_id.set(_aio_metadata(context, "x-request-id"))
                call = _AioCall(method)
                with statements_counted() as count:
                    try:
                        with deadline(context.time_remaining()):
                            try:
                                guard(context)
                                response = await behavior(request, context)
                            except grpc.aio.AbortError:
                                raise
                            except Exception as error:
                                await call.fail(error, context, count)
                        context.set_trailing_metadata(((STATEMENTS_TRAILER, str(count.value)),))
                        return response
                    finally:
                        call.finish(count)
                        request_id.reset(token)

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            stream_behavior = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                token = request_id.set(_aio_metadata(context, "x-request-id"))
                call = _AioCall(method)
                with statements_counted() as count:
                    try:
                        with deadline(context.time_remaining()):
                            try:
                                guard(context)
                                async for message in stream_behavior(request, context):
                                    yield message
                            except grpc.aio.AbortError:
                                raise
                            except Exception as error:
                                await call.fail(error, context, count)
                        context.set_trailing_metadata(((STATEMENTS_TRAILER, str(count.value)),))
                    finally:
                        call.finish(count)
                        request_id.reset(token)

            return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
        return handler


class _Captured(Exception):
    """The statement a replayed call has no rows for yet: the next one to run."""

    def __init__(self, statement: Any, parameters: Mapping[str, Any]) -> None:
        super().__init__("captured")
        self.statement = statement
        self.parameters = parameters


class _Rows:
    """What the repository reads from a Connection.execute() result."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def all(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


# The rows already fetched for the call being replayed, one list per statement, in order.
_fetched: contextvars.ContextVar[list[list[Any]]] = contextvars.ContextVar("fetched")


class _ScriptedConnection:
    """Stands in for the Connection Database.read() yields: answers each statement with the
    rows already fetched for it, and stops the call (_Captured) at the first it has none for."""

    def __init__(self, fetched: list[list[Any]]) -> None:
        self._fetched = fetched
        self._next = 0

    def execute(self, statement: Any, parameters: Mapping[str, Any] | None = None) -> _Rows:
        if self._next == len(self._fetched):
            raise _Captured(statement, parameters or {})
        self._next += 1
        return _Rows(self._fetched[self._next - 1])


class _ScriptedDatabase:
    @contextlib.contextmanager
    def read(self) -> Iterator[_ScriptedConnection]:
        yield _ScriptedConnection(_fetched.get())


class DirectQueries:
    """GetCustomer and ListOrders as OrderBook runs them, minus SQLAlchemy's engine and Result:
    OrderBook and the repository run against _ScriptedDatabase; each statement they reach is
    compiled by SQLAlchemy and run on a bare psycopg connection (async for the aio+native
    server; sync too, for the sync+direct server and the in-process breakdown), and the call
    is replayed with its rows until it returns. Connections are in autocommit with named-tuple
    rows, as the repository reads them."""

    def __init__(self) -> None:
        self._dialect = pg_psycopg.dialect()  # type: ignore[no-untyped-call]
        self._compiled: dict[tuple[Any, ...], tuple[str, list[tuple[str, bool]]]] = {}
        self._book = OrderBook(_ScriptedDatabase(), seed_max_rows=0)  # type: ignore[arg-type]
        self.sent: list[str] | None = None  # a list records the SQL text sent

    def _sql(self, captured: _Captured) -> tuple[str, dict[str, Any]]:
        # Compiled once per cache key, as the engine does. The engine then renders an expanding
        # IN (the items of a page of orders) on every execution; here its SQL is kept per
        # IN-list length, and only the parameters are filled in.
        statement, parameters = captured.statement, captured.parameters
        key = statement._generate_cache_key()
        shape = (key.key, *(len(v) for v in parameters.values() if isinstance(v, list)))
        cached = self._compiled.get(shape)
        if cached is None:
            compiled = statement.compile(dialect=self._dialect, cache_key=key)
            expanded = compiled.construct_expanded_state(parameters)
            names = [(name, bind.expanding) for name, bind in compiled.binds.items()]
            # SQLAlchemy's own expansion, which _fill must match.
            assert self._fill(names, parameters) == expanded.parameters, expanded.parameters
            cached = self._compiled[shape] = (expanded.statement, names)
        sql, names = cached
        if self.sent is not None:
            self.sent.append(sql)
        return sql, self._fill(names, parameters)

    @staticmethod
    def _fill(names: list[tuple[str, bool]], parameters: Mapping[str, Any]) -> dict[str, Any]:
        filled: dict[str, Any] = {}
        for name, expanding in names:
            if expanding:
                filled.update({f"{name}_{i}": v for i, v in enumerate(parameters[name], 1)})
            else:
                filled[name] = parameters[name]
        return filled

    def _replay(self, call: Callable[[OrderBook], T], fetched: list[list[Any]]) -> T:
        token = _fetched.set(fetched)
        try:
            return call(self._book)
        finally:
            _fetched.reset(token)

    # Sync psycopg.

    def run_sync(self, conn: psycopg.Connection[Any], call: Callable[[OrderBook], T]) -> T:
        fetched: list[list[Any]] = []
        while True:
            try:
                return self._replay(call, fetched)
            except _Captured as captured:
                fetched.append(conn.execute(*self._sql(captured)).fetchall())

    def get_customer_sync(self, conn: psycopg.Connection[Any], customer_id: int) -> Customer:
        return self.run_sync(conn, lambda book: book.get_customer(customer_id))

    def list_orders_sync(
        self,
        conn: psycopg.Connection[Any],
        filters: OrderFilter,
        size: int,
        token: str,
        violations: Violations | None = None,
    ) -> Page[Order]:
        return self.run_sync(conn, lambda book: book.list_orders(filters, size, token, violations))


class AsyncDirectQueries(DirectQueries):
    """DirectQueries on a pool of psycopg AsyncConnections."""

    def __init__(self, url: str, size: int) -> None:
        super().__init__()
        self._conninfo = (
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self._size = size
        self._idle: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self._all: list[psycopg.AsyncConnection[Any]] = []

    async def open(self) -> None:
        for _ in range(self._size):
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, row_factory=namedtuple_row, connect_timeout=5
            )
            self._all.append(conn)
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()

    async def run(self, call: Callable[[OrderBook], T]) -> T:
        """The call, replayed after each statement it reaches; the connection is taken from
        the pool at the first statement, as Database.read() takes it after validation."""
        fetched: list[list[Any]] = []
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                try:
                    return self._replay(call, fetched)
                except _Captured as captured:
                    if conn is None:
                        conn = await asyncio.wait_for(self._idle.get(), timeout=5)
                    cursor = await conn.execute(*self._sql(captured))
                    fetched.append(await cursor.fetchall())
        finally:
            if conn is not None:
                self._idle.put_nowait(conn)

    async def get_customer(self, customer_id: int) -> Customer:
        return await self.run(lambda book: book.get_customer(customer_id))

    async def list_orders(
        self,
        filters: OrderFilter,
        size: int,
        token: str,
        violations: Violations | None = None,
    ) -> Page[Order]:
        return await self.run(lambda book: book.list_orders(filters, size, token, violations))


class AioOrdersServicer(orders_pb2_grpc.OrdersServiceServicer):
    """The RPCs this comparison calls. The rest would take the same shape: validate,
    `await asyncio.to_thread(book.method, ...)`, convert."""

    def __init__(self, book: OrderBook, native: AsyncDirectQueries | None) -> None:
        self._book = book
        self._native = native

    async def GetCustomer(self, request: pb.GetCustomerRequest, context: Any) -> pb.Customer:
        if self._native is not None:
            customer = await self._native.get_customer(request.id)
        else:
            customer = await asyncio.to_thread(self._book.get_customer, request.id)
        return convert.customer_message(customer)

    async def ListOrders(
        self, request: pb.ListOrdersRequest, context: Any
    ) -> pb.ListOrdersResponse:
        violations = Violations()
        filters = convert.order_filter(request, violations)
        if self._native is not None:
            page = await self._native.list_orders(
                filters, request.page_size, request.page_token, violations
            )
        else:
            page = await asyncio.to_thread(
                self._book.list_orders,
                filters,
                request.page_size,
                request.page_token,
                violations,
            )
        return pb.ListOrdersResponse(
            orders=[convert.order_message(o) for o in page.items],
            next_page_token=page.next_page_token,
        )

    async def Seed(self, request: pb.SeedRequest, context: Any) -> AsyncIterator[pb.SeedResponse]:
        # The admin right was checked by the interceptor, as CallInterceptor checks it.
        run = self._book.start_seed(
            request.customers, request.orders_per_customer, request.items_per_order
        )
        # SeedRun.reports() blocks between snapshots, so each step of it runs in a worker thread.
        reports = run.reports()
        try:
            while True:
                progress = await asyncio.to_thread(next, reports, None)
                if progress is None:
                    return
                yield convert.seed_message(progress, request_id.get())
                if progress.error is not None:
                    raise progress.error
        finally:
            await asyncio.to_thread(run.cancel)


async def serve_aio(port: int, db_mode: str) -> None:
    from grpc_health.v1 import _async as aio_health
    from grpc_reflection.v1alpha import reflection

    from server.config import load_settings

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    loop = asyncio.get_running_loop()
    # asyncio.to_thread's default executor has min(32, cpus + 4) = 6 threads here; give it the
    # sync server's worker count, so that both have as many calls in the database at once.
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="rpc")
    )
    database = Database(settings.database_url, pool_size=settings.grpc_workers)
    book = OrderBook(database, seed_max_rows=settings.seed_max_rows)
    native = None
    if db_mode == "native":
        native = AsyncDirectQueries(settings.database_url, settings.grpc_workers)
        await native.open()
    server = grpc.aio.server(
        interceptors=[AioCallInterceptor(access_policy(settings), RIGHTS)],
        options=[("grpc.so_reuseport", 0)],
    )
    servicer = AioOrdersServicer(book, native)  # type: ignore[abstract]
    orders_pb2_grpc.add_OrdersServiceServicer_to_server(servicer, server)
    health = aio_health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
    )
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    await server.start()
    for service in ("", SERVICE_NAME):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await health.enter_graceful_shutdown()
    await server.stop(settings.shutdown_grace)
    if native is not None:
        await native.close()
    database.dispose()


class SyncDirectPool:
    """A fixed pool of sync psycopg connections, for the sync+direct control."""

    def __init__(self, url: str, size: int) -> None:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._idle: queue.Queue[psycopg.Connection[Any]] = queue.Queue()
        for _ in range(size):
            self._idle.put(
                psycopg.connect(
                    conninfo, autocommit=True, row_factory=namedtuple_row, connect_timeout=5
                )
            )

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._idle.get(timeout=5)
        try:
            yield conn
        finally:
            self._idle.put(conn)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get().close()


def serve_sync_direct(port: int) -> None:
    from grpc_health.v1 import health
    from grpc_reflection.v1alpha import reflection

    from server.config import load_settings
    from server.transport.interceptor import CallInterceptor, ShutdownGate
    from server.transport.servicer import OrdersServicer

    class DirectOrdersServicer(OrdersServicer):
        def __init__(self, book: OrderBook, pool: SyncDirectPool) -> None:
            super().__init__(book)
            self._direct = DirectQueries()
            self._pool = pool

        def GetCustomer(self, request: pb.GetCustomerRequest, context: Any) -> pb.Customer:
            with self._pool.connection() as conn:
                customer = self._direct.get_customer_sync(conn, request.id)
            return convert.customer_message(customer)

        def ListOrders(self, request: pb.ListOrdersRequest, context: Any) -> pb.ListOrdersResponse:
            violations = Violations()
            filters = convert.order_filter(request, violations)
            with self._pool.connection() as conn:
                page = self._direct.list_orders_sync(
                    conn, filters, request.page_size, request.page_token, violations
                )
            return pb.ListOrdersResponse(
                orders=[convert.order_message(o) for o in page.items],
                next_page_token=page.next_page_token,
            )

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    database = Database(settings.database_url, pool_size=settings.grpc_workers)
    pool = SyncDirectPool(settings.database_url, settings.grpc_workers)
    gate = ShutdownGate()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="rpc"),
        interceptors=[CallInterceptor(access_policy(settings), RIGHTS, gate)],
        options=[("grpc.so_reuseport", 0)],
    )
    book = OrderBook(database, seed_max_rows=settings.seed_max_rows)
    orders_pb2_grpc.add_OrdersServiceServicer_to_server(DirectOrdersServicer(book, pool), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    server.start()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    # Polled, as the real server does: a signal landing on one of grpc's threads runs its
    # handler only when the main thread next executes bytecode.
    while not stopping.wait(0.2):
        pass
    health_servicer.enter_graceful_shutdown()
    gate.close()
    gate.wait_idle(settings.shutdown_grace)
    server.stop(0).wait()
    pool.close()
    database.dispose()


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def host_busy_percent(seconds: float) -> float:
    busy, total = host_ticks()
    time.sleep(seconds)
    busy2, total2 = host_ticks()
    return 100 * (busy2 - busy) / max(1, total2 - total) * (os.cpu_count() or 1)


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Server:
    port = free_port()
    log_path = logs / f"{name.replace('+', '_')}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**env, "ORDERS_GRPC_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(name, port, process, log_path)


def wait_serving(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if server.process.poll() is not None:
                raise SystemExit(
                    f"{server.name} exited with {server.process.returncode}:\n"
                    + server.log_path.read_text()[-3000:]
                )
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{server.name} did not start within {timeout:.0f} s")
            time.sleep(0.1)


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


@dataclass
class Cell:
    rpc: str
    clients: int
    server: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    busy_ticks: int = 0
    total_ticks: int = 0
    errors: int = 0
    skipped: str = ""

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        head = f"{self.rpc:<13} {self.clients:>3}  {self.server:<11}"
        if not self.calls:
            return f"{head}  skipped: {self.skipped or 'no calls'}"
        host = 100 * self.busy_ticks / max(1, self.total_ticks) * (os.cpu_count() or 1)
        return (
            f"{head} {self.calls:>6} {self.rate:>8.0f} "
            f"{quantile(self.latencies, 0.50):>8.2f} {quantile(self.latencies, 0.99):>8.2f} "
            f"{self.server_cpu / self.calls * 1000:>8.3f} "
            f"{self.client_cpu / self.calls * 1000:>8.3f} {host:>6.0f}%"
            + (f"  ({self.errors} errors)" if self.errors else "")
            + (f"  (partial: {self.skipped})" if self.skipped else "")
        )


HEADER = (
    f"{'rpc':<13} {'N':>3}  {'server':<11} {'calls':>6} {'calls/s':>8} {'p50 ms':>8} "
    f"{'p99 ms':>8} {'srv CPU':>8} {'cli CPU':>8} {'host':>7}"
)


def make_call(
    rpc: str, channel: grpc.aio.Channel, customer_ids: Sequence[int]
) -> Callable[[random.Random], Awaitable[None]]:
    if rpc == "Health/Check":
        health_stub = health_pb2_grpc.HealthStub(channel)
        health_request = health_pb2.HealthCheckRequest()

        async def health_check(_rng: random.Random) -> None:
            reply = await health_stub.Check(health_request, timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        return health_check
    stub = orders_pb2_grpc.OrdersServiceStub(channel)
    if rpc == "GetCustomer":

        async def get_customer(rng: random.Random) -> None:
            customer_id = rng.choice(customer_ids)
            reply = await stub.GetCustomer(pb.GetCustomerRequest(id=customer_id), timeout=10)
            assert reply.id == customer_id

        return get_customer
    list_request = pb.ListOrdersRequest(page_size=50)

    async def list_orders(_rng: random.Random) -> None:
        reply = await stub.ListOrders(list_request, timeout=10)
        assert len(reply.orders) == 50 and reply.next_page_token
        assert all(len(order.items) == SEED_SHAPE[2] for order in reply.orders)

    return list_orders


CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # one connection per client


async def run_cell(
    cell: Cell, server: Server, calls_per_client: int, warmup: int, customer_ids: Sequence[int]
) -> None:
    """One round of a cell: `cell.clients` clients, each on its own connection, each making
    `warmup` unrecorded calls, then `calls_per_client` recorded ones, back to back."""
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=CHANNEL_OPTIONS)
        for _ in range(cell.clients)
    ]
    try:
        calls = [make_call(cell.rpc, channel, customer_ids) for channel in channels]
        latencies: list[float] = []

        async def client(index: int, count: int, record: bool) -> None:
            rng = random.Random(index * 7919 + len(cell.latencies))
            call = calls[index]
            for _ in range(count):
                started = time.perf_counter()
                try:
                    await call(rng)
                except (grpc.RpcError, AssertionError):
                    cell.errors += 1
                    if cell.errors > 20:
                        raise
                    continue
                if record:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client(i, warmup, False) for i in range(cell.clients)))
        server_before = cpu_seconds(server.process.pid)
        client_before = time.process_time()
        busy_before, total_before = host_ticks()
        started = time.perf_counter()
        await asyncio.gather(*(client(i, calls_per_client, True) for i in range(cell.clients)))
        cell.seconds += time.perf_counter() - started
        busy_after, total_after = host_ticks()
        cell.client_cpu += time.process_time() - client_before
        cell.server_cpu += cpu_seconds(server.process.pid) - server_before
        cell.busy_ticks += busy_after - busy_before
        cell.total_ticks += total_after - total_before
        cell.latencies.extend(latencies)
    finally:
        for channel in channels:
            await channel.close()


@dataclass
class SeedResult:
    server: str
    seconds: float = 0.0
    messages: int = 0
    max_gap: float = 0.0
    phase: str = ""
    probe: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    def line(self, shape: tuple[int, int, int]) -> str:
        text = (
            f"Seed {'x'.join(map(str, shape))} on {self.server:<10}: {self.seconds:.2f} s, "
            f"{self.messages} progress messages, largest gap {self.max_gap:.2f} s"
        )
        if self.probe:
            text += (
                f"; GetCustomer alongside (1 client): {len(self.probe)} calls, p50 "
                f"{quantile(self.probe, 0.5):.2f} ms, p99 {quantile(self.probe, 0.99):.2f} ms, max "
                f"{max(self.probe) * 1000:.1f} ms (before the seed: p50 "
                f"{quantile(self.baseline, 0.5):.2f} ms)"
            )
        return text


async def seed(server: Server, shape: tuple[int, int, int], probe_id: int | None) -> SeedResult:
    """Runs a Seed, timing its progress messages; with `probe_id`, one client calls GetCustomer
    back to back for a second before and all through the seed."""
    result = SeedResult(server.name)
    probe_request = pb.GetCustomerRequest(id=probe_id or 0)
    customers, orders, items = shape
    target = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as probe_channel:
            stub = orders_pb2_grpc.OrdersServiceStub(probe_channel)
            stop = asyncio.Event()

            async def probing(into: list[float]) -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    await stub.GetCustomer(probe_request, timeout=10)
                    into.append(time.perf_counter() - started)

            probe_task = None
            if probe_id is not None:
                baseline_task = asyncio.create_task(probing(result.baseline))
                await asyncio.sleep(1.0)
                stop.set()
                await baseline_task
                stop.clear()
                probe_task = asyncio.create_task(probing(result.probe))
            started = last = time.perf_counter()
            call = orders_pb2_grpc.OrdersServiceStub(channel).Seed(
                pb.SeedRequest(
                    customers=customers, orders_per_customer=orders, items_per_order=items
                ),
                timeout=60,
            )
            async for message in call:
                now = time.perf_counter()
                result.messages += 1
                result.max_gap = max(result.max_gap, now - last)
                last = now
                result.phase = pb.SeedResponse.Phase.Name(message.phase)
            result.seconds = time.perf_counter() - started
            if probe_task is not None:
                stop.set()
                await probe_task
    if result.phase != "PHASE_DONE":
        raise SystemExit(f"seed on {server.name} ended in {result.phase}")
    return result


def in_process_breakdown(database_url: str, customer_ids: Sequence[int]) -> list[str]:
    """Checks that DirectQueries sends the sync path's SQL and returns its records, then times
    the domain calls with no gRPC and one caller: OrderBook (SQLAlchemy), the same SQL on a
    sync psycopg connection, and on an async one."""
    database = Database(database_url, pool_size=2)
    sync_sql: list[str] = []

    def record(
        _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        # Not the statement_timeout setup a connection gets once (not counted either).
        if context is None or not context.execution_options.get("orders_setup", False):
            sync_sql.append(statement)

    event.listen(database.engine, "before_cursor_execute", record)
    book = OrderBook(database, seed_max_rows=0)
    first = book.list_orders(OrderFilter(), 50, "")
    second = book.list_orders(OrderFilter(), 50, first.next_page_token)
    one = book.get_customer(customer_ids[0])
    event.remove(database.engine, "before_cursor_execute", record)
    conninfo = (
        make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )

    async def native_check() -> tuple[Any, list[str]]:
        native = AsyncDirectQueries(database_url, 1)
        native.sent = []
        await native.open()
        try:
            page = await native.list_orders(OrderFilter(), 50, "")
            page2 = await native.list_orders(OrderFilter(), 50, page.next_page_token)
            customer = await native.get_customer(customer_ids[0])
        finally:
            await native.close()
        return (page, page2, customer), native.sent

    native_records, native_sql = asyncio.run(native_check())
    normal = [" ".join(s.split()) for s in sync_sql]
    same_sql = normal == [" ".join(s.split()) for s in native_sql]
    same_records = native_records == (first, second, one)
    lines = [
        f"aio+native check: same SQL text as the sync path: {'yes' if same_sql else 'NO'} "
        f"({len(native_sql)} statements: 2 ListOrders pages, 1 GetCustomer); "
        f"same records: {'yes' if same_records else 'NO'}"
    ]
    if not same_sql:
        lines += [
            f"  sync:   {a}\n  native: {b}" for a, b in zip(sync_sql, native_sql, strict=False)
        ]

    # Blocks of calls, the three ways interleaved; the best block of each is reported, the
    # least disturbed by whatever else the machine is doing.
    rng = random.Random(1)
    direct = DirectQueries()
    best: dict[tuple[str, str], float] = {}

    def block(key: tuple[str, str], run: Callable[[], object], n: int) -> None:
        started = time.perf_counter()
        for _ in range(n):
            run()
        per_call = (time.perf_counter() - started) / n * 1000
        best[key] = min(best.get(key, per_call), per_call)

    async def block_async(
        key: tuple[str, str], run: Callable[[], Awaitable[object]], n: int
    ) -> None:
        started = time.perf_counter()
        for _ in range(n):
            await run()
        per_call = (time.perf_counter() - started) / n * 1000
        best[key] = min(best.get(key, per_call), per_call)

    async def blocks() -> None:
        native = AsyncDirectQueries(database_url, 1)
        await native.open()
        try:
            with psycopg.connect(conninfo, autocommit=True, row_factory=namedtuple_row) as conn:
                for _ in range(6):
                    block(
                        ("ListOrders", "book"), lambda: book.list_orders(OrderFilter(), 50, ""), 25
                    )
                    block(
                        ("ListOrders", "sync"),
                        lambda: direct.list_orders_sync(conn, OrderFilter(), 50, ""),
                        25,
                    )
                    await block_async(
                        ("ListOrders", "async"),
                        lambda: native.list_orders(OrderFilter(), 50, ""),
                        25,
                    )
                    block(
                        ("GetCustomer", "book"),
                        lambda: book.get_customer(rng.choice(customer_ids)),
                        60,
                    )
                    block(
                        ("GetCustomer", "sync"),
                        lambda: direct.get_customer_sync(conn, rng.choice(customer_ids)),
                        60,
                    )
                    await block_async(
                        ("GetCustomer", "async"),
                        lambda: native.get_customer(rng.choice(customer_ids)),
                        60,
                    )
        finally:
            await native.close()

    asyncio.run(blocks())
    database.dispose()
    lines.append(
        "in-process, one caller, no gRPC, ms per call (best of 6 blocks): "
        + "   ".join(
            f"{rpc}: OrderBook (SQLAlchemy) {best[(rpc, 'book')]:.2f}, same SQL on sync psycopg "
            f"{best[(rpc, 'sync')]:.2f}, on async psycopg {best[(rpc, 'async')]:.2f}"
            for rpc in ("ListOrders", "GetCustomer")
        )
    )
    return lines


def main_compare(args: argparse.Namespace) -> int:
    began = time.monotonic()
    load_before = os.getloadavg()
    python = sys.executable
    admin_url = make_url(args.admin_url)
    admin_conninfo = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"orders_modes_{secrets.token_hex(4)}"
    database_url = admin_url.set(database=name).render_as_string(hide_password=False)
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / name
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORDERS_")},
        "DATABASE_URL": database_url,
        "ORDERS_GRPC_HOST": "127.0.0.1",
        "ORDERS_GRPC_WORKERS": str(WORKERS),
        # One server process each (the real server would start one per core), no metrics
        # listener, no drain before stopping, sockets with the logs.
        "ORDERS_GRPC_PROCESSES": "1",
        "ORDERS_METRICS_PORT": "0",
        "ORDERS_DRAIN_SECONDS": "0",
        "ORDERS_SOCKET_DIR": str(logs),
        "ORDERS_LOG_LEVEL": "WARNING",
        "ORDERS_ENV": "development",
        "ORDERS_SHUTDOWN_GRACE": "2",
        "PYTHONUNBUFFERED": "1",
    }
    servers: list[Server] = []
    created = False
    try:
        with psycopg.connect(admin_conninfo, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
            created = True
        subprocess.run(
            [python, "-m", "server", "migrate"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=60,
            capture_output=True,
        )
        script = str(Path(__file__).resolve())
        servers = [
            start_server("sync", [python, "-m", "server", "serve"], env, logs),
            start_server(
                "aio+thread", [python, script, "--serve-aio", "0", "--db", "thread"], env, logs
            ),
            start_server(
                "aio+native", [python, script, "--serve-aio", "0", "--db", "native"], env, logs
            ),
            start_server("sync+direct", [python, script, "--serve-sync-direct", "0"], env, logs),
        ]
        for server in servers:
            wait_serving(server)
        by_name = {s.name: s for s in servers}
        # What the machine does without us (other work) and what our idle servers cost. On a
        # busy machine, wait a little (at most --quiet-wait seconds) for it to calm down.
        idle_servers = [cpu_seconds(s.process.pid) for s in servers]
        idle_busy = host_busy_percent(1.0)
        waited = 0.0
        while idle_busy > 40 and waited < args.quiet_wait:
            idle_busy = host_busy_percent(1.0)
            waited += 1.0
        idle_servers = [
            cpu_seconds(s.process.pid) - c for s, c in zip(servers, idle_servers, strict=True)
        ]

        first_seed = asyncio.run(seed(by_name["sync"], SEED_SHAPE, None))
        target = admin_url.set(drivername="postgresql", database=name)
        with psycopg.connect(target.render_as_string(hide_password=False)) as conn:
            customer_ids = [r[0] for r in conn.execute("SELECT id FROM customers ORDER BY id")]
            conn.execute("ANALYZE")
            conn.commit()
        breakdown = in_process_breakdown(database_url, customer_ids)

        s = args.scale
        everyone = ("sync", "aio+thread", "aio+native", "sync+direct")
        # (rpc, clients, calls per client per round, warm-up calls per client, servers).
        # Health/Check touches no database: the +native and +direct servers would only repeat
        # aio+thread and sync there.
        plan = [
            ("Health/Check", 1, int(900 * s), 30, ("sync", "aio+thread")),
            ("Health/Check", 16, int(90 * s), 3, ("sync", "aio+thread")),
            ("GetCustomer", 1, int(400 * s), 20, everyone),
            ("GetCustomer", 16, int(40 * s), 2, everyone),
            ("ListOrders", 1, int(125 * s), 5, everyone),
            ("ListOrders", 16, int(15 * s), 1, everyone),
        ]
        cells: list[Cell] = []

        async def measure() -> None:
            for rpc, clients, per_client, warmup, names in plan:
                row = {n: Cell(rpc, clients, n) for n in names}
                cells.extend(row.values())
                # Four rounds, alternately in reverse order, so that drift (other load on the
                # machine, PostgreSQL's caches) favours no server.
                for order in (names, names[::-1]) * ROUNDS_HALF:
                    for server_name in order:
                        # Keep ~30 s for the seeds and the clean-up.
                        if time.monotonic() - began > TIME_BUDGET - 30:
                            row[server_name].skipped = "time budget"
                            continue
                        await run_cell(
                            row[server_name],
                            by_name[server_name],
                            per_client,
                            warmup,
                            customer_ids,
                        )

        asyncio.run(measure())
        seeds: list[SeedResult] = []
        for server_name in ("sync", "aio+thread"):
            if time.monotonic() - began > TIME_BUDGET - 12:
                print(f"(Seed on {server_name} skipped: time budget)")
                continue
            seeds.append(asyncio.run(seed(by_name[server_name], PROBE_SEED_SHAPE, customer_ids[0])))

        cores = os.cpu_count() or 1
        print()
        print(
            f"sync vs grpc.aio: {cores} cores, Python {sys.version.split()[0]}, grpcio "
            f"{grpc.__version__}, {WORKERS} worker threads and {WORKERS} pooled connections each; "
            f"load average before the run {load_before[0]:.2f}"
        )
        print(
            f"host CPU over 1 s with the four servers up and idle: {idle_busy:.0f}% of "
            f"{100 * cores}% (the servers' share: {100 * sum(idle_servers):.0f}%; the rest is "
            f"other work on the machine){f' after waiting {waited:.0f} s' if waited else ''}"
        )
        print(
            f"data: Seed {'x'.join(map(str, SEED_SHAPE))} on sync in {first_seed.seconds:.2f} s "
            "(1000 customers, 5000 orders, 15000 items); ListOrders = page_size 50, first page"
        )
        for line in breakdown:
            print(line)
        print(
            "per call: srv CPU = server process CPU ms, cli CPU = load client CPU ms; host = CPU "
            f"of the whole machine during the cell, of {100 * cores}%; "
            f"{2 * ROUNDS_HALF} rounds per cell"
        )
        print()
        print(HEADER)
        previous = None
        for cell in cells:
            if previous is not None and (cell.rpc, cell.clients) != previous:
                print()
            previous = (cell.rpc, cell.clients)
            print(cell.row())
        print()
        for variant, base in (
            ("aio+thread", "sync"),
            ("aio+native", "sync+direct"),
            ("sync+direct", "sync"),
        ):
            ratios = "   ".join(
                f"{rpc} N={n}: {ratio:.2f}" for rpc, n, ratio in _ratios(cells, variant, base)
            )
            print(f"calls/s {variant} / {base}:".ljust(34) + ratios)
        print()
        for result in seeds:
            print(result.line(PROBE_SEED_SHAPE))
        print(f"\nwhole run: {time.monotonic() - began:.0f} s")
        return 0
    finally:
        for server in servers:
            server.stop()
        if created:
            with contextlib.suppress(psycopg.Error):
                with psycopg.connect(admin_conninfo, autocommit=True, connect_timeout=5) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for server in servers:
            if server.process.returncode not in (0, -signal.SIGTERM):
                print(f"{server.name} exited with {server.process.returncode}; its log:")
                print(server.log_path.read_text()[-3000:])
        for path in logs.iterdir():
            path.unlink()
        logs.rmdir()


def _ratios(cells: list[Cell], variant: str, base: str) -> Iterator[tuple[str, int, float]]:
    rates = {(c.rpc, c.clients, c.server): c.rate for c in cells if c.calls}
    for (rpc, clients, server), rate in rates.items():
        if server == variant and (rpc, clients, base) in rates:
            yield rpc, clients, rate / rates[(rpc, clients, base)]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("ORDERS_COMPARE_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="PostgreSQL database to create (and drop) the throwaway database from",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the number of calls of every cell"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=15.0,
        help="at most this many seconds to wait for other work on the machine to calm down",
    )
    parser.add_argument("--serve-aio", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--db", choices=("thread", "native"), default="thread", help=argparse.SUPPRESS
    )
    parser.add_argument("--serve-sync-direct", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sync_direct is not None:
        serve_sync_direct(args.serve_sync_direct or int(os.environ["ORDERS_GRPC_PORT"]))
        return 0
    if args.serve_aio is not None:
        # Port 0: the one in ORDERS_GRPC_PORT, as `python -m server serve` does.
        port = args.serve_aio or int(os.environ["ORDERS_GRPC_PORT"])
        asyncio.run(serve_aio(port, args.db))
        return 0
    return main_compare(args)


if __name__ == "__main__":
    sys.exit(main())
