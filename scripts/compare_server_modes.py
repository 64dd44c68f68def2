#!/usr/bin/env python
"""Sync grpcio (thread pool) against grpc.aio for this service, measured side by side in one run.

Issue 2 asks to choose between grpcio's sync server and grpc.aio by measuring both on a trivial
RPC and on ListOrders. This script runs, each in its own process on 127.0.0.1 and over one
throwaway PostgreSQL database:

  sync        the real server, `python -m server serve`: ThreadPoolExecutor of 16 workers,
              OrdersServicer, CallInterceptor, OrderBook over sync SQLAlchemy (pool of 16).
  aio+thread  a grpc.aio server built here (`--serve-aio PORT --db thread`) serving the same
              OrdersService by calling the same OrderBook. Domain and storage stay sync
              SQLAlchemy, so every DB-bound call is `await asyncio.to_thread(book.method, ...)`
              (default executor sized to the same 16 threads, SQLAlchemy pool of 16). An aio
              interceptor does CallInterceptor's work (request id, statement-count trailer,
              google.rpc.Status mapping, one log call).
  aio+native  the same aio server (`--db native`) where GetCustomer and ListOrders do their I/O
              on psycopg's AsyncConnection, no thread at all. OrderBook still validates and
              server/storage/repository.py still builds the statement (it is captured where the
              session would run it), SQLAlchemy's psycopg dialect compiles it (cached by cache
              key), rows become the same domain records, with the same round trips (pool
              pre-ping SELECT 1, the statements, COMMIT; pool of 16). It skips SQLAlchemy's ORM
              row loading; SQLAlchemy's own AsyncEngine would not (and it needs `greenlet`, which
              the project does not install). A check before measuring shows that it sends the
              same SQL text as the sync path and returns equal records.
  sync+direct the control for aio+native (`--serve-sync-direct PORT`): the real OrdersServicer
              and CallInterceptor on the sync server, with GetCustomer and ListOrders running
              that same direct psycopg code, sync, on a pool of 16 connections. aio+native
              against sync+direct is asyncio against threads with identical data access;
              sync+direct against sync is what SQLAlchemy's ORM loading costs. An in-process
              breakdown (one caller, no gRPC) shows the same split.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import psycopg  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from orders.v1 import orders_pb2 as pb  # noqa: E402
from orders.v1 import orders_pb2_grpc  # noqa: E402
from sqlalchemy import event, select  # noqa: E402
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from server.domain.book import OrderBook, _customer_not_found, _page  # noqa: E402
from server.domain.paging import page_size  # noqa: E402
from server.domain.records import Customer, Item, Order, OrderFilter, Page, Status  # noqa: E402
from server.domain.seeding import authorize_seed  # noqa: E402
from server.domain.validation import Violations  # noqa: E402
from server.storage import repository as repo  # noqa: E402
from server.storage.database import Database, statements_counted  # noqa: E402
from server.storage.schema import CustomerRow, OrderItemRow, OrderRow  # noqa: E402
from server.transport import convert  # noqa: E402
from server.transport.interceptor import STATEMENTS_TRAILER, request_id  # noqa: E402
from server.transport.status import to_grpc_status, to_status_proto  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TIME_BUDGET = 170.0  # seconds for the whole run, under the 3 minutes asked
WORKERS = 16
SEED_SHAPE = (1000, 5, 3)
PROBE_SEED_SHAPE = (5000, 5, 3)
ROUNDS_HALF = 2  # rounds per cell = 2 * ROUNDS_HALF
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrdersService"].full_name


# --------------------------------------------------------------------------------------------
# The server variants: `--serve-aio PORT --db thread|native`, `--serve-sync-direct PORT`
# --------------------------------------------------------------------------------------------


def _aio_metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return str(item.value)
    return None


class AioCallInterceptor(grpc.aio.ServerInterceptor):
    """CallInterceptor's work for coroutines: request id, timing, statement-count trailer,
    domain errors -> google.rpc.Status, anything else -> INTERNAL, one log call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method  # type: ignore[attr-defined]
        calls_log = logging.getLogger("orders.calls")

        async def fail(error: BaseException, context: Any, count: Any) -> None:
            status = to_status_proto(error, request_id.get())
            if status.code == grpc.StatusCode.INTERNAL.value[0]:
                calls_log.error("unexpected error in %s", method, exc_info=error)
            await context.abort_with_status(
                to_grpc_status(status, ((STATEMENTS_TRAILER, str(count.value)),))
            )

        def done(started: float, count: Any) -> None:
            calls_log.info(
                "call method=%s duration_ms=%.2f statements=%d request_id=%s",
                method,
                (time.perf_counter() - started) * 1000,
                count.value,
                request_id.get() or "-",
            )

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary and inspect.iscoroutinefunction(handler.unary_unary):
            behavior = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                token = request_id.set(_aio_metadata(context, "x-request-id"))
                started = time.perf_counter()
                with statements_counted() as count:
                    try:
                        try:
                            response = await behavior(request, context)
                        except grpc.aio.AbortError:
                            raise
                        except Exception as error:
                            await fail(error, context, count)
                        context.set_trailing_metadata(((STATEMENTS_TRAILER, str(count.value)),))
                        return response
                    finally:
                        done(started, count)
                        request_id.reset(token)

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        if handler.unary_stream and inspect.isasyncgenfunction(handler.unary_stream):
            stream_behavior = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                token = request_id.set(_aio_metadata(context, "x-request-id"))
                started = time.perf_counter()
                with statements_counted() as count:
                    try:
                        try:
                            async for message in stream_behavior(request, context):
                                yield message
                        except grpc.aio.AbortError:
                            raise
                        except Exception as error:
                            await fail(error, context, count)
                        context.set_trailing_metadata(((STATEMENTS_TRAILER, str(count.value)),))
                    finally:
                        done(started, count)
                        request_id.reset(token)

            return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
        return handler


