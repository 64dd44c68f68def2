"""The test harness: a real orders server in a subprocess, on a real socket, over a database of
its own (a SQLite file or a PostgreSQL database created for the run), and the few helpers the
tests share to call it and read its errors.

Nothing here imports the server: the tests see it only as a caller would, over gRPC, plus direct
SQL where the API cannot show that nothing was left behind.
"""

from __future__ import annotations

import collections
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc
from psycopg import sql
from sqlalchemy.pool import NullPool

__all__ = [
    "DEFAULT_TEST_DATABASE_URL",
    "ROOT",
    "SERVICE_NAME",
    "ErrorDetails",
    "OrdersServer",
    "PostgresDatabases",
    "SeedRun",
    "ServerFactory",
    "SqliteDatabases",
]

ROOT = Path(__file__).resolve().parent.parent
SERVICE_NAME = "orders.v1.OrdersService"
STATEMENTS_KEY = "orders-sql-statements"
DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
STARTUP_TIMEOUT = 20.0
UNARY_DEADLINE = 30.0
STREAM_DEADLINE = 180.0
# Environment the developer's shell may carry that would change how a test server behaves.
_SERVER_ENV_PREFIXES = ("ORDERS_",)
_SERVER_ENV_NAMES = ("DATABASE_URL",)

Status = pb.Order.Status
Phase = pb.SeedResponse.Phase


# --------------------------------------------------------------------------------------------
# Databases: one fresh database per server, removed at the end of the session. Each is a copy
# of a template migrated once a session by `python -m server migrate` (what every server start
# would otherwise run again, a second or more each time): the same schema, at no cost.


def migrate_database(url: str) -> None:
    """`python -m server migrate` on the database at `url`, as scripts/run does."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SERVER_ENV_PREFIXES) and k not in _SERVER_ENV_NAMES
    }
    done = subprocess.run(
        [sys.executable, "-m", "server", "migrate"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise ServerStartError(
            f"`python -m server migrate` exited {done.returncode}\n{done.stdout}{done.stderr}"
        )


class SqliteDatabases:
    """Fresh SQLite files in a temporary folder, each a copy of a migrated template."""

    kind = "sqlite"
    label = "sqlite"  # names the servers' logs
    server_env: Mapping[str, str] = {}

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._count = 0
        self._template: Path | None = None

    def create(self) -> str:
        if self._template is None:
            template = self._directory / "template.sqlite3"
            migrate_database(f"sqlite:///{template}")
            self._template = template
        self._count += 1
        path = self._directory / f"orders-{self._count}.sqlite3"
        # The backup API copies a WAL-mode database whole, its mode included.
        with closing(sqlite3.connect(self._template)) as source:
            with closing(sqlite3.connect(path)) as copy:
                source.backup(copy)
        return f"sqlite:///{path}"

    def close(self) -> None:
        """The files live in pytest's temporary folder, which pytest cleans up."""


def libpq_conninfo(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresDatabases:
    """Fresh databases on one PostgreSQL server, named orders_test_<random>_<n>, dropped at the
    end: two runs (or two servers of one run) never see each other's rows. Each is created from
    a migrated template database (`CREATE DATABASE ... TEMPLATE`)."""

    kind = "postgresql"
    label = "postgresql"
    server_env: Mapping[str, str] = {}

    def __init__(self, admin_url: str) -> None:
        self._admin_url = admin_url
        self._prefix = f"orders_test_{secrets.token_hex(4)}"
        self._created: list[str] = []
        self._template: str | None = None

    def check(self) -> None:
        """Raises when the server cannot be reached or refuses us."""
        with self._admin() as conn:
            conn.execute("SELECT 1")

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(libpq_conninfo(self._admin_url), autocommit=True, connect_timeout=5)

    def create(self) -> str:
        if self._template is None:
            template = f"{self._prefix}_template"
            with self._admin() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
            self._created.append(template)
            migrate_database(self._url(template))
            self._template = template
        name = f"{self._prefix}_{len(self._created)}"
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self._template)
                )
            )
        self._created.append(name)
        return self._url(name)

    def _url(self, name: str) -> str:
        return sa.make_url(self._admin_url).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        """Drops one database now, closing whatever is connected to it."""
        name = sa.make_url(url).database
        assert name in self._created, name
        self._drop(name)

    def _drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    def close(self) -> None:
        for name in self._created:
            try:
                self._drop(name)
            except psycopg.Error as exc:
                print(f"harness: could not drop test database {name}: {exc}", file=sys.stderr)


