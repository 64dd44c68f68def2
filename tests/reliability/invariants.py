"""What must hold after any fuzz run or fault: read from the database directly (the tests trust
nothing the server says about itself) and from `python -m server check`.

- every order's total_cents equals the sum of its items;
- no orphan rows (an item without its order, an order or a summary row without its customer);
- no customer lost (every customer a caller saw created still exists);
- the summary rollup equals a recomputation from the orders, and GetSummary shows exactly it;
- `python -m server check` reports the database consistent.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from harness import OrdersServer, run_check
from orders.v1 import orders_pb2 as pb
from sqlalchemy.pool import NullPool

__all__ = ["assert_invariants"]

_QUERIES = {
    "orders whose total is not the sum of their items": """
        SELECT o.id FROM orders o
        LEFT JOIN (SELECT order_id, sum(quantity * unit_price_cents) AS s
                   FROM order_items GROUP BY order_id) i ON i.order_id = o.id
        WHERE o.total_cents <> coalesce(i.s, 0)""",
    "items without their order": """
        SELECT i.id FROM order_items i LEFT JOIN orders o ON o.id = i.order_id
        WHERE o.id IS NULL""",
    "orders without their customer": """
        SELECT o.id FROM orders o LEFT JOIN customers c ON c.id = o.customer_id
        WHERE c.id IS NULL""",
    "summary rows without their customer": """
        SELECT t.customer_id FROM customer_totals t LEFT JOIN customers c ON c.id = t.customer_id
        WHERE c.id IS NULL""",
    "summary rows whose email is not their customer's": """
        SELECT t.customer_id FROM customer_totals t JOIN customers c ON c.id = t.customer_id
        WHERE t.email <> c.email""",
    "customers without a summary row": """
        SELECT c.id FROM customers c LEFT JOIN customer_totals t ON t.customer_id = c.id
        WHERE t.customer_id IS NULL""",
    "orders in no known status": """
        SELECT id FROM orders WHERE status NOT IN ('DRAFT', 'PAID', 'SHIPPED', 'CANCELLED')""",
}

_RECOMPUTED_SUMMARY = """
    SELECT c.id, c.email, count(*), sum(o.total_cents)
    FROM orders o JOIN customers c ON c.id = o.customer_id
    WHERE o.status = 'PAID' AND NOT o.is_archived
    GROUP BY c.id, c.email"""
_STORED_SUMMARY = """
    SELECT customer_id, order_count, total_cents FROM customer_totals WHERE order_count <> 0
       OR total_cents <> 0"""


def assert_invariants(
    server: OrdersServer,
    customers_seen: Iterable[int] = (),
    use_api: bool = True,
    check_command: bool = True,
) -> dict[str, int]:
    """Fails the test on any broken invariant; returns the table counts. `use_api=False` reads
    only the database (the server may be down); `check_command=False` skips the subprocess."""
    engine = sa.create_engine(server.database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            broken = {
                what: [row[0] for row in conn.execute(sa.text(query)).fetchmany(10)]
                for what, query in _QUERIES.items()
            }
            recomputed = {
                int(cid): (email, int(count), int(total))
                for cid, email, count, total in conn.execute(sa.text(_RECOMPUTED_SUMMARY))
            }
            stored = {
                int(cid): (int(count), int(total))
                for cid, count, total in conn.execute(sa.text(_STORED_SUMMARY))
            }
            existing = {int(r[0]) for r in conn.execute(sa.text("SELECT id FROM customers"))}
            counts = {
                table: int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("customers", "orders", "order_items")
            }
    finally:
        engine.dispose()
    problems = {what: ids for what, ids in broken.items() if ids}
    assert not problems, f"broken invariants (first ids): {problems}"
    lost = set(customers_seen) - existing
    assert not lost, f"customers lost: {sorted(lost)[:20]}"
    assert stored == {cid: (c, t) for cid, (_e, c, t) in recomputed.items()}, (
        "the summary rollup differs from a recomputation from the orders"
    )
    if use_api:
        expected = sorted(recomputed.items(), key=lambda kv: (-kv[1][2], kv[0]))[:1000]
        shown = server.stub.GetSummary(pb.GetSummaryRequest(limit=1000)).customers
        assert [(s.customer_id, s.email, s.order_count, s.total_cents) for s in shown] == [
            (cid, e, c, t) for cid, (e, c, t) in expected
        ], "GetSummary differs from the data"
    if not check_command:
        return counts
    check = run_check(server)
    assert check.returncode == 0 and "consistent" in check.stdout, check.stdout + check.stderr
    return counts
