"""The rows a seed writes, generated the way the service's Seed generates them
(server/domain/seeding.py: the same emails, status mix, archived share, items and totals), so
that the floor copies the same rows. Repeated here rather than imported: the floor is what a
hand-written loader would be, not the service's code.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from datetime import datetime
from typing import Any

_STATUS_WHEEL = ("DRAFT",) * 4 + ("PAID",) * 3 + ("SHIPPED",) * 2 + ("CANCELLED",)


def _mix(a: int, b: int) -> int:
    h = (a * 0x9E3779B1 + b * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    return (h * 0x2C1B3C6D) & 0xFFFFFFFF


def item_values(order_id: int, index: int) -> tuple[str, int, int]:
    h = _mix(order_id, index)
    return f"SKU-{h % 1000:04d}", 1 + h % 5, 100 + (h >> 10) % 9_900


def customer_rows(
    first_id: int, count: int, stamp: datetime, email_key: bool
) -> Iterator[tuple[Any, ...]]:
    """id, email[, email_key], name, created_at: the key column when the schema has one (the
    seeded emails are lowercase: each is its own key)."""
    for customer_id in range(first_id, first_id + count):
        email = f"seed-{customer_id}@seed.invalid"
        if email_key:
            yield (customer_id, email, email, f"Customer {customer_id}", stamp)
        else:
            yield (customer_id, email, f"Customer {customer_id}", stamp)


def order_rows(
    first_customer: int,
    customers: int,
    first_order: int,
    per_customer: int,
    items_per_order: int,
    stamp: datetime,
    paid_count: array[int],
    paid_total: array[int],
) -> Iterator[tuple[Any, ...]]:
    items = range(items_per_order)
    for n in range(customers * per_customer):
        order_id = first_order + n
        c = n // per_customer
        h = _mix(order_id, 0xFFFF)
        status = _STATUS_WHEEL[h % len(_STATUS_WHEEL)]
        archived = (h >> 8) % 20 == 0
        total = 0
        for i in items:
            _, quantity, price = item_values(order_id, i)
            total += quantity * price
        if status == "PAID" and not archived:
            paid_count[c] += 1
            paid_total[c] += total
        yield (order_id, first_customer + c, status, archived, total, stamp, stamp)


def item_rows(
    first_order: int, orders: int, items_per_order: int, first_item: int
) -> Iterator[tuple[Any, ...]]:
    item_id = first_item
    items = range(items_per_order)
    for order_id in range(first_order, first_order + orders):
        for i in items:
            yield (item_id, order_id, *item_values(order_id, i))
            item_id += 1
