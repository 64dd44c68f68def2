"""OrderBook in process, on SQLite and PostgreSQL: no server, no network beyond the database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from harness import PostgresDatabases, SqliteDatabases

from server.domain.book import OrderBook
from server.domain.lifecycle import Action
from server.domain.records import NewItem, OrderFilter, Status, epoch_us
from server.storage.database import Database

# In process: no server (scripts/test --fast runs these).
pytestmark = pytest.mark.fast

# Instants whose microseconds a conversion through milliseconds, floats or a rounding
# strftime would move into the next second, the next day or the next year.
EDGES = [
    datetime(2026, 12, 8, 0, 8, 21, 999_845, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2038, 1, 19, 3, 14, 8, 1, tzinfo=UTC),
]


class Clock:
    def __init__(self) -> None:
        self.now = EDGES[0]

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(databases: SqliteDatabases | PostgresDatabases, clock: Clock) -> Iterator[OrderBook]:
    database = Database(databases.create(), pool_size=2)
    yield OrderBook(database, seed_max_rows=1000, clock=clock)
    database.dispose()


@pytest.mark.parametrize("moment", EDGES, ids=lambda m: m.isoformat())
def test_times_read_back_to_the_microsecond(
    book: OrderBook, clock: Clock, moment: datetime
) -> None:
    clock.now = moment
    customer = book.create_customer(f"t{epoch_us(moment)}@example.com", "T")
    order = book.create_order(customer.id, [NewItem("SKU", 1, 100)])
    expected = epoch_us(moment)
    assert customer.created_us == order.created_us == order.updated_us == expected
    assert book.get_customer(customer.id).created_us == expected
    read = book.get_order(order.id)
    assert (read.created_us, read.updated_us, read.customer_created_us) == (expected,) * 3
    listed = book.list_orders(OrderFilter(customer_id=customer.id), 10, "").items
    assert [(o.id, o.created_us) for o in listed] == [(order.id, expected)]


def test_what_a_write_answers_is_what_a_read_answers(book: OrderBook, clock: Clock) -> None:
    customer = book.create_customer("same@example.com", "Same")
    created = book.create_order(customer.id, [NewItem("A", 2, 150), NewItem("B", 1, 99)])
    clock.now = EDGES[1]
    paid = book.change_status(created.id, Action.PAY)
    assert paid.status == Status.PAID and paid.updated_us == epoch_us(EDGES[1])
    assert book.get_order(created.id) == paid
    assert created._replace(status=Status.PAID, updated_us=paid.updated_us) == paid
    assert [i[2:] for i in paid.items] == [("A", 2, 150), ("B", 1, 99)]
    assert book.list_orders(OrderFilter(status=Status.PAID), 10, "").items == [paid]
    assert book.list_customers(10, "").items == [customer]
