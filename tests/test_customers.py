"""CreateCustomer, GetCustomer, ListCustomers."""

from __future__ import annotations

import grpc
import pytest
from harness import (
    expect_error,
    item,
    list_all_customers,
    new_customer,
    new_order,
    run_seed,
    seed_request,
    unique_email,
)
from orders.v1 import orders_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_create_customer_returns_the_stored_customer_with_201(stub) -> None:
    email = unique_email("Mixed.Case")
    customer, call = stub.CreateCustomer.with_call(
        pb.CreateCustomerRequest(email=email, name="Ada Lovelace")
    )
    assert customer.id > 0
    assert customer.email == email, "the email is stored as given, case included"
    assert customer.name == "Ada Lovelace"
    assert customer.created_at.seconds > 0
    assert ("x-http-code", "201") in tuple(call.trailing_metadata())


def test_get_customer_returns_what_create_stored(stub) -> None:
    created = new_customer(stub, name="Grace Hopper")
    got = stub.GetCustomer(pb.GetCustomerRequest(id=created.id))
    assert got == created


def test_duplicate_email_in_another_case_is_already_exists(stub) -> None:
    email = unique_email("dup")
    first = new_customer(stub, email=email)
    for again in (email, email.upper(), email.capitalize()):
        expect_error(
            stub.CreateCustomer,
            pb.CreateCustomerRequest(email=again, name="Someone Else"),
            grpc.StatusCode.ALREADY_EXISTS,
            reason="EMAIL_ALREADY_EXISTS",
        )
    assert stub.GetCustomer(pb.GetCustomerRequest(id=first.id)) == first


def test_unknown_customer_is_not_found(stub) -> None:
    expect_error(
        stub.GetCustomer,
        pb.GetCustomerRequest(id=2**62),
        grpc.StatusCode.NOT_FOUND,
        reason="CUSTOMER_NOT_FOUND",
    )


@pytest.mark.parametrize("bad_id", [0, -1, -(2**63)])
def test_customer_id_must_be_positive(stub, bad_id: int) -> None:
    expect_error(stub.GetCustomer, pb.GetCustomerRequest(id=bad_id), INVALID, fields=["id"])


@pytest.mark.parametrize(
    "email",
    [
        "",
        "no-at-sign.example.com",
        "two@@example.com",
        "a@b@example.com",
        "@example.com",
        "someone@",
        "someone@localhost",
        "some one@example.com",
        "someone@exa mple.com",
        "tab\t@example.com",
        " leading@example.com",
        "trailing@example.com ",
        "x" * 243 + "@example.com",  # 255 characters
        "someone@reserved.invalid",
        "seed-1@seed.invalid",
        "Seed-1@SEED.INVALID",
    ],
    ids=lambda e: repr(e)[:40],
)
def test_malformed_or_reserved_email_is_invalid_argument(stub, email: str) -> None:
    expect_error(
        stub.CreateCustomer,
        pb.CreateCustomerRequest(email=email, name="N"),
        INVALID,
        fields=["email"],
    )


def test_email_of_254_characters_is_accepted(stub) -> None:
    tail = unique_email("x")
    email = "x" * (254 - len(tail)) + tail
    assert len(email) == 254
    assert new_customer(stub, email=email).email == email


@pytest.mark.parametrize("name", ["", "n" * 201], ids=["empty", "201-chars"])
def test_name_is_required_and_at_most_200_characters(stub, name: str) -> None:
    expect_error(
        stub.CreateCustomer,
        pb.CreateCustomerRequest(email=unique_email(), name=name),
        INVALID,
        fields=["name"],
    )


def test_name_of_200_characters_is_accepted(stub) -> None:
    assert new_customer(stub, name="n" * 200).name == "n" * 200


def test_a_refused_customer_is_not_stored(stub) -> None:
    email = unique_email("refused")
    expect_error(
        stub.CreateCustomer,
        pb.CreateCustomerRequest(email=email, name=""),
        INVALID,
        fields=["name"],
    )
    # Had the refused request been stored, the same email would now be ALREADY_EXISTS.
    assert new_customer(stub, email=email).email == email


def test_list_customers_is_newest_first(stub) -> None:
    mine = [new_customer(stub) for _ in range(3)]
    page = stub.ListCustomers(pb.ListCustomersRequest(page_size=3))
    assert [c.id for c in page.customers] == [c.id for c in reversed(mine)]
    assert list(page.customers) == list(reversed(mine))
    assert page.next_page_token, "more customers exist, so the page must have a next token"


def test_list_customers_pages_cover_everyone_once_in_descending_id(stub) -> None:
    mine = {new_customer(stub).id for _ in range(5)}
    everyone = list_all_customers(stub, page_size=7)
    ids = [c.id for c in everyone]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    assert mine <= set(ids)


def test_list_customers_page_size_defaults_to_50(stub) -> None:
    existing = len(stub.ListCustomers(pb.ListCustomersRequest(page_size=500)).customers)
    for _ in range(max(0, 51 - existing)):
        new_customer(stub)
    page = stub.ListCustomers(pb.ListCustomersRequest())
    assert len(page.customers) == 50 and page.next_page_token


def test_list_customers_page_size_above_500_is_capped_at_500(stub) -> None:
    if stub.ListCustomers(pb.ListCustomersRequest(page_size=500)).next_page_token == "":
        run_seed(stub, seed_request(501)).expect_done()
    for size in (501, 2**31 - 1):
        page = stub.ListCustomers(pb.ListCustomersRequest(page_size=size))
        assert len(page.customers) == 500 and page.next_page_token, size


def test_list_customers_negative_page_size_is_invalid_argument(stub) -> None:
    expect_error(
        stub.ListCustomers, pb.ListCustomersRequest(page_size=-1), INVALID, fields=["page_size"]
    )


@pytest.mark.parametrize("token", ["garbage", "AAAA", "x" * 5000])
def test_list_customers_malformed_page_token_is_invalid_argument(stub, token: str) -> None:
    expect_error(
        stub.ListCustomers,
        pb.ListCustomersRequest(page_token=token),
        INVALID,
        fields=["page_token"],
    )


def test_orders_of_a_customer_do_not_change_the_customer(stub) -> None:
    customer = new_customer(stub)
    new_order(stub, customer.id, [item("A", 2, 300)])
    assert stub.GetCustomer(pb.GetCustomerRequest(id=customer.id)) == customer
