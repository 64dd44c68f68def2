"""CreateOrder, GetOrder, the state machine (every status x transition, archived or not) and the
cancel regression of the Django version."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import (
    ROOT,
    OrdersServer,
    Status,
    expect_error,
    item,
    list_all_orders,
    new_customer,
    new_order,
    order_in_status,
    run_seed,
    seed_request,
    table_counts,
)
from orders.v1 import orders_pb2 as pb

# tests/gateway's helpers (an Envoy rendered from envoy.yaml, a REST caller), for the one REST
# case here; the gateway package itself is at the top of the repository.
for _path in (str(ROOT / "tests" / "gateway"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from gateway_stack import start_envoy  # noqa: E402
from rest_client import RestClient  # noqa: E402

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# What Envoy does with a request does not depend on the database: those cases run on SQLite.
ONE_BACKEND = pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

STATUSES = [Status.DRAFT, Status.PAID, Status.SHIPPED, Status.CANCELLED]
# transition -> (RPC name, request type, the status it leads to)
TRANSITIONS: dict[str, tuple[str, Any, int]] = {
    "pay": ("PayOrder", pb.PayOrderRequest, Status.PAID),
    "ship": ("ShipOrder", pb.ShipOrderRequest, Status.SHIPPED),
    "cancel": ("CancelOrder", pb.CancelOrderRequest, Status.CANCELLED),
}
ALLOWED = {
    (Status.DRAFT, "pay"),
    (Status.PAID, "ship"),
    (Status.DRAFT, "cancel"),
    (Status.PAID, "cancel"),
}


def _name(status: int) -> str:
    return pb.Order.Status.Name(status)


def _get(stub: Any, order_id: int) -> pb.Order:
    return stub.GetOrder(pb.GetOrderRequest(id=order_id))


# --------------------------------------------------------------------------------------------
# Create and get.


def test_new_order_is_draft_with_total_computed_from_items(stub) -> None:
    customer = new_customer(stub)
    lines = [item("A-1", 2, 1999), item("B-2", 1, 0), item("C-3", 7, 250)]
    order, call = stub.CreateOrder.with_call(
        pb.CreateOrderRequest(customer_id=customer.id, items=lines)
    )
    assert ("x-http-code", "201") in tuple(call.trailing_metadata())
    assert order.id > 0
    assert order.status == Status.DRAFT and not order.is_archived
    assert order.customer_id == customer.id
    assert order.customer == customer, "the order embeds its customer"
    assert order.total_cents == 2 * 1999 + 0 + 7 * 250
    assert Counter((i.sku, i.quantity, i.unit_price_cents) for i in order.items) == Counter(
        (i.sku, i.quantity, i.unit_price_cents) for i in lines
    )
    ids = [i.id for i in order.items]
    assert all(i > 0 for i in ids) and len(set(ids)) == len(ids), "items get ids of their own"
    assert order.created_at.seconds > 0 and order.updated_at.seconds > 0


def test_get_order_returns_what_create_stored(stub) -> None:
    order = new_order(stub, new_customer(stub).id, [item("X", 3, 5), item("Y", 1, 10)])
    assert _get(stub, order.id) == order


def test_order_without_items_is_invalid_argument_naming_items_and_creates_nothing(
    shared_server: OrdersServer,
) -> None:
    stub = shared_server.stub
    customer = new_customer(stub)
    before = table_counts(shared_server.database_url)
    # proto3 cannot tell an empty list from an absent one: this is both.
    got = expect_error(
        stub.CreateOrder, pb.CreateOrderRequest(customer_id=customer.id), INVALID, fields=["items"]
    )
    assert "at least one item" in got.violations[0].description, got.violations
    assert "items" in got.message and "at least one item" in got.message, got.message
    # Every bad field at once, and before the customer is looked up.
    expect_error(
        stub.CreateOrder, pb.CreateOrderRequest(), INVALID, fields=["customer_id", "items"]
    )
    expect_error(
        stub.CreateOrder, pb.CreateOrderRequest(customer_id=2**62), INVALID, fields=["items"]
    )
    assert table_counts(shared_server.database_url) == before
    assert list_all_orders(stub, customer_id=customer.id, include_archived=True) == []


@ONE_BACKEND
def test_order_without_items_is_a_400_over_rest(
    shared_server: OrdersServer, tmp_path: Path
) -> None:
    envoy = start_envoy(shared_server.port, tmp_path / "envoy.log")
    try:
        rest = RestClient("127.0.0.1", envoy.config.http_port)
        customer = new_customer(shared_server.stub)
        before = table_counts(shared_server.database_url)
        for body in ({"customer_id": str(customer.id), "items": []}, {"customer_id": customer.id}):
            error = rest.post("/api/orders/", body).error(400)
            assert error["code"] == INVALID.value[0], error
            assert "at least one item" in error["message"], error
            (bad_request,) = error["details"]
            assert [v["field"] for v in bad_request["field_violations"]] == ["items"], error
        assert table_counts(shared_server.database_url) == before
    finally:
        envoy.stop()


def test_a_seed_still_makes_orders_without_items_when_asked(stub) -> None:
    # Seed rows skip CreateOrder's rules: `items_per_order: 0` is how to get empty orders.
    run_seed(stub, seed_request(2, 2, 0)).expect_done()
    # Newest first: the seed's four orders, whatever their status.
    seeded = stub.ListOrders(pb.ListOrdersRequest(page_size=4, include_archived=True)).orders
    assert len(seeded) == 4
    assert all(len(o.items) == 0 and o.total_cents == 0 for o in seeded), seeded
    assert all(o.customer.email.endswith(".invalid") for o in seeded), "made by the seed"


def test_total_beyond_32_bits_is_exact_up_to_the_documented_cap(stub) -> None:
    # docs/architecture.md: an order's total is at most 10^12 cents.
    lines = [item("BIG", 999_999, 1_000_000), item("TOP-UP", 1, 1_000_000), item("FREE", 5, 0)]
    order = new_order(stub, new_customer(stub).id, lines)
    assert order.total_cents == 10**12
    assert _get(stub, order.id).total_cents == 10**12


def test_total_above_the_cap_is_invalid_argument_naming_items(stub) -> None:
    customer = new_customer(stub)
    for lines in (
        [item("BIG", 1_000_000, 1_000_000), item("ONE-MORE", 1, 1)],
        [item("MAX", 1_000_000, 10_000_000_000)],
    ):
        expect_error(
            stub.CreateOrder,
            pb.CreateOrderRequest(customer_id=customer.id, items=lines),
            INVALID,
            fields=["items"],
        )
    assert list_all_orders(stub, customer_id=customer.id, include_archived=True) == []


def test_more_than_1000_items_is_invalid_argument_naming_items(stub) -> None:
    customer = new_customer(stub)
    assert (
        len(new_order(stub, customer.id, [item(f"S{n}", 1, 1) for n in range(1000)]).items) == 1000
    )
    expect_error(
        stub.CreateOrder,
        pb.CreateOrderRequest(customer_id=customer.id, items=[item("S", 1, 1)] * 1001),
        INVALID,
        fields=["items"],
    )


def test_order_for_unknown_customer_is_not_found_and_creates_nothing(stub) -> None:
    ghost = 2**62 + 7
    expect_error(
        stub.CreateOrder,
        pb.CreateOrderRequest(customer_id=ghost, items=[item()]),
        grpc.StatusCode.NOT_FOUND,
        reason="CUSTOMER_NOT_FOUND",
    )
    assert list_all_orders(stub, customer_id=ghost, include_archived=True) == []


def test_unknown_order_is_not_found_for_every_order_rpc(stub) -> None:
    ghost = 2**62 + 11
    calls = [
        (stub.GetOrder, pb.GetOrderRequest),
        (stub.PayOrder, pb.PayOrderRequest),
        (stub.ShipOrder, pb.ShipOrderRequest),
        (stub.CancelOrder, pb.CancelOrderRequest),
        (stub.ArchiveOrder, pb.ArchiveOrderRequest),
    ]
    for method, request in calls:
        expect_error(method, request(id=ghost), grpc.StatusCode.NOT_FOUND, reason="ORDER_NOT_FOUND")


@pytest.mark.parametrize("bad_id", [0, -5])
def test_order_ids_must_be_positive_for_every_order_rpc(stub, bad_id: int) -> None:
    calls = [
        (stub.GetOrder, pb.GetOrderRequest),
        (stub.PayOrder, pb.PayOrderRequest),
        (stub.ShipOrder, pb.ShipOrderRequest),
        (stub.CancelOrder, pb.CancelOrderRequest),
        (stub.ArchiveOrder, pb.ArchiveOrderRequest),
    ]
    for method, request in calls:
        expect_error(method, request(id=bad_id), INVALID, fields=["id"])


# --------------------------------------------------------------------------------------------
# The state machine: every (status, transition) pair.


@pytest.mark.parametrize("transition", list(TRANSITIONS))
@pytest.mark.parametrize("status", STATUSES, ids=_name)
def test_every_status_transition_pair_follows_the_state_machine(
    stub, status: int, transition: str
) -> None:
    customer = new_customer(stub)
    before = order_in_status(stub, customer.id, status, items=[item("S", 2, 150)])
    rpc, request, target = TRANSITIONS[transition]
    method = getattr(stub, rpc)
    if (status, transition) in ALLOWED:
        after = method(request(id=before.id))
        assert after.status == target
        assert not after.is_archived
        assert after.total_cents == before.total_cents == 300
        assert list(after.items) == list(before.items)
        assert after.customer == customer
        assert after.created_at == before.created_at
        assert after.updated_at.ToNanoseconds() >= before.updated_at.ToNanoseconds()
        assert _get(stub, before.id) == after
    elif status == target:
        # Repeating a transition the order already made succeeds and changes nothing.
        assert method(request(id=before.id)) == before
        assert _get(stub, before.id) == before
    else:
        expect_error(method, request(id=before.id), PRECONDITION, reason="INVALID_TRANSITION")
        assert _get(stub, before.id) == before, "a refused transition changes nothing"
    assert stub.GetCustomer(pb.GetCustomerRequest(id=customer.id)) == customer


@pytest.mark.parametrize("status", STATUSES, ids=_name)
def test_archive_works_in_every_status_and_twice_is_unchanged(stub, status: int) -> None:
    before = order_in_status(stub, new_customer(stub).id, status)
    archived = stub.ArchiveOrder(pb.ArchiveOrderRequest(id=before.id))
    assert archived.is_archived and archived.status == status
    assert archived.total_cents == before.total_cents and list(archived.items) == list(before.items)
    assert _get(stub, before.id) == archived
    assert stub.ArchiveOrder(pb.ArchiveOrderRequest(id=before.id)) == archived
    assert _get(stub, before.id) == archived


@pytest.mark.parametrize("transition", list(TRANSITIONS))
@pytest.mark.parametrize("status", STATUSES, ids=_name)
def test_archived_order_refuses_transitions_except_repeating_its_status(
    stub, status: int, transition: str
) -> None:
    before = order_in_status(stub, new_customer(stub).id, status, archived=True)
    rpc, request, target = TRANSITIONS[transition]
    method = getattr(stub, rpc)
    if status == target:
        assert method(request(id=before.id)) == before
    elif (status, transition) in ALLOWED:
        expect_error(method, request(id=before.id), PRECONDITION, reason="ORDER_ARCHIVED")
    else:
        got = expect_error(method, request(id=before.id), PRECONDITION)
        assert got.reason in ("ORDER_ARCHIVED", "INVALID_TRANSITION"), got.info
    assert _get(stub, before.id) == before


# --------------------------------------------------------------------------------------------
# The regression: cancelling an order never touches its customer or the customer's other orders.


@pytest.mark.parametrize("status", [Status.DRAFT, Status.PAID], ids=_name)
def test_cancelling_an_order_keeps_the_customer_and_its_other_orders(stub, status: int) -> None:
    customer = new_customer(stub)
    neighbour = new_customer(stub)
    other_draft = order_in_status(stub, customer.id, Status.DRAFT)
    other_paid = order_in_status(stub, customer.id, Status.PAID)
    other_archived = order_in_status(stub, customer.id, Status.SHIPPED, archived=True)
    neighbours_order = order_in_status(stub, neighbour.id, Status.PAID)
    victim = order_in_status(stub, customer.id, status, items=[item("V", 1, 42)])

    cancelled = stub.CancelOrder(pb.CancelOrderRequest(id=victim.id))

    assert cancelled.status == Status.CANCELLED
    assert cancelled.customer == customer, "the returned order still embeds its customer"
    assert stub.GetCustomer(pb.GetCustomerRequest(id=customer.id)) == customer
    assert stub.GetCustomer(pb.GetCustomerRequest(id=neighbour.id)) == neighbour
    for order in (other_draft, other_paid, other_archived, neighbours_order):
        assert _get(stub, order.id) == order
    assert _get(stub, victim.id) == cancelled
    listed = list_all_orders(stub, customer_id=customer.id, include_archived=True)
    assert [o.id for o in listed] == sorted(
        [other_draft.id, other_paid.id, other_archived.id, victim.id], reverse=True
    )
    # Cancelling again is a repeat: unchanged, and still nothing else moves.
    assert stub.CancelOrder(pb.CancelOrderRequest(id=victim.id)) == cancelled
    assert stub.GetCustomer(pb.GetCustomerRequest(id=customer.id)) == customer


def test_cancelling_every_order_of_a_customer_keeps_the_customer(stub) -> None:
    customer = new_customer(stub)
    orders = [order_in_status(stub, customer.id, s) for s in (Status.DRAFT, Status.PAID)]
    for order in orders:
        stub.CancelOrder(pb.CancelOrderRequest(id=order.id))
        stub.ArchiveOrder(pb.ArchiveOrderRequest(id=order.id))
    assert stub.GetCustomer(pb.GetCustomerRequest(id=customer.id)) == customer
    assert len(list_all_orders(stub, customer_id=customer.id, include_archived=True)) == 2
    # The customer is still usable: a new order for it works.
    assert new_order(stub, customer.id).customer == customer
