"""The floor: the same work done with raw psycopg 3 and nothing else.

Seeding: COPY of the same rows (bench/rows.py) into a database migrated with the service's own
migrations, with ids generated here, in one transaction. Reading: the SQL a hand-written query
would use (the summary as the aggregate over orders, as the Django service computed it), on a
connection kept open, rows fetched as tuples.
"""

from __future__ import annotations

import base64
import json
import time
from array import array
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from orders.v1 import orders_pb2 as pb

from server.domain.seeding import seed_email

from .rows import customer_rows, item_rows, order_rows
from .stack import libpq, pid_cpu

__all__ = ["FloorReader", "FloorSeeder", "ListOrdersFloor"]


class FloorSeeder:
    """Raw COPY into one database; remembers the next free id of each table."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(libpq(database_url), connect_timeout=5)
        self.email_key = has_email_key(self.conn)
        self.totals_email = has_column(self.conn, "customer_totals", "email")
        self.conn.commit()
        self.next_customer = 1
        self.next_order = 1
        self.next_item = 1
        self.last_python_cpu = 0.0  # CPU seconds of this process in the last seed
        self.last_postgres_cpu: float | None = None  # and of its PostgreSQL backend

    def close(self) -> None:
        self.conn.close()

    def seed(self, customers: int, per_customer: int, per_order: int) -> tuple[float, int]:
        """Seconds from the first statement to the commit, and the statements sent."""
        orders = customers * per_customer
        items = orders * per_order
        c0, o0, i0 = self.next_customer, self.next_order, self.next_item
        stamp = datetime.now(UTC)
        paid_count = array("q", bytes(8 * customers))
        paid_total = array("q", bytes(8 * customers))
        statements = 0
        backend = self.conn.info.backend_pid
        postgres_before = pid_cpu([backend]).get(backend)
        cpu_before = time.process_time()
        started = time.perf_counter()
        with self.conn.transaction(), self.conn.cursor() as cur:
            key = ", email_key" if self.email_key else ""
            with cur.copy(f"COPY customers (id, email{key}, name, created_at) FROM STDIN") as copy:
                for row in customer_rows(c0, customers, stamp, self.email_key):
                    copy.write_row(row)
            statements += 1
            with cur.copy(
                "COPY orders (id, customer_id, status, is_archived, total_cents, created_at,"
                " updated_at) FROM STDIN"
            ) as copy:
                for row in order_rows(
                    c0, customers, o0, per_customer, per_order, stamp, paid_count, paid_total
                ):
                    copy.write_row(row)
            statements += 1
            totals = "customer_id, order_count, total_cents" + (
                ", email" if self.totals_email else ""
            )
            with cur.copy(f"COPY customer_totals ({totals}) FROM STDIN") as copy:
                ids = range(c0, c0 + customers)
                columns: list[Iterable[Any]] = [ids, paid_count, paid_total]
                if self.totals_email:
                    columns.append(map(seed_email, ids))
                for row in zip(*columns, strict=True):
                    copy.write_row(row)
            statements += 1
            with cur.copy(
                "COPY order_items (id, order_id, sku, quantity, unit_price_cents) FROM STDIN"
            ) as copy:
                for row in item_rows(o0, orders, per_order, i0):
                    copy.write_row(row)
            statements += 1
            # The ids were ours: move the sequences past them, as a loader must.
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('customers', 'id'), %s),"
                " setval(pg_get_serial_sequence('orders', 'id'), %s),"
                " setval(pg_get_serial_sequence('order_items', 'id'), %s)",
                (c0 + customers, o0 + max(orders, 1), i0 + max(items, 1)),
            )
            statements += 1
        elapsed = time.perf_counter() - started
        self.last_python_cpu = time.process_time() - cpu_before
        postgres_after = pid_cpu([backend]).get(backend)
        self.last_postgres_cpu = (
            None
            if postgres_before is None or postgres_after is None
            else postgres_after - postgres_before
        )
        self.next_customer += customers
        self.next_order += orders
        self.next_item += items
        return elapsed, statements


_ORDER_SELECT = (
    "SELECT o.id, o.status, o.is_archived, o.total_cents, o.created_at, o.updated_at,"
    " c.id, c.email, c.name, c.created_at"
    " FROM orders o JOIN customers c ON c.id = o.customer_id"
)
_ITEMS = (
    "SELECT order_id, id, sku, quantity, unit_price_cents FROM order_items"
    " WHERE order_id = ANY(%s) ORDER BY order_id, id"
)
SUMMARY_AGGREGATE = (
    "SELECT o.customer_id, c.email, count(*) AS order_count, sum(o.total_cents) AS total"
    " FROM orders o JOIN customers c ON c.id = o.customer_id"
    " WHERE o.status = 'PAID' AND NOT o.is_archived"
    " GROUP BY o.customer_id, c.email"
    " ORDER BY total DESC, o.customer_id LIMIT %s"
)

# The service's summary (server/storage/repository.py): the rollup, through its ranking index,
# with the emails it carries (migration 0004).
SUMMARY_ROLLUP = (
    "SELECT customer_id, email, order_count, total_cents FROM customer_totals"
    " WHERE order_count > 0 ORDER BY total_cents DESC, customer_id LIMIT %s"
)


def has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    """Whether the schema the floor loads into has this column (the floor follows the
    migrations: it may run against a database of an older revision)."""
    row = conn.execute(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = %s AND column_name = %s",
        (table, column),
    ).fetchone()
    return bool(row and row[0])


def has_email_key(conn: psycopg.Connection[Any]) -> bool:
    """Whether the schema keeps a lowercased search key beside each email (migration 0002 on)
    rather than searching lower(email)."""
    return has_column(conn, "customers", "email_key")


def list_sql(
    status: str | None, email: str | None, after: int | None, email_key: bool = False
) -> tuple[str, list[Any]]:
    """The hand-written page query; the email searched the way the schema's index serves it."""
    where = ["NOT o.is_archived"]
    params: list[Any] = []
    if status:
        where.append("o.status = %s")
        params.append(status)
    if email:
        escaped = email.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        column = "c.email_key" if email_key else "lower(c.email)"
        where.append(f"{column} LIKE %s ESCAPE '\\'")
        params.append(f"%{escaped}%")
    if after is not None:
        where.append("o.id < %s")
        params.append(after)
    return f"{_ORDER_SELECT} WHERE {' AND '.join(where)} ORDER BY o.id DESC LIMIT %s", params


