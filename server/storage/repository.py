"""Queries. Each function runs in the session it is given; none opens or commits one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..domain.records import (
    Customer,
    ItemRow,
    NewItem,
    Order,
    OrderFilter,
    Status,
    SummaryRow,
    epoch_us,
)
from .database import Rows, Sql
from .schema import CustomerRow, CustomerTotalRow, IdempotencyKeyRow, OrderItemRow, OrderRow

__all__ = [
    "EmailTaken",
    "KeyRecord",
    "KeyTaken",
    "OrderState",
    "add_to_rollup",
    "get_customer",
    "get_key",
    "get_order",
    "insert_customer",
    "insert_key",
    "insert_order",
    "list_customers",
    "list_orders",
    "lock_order",
    "summary",
    "update_order",
]

# Reads are SQL text run through Rows (Database.read, or Database.rows inside a write), each
# statement rendered once per database and prepared once per connection; writes go through
# SQLAlchemy Core.


class EmailTaken(Exception):
    """The unique index on the email key refused the insert."""


class KeyTaken(Exception):
    """Another create committed the same idempotency key first."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    method: str
    fingerprint: str
    resource_id: int


_GET_KEY = Sql("SELECT method, fingerprint, resource_id FROM idempotency_keys WHERE key = :key")


def get_key(rows: Rows, key: str) -> KeyRecord | None:
    row = rows.first(_GET_KEY, {"key": key})
    return None if row is None else KeyRecord(*row)


def insert_key(
    session: Session, key: str, method: str, fingerprint: str, resource_id: int, now: datetime
) -> None:
    """Records the key in the create's transaction; KeyTaken if another create has it (on
    PostgreSQL the insert waits for that create's transaction to end first). The caller's
    transaction must then roll back."""
    try:
        session.execute(
            insert(IdempotencyKeyRow).values(
                key=key,
                method=method,
                fingerprint=fingerprint,
                resource_id=resource_id,
                created_at=now,
            )
        )
    except IntegrityError:
        raise KeyTaken(key) from None


@dataclass(frozen=True, slots=True)
class OrderState:
    """What a transition needs to decide, read under a row lock."""

    id: int
    customer_id: int
    status: Status
    is_archived: bool
    total_cents: int


def insert_customer(session: Session, email: str, name: str, now: datetime) -> Customer:
    try:
        customer_id = session.execute(
            insert(CustomerRow)
            .values(email=email, email_key=email.lower(), name=name, created_at=now)
            .returning(CustomerRow.id)
        ).scalar_one()
    except IntegrityError as exc:
        if "email" in str(exc.orig).lower():
            raise EmailTaken(email) from None
        raise
    session.execute(
        insert(CustomerTotalRow).values(
            customer_id=customer_id, order_count=0, total_cents=0, email=email
        )
    )
    return Customer(customer_id, email, name, epoch_us(now))


_CUSTOMER = "SELECT id, email, name, $us(created_at) FROM customers"
_GET_CUSTOMER = Sql(f"{_CUSTOMER} WHERE id = :id")
_LIST_CUSTOMERS = Sql(f"{_CUSTOMER} ORDER BY id DESC LIMIT :limit")
_LIST_CUSTOMERS_AFTER = Sql(f"{_CUSTOMER} WHERE id < :after ORDER BY id DESC LIMIT :limit")


def get_customer(rows: Rows, customer_id: int) -> Customer | None:
    row = rows.first(_GET_CUSTOMER, {"id": customer_id})
    return None if row is None else Customer._make(row)


def list_customers(rows: Rows, after: int | None, limit: int) -> list[Customer]:
    query = _LIST_CUSTOMERS if after is None else _LIST_CUSTOMERS_AFTER
    return [Customer._make(row) for row in rows.all(query, {"after": after, "limit": limit})]


