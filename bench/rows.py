"""The rows a seed writes, for the floor to COPY: the values (status mix, archived share,
items) come from the service's own generator in server/domain/seeding.py, so both load the
same rows; how they are loaded (ids, COPY) is the floor's own, as a hand-written loader's.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from server.domain.seeding import item_values, order_state, seed_email


def customer_rows(
    first_id: int, count: int, stamp: datetime, email_key: bool
) -> Iterator[tuple[Any, ...]]:
    """id, email[, email_key], name, created_at: the key column when the schema has one (the
    seeded emails are lowercase: each is its own key)."""
    for customer_id in range(first_id, first_id + count):
        email = seed_email(customer_id)
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
        state, archived = order_state(order_id)
        status = state.value
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