class FloorReader:
    """Hand-written reads on one open connection (autocommit: one round trip a statement)."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(libpq(database_url), autocommit=True, connect_timeout=5)
        self.email_key = has_email_key(self.conn)

    def close(self) -> None:
        self.conn.close()

    def summary(self, limit: int) -> int:
        self.conn.execute(SUMMARY_AGGREGATE, (limit,)).fetchall()
        return 1

    def get_order(self, order_id: int) -> int:
        self.conn.execute(f"{_ORDER_SELECT} WHERE o.id = %s", (order_id,)).fetchall()
        self.conn.execute(_ITEMS, ([order_id],)).fetchall()
        return 2

    def list_orders(
        self, status: str | None, email: str | None, after: int | None, limit: int = 50
    ) -> int:
        query, params = list_sql(status, email, after, self.email_key)
        rows = self.conn.execute(query, (*params, limit)).fetchall()
        if not rows:
            return 1
        self.conn.execute(_ITEMS, ([r[0] for r in rows],)).fetchall()
        return 2

    def explain(self, query: str, params: tuple[Any, ...]) -> str:
        rows = self.conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}", params).fetchall()
        return "\n".join(r[0] for r in rows)


# The service's two statements of a ListOrders page with a status filter, as it sends them
# (server/storage/repository.py): the orders joined to their customers, timestamps as
# microseconds since the epoch (what a protobuf Timestamp is made of, no datetime per field),
# then the page's items walking the (order_id, id) index backwards up to the page's item
# budget (5,000 + 1). Written out here, not imported: the floor is code of its own.
_US = "(extract(epoch FROM {}) * 1000000)::int8"
_PAGE_ORDERS = (
    "SELECT o.id, o.customer_id, o.status, o.is_archived, o.total_cents,"
    f" {_US.format('o.created_at')}, {_US.format('o.updated_at')}, c.email, c.name,"
    f" {_US.format('c.created_at')}"
    " FROM orders o JOIN customers c ON c.id = o.customer_id"
    " WHERE TRUE AND o.status = %s AND NOT o.is_archived ORDER BY o.id DESC LIMIT %s"
)
_PAGE_ITEMS = (
    "SELECT order_id, id, sku, quantity, unit_price_cents FROM order_items"
    " WHERE order_id = ANY(%s) ORDER BY order_id DESC, id DESC LIMIT %s"
)
_PAGE_ITEM_BUDGET = 5_000
_STATUS = {name: pb.Order.Status.Value(name) for name in ("DRAFT", "PAID", "SHIPPED", "CANCELLED")}


def _stamp(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000)


class ListOrdersFloor:
    """ListOrders(status, page_size) without the service: the same two statements on a plain
    psycopg connection (prepared, autocommit), the orders_pb2.ListOrdersResponse built from
    the rows, serialized. What any Python gRPC server has to do for that page, and no more."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(libpq(database_url), autocommit=True, connect_timeout=5)

    def close(self) -> None:
        self.conn.close()

    def page(self, status: str, limit: int) -> bytes:
        rows = self.conn.execute(_PAGE_ORDERS, (status, limit), prepare=True).fetchall()
        reply = pb.ListOrdersResponse()
        if not rows:
            return reply.SerializeToString()
        ids = [r[0] for r in rows]
        fetched = self.conn.execute(
            _PAGE_ITEMS, (ids, _PAGE_ITEM_BUDGET + 1), prepare=True
        ).fetchall()
        items: dict[int, list[pb.OrderItem]] = {order_id: [] for order_id in ids}
        for order_id, item_id, sku, quantity, price in fetched:
            items[order_id].append(
                pb.OrderItem(id=item_id, sku=sku, quantity=quantity, unit_price_cents=price)
            )
        customers: dict[int, pb.Customer] = {}
        for order_id, cid, state, archived, total, created, updated, email, name, since in rows:
            customer = customers.get(cid)
            if customer is None:
                customer = customers[cid] = pb.Customer(
                    id=cid, email=email, name=name, created_at=_stamp(since)
                )
            lines = items[order_id]
            lines.reverse()
            reply.orders.append(
                pb.Order(
                    id=order_id,
                    customer_id=cid,
                    customer=customer,
                    status=_STATUS[state],
                    is_archived=archived,
                    total_cents=total,
                    items=lines,
                    created_at=_stamp(created),
                    updated_at=_stamp(updated),
                )
            )
        if len(rows) == limit:  # a next page may follow: a keyset token, as the service's
            raw = json.dumps({"after": ids[-1], "f": "0" * 16}, separators=(",", ":"))
            reply.next_page_token = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        return reply.SerializeToString()