def insert_order(
    session: Session,
    customer: Customer,
    items: Sequence[NewItem],
    total_cents: int,
    now: datetime,
) -> Order:
    order_id = session.execute(
        insert(OrderRow)
        .values(
            customer_id=customer.id,
            status=Status.DRAFT.value,
            is_archived=False,
            total_cents=total_cents,
            created_at=now,
            updated_at=now,
        )
        .returning(OrderRow.id)
    ).scalar_one()
    saved: list[ItemRow] = []
    if items:
        # One statement for all items (SQLAlchemy's insertmanyvalues), ids returned in order.
        ids = session.execute(
            insert(OrderItemRow).returning(OrderItemRow.id, sort_by_parameter_order=True),
            [
                {
                    "order_id": order_id,
                    "sku": item.sku,
                    "quantity": item.quantity,
                    "unit_price_cents": item.unit_price_cents,
                }
                for item in items
            ],
        ).scalars()
        saved = [
            (order_id, item_id, i.sku, i.quantity, i.unit_price_cents)
            for item_id, i in zip(ids, items, strict=True)
        ]
    stamp = epoch_us(now)
    return Order(
        order_id,
        customer.id,
        Status.DRAFT.value,
        False,
        total_cents,
        stamp,
        stamp,
        customer.email,
        customer.name,
        customer.created_us,
        saved,
    )


_ORDER_COLUMNS = (
    "o.id, o.customer_id, o.status, o.is_archived, o.total_cents, $us(o.created_at),"
    " $us(o.updated_at), c.email, c.name, $us(c.created_at)"
)
_ORDER = f"SELECT {_ORDER_COLUMNS} FROM orders o JOIN customers c ON c.id = o.customer_id"
_ITEM = "SELECT order_id, id, sku, quantity, unit_price_cents FROM order_items"
_GET_ORDER = Sql(f"{_ORDER} WHERE o.id = :id")
_ITEMS_OF_ORDER = Sql(f"{_ITEM} WHERE order_id = :id ORDER BY id")
# A page's items in the page's order (newest order first) up to a budget, each order's
# backwards: a backward walk of the (order_id, id) index, where (order_id DESC, id) would
# add a sort.
_ITEMS_OF_PAGE = Sql(
    f"{_ITEM} WHERE order_id $in(:ids) ORDER BY order_id DESC, id DESC LIMIT :limit"
)

# An email filter is a substring of the customers' emails. When it matches at most this many
# customers (a typo, one person, a rare name), their orders are read from the (customer_id,
# id) index, one short probe per customer, whatever the size of the table; a broader one
# walks the orders newest first, which finds a page quickly where matches are common. Which
# one is decided in the statement itself, by a bounded look at the matching customers
# (through the trigram index), not by the planner's estimate of the pattern.
FEW_CUSTOMERS = 100
_LIKE = "email_key LIKE :email ESCAPE '\\'"


def get_order(rows: Rows, order_id: int) -> Order | None:
    row = rows.first(_GET_ORDER, {"id": order_id})
    if row is None:
        return None
    return Order._make((*row, rows.all(_ITEMS_OF_ORDER, {"id": order_id})))


