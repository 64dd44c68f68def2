"""Queries. Each function runs in the session it is given; none opens or commits one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Select, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..domain.records import Customer, Item, NewItem, Order, OrderFilter, Status, SummaryRow
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


# Reads run on a plain connection (Database.read) or inside a write's session.
Reader = Connection | Session

# The read queries are built once, with bound parameters, and reused: building a select from
# mapped columns costs more CPU than PostgreSQL spends running it (GetSummary: 0.49 ms a call
# built each time, 0.17 ms reused, in one process on this machine), and SQLAlchemy compiles
# each shape once (its statement cache) either way.


class EmailTaken(Exception):
    """The unique index on the email key refused the insert."""


class KeyTaken(Exception):
    """Another create committed the same idempotency key first."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    method: str
    fingerprint: str
    resource_id: int


_GET_KEY = select(
    IdempotencyKeyRow.method, IdempotencyKeyRow.fingerprint, IdempotencyKeyRow.resource_id
).where(IdempotencyKeyRow.key == bindparam("key"))


def get_key(session: Reader, key: str) -> KeyRecord | None:
    row = session.execute(_GET_KEY, {"key": key}).first()
    return None if row is None else KeyRecord(row.method, row.fingerprint, row.resource_id)


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


def _utc(value: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; every timestamp here is written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _customer(row: Any) -> Customer:
    return Customer(id=row.id, email=row.email, name=row.name, created_at=_utc(row.created_at))


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
    return Customer(id=customer_id, email=email, name=name, created_at=now)


_CUSTOMER_COLUMNS = (CustomerRow.id, CustomerRow.email, CustomerRow.name, CustomerRow.created_at)


_GET_CUSTOMER = select(*_CUSTOMER_COLUMNS).where(CustomerRow.id == bindparam("id"))


def get_customer(session: Reader, customer_id: int) -> Customer | None:
    row = session.execute(_GET_CUSTOMER, {"id": customer_id}).first()
    return None if row is None else _customer(row)


@cache
def _list_customers_query(paged: bool) -> Select[*tuple[Any, ...]]:
    query = select(*_CUSTOMER_COLUMNS).order_by(CustomerRow.id.desc()).limit(bindparam("limit"))
    return query.where(CustomerRow.id < bindparam("after")) if paged else query


def list_customers(session: Reader, after: int | None, limit: int) -> list[Customer]:
    query = _list_customers_query(after is not None)
    rows = session.execute(query, {"limit": limit, "after": after})
    return [_customer(row) for row in rows]


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
    saved: tuple[Item, ...] = ()
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
        saved = tuple(
            Item(id=item_id, sku=i.sku, quantity=i.quantity, unit_price_cents=i.unit_price_cents)
            for item_id, i in zip(ids, items, strict=True)
        )
    return Order(
        id=order_id,
        customer=customer,
        status=Status.DRAFT,
        is_archived=False,
        total_cents=total_cents,
        items=saved,
        created_at=now,
        updated_at=now,
    )


# Plain columns, not ORM entities: rows come back as tuples, several times cheaper to load
# than mapped objects (scripts/compare_server_modes.py measured ListOrders at 3.8 ms per
# page through the ORM and 1.6 ms as rows).
_ORDER_COLUMNS = (
    OrderRow.id,
    OrderRow.status,
    OrderRow.is_archived,
    OrderRow.total_cents,
    OrderRow.created_at,
    OrderRow.updated_at,
    CustomerRow.id.label("customer_id"),
    CustomerRow.email,
    CustomerRow.name,
    CustomerRow.created_at.label("customer_created_at"),
)
_ITEM_COLUMNS = (
    OrderItemRow.order_id,
    OrderItemRow.id,
    OrderItemRow.sku,
    OrderItemRow.quantity,
    OrderItemRow.unit_price_cents,
)


_ORDERS_WITH_CUSTOMERS = select(*_ORDER_COLUMNS).join(
    CustomerRow, CustomerRow.id == OrderRow.customer_id
)
_GET_ORDER = _ORDERS_WITH_CUSTOMERS.where(OrderRow.id == bindparam("id"))
_ITEMS_OF_ORDERS = (
    select(*_ITEM_COLUMNS)
    .where(OrderItemRow.order_id.in_(bindparam("order_ids", expanding=True)))
    .order_by(OrderItemRow.order_id, OrderItemRow.id)
)
# A page's items in the page's order (newest order first) up to a budget, each order's
# backwards: a backward walk of the (order_id, id) index, where (order_id DESC, id) would
# sort (0.1 ms more a page of 50 orders on PostgreSQL).
_ITEMS_OF_PAGE = (
    select(*_ITEM_COLUMNS)
    .where(OrderItemRow.order_id.in_(bindparam("order_ids", expanding=True)))
    .order_by(OrderItemRow.order_id.desc(), OrderItemRow.id.desc())
    .limit(bindparam("item_limit"))
)


def _load(
    session: Reader,
    query: Select[*tuple[Any, ...]],
    params: dict[str, Any],
    max_items: int | None = None,
) -> tuple[list[Order], bool]:
    """Runs `query` (orders joined to customers, newest first), then fetches all their items
    in one more statement: two statements whatever the number of orders.

    With `max_items`, the orders end before the first one whose items would pass it (the
    first order is always whole when it holds no more than max_items); the flag says whether
    they were cut so."""
    rows = session.execute(query, params).all()
    if not rows:
        return [], False
    items: dict[int, list[Item]] = {row.id: [] for row in rows}
    cut = False
    if max_items is None:
        fetched = session.execute(_ITEMS_OF_ORDERS, {"order_ids": list(items)}).all()
    else:
        fetched = session.execute(
            _ITEMS_OF_PAGE, {"order_ids": list(items), "item_limit": max_items + 1}
        ).all()
        if len(fetched) > max_items:
            # The items stopped inside this order: it and the older ones wait for a next page.
            cut = True
            partial = fetched[-1].order_id
            rows = [row for row in rows if row.id > partial]
    for order_id, item_id, sku, quantity, price in fetched:
        items[order_id].append(Item(item_id, sku, quantity, price))
    if max_items is not None:
        for lines in items.values():
            lines.reverse()
    customers: dict[int, Customer] = {}
    orders = []
    for row in rows:
        customer = customers.get(row.customer_id)
        if customer is None:
            customer = customers[row.customer_id] = Customer(
                row.customer_id, row.email, row.name, _utc(row.customer_created_at)
            )
        orders.append(
            Order(
                id=row.id,
                customer=customer,
                status=Status(row.status),
                is_archived=row.is_archived,
                total_cents=row.total_cents,
                items=tuple(items[row.id]),
                created_at=_utc(row.created_at),
                updated_at=_utc(row.updated_at),
            )
        )
    return orders, cut


def get_order(session: Reader, order_id: int) -> Order | None:
    found, _ = _load(session, _GET_ORDER, {"id": order_id})
    return found[0] if found else None


def _like_literal(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@cache
def _list_orders_query(
    status: bool, email: bool, customer: bool, include_archived: bool, paged: bool
) -> Select[*tuple[Any, ...]]:
    """The query for one combination of filters (at most 32 shapes, each built once)."""
    query = _ORDERS_WITH_CUSTOMERS.order_by(OrderRow.id.desc()).limit(bindparam("limit"))
    if status:
        query = query.where(OrderRow.status == bindparam("status"))
    if email:
        query = query.where(CustomerRow.email_key.like(bindparam("email"), escape="\\"))
    if customer:
        query = query.where(OrderRow.customer_id == bindparam("customer_id"))
    if not include_archived:
        query = query.where(OrderRow.is_archived.is_(False))
    if paged:
        query = query.where(OrderRow.id < bindparam("after"))
    return query


def list_orders(
    session: Reader, filters: OrderFilter, after: int | None, limit: int, max_items: int
) -> tuple[list[Order], bool]:
    """Up to `limit` orders, newest first, and whether they were cut short because their
    items would pass `max_items`."""
    query = _list_orders_query(
        filters.status is not None,
        bool(filters.email),
        filters.customer_id is not None,
        filters.include_archived,
        after is not None,
    )
    params = {
        "limit": limit,
        "status": None if filters.status is None else filters.status.value,
        "email": _like_literal(filters.email.lower()) if filters.email else None,
        "customer_id": filters.customer_id,
        "after": after,
    }
    return _load(session, query, params, max_items)


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


_SUMMARY = (
    select(
        CustomerTotalRow.customer_id,
        CustomerTotalRow.email,
        CustomerTotalRow.order_count,
        CustomerTotalRow.total_cents,
    )
    .where(CustomerTotalRow.order_count > 0)
    .order_by(CustomerTotalRow.total_cents.desc(), CustomerTotalRow.customer_id)
    .limit(bindparam("limit"))
)


def summary(session: Reader, limit: int) -> list[SummaryRow]:
    """One statement, one table: the rollup's ranking index (the rows carry the emails)."""
    # The select's columns are SummaryRow's fields, in order.
    return [SummaryRow._make(row) for row in session.execute(_SUMMARY, {"limit": limit})]
