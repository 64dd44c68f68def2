"""Idempotency keys on creates (`idempotency-key` metadata, the same header over REST): a create
sent again with the key of one that committed answers with what that one made, and creates
nothing; the same key with another request is refused; a key and its create commit together."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from harness import expect_error, item, list_all_orders, new_customer, unique_email
from orders.v1 import orders_pb2 as pb


def _key(name: str) -> tuple[tuple[str, str], ...]:
    return (("idempotency-key", f"{name}-{secrets.token_hex(8)}"),)


def test_a_repeated_create_order_returns_the_first_order_and_creates_nothing(stub: Any) -> None:
    customer = new_customer(stub)
    key = _key("order")
    request = pb.CreateOrderRequest(customer_id=customer.id, items=[item("SKU-A", 2, 250)])
    first = stub.CreateOrder(request, metadata=key)
    again = stub.CreateOrder(request, metadata=key)
    assert again == first
    assert [o.id for o in list_all_orders(stub, customer_id=customer.id)] == [first.id]
    # Without a key, the same request is a new order.
    other = stub.CreateOrder(request)
    assert other.id != first.id


def test_a_key_reused_with_another_request_is_refused_and_creates_nothing(stub: Any) -> None:
    customer = new_customer(stub)
    key = _key("reuse")
    first = stub.CreateOrder(
        pb.CreateOrderRequest(customer_id=customer.id, items=[item("SKU-A")]), metadata=key
    )
    expect_error(
        stub.CreateOrder,
        pb.CreateOrderRequest(customer_id=customer.id, items=[item("SKU-B")]),
        grpc.StatusCode.FAILED_PRECONDITION,
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata=key,
    )
    # Nor may an order's key make a customer.
    expect_error(
        stub.CreateCustomer,
        pb.CreateCustomerRequest(email=unique_email(), name="x"),
        grpc.StatusCode.FAILED_PRECONDITION,
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata=key,
    )
    assert [o.id for o in list_all_orders(stub, customer_id=customer.id)] == [first.id]


def test_a_repeated_create_customer_returns_the_customer_not_already_exists(stub: Any) -> None:
    key = _key("customer")
    request = pb.CreateCustomerRequest(email=unique_email(), name="Once")
    first = stub.CreateCustomer(request, metadata=key)
    assert stub.CreateCustomer(request, metadata=key) == first
    # Without the key the email is taken, as ever.
    expect_error(stub.CreateCustomer, request, grpc.StatusCode.ALREADY_EXISTS)


def test_a_malformed_key_is_invalid_and_creates_nothing(stub: Any) -> None:
    customer = new_customer(stub)
    for bad in ("x" * 256, "two words"):
        expect_error(
            stub.CreateOrder,
            pb.CreateOrderRequest(customer_id=customer.id, items=[item()]),
            grpc.StatusCode.INVALID_ARGUMENT,
            fields=["idempotency-key"],
            metadata=(("idempotency-key", bad),),
        )
    assert list_all_orders(stub, customer_id=customer.id) == []


def test_concurrent_creates_with_one_key_make_one_order(stub: Any) -> None:
    customer = new_customer(stub)
    key = _key("race")
    request = pb.CreateOrderRequest(customer_id=customer.id, items=[item("SKU-R", 3, 100)])
    with ThreadPoolExecutor(8) as pool:
        orders = list(
            pool.map(lambda _: stub.CreateOrder(request, metadata=key, timeout=30), range(16))
        )
    assert len({o.id for o in orders}) == 1
    assert [o.id for o in list_all_orders(stub, customer_id=customer.id)] == [orders[0].id]


def test_concurrent_create_customers_with_one_key_make_one_customer(stub: Any) -> None:
    key = _key("race-customer")
    request = pb.CreateCustomerRequest(email=unique_email(), name="Race")
    with ThreadPoolExecutor(8) as pool:
        customers = list(
            pool.map(lambda _: stub.CreateCustomer(request, metadata=key, timeout=30), range(16))
        )
    assert len({c.id for c in customers}) == 1
