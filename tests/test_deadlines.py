"""A call's deadline bounds its database work: the remaining time becomes PostgreSQL's
statement_timeout, or interrupts SQLite, and the caller gets DEADLINE_EXCEEDED."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from harness import OrdersServer, PostgresDatabases, SqliteDatabases
from orders.v1 import orders_pb2 as pb
from sqlalchemy import text

from server.calls import scope
from server.domain.errors import DeadlineExceeded
from server.storage.database import Database, Rows, Sql

# A statement that runs far longer than any deadline below.
SLOW = {
    "postgresql": "SELECT pg_sleep(5)",
    "sqlite": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n LIMIT 50000000) "
    "SELECT count(*) FROM n",
}


def _scalar(rows: Rows, sql: str) -> object:
    return rows.all(Sql(sql), {})[0][0]


# Without a pooler the bound is the connection's own statement_timeout, kept between calls;
# behind one in transaction mode (ORDERS_TRANSACTION_POOLING) it is set for each transaction.
POOLING = pytest.mark.parametrize("pooling", [False, True], ids=["own-connections", "pooler"])


@pytest.mark.fast
@POOLING
def test_a_slow_statement_is_stopped_at_the_deadline(
    databases: SqliteDatabases | PostgresDatabases, pooling: bool
) -> None:
    database = Database(databases.create(), transaction_pooling=pooling)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded), scope(seconds=0.3), database.read() as rows:
        rows.all(Sql(SLOW[databases.kind]), {})
    elapsed = time.monotonic() - started
    # The next call on the connection works.
    with database.read() as rows:
        assert _scalar(rows, "SELECT 1") == 1
    database.dispose()
    assert elapsed < 2.0, f"the statement ran {elapsed:.2f} s past a 0.3 s deadline"


PAUSE = {
    "postgresql": "SELECT pg_sleep(0.6)",
    "sqlite": SLOW["sqlite"].replace("50000000", "2000000"),
}


@pytest.mark.fast
@POOLING
def test_a_deadline_does_not_outlive_its_call(
    databases: SqliteDatabases | PostgresDatabases, pooling: bool
) -> None:
    # One connection (pool of 1) serves a bounded call, then unbounded reads and writes,
    # which must not inherit the 0.3 s.
    database = Database(databases.create(), pool_size=1, transaction_pooling=pooling)
    with scope(seconds=0.3), database.read() as rows:
        assert _scalar(rows, "SELECT 1") == 1
    with scope(seconds=None), database.read() as rows:
        rows.all(Sql(PAUSE[databases.kind]), {})
    with scope(seconds=0.3), database.write() as session:
        assert session.execute(text("SELECT 1")).scalar() == 1
    with scope(seconds=None), database.write() as session:
        session.execute(text(PAUSE[databases.kind]))
    # A longer deadline after a shorter one is not cut at the shorter one.
    with scope(seconds=0.3), database.read() as rows:
        assert _scalar(rows, "SELECT 1") == 1
    with scope(seconds=5), database.read() as rows:
        rows.all(Sql(PAUSE[databases.kind]), {})
    if databases.kind == "postgresql" and pooling:
        # Behind a pooler the next transaction may be another client's: nothing may remain.
        with scope(seconds=0.3), database.read() as rows:
            rows.all(Sql("SELECT 1"), {})
        with scope(seconds=None), database.read() as rows:
            assert _scalar(rows, "SHOW statement_timeout") == "0"
    database.dispose()


@pytest.mark.fast
def test_no_deadline_leaves_statements_unbounded(
    databases: SqliteDatabases | PostgresDatabases,
) -> None:
    database = Database(databases.create())
    with scope(seconds=None), database.read() as rows:
        assert _scalar(rows, "SELECT 1") == 1
    database.dispose()


def test_an_expired_seed_call_stops_and_leaves_no_rows(
    start_server: Callable[..., OrdersServer],
) -> None:
    server = start_server()
    with pytest.raises(grpc.RpcError) as failed:
        list(
            server.stub.Seed(
                pb.SeedRequest(customers=20_000, orders_per_customer=10, items_per_order=5),
                timeout=0.5,
            )
        )
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline_at = time.monotonic() + 10
    while time.monotonic() < deadline_at:
        summary = server.stub.GetSummary(pb.GetSummaryRequest(), timeout=10)
        customers = server.stub.ListCustomers(pb.ListCustomersRequest(page_size=1), timeout=10)
        if not customers.customers:
            break
        time.sleep(0.2)
    assert not customers.customers and not summary.customers


@pytest.mark.fast
def test_a_practically_infinite_deadline_counts_as_none(
    databases: SqliteDatabases | PostgresDatabases,
) -> None:
    # Envoy forwards grpc-timeout values of thousands of years; they must not break the call.
    database = Database(databases.create())
    with scope(seconds=9.2e18), database.read() as rows:
        assert _scalar(rows, "SELECT 1") == 1
    database.dispose()