Databases = SqliteDatabases | PostgresDatabases


# --------------------------------------------------------------------------------------------
# Direct SQL, only to prove that nothing was left behind.


def table_counts(database_url: str) -> dict[str, int]:
    """Rows in each table of the service, read straight from the database."""
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {
                table: int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("customers", "orders", "order_items")
            }
    finally:
        engine.dispose()


def database_has_writer(database_url: str) -> bool:
    """True while some other connection holds a write transaction (or runs a statement)."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), timeout=0.1, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True, connect_timeout=5) as conn:
        busy = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state IS NOT NULL AND state <> 'idle'"
        ).fetchone()
        return bool(busy and busy[0])


def wait_until_no_writer(database_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while database_has_writer(database_url):
        if time.monotonic() > deadline:
            pytest.fail(f"the server still holds a write transaction after {timeout:.0f}s")
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# The server process.


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Every call gets a deadline, so a hung server fails a test instead of hanging the run."""

    def _details(self, details: grpc.ClientCallDetails, seconds: float) -> grpc.ClientCallDetails:
        if details.timeout is not None:
            return details
        return _CallDetails(
            details.method,
            seconds,
            details.metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, UNARY_DEADLINE), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details, STREAM_DEADLINE), request)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_foreground_program() -> None:
    """A child's preexec_fn for tests that send it Ctrl-C: SIGINT as a terminal's foreground
    program gets it. A test run started in the background (`cmd &` without job control)
    ignores SIGINT, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServerStartError(Exception):
    pass


class OrdersServer:
    """`python -m server migrate` (unless the database is known to be migrated) then
    `python -m server serve`, healthy, with a stub to call."""

    def __init__(
        self,
        database_url: str,
        env: dict[str, str],
        log_path: Path,
        name: str,
        *,
        migrate: bool = True,
    ) -> None:
        self.database_url = database_url
        self.name = name
        self.migrate = migrate
        self.log_path = log_path
        self._extra_env = env
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._channels: list[grpc.Channel] = []
        self.channel: grpc.Channel
        self.stub: pb_grpc.OrdersServiceStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_SERVER_ENV_PREFIXES) and k not in _SERVER_ENV_NAMES
        }
        env.update(
            DATABASE_URL=self.database_url,
            ORDERS_GRPC_PORT=str(self.port),
            # One process per test server (the default is one per core); tests of the
            # multi-process mode ask for more.
            ORDERS_GRPC_PROCESSES="1",
            ORDERS_METRICS_PORT="0",  # test servers side by side; tests of metrics set one
            # No balancer watches a test server's health: stop at once. Tests of the drain set
            # it (an empty value is the server's default).
            ORDERS_DRAIN_SECONDS="0",
            PYTHONUNBUFFERED="1",
        )
        env.update(self._extra_env)
        return env

    def start(self) -> None:
        for attempt in range(3):
            self.port = free_port()
            if attempt == 0 and self.migrate:
                self._migrate()
            try:
                self._serve()
                return
            except ServerStartError:
                log = self.log_text()
                # Another process took the free port between our probe and the server's bind.
                if (
                    self.process is not None
                    and self.process.poll() is not None
                    and ("bind" in log.lower() or "address already in use" in log.lower())
                ):
                    continue
                raise
        raise ServerStartError(f"{self.name}: no free port after 3 attempts\n{self.log_text()}")

    def _migrate(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "server", "migrate"],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        with self.log_path.open("a") as log:
            log.write(f"--- migrate (exit {done.returncode})\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            raise ServerStartError(
                f"{self.name}: `python -m server migrate` exited {done.returncode}\n"
                f"{done.stdout}{done.stderr}"
            )

    def _serve(self) -> None:
        with self.log_path.open("a") as log:
            log.write(f"--- serve on {self.address}\n")
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", "serve"],
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.channel = self.new_channel()
        self.stub = pb_grpc.OrdersServiceStub(self.channel)
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.name}: server exited with {self.process.returncode} before it was"
                    f" healthy\n{self.log_text()}"
                )
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = reply
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.05)
        self.kill()
        raise ServerStartError(
            f"{self.name}: not SERVING after {STARTUP_TIMEOUT:.0f}s (last: {last})\n"
            + self.log_text()
        )

    def new_channel(self) -> grpc.Channel:
        """A channel of its own (separate HTTP/2 connection), with a default deadline."""
        raw = grpc.insecure_channel(self.address)
        self._channels.append(raw)
        return grpc.intercept_channel(raw, _DefaultDeadline())

    def new_stub(self) -> pb_grpc.OrdersServiceStub:
        return pb_grpc.OrdersServiceStub(self.new_channel())

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test if the process is still running after `timeout`."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running {timeout:.0f}s later\n{self.log_text()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def request_stop(self) -> None:
        """SIGTERM, without waiting: several servers then stop side by side."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within a few seconds."""
        self.request_stop()
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"harness: {self.name} ignored SIGTERM for 10s; killing it", file=sys.stderr)
            self.kill()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since: int = 0, limit: int = 6000) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return ""
        text = data.decode("utf-8", "replace")
        return text if len(text) <= limit else "...\n" + text[-limit:]