class _Captured(Exception):
    def __init__(self, statement: Any) -> None:
        super().__init__("captured")
        self.statement = statement


class _CaptureSession:
    def execute(self, statement: Any, *_args: Any, **_kwargs: Any) -> Any:
        raise _Captured(statement)


class _CaptureDatabase:
    """Stands in for Database: OrderBook validates as always, then the repository builds its
    first statement and hands it to this session, which stops the call right there."""

    @contextlib.contextmanager
    def session(self) -> Iterator[_CaptureSession]:
        yield _CaptureSession()

    write = session


def _first_statement(call: Callable[[OrderBook], object]) -> Any:
    try:
        call(OrderBook(_CaptureDatabase(), seed_max_rows=0))  # type: ignore[arg-type]
    except _Captured as captured:
        return captured.statement
    raise AssertionError("the call issued no statement")


_ORDER_KEYS = [c.key for c in OrderRow.__table__.columns]
_CUSTOMER_KEYS = [c.key for c in CustomerRow.__table__.columns]


class DirectQueries:
    """GetCustomer and ListOrders as OrderBook runs them, minus SQLAlchemy's ORM loading: the
    repository's statements compiled by SQLAlchemy, run on a bare psycopg connection (async for
    the aio+native server; sync too, for the in-process breakdown)."""

    def __init__(self) -> None:
        self._dialect = pg_psycopg.dialect()
        self._compiled: dict[Any, Any] = {}
        self._items: dict[int, tuple[str, list[str]]] = {}
        self.sent: list[str] | None = None  # a list records the SQL text sent

    def _sql(self, statement: Any) -> tuple[str, dict[str, Any]]:
        # What the engine does: compile once per cache key, then only extract the parameters.
        key = statement._generate_cache_key()
        compiled = self._compiled.get(key.key)
        if compiled is None:
            compiled = statement.compile(dialect=self._dialect, cache_key=key)
            self._compiled[key.key] = compiled
        return compiled.string, compiled.construct_params(extracted_parameters=key.bindparams)

    def customer_query(self, customer_id: int) -> tuple[str, dict[str, Any]]:
        return self._sql(_first_statement(lambda book: book.get_customer(customer_id)))

    @staticmethod
    def customer(customer_id: int, rows: list[tuple[Any, ...]]) -> Customer:
        if not rows:
            raise _customer_not_found(customer_id)
        return repo._customer(SimpleNamespace(**dict(zip(_CUSTOMER_KEYS, rows[0], strict=True))))

    def orders_query(
        self, filters: OrderFilter, requested_size: int, token: str
    ) -> tuple[str, dict[str, Any]]:
        return self._sql(
            _first_statement(lambda book: book.list_orders(filters, requested_size, token))
        )

    def items_query(self, ids: list[int]) -> tuple[str, dict[str, Any]]:
        # The second statement of repository._load, compiled once per IN-list length.
        cached = self._items.get(len(ids))
        if cached is None:
            statement = (
                select(OrderItemRow)
                .where(OrderItemRow.order_id.in_(list(range(1, len(ids) + 1))))
                .order_by(OrderItemRow.order_id, OrderItemRow.id)
            )
            compiled = statement.compile(
                dialect=self._dialect, compile_kwargs={"render_postcompile": True}
            )
            cached = (compiled.string, list(compiled.params))
            self._items[len(ids)] = cached
        return cached[0], dict(zip(cached[1], ids, strict=True))

    @staticmethod
    def orders_page(
        filters: OrderFilter,
        requested_size: int,
        rows: list[tuple[Any, ...]],
        item_rows: list[tuple[Any, ...]],
    ) -> Page[Order]:
        items: dict[int, list[Item]] = {row[0]: [] for row in rows}
        for item_id, order_id, sku, quantity, unit_price_cents in item_rows:
            items[order_id].append(
                Item(id=item_id, sku=sku, quantity=quantity, unit_price_cents=unit_price_cents)
            )
        split = len(_ORDER_KEYS)
        found = []
        for row in rows:
            order = SimpleNamespace(**dict(zip(_ORDER_KEYS, row[:split], strict=True)))
            customer = SimpleNamespace(**dict(zip(_CUSTOMER_KEYS, row[split:], strict=True)))
            found.append(
                Order(
                    id=order.id,
                    customer=repo._customer(customer),
                    status=Status(order.status),
                    is_archived=order.is_archived,
                    total_cents=order.total_cents,
                    items=tuple(items[order.id]),
                    created_at=repo._utc(order.created_at),
                    updated_at=repo._utc(order.updated_at),
                )
            )
        return _page(found, page_size(requested_size, Violations()), filters, lambda o: o.id)

    # Sync psycopg: the same round trips as a SQLAlchemy session with pool_pre_ping.

    def _run(self, conn: psycopg.Connection[Any], sql: str, params: Any) -> list[tuple[Any, ...]]:
        if self.sent is not None:
            self.sent.append(sql)
        return conn.execute(sql, params).fetchall()

    def get_customer_sync(self, conn: psycopg.Connection[Any], customer_id: int) -> Customer:
        sql, params = self.customer_query(customer_id)
        conn.execute("SELECT 1")
        rows = self._run(conn, sql, params)
        conn.commit()
        return self.customer(customer_id, rows)

    def list_orders_sync(
        self, conn: psycopg.Connection[Any], filters: OrderFilter, size: int, token: str
    ) -> Page[Order]:
        sql, params = self.orders_query(filters, size, token)
        conn.execute("SELECT 1")
        rows = self._run(conn, sql, params)
        item_rows = self._run(conn, *self.items_query([r[0] for r in rows])) if rows else []
        conn.commit()
        return self.orders_page(filters, size, rows, item_rows)


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
            conn = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=5)
            self._all.append(conn)
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = await asyncio.wait_for(self._idle.get(), timeout=5)
        try:
            await conn.execute("SELECT 1")  # pool_pre_ping; psycopg opens the transaction
            yield conn
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
        finally:
            self._idle.put_nowait(conn)

    async def _arun(
        self, conn: psycopg.AsyncConnection[Any], sql: str, params: Any
    ) -> list[tuple[Any, ...]]:
        if self.sent is not None:
            self.sent.append(sql)
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall()

    async def get_customer(self, customer_id: int) -> Customer:
        sql, params = self.customer_query(customer_id)
        async with self._transaction() as conn:
            rows = await self._arun(conn, sql, params)
        return self.customer(customer_id, rows)

    async def list_orders(self, filters: OrderFilter, size: int, token: str) -> Page[Order]:
        sql, params = self.orders_query(filters, size, token)
        async with self._transaction() as conn:
            rows = await self._arun(conn, sql, params)
            item_rows = (
                await self._arun(conn, *self.items_query([r[0] for r in rows])) if rows else []
            )
        return self.orders_page(filters, size, rows, item_rows)