def _like_literal(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _and(conditions: list[str]) -> str:
    return "".join(f" AND {condition}" for condition in conditions)


@cache
def _list_orders_sql(
    status: bool, email: bool, customer: bool, include_archived: bool, paged: bool
) -> Sql:
    """The statement for one combination of filters (at most 32 shapes, each built once)."""
    where = ["TRUE"]
    if status:
        where.append("o.status = :status")
    if customer:
        where.append("o.customer_id = :customer_id")
    if not include_archived:
        where.append("NOT o.is_archived")
    if paged:
        where.append("o.id < :after")
    if not email:
        return Sql(f"{_ORDER} WHERE {' AND '.join(where)} ORDER BY o.id DESC LIMIT :limit")
    walk = f"{_ORDER} WHERE c.{_LIKE}{_and(where[1:])} ORDER BY o.id DESC LIMIT :limit"
    if customer:
        return Sql(walk)  # one customer's orders: its index bounds the walk
    few = (
        f"SELECT {_ORDER_COLUMNS} FROM matching c CROSS JOIN LATERAL"
        f" (SELECT * FROM orders o WHERE o.customer_id = c.id{_and(where[1:])}"
        "  ORDER BY o.id DESC LIMIT :limit) o"
        " WHERE (SELECT few FROM look) ORDER BY o.id DESC LIMIT :limit"
    )
    # The walk is a CTE of its own so that it is planned as it would be alone: inline, under
    # the gate, PostgreSQL drops the Memoize over the customers it meets, and a broad pattern
    # pays a customer lookup per order. A CTE runs only when read: behind a false gate it
    # costs nothing.
    postgresql = (
        "WITH matching AS MATERIALIZED (SELECT id, email, name, created_at FROM customers"
        f" WHERE {_LIKE} LIMIT :look), look AS (SELECT count(*) < :look AS few FROM matching),"
        f" walk AS MATERIALIZED ({walk})"
        f" ({few}) UNION ALL (SELECT * FROM walk WHERE NOT (SELECT few FROM look))"
        " ORDER BY 1 DESC"
    )
    # Planned for its pattern on every call: a plan made for any pattern could not know
    # whether the trigram index narrows the customers down. SQLite has no trigram index.
    return Sql(postgresql, sqlite=walk, prepare=False)


def list_orders(
    rows: Rows, filters: OrderFilter, after: int | None, limit: int, max_items: int
) -> tuple[list[Order], bool]:
    """Up to `limit` orders, newest first, with their items, in two statements whatever the
    filters; and whether they were cut short because their items would pass `max_items`
    (they then end before the first order whose items would pass it; the first order is whole
    when it holds no more than max_items)."""
    query = _list_orders_sql(
        filters.status is not None,
        bool(filters.email),
        filters.customer_id is not None,
        filters.include_archived,
        after is not None,
    )
    found = rows.all(
        query,
        {
            "limit": limit,
            "status": None if filters.status is None else filters.status.value,
            "email": _like_literal(filters.email.lower()) if filters.email else None,
            "look": FEW_CUSTOMERS + 1,
            "customer_id": filters.customer_id,
            "after": after,
        },
    )
    if not found:
        return [], False
    fetched = rows.all(
        _ITEMS_OF_PAGE, {"ids": rows.ids([row[0] for row in found]), "limit": max_items + 1}
    )
    cut = len(fetched) > max_items
    if cut:
        # The items stopped inside this order: it and the older ones wait for a next page.
        partial = fetched[-1][0]
        found = [row for row in found if row[0] > partial]
    items: dict[int, list[ItemRow]] = {row[0]: [] for row in found}
    for item in fetched:
        lines = items.get(item[0])
        if lines is not None:
            lines.append(item)
    return [Order._make((*row, items[row[0]][::-1])) for row in found], cut


def lock_order(session: Session, order_id: int) -> OrderState | None:
    """Reads the order's state and locks its row until the transaction ends (PostgreSQL;
    SQLite's write transactions already hold the database's write lock)."""
    row = session.execute(
        select(
            OrderRow.id,
            OrderRow.customer_id,
            OrderRow.status,
            OrderRow.is_archived,
            OrderRow.total_cents,
        )
        .where(OrderRow.id == order_id)
        .with_for_update()
    ).first()
    if row is None:
        return None
    return OrderState(
        id=row.id,
        customer_id=row.customer_id,
        status=Status(row.status),
        is_archived=row.is_archived,
        total_cents=row.total_cents,
    )


def update_order(
    session: Session,
    order_id: int,
    now: datetime,
    status: Status | None = None,
    is_archived: bool | None = None,
) -> None:
    values: dict[str, Any] = {"updated_at": now}
    if status is not None:
        values["status"] = status.value
    if is_archived is not None:
        values["is_archived"] = is_archived
    session.execute(update(OrderRow).where(OrderRow.id == order_id).values(**values))


def add_to_rollup(session: Session, customer_id: int, order_count: int, total_cents: int) -> None:
    session.execute(
        update(CustomerTotalRow)
        .where(CustomerTotalRow.customer_id == customer_id)
        .values(
            order_count=CustomerTotalRow.order_count + order_count,
            total_cents=CustomerTotalRow.total_cents + total_cents,
        )
    )


_SUMMARY = Sql(
    "SELECT customer_id, email, order_count, total_cents FROM customer_totals"
    " WHERE order_count > 0 ORDER BY total_cents DESC, customer_id LIMIT :limit"
)


def summary(rows: Rows, limit: int) -> list[SummaryRow]:
    """One statement, one table: the rollup's ranking index (the rows carry the emails)."""
    # The select's columns are SummaryRow's fields, in order.
    return [SummaryRow._make(row) for row in rows.all(_SUMMARY, {"limit": limit})]