# Every server of the session, so a failing test can show what the servers logged meanwhile.
ALL_SERVERS: list[OrdersServer] = []


class ServerFactory:
    """Starts servers of one backend, each over a fresh database, and stops them all at the end."""

    def __init__(self, databases: Databases, log_dir: Path) -> None:
        self.databases = databases
        self.kind = databases.kind
        self._log_dir = log_dir
        self._servers: list[OrdersServer] = []

    def start(self, name: str = "server", env: dict[str, str] | None = None) -> OrdersServer:
        url = self.databases.create()
        label = f"{self.databases.label}-{name}-{len(self._servers) + 1}"
        # What the way to the database asks of the server (a pooler: transaction pooling).
        env = {**self.databases.server_env, **(env or {})}
        # Its database is a copy of a migrated template.
        server = OrdersServer(url, env, self._log_dir / f"{label}.log", label, migrate=False)
        self._servers.append(server)
        ALL_SERVERS.append(server)
        try:
            server.start()
        except ServerStartError as exc:
            pytest.fail(str(exc), pytrace=False)
        return server

    def close(self) -> None:
        for server in self._servers:
            server.request_stop()
        for server in self._servers:
            server.stop()


# --------------------------------------------------------------------------------------------
# Calling the service.


def unique_email(label: str = "c", domain: str = "example.com") -> str:
    return f"{label}-{secrets.token_hex(6)}@{domain}"


def item(sku: str = "SKU-1", quantity: int = 1, unit_price_cents: int = 100) -> pb.OrderItem:
    return pb.OrderItem(sku=sku, quantity=quantity, unit_price_cents=unit_price_cents)


def new_customer(
    stub: pb_grpc.OrdersServiceStub, email: str | None = None, name: str = "Test Customer"
) -> pb.Customer:
    return stub.CreateCustomer(pb.CreateCustomerRequest(email=email or unique_email(), name=name))


def new_order(
    stub: pb_grpc.OrdersServiceStub,
    customer_id: int,
    items: Iterable[pb.OrderItem] | None = None,
) -> pb.Order:
    lines = list(items) if items is not None else [item()]
    return stub.CreateOrder(pb.CreateOrderRequest(customer_id=customer_id, items=lines))