class AioOrdersServicer(orders_pb2_grpc.OrdersServiceServicer):  # type: ignore[misc]
    """The RPCs this comparison calls. The rest would take the same shape: validate,
    `await asyncio.to_thread(book.method, ...)`, convert."""

    def __init__(
        self,
        book: OrderBook,
        admin_token: str | None,
        production: bool,
        native: AsyncDirectQueries | None,
    ) -> None:
        self._book = book
        self._admin_token = admin_token
        self._production = production
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
        filters = convert.order_filter(request)
        if self._native is not None:
            page = await self._native.list_orders(filters, request.page_size, request.page_token)
        else:
            page = await asyncio.to_thread(
                self._book.list_orders, filters, request.page_size, request.page_token
            )
        return pb.ListOrdersResponse(
            orders=[convert.order_message(o) for o in page.items],
            next_page_token=page.next_page_token,
        )

    async def Seed(self, request: pb.SeedRequest, context: Any) -> AsyncIterator[pb.SeedResponse]:
        authorize_seed(self._admin_token, self._production, _aio_metadata(context, "authorization"))
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
    logging.basicConfig(level=settings.log_level, stream=sys.stderr)
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
        interceptors=[AioCallInterceptor()], options=[("grpc.so_reuseport", 0)]
    )
    orders_pb2_grpc.add_OrdersServiceServicer_to_server(
        AioOrdersServicer(book, settings.admin_token, settings.is_production, native), server
    )
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
            self._idle.put(psycopg.connect(conninfo, connect_timeout=5))

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._idle.get(timeout=5)
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        finally:
            self._idle.put(conn)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get().close()


