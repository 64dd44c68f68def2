"""Rich errors (google.rpc.Status): BadRequest lists every bad field, ErrorInfo names the reason,
and a refused request changes nothing."""

from __future__ import annotations

import grpc
import pytest
from harness import (
    Status,
    details_of,
    expect_error,
    item,
    list_all_orders,
    new_customer,
    new_order,
    order_in_status,
    run_seed,
    seed_request,
    table_counts,
    unique_email,
)
from orders.v1 import orders_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------------------------
# Every violation, not the first.


def test_create_customer_lists_both_bad_fields(stub) -> None:
    expect_error(
        stub.CreateCustomer,
        pb.CreateCustomerRequest(email="not-an-email", name=""),
        INVALID,
        fields=["email", "name"],
    )


def test_create_order_lists_every_bad_item_field(stub) -> None:
    request = pb.CreateOrderRequest(
        customer_id=0,
        items=[
            item("", 1, 100),  # items[0].sku
            item("OK", 0, 100),  # items[1].quantity
            item("OK", 1, -1),  # items[2].unit_price_cents
            item("S" * 65, 1_000_001, 10_000_000_001),  # all three of items[3]
            item("S" * 64, 1_000_000, 10_000_000_000),  # at the bounds: fine
            item("OK", -3, 0),  # items[5].quantity
        ],
    )
    expect_error(
        stub.CreateOrder,
        request,
        INVALID,
        fields=[
            "customer_id",
            "items[0].sku",
            "items[1].quantity",
            "items[2].unit_price_cents",
            "items[3].sku",
            "items[3].quantity",
            "items[3].unit_price_cents",
            "items[5].quantity",
        ],
    )


def test_list_orders_lists_every_bad_field(stub) -> None:
    expect_error(
        stub.ListOrders,
        pb.ListOrdersRequest(page_size=-1, customer_id=-1, email="e" * 255, status=42),
        INVALID,
        fields=["page_size", "customer_id", "email", "status"],
    )


def test_seed_lists_every_bad_field(stub) -> None:
    run = run_seed(stub, seed_request(0, -1, 101), timeout=30)
    assert run.error is not None
    got = details_of(run.error)
    assert got.code == INVALID
    assert sorted(got.fields) == ["customers", "items_per_order", "orders_per_customer"]


def test_get_summary_negative_limit_names_the_field(stub) -> None:
    expect_error(stub.GetSummary, pb.GetSummaryRequest(limit=-1), INVALID, fields=["limit"])


def test_list_customers_negative_page_size_names_the_field(stub) -> None:
    expect_error(
        stub.ListCustomers, pb.ListCustomersRequest(page_size=-7), INVALID, fields=["page_size"]
    )


# --------------------------------------------------------------------------------------------
# ErrorInfo reasons.


