"""SQL statement budgets, read from the `orders-sql-statements` trailing metadata of each call.
(The Django version needed 551 statements to seed 50/5/3 and one per row for its lists.)"""

from __future__ import annotations

import pytest
from harness import (
    Status,
    item,
    new_customer,
    order_in_status,
    run_seed,
    seed_request,
    statements_of,
    with_statements,
)
from orders.v1 import orders_pb2 as pb


def _seed_statements(stub, customers: int, orders: int, items: int) -> int:
    run = run_seed(stub, seed_request(customers, orders, items))
    run.expect_done()
    return statements_of(run.call)


def test_seed_issues_the_same_number_of_statements_whatever_its_size(stub) -> None:
    counts = {size: _seed_statements(stub, *size) for size in [(1, 1, 1), (50, 5, 3), (400, 10, 5)]}
    assert len(set(counts.values())) == 1, f"statements by (customers, orders, items): {counts}"


@pytest.fixture
def customer_with_orders(stub):
    customer = new_customer(stub)
    for status in (Status.DRAFT, Status.PAID, Status.SHIPPED, Status.PAID, Status.CANCELLED):
        order_in_status(
            stub, customer.id, status, items=[item("A", 1, 1), item("B", 2, 3), item("C", 3, 5)]
        )
    order_in_status(stub, customer.id, Status.PAID, archived=True, items=[item("D", 1, 1)])
    return customer


def test_a_list_orders_page_costs_at_most_two_statements(stub, customer_with_orders) -> None:
    customer = customer_with_orders
    requests = [
        pb.ListOrdersRequest(customer_id=customer.id, page_size=2),
        pb.ListOrdersRequest(customer_id=customer.id, include_archived=True),
        pb.ListOrdersRequest(email=customer.email, status=Status.PAID),
        pb.ListOrdersRequest(
            email=customer.email.upper(), status=Status.SHIPPED, customer_id=customer.id
        ),
        pb.ListOrdersRequest(page_size=500, include_archived=True),  # a full page of everyone's
        pb.ListOrdersRequest(email="nobody-matches-this"),
    ]
    for request in requests:
        page, statements = with_statements(stub.ListOrders, request)
        assert statements <= 2, f"{statements} statements for {request}"
        if page.next_page_token:
            follow = pb.ListOrdersRequest()
            follow.CopyFrom(request)
            follow.page_token = page.next_page_token
            _, statements = with_statements(stub.ListOrders, follow)
            assert statements <= 2, f"{statements} statements for the next page of {request}"


def test_a_list_orders_page_of_many_orders_with_items_still_costs_at_most_two(stub) -> None:
    run_seed(stub, seed_request(60, 3, 4)).expect_done()
    page, statements = with_statements(
        stub.ListOrders, pb.ListOrdersRequest(email="@seed.invalid", page_size=150)
    )
    assert len(page.orders) > 50 and sum(len(o.items) for o in page.orders) > 200
    assert statements <= 2, statements


@pytest.mark.parametrize("limit", [0, 5, 1000])
def test_get_summary_is_exactly_one_statement(stub, customer_with_orders, limit: int) -> None:
    reply, statements = with_statements(stub.GetSummary, pb.GetSummaryRequest(limit=limit))
    assert reply.customers, "the summary has rows to compute"
    assert statements == 1, statements