def serve_sync_direct(port: int) -> None:
    from grpc_health.v1 import health
    from grpc_reflection.v1alpha import reflection

    from server.config import load_settings
    from server.transport.interceptor import CallInterceptor
    from server.transport.servicer import OrdersServicer

    class DirectOrdersServicer(OrdersServicer):
        def __init__(self, book: OrderBook, settings: Any, pool: SyncDirectPool) -> None:
            super().__init__(book, settings.admin_token, settings.is_production)
            self._direct = DirectQueries()
            self._pool = pool

        def GetCustomer(self, request: pb.GetCustomerRequest, context: Any) -> pb.Customer:
            with self._pool.connection() as conn:
                customer = self._direct.get_customer_sync(conn, request.id)
            return convert.customer_message(customer)

        def ListOrders(self, request: pb.ListOrdersRequest, context: Any) -> pb.ListOrdersResponse:
            filters = convert.order_filter(request)
            with self._pool.connection() as conn:
                page = self._direct.list_orders_sync(
                    conn, filters, request.page_size, request.page_token
                )
            return pb.ListOrdersResponse(
                orders=[convert.order_message(o) for o in page.items],
                next_page_token=page.next_page_token,
            )

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, stream=sys.stderr)
    database = Database(settings.database_url, pool_size=settings.grpc_workers)
    pool = SyncDirectPool(settings.database_url, settings.grpc_workers)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="rpc"),
        interceptors=[CallInterceptor()],
        options=[("grpc.so_reuseport", 0)],
    )
    book = OrderBook(database, seed_max_rows=settings.seed_max_rows)
    orders_pb2_grpc.add_OrdersServiceServicer_to_server(
        DirectOrdersServicer(book, settings, pool), server
    )
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
    stopping.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(settings.shutdown_grace).wait()
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
    customers, orders, items = shape
    target = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as probe_channel:
            stub = orders_pb2_grpc.OrdersServiceStub(probe_channel)
            stop = asyncio.Event()

            async def probing(into: list[float]) -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    await stub.GetCustomer(pb.GetCustomerRequest(id=probe_id), timeout=10)
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
    the domain calls with no gRPC and one caller: OrderBook (SQLAlchemy ORM), the same SQL on a
    sync psycopg connection, and on an async one."""
    database = Database(database_url, pool_size=2)
    sync_sql: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
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
            with psycopg.connect(conninfo) as conn:
                for _ in range(6):
                    block(
                        ("ListOrders", "orm"), lambda: book.list_orders(OrderFilter(), 50, ""), 25
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
                        ("GetCustomer", "orm"),
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
            f"{rpc}: OrderBook (ORM) {best[(rpc, 'orm')]:.2f}, same SQL on sync psycopg "
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