def test_error_reasons_name_what_went_wrong(stub) -> None:
    customer = new_customer(stub)
    shipped = order_in_status(stub, customer.id, Status.SHIPPED)
    archived = order_in_status(stub, customer.id, Status.DRAFT, archived=True)
    cases = [
        (
            stub.GetCustomer,
            pb.GetCustomerRequest(id=2**62),
            grpc.StatusCode.NOT_FOUND,
            "CUSTOMER_NOT_FOUND",
        ),
        (
            stub.CreateOrder,
            pb.CreateOrderRequest(customer_id=2**62, items=[item()]),
            grpc.StatusCode.NOT_FOUND,
            "CUSTOMER_NOT_FOUND",
        ),
        (stub.GetOrder, pb.GetOrderRequest(id=2**62), grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND"),
        (
            stub.CreateCustomer,
            pb.CreateCustomerRequest(email=customer.email.upper(), name="Twin"),
            grpc.StatusCode.ALREADY_EXISTS,
            "EMAIL_ALREADY_EXISTS",
        ),
        (
            stub.CancelOrder,
            pb.CancelOrderRequest(id=shipped.id),
            grpc.StatusCode.FAILED_PRECONDITION,
            "INVALID_TRANSITION",
        ),
        (
            stub.PayOrder,
            pb.PayOrderRequest(id=archived.id),
            grpc.StatusCode.FAILED_PRECONDITION,
            "ORDER_ARCHIVED",
        ),
    ]
    for method, request, code, reason in cases:
        got = expect_error(method, request, code, reason=reason)
        assert got.fields == [], "only INVALID_ARGUMENT carries field violations"


def test_invalid_argument_carries_a_status_whose_code_matches_the_call(stub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.GetOrder(pb.GetOrderRequest(id=-1))
    got = details_of(err.value)  # from_call checks the embedded code and message agree
    assert got.has_status and got.code == INVALID and got.fields == ["id"]


# --------------------------------------------------------------------------------------------
# A refused request changes nothing.


def test_an_order_with_one_bad_item_is_not_created_at_all(shared_server) -> None:
    stub = shared_server.stub
    customer = new_customer(stub)
    before = table_counts(shared_server.database_url)
    expect_error(
        stub.CreateOrder,
        pb.CreateOrderRequest(
            customer_id=customer.id, items=[item("GOOD", 1, 10), item("BAD", 0, 10)]
        ),
        INVALID,
        fields=["items[1].quantity"],
    )
    assert list_all_orders(stub, customer_id=customer.id, include_archived=True) == []
    assert table_counts(shared_server.database_url) == before


def test_an_order_whose_total_overflows_int64_is_refused_and_not_stored(shared_server) -> None:
    stub = shared_server.stub
    customer = new_customer(stub)
    before = table_counts(shared_server.database_url)
    biggest = item("MAX", 1_000_000, 10_000_000_000)  # 10**16 each; 923 of them pass 2**63
    request = pb.CreateOrderRequest(customer_id=customer.id, items=[biggest] * 1000)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateOrder(request)
    got = details_of(err.value)
    assert got.code == INVALID, f"{got.code.name}: {got.message}"
    assert list_all_orders(stub, customer_id=customer.id, include_archived=True) == []
    assert table_counts(shared_server.database_url) == before


def test_a_request_over_the_message_cap_is_resource_exhausted_and_changes_nothing(
    shared_server,
) -> None:
    # ORDERS_MAX_MESSAGE_BYTES, 1 MiB by default: the REST body cap, for native gRPC callers.
    stub = shared_server.stub
    before = table_counts(shared_server.database_url)
    huge = pb.CreateCustomerRequest(email=unique_email("huge"), name="x" * (1 << 20))
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateCustomer(huge)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert "larger than max" in (err.value.details() or ""), err.value.details()
    assert table_counts(shared_server.database_url) == before
    # The largest order the contract allows fits well within it.
    customer = new_customer(stub)
    widest = pb.CreateOrderRequest(
        customer_id=customer.id, items=[item("S" * 64, 1_000_000, 1_000)] * 1000
    )
    assert widest.ByteSize() < 200_000
    assert len(stub.CreateOrder(widest).items) == 1000


def test_a_refused_transition_changes_nothing(shared_server) -> None:
    stub = shared_server.stub
    customer = new_customer(stub)
    order = order_in_status(stub, customer.id, Status.CANCELLED)
    before = table_counts(shared_server.database_url)
    for method, request in (
        (stub.PayOrder, pb.PayOrderRequest),
        (stub.ShipOrder, pb.ShipOrderRequest),
    ):
        expect_error(method, request(id=order.id), grpc.StatusCode.FAILED_PRECONDITION)
    assert stub.GetOrder(pb.GetOrderRequest(id=order.id)) == order
    assert table_counts(shared_server.database_url) == before


def test_a_duplicate_customer_changes_nothing(shared_server) -> None:
    stub = shared_server.stub
    original = new_customer(stub, email=unique_email("orig"), name="Original")
    new_order(stub, original.id)
    before = table_counts(shared_server.database_url)
    expect_error(
        stub.CreateCustomer,
        pb.CreateCustomerRequest(email=original.email.swapcase(), name="Impostor"),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert stub.GetCustomer(pb.GetCustomerRequest(id=original.id)) == original
    assert table_counts(shared_server.database_url) == before


# --------------------------------------------------------------------------------------------
# Text PostgreSQL cannot store (NUL) is bad input, not a server error.


def test_nul_characters_in_text_are_refused_or_stored_never_internal(stub) -> None:
    customer = new_customer(stub)
    calls = [
        (stub.CreateCustomer, pb.CreateCustomerRequest(email=unique_email("n\x00ul"), name="N")),
        (stub.CreateCustomer, pb.CreateCustomerRequest(email=unique_email(), name="a\x00b")),
        (stub.CreateOrder, pb.CreateOrderRequest(customer_id=customer.id, items=[item("S\x00")])),
        (stub.ListOrders, pb.ListOrdersRequest(email="\x00")),
        (stub.ListOrders, pb.ListOrdersRequest(page_token="\x00")),
    ]
    for method, request in calls:
        try:
            method(request)
        except grpc.RpcError as err:
            got = details_of(err)
            assert got.code == INVALID, f"{got.code.name} for {request!r}: {got.message}"