def order_in_status(
    stub: pb_grpc.OrdersServiceStub,
    customer_id: int,
    status: int,
    archived: bool = False,
    items: Iterable[pb.OrderItem] | None = None,
) -> pb.Order:
    """A new order brought to `status` through the transition RPCs (the only way there)."""
    order = new_order(stub, customer_id, items)
    pay = (stub.PayOrder, pb.PayOrderRequest)
    ship = (stub.ShipOrder, pb.ShipOrderRequest)
    cancel = (stub.CancelOrder, pb.CancelOrderRequest)
    steps = {
        Status.DRAFT: [],
        Status.PAID: [pay],
        Status.SHIPPED: [pay, ship],
        Status.CANCELLED: [cancel],
    }
    for method, request in steps[status]:
        order = method(request(id=order.id))
    if archived:
        order = stub.ArchiveOrder(pb.ArchiveOrderRequest(id=order.id))
    assert order.status == status and order.is_archived == archived
    return order


def list_all_orders(stub: pb_grpc.OrdersServiceStub, **filters: Any) -> list[pb.Order]:
    """Every page of ListOrders with these filters."""
    out: list[pb.Order] = []
    token = ""
    for _ in range(10_000):
        page = stub.ListOrders(pb.ListOrdersRequest(page_token=token, **filters))
        out.extend(page.orders)
        token = page.next_page_token
        if not token:
            return out
    pytest.fail("ListOrders never returned an empty next_page_token")


def list_all_customers(stub: pb_grpc.OrdersServiceStub, page_size: int = 500) -> list[pb.Customer]:
    out: list[pb.Customer] = []
    token = ""
    for _ in range(10_000):
        page = stub.ListCustomers(pb.ListCustomersRequest(page_size=page_size, page_token=token))
        out.extend(page.customers)
        token = page.next_page_token
        if not token:
            return out
    pytest.fail("ListCustomers never returned an empty next_page_token")


def statements_of(call: Any) -> int:
    """The server's count of SQL statements for a finished call (trailing metadata)."""
    trailing = dict(call.trailing_metadata() or ())
    assert STATEMENTS_KEY in trailing, f"no {STATEMENTS_KEY} in trailing metadata {trailing}"
    return int(trailing[STATEMENTS_KEY])


def with_statements(method: Any, request: Any, **kwargs: Any) -> tuple[Any, int]:
    response, call = method.with_call(request, **kwargs)
    return response, statements_of(call)


# --------------------------------------------------------------------------------------------
# Errors.


@dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    fields: list[str] = field(default_factory=list)
    violations: list[error_details_pb2.BadRequest.FieldViolation] = field(default_factory=list)
    info: error_details_pb2.ErrorInfo | None = None
    has_status: bool = False

    @property
    def reason(self) -> str | None:
        return self.info.reason if self.info else None


def details_of(err: grpc.RpcError) -> ErrorDetails:
    out = ErrorDetails(code=err.code(), message=err.details() or "")
    status = rpc_status.from_call(err)  # raises if the rich status disagrees with the call
    if status is None:
        return out
    out.has_status = True
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.violations.extend(bad.field_violations)
            out.fields.extend(v.field for v in bad.field_violations)
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.info = info
    return out


def call_error(method: Callable[..., Any], request: Any, **kwargs: Any) -> grpc.RpcError:
    """The error a unary call ends with; fails the test when the call succeeds."""
    try:
        response = method(request, **kwargs)
    except grpc.RpcError as err:
        return err
    pytest.fail(f"expected an error, the call succeeded with {response!r}")


def expect_error(
    method: Callable[..., Any],
    request: Any,
    code: grpc.StatusCode,
    *,
    fields: Sequence[str] | None = None,
    reason: str | None = None,
    **kwargs: Any,
) -> ErrorDetails:
    """Calls, expects `code`; with `fields`, the BadRequest must name exactly those fields (one
    violation each); with `reason`, an ErrorInfo of domain orders.v1 with that reason."""
    got = details_of(call_error(method, request, **kwargs))
    assert got.code == code, f"expected {code.name}, got {got.code.name}: {got.message}"
    assert got.message, "an error must say what went wrong"
    if fields is not None:
        assert got.has_status, "INVALID_ARGUMENT must carry a google.rpc.Status with BadRequest"
        assert sorted(got.fields) == sorted(fields), (
            f"BadRequest must list one violation per bad field: expected {sorted(fields)},"
            f" got {got.fields}"
        )
        for violation in got.violations:
            assert violation.description, f"violation of {violation.field} has no description"
    if reason is not None:
        assert got.info is not None, f"{code.name} must carry a google.rpc.ErrorInfo ({reason})"
        assert got.info.domain == "orders.v1", got.info
        assert got.info.reason == reason, f"expected reason {reason}, got {got.info.reason}"
    return got


