"""GetSummary against a plain Python computation, on a database of its own."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
from harness import (
    OrdersServer,
    ServerFactory,
    Status,
    expect_error,
    item,
    list_all_orders,
    new_customer,
    order_in_status,
    run_seed,
    seed_request,
)
from orders.v1 import orders_pb2 as pb

STATUSES = [Status.DRAFT, Status.PAID, Status.SHIPPED, Status.CANCELLED]
RANDOM_SEED = int(os.environ.get("SUMMARY_RANDOM_SEED", random.randrange(1 << 30)))

Row = tuple[int, str, int, int]  # customer_id, email, order_count, total_cents


def expected_summary(orders: Iterable[pb.Order]) -> list[Row]:
    """The contract, computed the plain way."""
    rows: dict[int, list[Any]] = {}
    for o in orders:
        if o.status == Status.PAID and not o.is_archived:
            row = rows.setdefault(o.customer_id, [o.customer_id, o.customer.email, 0, 0])
            row[2] += 1
            row[3] += o.total_cents
    return sorted((tuple(r) for r in rows.values()), key=lambda r: (-r[3], r[0]))  # type: ignore[misc]


def summary(stub: Any, limit: int) -> list[Row]:
    reply = stub.GetSummary(pb.GetSummaryRequest(limit=limit))
    return [(c.customer_id, c.email, c.order_count, c.total_cents) for c in reply.customers]


@pytest.fixture(scope="module")
def random_shop(server_factory: ServerFactory) -> tuple[OrdersServer, list[Row]]:
    """A fresh database with random customers and orders, built to contain ties, archived PAID
    orders, customers with no PAID order, and a PAID order of total zero."""
    server = server_factory.start("summary")
    stub = server.stub
    rng = random.Random(RANDOM_SEED)
    orders: list[pb.Order] = []
    for n in range(24):
        customer = new_customer(stub, email=f"Shop-{n}-{RANDOM_SEED}@Example.com")
        for k in range(rng.randint(1 if n % 2 == 0 else 0, 4)):
            lines = [
                item(f"R{j}", rng.randint(1, 3), rng.choice([0, 100, 250, 500]))
                for j in range(rng.randint(1, 3))
            ]
            # Half the customers surely rank, so the limits below have rows to cut.
            sure = n % 2 == 0 and k == 0
            status = Status.PAID if sure else rng.choice(STATUSES)
            archived = not sure and rng.random() < 0.25
            orders.append(
                order_in_status(stub, customer.id, status, archived=archived, items=lines)
            )
    # Ties: three customers with the same total, their orders made in reverse customer order so
    # that only the customer_id tie-break gives the right order.
    tied = [new_customer(stub) for _ in range(3)]
    for customer in reversed(tied):
        orders.append(order_in_status(stub, customer.id, Status.PAID, items=[item("T", 2, 350)]))
        orders.append(order_in_status(stub, customer.id, Status.DRAFT, items=[item("T", 1, 99)]))
    only_archived = new_customer(stub)
    orders.append(
        order_in_status(
            stub, only_archived.id, Status.PAID, archived=True, items=[item("A", 1, 10**9)]
        )
    )
    never_paid = new_customer(stub)
    for status in (Status.DRAFT, Status.SHIPPED, Status.CANCELLED):
        orders.append(order_in_status(stub, never_paid.id, status, items=[item("N", 1, 10**9)]))
    zero = new_customer(stub)
    orders.append(order_in_status(stub, zero.id, Status.PAID, items=[item("FREE", 1, 0)]))
    # Read the orders back as they are now, not as they were returned along the way.
    current = list_all_orders(stub, email="@", include_archived=True, page_size=500)
    assert len(current) == len(orders)
    expected = expected_summary(current)
    assert only_archived.id not in {r[0] for r in expected}
    assert never_paid.id not in {r[0] for r in expected}
    assert zero.id in {r[0] for r in expected}
    assert len({r[3] for r in expected if r[0] in {c.id for c in tied}}) == 1
    return server, expected


def test_summary_matches_a_plain_computation_on_random_data(random_shop) -> None:
    server, expected = random_shop
    assert summary(server.stub, 1000) == expected, f"SUMMARY_RANDOM_SEED={RANDOM_SEED}"


def test_summary_ranks_ties_by_customer_id(random_shop) -> None:
    server, _ = random_shop
    got = summary(server.stub, 1000)
    for a, b in itertools.pairwise(got):
        assert (-a[3], a[0]) < (-b[3], b[0]), f"{a} must come before {b}"


def test_summary_limit_zero_means_10(random_shop) -> None:
    server, expected = random_shop
    assert len(expected) > 10, f"the data must have more than 10 rows (seed {RANDOM_SEED})"
    assert summary(server.stub, 0) == expected[:10]


@pytest.mark.parametrize("limit", [1, 3, 11])
def test_summary_limit_keeps_the_top_rows(random_shop, limit: int) -> None:
    server, expected = random_shop
    assert summary(server.stub, limit) == expected[:limit]


@pytest.mark.parametrize("limit", [-1, -(2**31)])
def test_summary_negative_limit_is_invalid_argument(random_shop, limit: int) -> None:
    server, _ = random_shop
    expect_error(
        server.stub.GetSummary,
        pb.GetSummaryRequest(limit=limit),
        grpc.StatusCode.INVALID_ARGUMENT,
        fields=["limit"],
    )


def test_summary_limit_above_1000_is_capped_at_1000(start_server) -> None:
    server = start_server()
    stub = server.stub
    for _ in range(4):
        paid = list_all_orders(stub, status=Status.PAID, page_size=500)
        expected = expected_summary(paid)
        if len(expected) > 1000:
            break
        run_seed(stub, seed_request(800, 4, 1)).expect_done()
    else:
        pytest.fail("seeding never produced more than 1000 customers with a PAID order")
    for limit in (1000, 1001, 5000, 2**31 - 1):
        assert summary(stub, limit) == expected[:1000], limit
