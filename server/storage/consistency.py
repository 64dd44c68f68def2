"""Recomputes what the service keeps derived (order totals, the summary rollup and its copy of
each customer's email) from the rows it is derived from, and reports or repairs the
difference."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

__all__ = ["RollupDrift", "TotalDrift", "find_rollup_drift", "find_total_drift", "repair"]


@dataclass(frozen=True, slots=True)
class TotalDrift:
    order_id: int
    stored: int
    computed: int


@dataclass(frozen=True, slots=True)
class RollupDrift:
    customer_id: int
    stored_count: int | None  # None: the customer has no rollup row at all
    stored_total: int | None
    computed_count: int
    computed_total: int
    stored_email: str | None  # the rollup's copy of the customer's email
    email: str


_ITEM_TOTALS = """
    SELECT o.id, o.total_cents AS stored,
           COALESCE(SUM(i.quantity * i.unit_price_cents), 0) AS computed
    FROM orders o LEFT JOIN order_items i ON i.order_id = o.id
    GROUP BY o.id, o.total_cents
    HAVING o.total_cents <> COALESCE(SUM(i.quantity * i.unit_price_cents), 0)
    ORDER BY o.id
"""

_PAID = """
    SELECT customer_id, COUNT(*) AS n, SUM(total_cents) AS total
    FROM orders WHERE status = 'PAID' AND NOT is_archived GROUP BY customer_id
"""

_ROLLUP = f"""
    SELECT c.id, t.order_count, t.total_cents,
           COALESCE(p.n, 0) AS computed_count, COALESCE(p.total, 0) AS computed_total,
           t.email, c.email
    FROM customers c
    LEFT JOIN customer_totals t ON t.customer_id = c.id
    LEFT JOIN ({_PAID}) p ON p.customer_id = c.id
    WHERE t.customer_id IS NULL
       OR t.order_count <> COALESCE(p.n, 0)
       OR t.total_cents <> COALESCE(p.total, 0)
       OR t.email <> c.email
    ORDER BY c.id
"""


def find_total_drift(session: Session) -> list[TotalDrift]:
    return [TotalDrift(*row) for row in session.execute(text(_ITEM_TOTALS))]


def find_rollup_drift(session: Session) -> list[RollupDrift]:
    return [RollupDrift(*row) for row in session.execute(text(_ROLLUP))]


def repair(session: Session, totals: list[TotalDrift], rollups: list[RollupDrift]) -> None:
    """Order totals first: the rollup is recomputed from them."""
    for drift in totals:
        session.execute(
            text("UPDATE orders SET total_cents = :total WHERE id = :id"),
            {"total": drift.computed, "id": drift.order_id},
        )
    if totals:
        rollups = find_rollup_drift(session)
    for r in rollups:
        values = {
            "id": r.customer_id,
            "n": r.computed_count,
            "total": r.computed_total,
            "email": r.email,
        }
        if r.stored_count is None:
            session.execute(
                text(
                    "INSERT INTO customer_totals (customer_id, order_count, total_cents, email) "
                    "VALUES (:id, :n, :total, :email)"
                ),
                values,
            )
        else:
            session.execute(
                text(
                    "UPDATE customer_totals SET order_count = :n, total_cents = :total, "
                    "email = :email WHERE customer_id = :id"
                ),
                values,
            )