# --------------------------------------------------------------------------------------------
# Seeding.


@dataclass
class SeedRun:
    request: pb.SeedRequest
    started: float
    messages: list[pb.SeedResponse] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each message
    error: grpc.RpcError | None = None
    ended: float = 0.0
    call: Any = None

    @property
    def last(self) -> pb.SeedResponse:
        assert self.messages, "the seed sent no message at all"
        return self.messages[-1]

    @property
    def duration(self) -> float:
        return self.ended - self.started

    def rows(self) -> int:
        r = self.request
        return r.customers * (1 + r.orders_per_customer * (1 + r.items_per_order))

    def expect_done(self) -> pb.SeedResponse:
        if self.error is not None:
            got = details_of(self.error)
            pytest.fail(f"seed failed with {got.code.name}: {got.message}")
        last = self.last
        assert last.done and last.phase == Phase.PHASE_DONE, last
        return last


def seed_request(customers: int, orders: int = 0, items: int = 0) -> pb.SeedRequest:
    return pb.SeedRequest(customers=customers, orders_per_customer=orders, items_per_order=items)


def run_seed(
    stub: pb_grpc.OrdersServiceStub,
    request: pb.SeedRequest,
    metadata: Sequence[tuple[str, str]] | None = None,
    timeout: float = STREAM_DEADLINE,
    on_message: Callable[[SeedRun, Any], None] | None = None,
) -> SeedRun:
    """Runs a seed to its end, timing each progress message as it arrives.
    `on_message(run, call)` may cancel the call."""
    run = SeedRun(request=request, started=time.monotonic())
    call = stub.Seed(request, metadata=metadata, timeout=timeout)
    run.call = call
    try:
        for message in call:
            run.arrivals.append(time.monotonic())
            run.messages.append(message)
            if on_message is not None:
                on_message(run, call)
    except grpc.RpcError as err:
        run.error = err
    run.ended = time.monotonic()
    return run


# The seed shape used when a test needs a seed that lasts: 61 rows per customer.
LONG_SEED_ORDERS = 10
LONG_SEED_ITEMS = 5
_seed_rates: dict[str, float] = {}  # rows a second, per backend, measured once a session


def long_seed(server: OrdersServer, kind: str, seconds: float) -> pb.SeedRequest:
    """A seed request that should take about `seconds` on this backend, measured by seeding
    (doubling until one takes a second) the first time a session asks."""
    rows_per_customer = 1 + LONG_SEED_ORDERS * (1 + LONG_SEED_ITEMS)
    if kind not in _seed_rates:
        customers = 250
        while True:
            run = run_seed(server.stub, seed_request(customers, LONG_SEED_ORDERS, LONG_SEED_ITEMS))
            run.expect_done()
            if run.duration >= 1.0 or customers >= 64_000:
                break
            customers *= 2
        _seed_rates[kind] = run.rows() / run.duration
    wanted = int(_seed_rates[kind] * seconds / rows_per_customer)
    # Within the request bounds and the default cap of 5,000,000 rows.
    customers = max(100, min(wanted, 100_000, 5_000_000 // rows_per_customer))
    return seed_request(customers, LONG_SEED_ORDERS, LONG_SEED_ITEMS)


def run_check(server: OrdersServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m server check [ARGS]` against the server's database."""
    return subprocess.run(
        [sys.executable, "-m", "server", "check", *args],
        cwd=ROOT,
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def collect_statuses(orders: Iterable[pb.Order]) -> set[int]:
    return {o.status for o in orders}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
