"""The read path's choice of database, in process, on PostgreSQL: no server, no standby.

A read URL that names a server that is not a standby is a replica that keeps up by
definition (its replay position is its own WAL position), which lets these tests show the
routing itself; tests/reliability/test_read_replica.py shows it against a real standby.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from harness import PostgresDatabases, free_port, wait_for
from pgbouncer import PgBouncer, PgBouncerUnavailable
from prometheus_client import REGISTRY

from server import calls
from server.domain.book import OrderBook
from server.domain.records import NewItem
from server.storage.database import Database
from server.storage.replica import UNKNOWN_POSITION, format_lsn, parse_lsn

pytestmark = pytest.mark.fast
POSTGRESQL = pytest.mark.parametrize("databases", ["postgresql"], indirect=True)


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def url(databases: PostgresDatabases) -> str:
    return databases.create()


@pytest.fixture
def routed(url: str) -> Iterator[OrderBook]:
    database = Database(url, pool_size=2, read_url=url)
    assert database.replica is not None
    wait_for(lambda: database.replica is not None and database.replica.reachable, 10, "a probe")
    yield OrderBook(database, seed_max_rows=100)
    database.dispose()


def test_positions_read_as_postgresql_writes_them() -> None:
    for text in ("0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"):
        assert format_lsn(parse_lsn(text)) == text
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")
    for bad in ("", "16", "/1", "x/1", "1/2/3", "100000000/0"):
        with pytest.raises(ValueError):
            parse_lsn(bad)


@POSTGRESQL
def test_reads_of_a_read_call_go_to_the_replica_and_writes_answer_a_position(
    routed: OrderBook,
) -> None:
    with calls.scope() as write:
        customer = routed.create_customer("routed@example.com", "Routed")
    assert write.lsn is not None and parse_lsn(write.lsn) > 0
    replica_reads = _count("orders_db_reads_total", database="replica")
    primary_reads = _count("orders_db_reads_total", database="primary")
    with calls.scope() as read:
        read.replica = True
        read.min_lsn = parse_lsn(write.lsn)
        assert routed.get_customer(customer.id).email == "routed@example.com"
    assert _count("orders_db_reads_total", database="replica") == replica_reads + 1
    # A call not marked as a read (a write's own reads, commands) stays on the primary.
    with calls.scope():
        routed.get_customer(customer.id)
    assert _count("orders_db_reads_total", database="replica") == replica_reads + 1
    assert _count("orders_db_reads_total", database="primary") == primary_reads


@POSTGRESQL
def test_an_unreadable_position_goes_to_the_primary(routed: OrderBook) -> None:
    before = _count("orders_replica_fallbacks_total", reason="lsn")
    with calls.scope() as read:
        read.replica = True
        read.min_lsn = UNKNOWN_POSITION
        assert routed.summary(5) == []
    assert _count("orders_replica_fallbacks_total", reason="lsn") == before + 1


@POSTGRESQL
def test_a_replica_nobody_answers_at_costs_no_read(url: str) -> None:
    database = Database(
        url, pool_size=2, read_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    )
    try:
        book = OrderBook(database, seed_max_rows=100)
        with calls.scope():
            order = book.create_order(
                book.create_customer("down@example.com", "Down").id, [NewItem("SKU", 1, 5)]
            )
        before = _count("orders_replica_fallbacks_total", reason="down")
        with calls.scope() as read:
            read.replica = True
            assert book.get_order(order.id).total_cents == 5
        assert _count("orders_replica_fallbacks_total", reason="down") == before + 1
        assert database.replica is not None and not database.replica.reachable
    finally:
        database.dispose()


@POSTGRESQL
def test_a_replica_behind_pgbouncer_is_watched_and_read(url: str) -> None:
    """Behind a pooler in transaction mode (with PgBouncer's defaults: no `options` startup
    parameter) the monitor still reaches the replica, and reads go there."""
    direct = sa.make_url(url)
    try:
        pooler = PgBouncer(direct.host or "127.0.0.1", direct.port or 5432)
    except PgBouncerUnavailable as exc:
        pytest.skip(str(exc))  # the suite's PgBouncer modules fail under CI=true instead
    try:
        pooler.start()
        database = Database(
            url,
            pool_size=2,
            transaction_pooling=True,
            read_url=pooler.url(str(direct.database)),
        )
        try:
            replica = database.replica
            assert replica is not None
            wait_for(lambda: replica.reachable, 10, "the monitor to reach the replica")
            book = OrderBook(database, seed_max_rows=100)
            before = _count("orders_db_reads_total", database="replica")
            with calls.scope() as read:
                read.replica = True
                book.summary(3)
            assert _count("orders_db_reads_total", database="replica") == before + 1
        finally:
            database.dispose()
    finally:
        pooler.destroy()
