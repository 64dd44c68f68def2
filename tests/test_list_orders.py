"""ListOrders: filters and their combination, validation, and keyset pagination (AIP-158)."""

from __future__ import annotations

import itertools
import secrets
import threading
from typing import Any

import grpc
import pytest
from harness import (
    Status,
    expect_error,
    item,
    list_all_orders,
    new_customer,
    new_order,
    order_in_status,
    run_seed,
    seed_request,
    unique_email,
    wait_for,
    with_statements,
)
from orders.v1 import orders_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
STATUSES = [Status.DRAFT, Status.PAID, Status.SHIPPED, Status.CANCELLED]


def _ids(orders: Any) -> list[int]:
    return [o.id for o in orders]


def _email_matches(needle: str, email: str) -> bool:
    return needle.lower() in email.lower()


# --------------------------------------------------------------------------------------------
# Filters.


@pytest.fixture
def two_customers_every_status(stub) -> dict[str, Any]:
    """Two customers sharing a tag in their emails, each with an order in every status, archived
    and not: 16 orders."""
    tag = secrets.token_hex(5)
    customers = [
        new_customer(stub, email=f"alpha-{tag}@example.com"),
        new_customer(stub, email=f"Beta-{tag}@Example.org"),
    ]
    orders = [
        order_in_status(stub, c.id, s, archived=a)
        for c, s, a in itertools.product(customers, STATUSES, (False, True))
    ]
    return {"tag": tag, "customers": customers, "orders": orders}


def test_customer_id_filter_returns_only_that_customers_orders_newest_first(
    stub, two_customers_every_status
) -> None:
    data = two_customers_every_status
    for customer in data["customers"]:
        got = list_all_orders(stub, customer_id=customer.id, include_archived=True)
        expected = sorted(
            (o.id for o in data["orders"] if o.customer_id == customer.id), reverse=True
        )
        assert _ids(got) == expected


def test_listed_orders_carry_their_customer_and_items(stub) -> None:
    customer = new_customer(stub)
    created = [new_order(stub, customer.id, [item("A", 1, 5), item("B", 2, 7)]) for _ in range(3)]
    listed = list_all_orders(stub, customer_id=customer.id)
    assert listed == sorted(created, key=lambda o: o.id, reverse=True)
    for order in listed:
        assert order.customer == customer and len(order.items) == 2 and order.total_cents == 19


def test_archived_orders_are_hidden_unless_asked_for(stub) -> None:
    customer = new_customer(stub)
    kept = new_order(stub, customer.id)
    hidden = order_in_status(stub, customer.id, Status.PAID, archived=True)
    assert _ids(list_all_orders(stub, customer_id=customer.id)) == [kept.id]
    assert _ids(list_all_orders(stub, customer_id=customer.id, include_archived=True)) == [
        hidden.id,
        kept.id,
    ]


@pytest.mark.parametrize("status", STATUSES, ids=pb.Order.Status.Name)
def test_status_filter_returns_only_that_status(stub, two_customers_every_status, status) -> None:
    data = two_customers_every_status
    got = list_all_orders(stub, status=status, email=data["tag"])
    expected = [o.id for o in data["orders"] if o.status == status and not o.is_archived]
    assert _ids(got) == sorted(expected, reverse=True)
    assert all(o.status == status for o in got)


def test_email_filter_is_a_case_insensitive_substring(stub, two_customers_every_status) -> None:
    data = two_customers_every_status
    alpha, beta = data["customers"]
    for needle, owners in [
        (data["tag"], {alpha.id, beta.id}),
        (data["tag"].upper(), {alpha.id, beta.id}),
        (f"ALPHA-{data['tag']}", {alpha.id}),
        (f"beta-{data['tag']}@example.ORG", {beta.id}),
        (f"{data['tag']}@example.com", {alpha.id}),
    ]:
        got = list_all_orders(stub, email=needle, include_archived=True)
        assert {o.customer_id for o in got} == owners, needle
        assert len(got) == 8 * len(owners)


@pytest.mark.parametrize("wildcard", ["%", "_"])
def test_email_filter_takes_percent_and_underscore_literally(stub, wildcard: str) -> None:
    tag = secrets.token_hex(5)
    literal = new_customer(stub, email=f"w{wildcard}{tag}@example.com")
    lookalike = new_customer(stub, email=f"wX{tag}@example.com")
    shorter = new_customer(stub, email=f"w{tag}@example.com")
    for c in (literal, lookalike, shorter):
        new_order(stub, c.id)
    for needle in (f"w{wildcard}{tag}", f"W{wildcard}{tag.upper()}"):
        got = list_all_orders(stub, email=needle)
        assert {o.customer_id for o in got} == {literal.id}, f"{needle!r} matched {got}"
    # The wildcard alone matches only emails that contain it.
    got = {o.customer_id for o in list_all_orders(stub, email=wildcard + tag)}
    assert got == {literal.id}
    alone = {o.customer.email for o in list_all_orders(stub, email=wildcard, page_size=500)}
    assert literal.email in alone and all(wildcard in e for e in alone)


def test_email_filter_matching_nobody_is_an_empty_page(stub) -> None:
    page = stub.ListOrders(pb.ListOrdersRequest(email=f"nobody-{secrets.token_hex(8)}"))
    assert list(page.orders) == [] and page.next_page_token == ""


def test_every_combination_of_filters_matches_a_plain_computation(
    stub, two_customers_every_status
) -> None:
    data = two_customers_every_status
    alpha, beta = data["customers"]
    tag = data["tag"]
    emails = [None, tag, f"ALPHA-{tag}"]
    customer_ids = [0, alpha.id, beta.id]
    for status, email, customer_id, archived in itertools.product(
        [Status.STATUS_UNSPECIFIED, *STATUSES], emails, customer_ids, (False, True)
    ):
        if email is None and customer_id == 0:
            continue  # unbounded: would include every other test's orders
        request = dict(status=status, customer_id=customer_id, include_archived=archived)
        if email is not None:
            request["email"] = email
        got = list_all_orders(stub, **request)
        expected = [
            o.id
            for o in data["orders"]
            if (status == Status.STATUS_UNSPECIFIED or o.status == status)
            and (email is None or _email_matches(email, o.customer.email))
            and (customer_id == 0 or o.customer_id == customer_id)
            and (archived or not o.is_archived)
        ]
        assert _ids(got) == sorted(expected, reverse=True), request


@pytest.mark.parametrize(
    "needle",
    [
        "seed-1",  # 111 of the 250 customers: more than FEW_CUSTOMERS, the newest-first walk
        "seed-2",  # 62 of them: their orders through the customer index
        "SEED-7@",  # one customer
        "nobody-at-all",
    ],
)
def test_email_filter_answers_alike_for_few_and_many_matching_customers(
    start_server, needle: str
) -> None:
    # The server picks how to search by how many customers match (FEW_CUSTOMERS, 100): both
    # ways must give the same pages as a plain computation, pages of 7 crossing orders of many
    # customers, with and without a status filter.
    server = start_server()
    run_seed(server.stub, seed_request(250, 2, 1)).expect_done()
    everything = list_all_orders(server.stub, include_archived=True)
    assert len(everything) == 500
    for status in (Status.STATUS_UNSPECIFIED, Status.PAID):
        got = list_all_orders(server.stub, email=needle, status=status, page_size=7)
        expected = [
            o.id
            for o in everything
            if _email_matches(needle, o.customer.email)
            and not o.is_archived
            and status in (Status.STATUS_UNSPECIFIED, o.status)
        ]
        assert _ids(got) == expected, (needle, status)
        assert all(len(o.items) == 1 and o.customer.email for o in got)


# --------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("status", [5, 99, -1], ids=lambda s: f"status={s}")
def test_unknown_status_number_is_invalid_argument(stub, status: int) -> None:
    expect_error(stub.ListOrders, pb.ListOrdersRequest(status=status), INVALID, fields=["status"])


def test_negative_customer_id_filter_is_invalid_argument(stub) -> None:
    expect_error(
        stub.ListOrders, pb.ListOrdersRequest(customer_id=-1), INVALID, fields=["customer_id"]
    )


def test_email_filter_longer_than_254_characters_is_invalid_argument(stub) -> None:
    expect_error(stub.ListOrders, pb.ListOrdersRequest(email="e" * 255), INVALID, fields=["email"])
    stub.ListOrders(pb.ListOrdersRequest(email="e" * 254))


def test_negative_page_size_is_invalid_argument(stub) -> None:
    expect_error(stub.ListOrders, pb.ListOrdersRequest(page_size=-1), INVALID, fields=["page_size"])


@pytest.mark.parametrize("token", ["garbage", "AAAA", "eyJ9", "x" * 5000, "\u00e9\u00e8"])
def test_malformed_page_token_is_invalid_argument(stub, token: str) -> None:
    expect_error(
        stub.ListOrders, pb.ListOrdersRequest(page_token=token), INVALID, fields=["page_token"]
    )


# --------------------------------------------------------------------------------------------
# Page sizes.


def test_page_size_zero_means_50_and_the_last_page_has_no_token(stub) -> None:
    customer = new_customer(stub)
    created = [new_order(stub, customer.id) for _ in range(53)]
    first = stub.ListOrders(pb.ListOrdersRequest(customer_id=customer.id))
    assert len(first.orders) == 50 and first.next_page_token
    second = stub.ListOrders(
        pb.ListOrdersRequest(customer_id=customer.id, page_token=first.next_page_token)
    )
    assert len(second.orders) == 3 and second.next_page_token == ""
    assert _ids(first.orders) + _ids(second.orders) == sorted(_ids(created), reverse=True)


def test_exactly_full_last_page_ends_pagination(stub) -> None:
    customer = new_customer(stub)
    for _ in range(4):
        new_order(stub, customer.id)
    seen: list[int] = []
    token = ""
    for _ in range(4):
        page = stub.ListOrders(
            pb.ListOrdersRequest(customer_id=customer.id, page_size=2, page_token=token)
        )
        seen += _ids(page.orders)
        token = page.next_page_token
        if not token:
            break
        assert page.orders, "a page with a next token must not be empty"
    assert len(seen) == 4 and token == ""


def test_page_size_above_500_is_capped_at_500(stub) -> None:
    # Seeded customers' emails end in @seed.invalid: make sure at least 501 seeded orders exist.
    existing = stub.ListOrders(
        pb.ListOrdersRequest(email="@seed.invalid", include_archived=True, page_size=501)
    )
    if len(existing.orders) < 500 or not existing.next_page_token:
        run_seed(stub, seed_request(501, 1, 0)).expect_done()
    for size in (501, 1000, 2**31 - 1):
        page = stub.ListOrders(
            pb.ListOrdersRequest(email="@seed.invalid", include_archived=True, page_size=size)
        )
        assert len(page.orders) == 500 and page.next_page_token, size


def test_a_page_ends_after_whole_orders_once_it_holds_5000_items(stub) -> None:
    # 500 orders of 1,000 items would be a 40 MB message: above a gRPC client's 4 MiB default
    # and Envoy's transcoding buffer. A page holds whole orders only, at most 5,000 items.
    customer = new_customer(stub)
    wide = [item(f"W-{n:04d}", 1, 1) for n in range(1000)]
    made = [new_order(stub, customer.id, wide).id for _ in range(6)]
    # The newest two hold 999 items and one: with four more of 1,000, exactly 5,000.
    made.append(new_order(stub, customer.id, wide[:999]).id)
    made.append(new_order(stub, customer.id, [item("ONE", 1, 1)]).id)
    pages = []
    token = ""
    for _ in range(10):
        request = pb.ListOrdersRequest(customer_id=customer.id, page_size=500, page_token=token)
        page, statements = with_statements(stub.ListOrders, request)
        assert statements == 2
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    # Newest first: the orders of one and 999 items and four of 1,000, then the last two.
    assert [len(page.orders) for page in pages] == [6, 2]
    assert [o.id for page in pages for o in page.orders] == sorted(made, reverse=True)
    for page in pages:
        for order in page.orders:
            lines = {made[-1]: [item("ONE", 1, 1)], made[-2]: wide[:999]}.get(order.id, wide)
            assert [line.sku for line in order.items] == [line.sku for line in lines], order.id


# --------------------------------------------------------------------------------------------
# Tokens and stability.


def test_page_token_reused_with_other_filters_is_invalid_argument(stub) -> None:
    customer = new_customer(stub, email=unique_email("tok"))
    other = new_customer(stub)
    for _ in range(3):
        order_in_status(stub, customer.id, Status.PAID)
    base = dict(customer_id=customer.id)
    first = stub.ListOrders(pb.ListOrdersRequest(page_size=1, **base))
    token = first.next_page_token
    assert token
    for changed in [
        dict(customer_id=other.id),
        dict(customer_id=0, email=customer.email),
        dict(customer_id=customer.id, status=Status.PAID),
        dict(customer_id=customer.id, email=customer.email),
        dict(customer_id=customer.id, include_archived=True),
    ]:
        expect_error(
            stub.ListOrders,
            pb.ListOrdersRequest(page_size=1, page_token=token, **changed),
            INVALID,
            fields=["page_token"],
        )
    # The same filters with another page size carry on where the first page stopped (AIP-158).
    rest = stub.ListOrders(pb.ListOrdersRequest(page_size=5, page_token=token, **base))
    assert len(rest.orders) == 2 and rest.next_page_token == ""
    assert all(o.id < first.orders[0].id for o in rest.orders)


def test_pages_are_stable_while_orders_are_inserted_between_them(stub) -> None:
    customer = new_customer(stub)
    original = [new_order(stub, customer.id, [item("P", 1, n)]) for n in range(1, 12)]
    seen: list[int] = []
    token = ""
    for round_ in range(10):
        page = stub.ListOrders(
            pb.ListOrdersRequest(customer_id=customer.id, page_size=3, page_token=token)
        )
        seen += _ids(page.orders)
        token = page.next_page_token
        if not token:
            break
        for _ in range(2):  # newer orders land in front of the ones still to come
            new_order(stub, customer.id, [item("NEW", 1, 1000 + round_)])
    assert seen == sorted(_ids(original), reverse=True), "no order skipped or repeated"


def test_pages_are_stable_while_another_client_inserts_concurrently(shared_server) -> None:
    stub = shared_server.stub
    customer = new_customer(stub)
    for n in range(30):
        new_order(stub, customer.id, [item("C", 1, n)])
    stop = threading.Event()
    inserted: list[int] = []
    failures: list[BaseException] = []

    def insert() -> None:
        writer = shared_server.new_stub()
        try:
            while not stop.is_set():
                inserted.append(new_order(writer, customer.id, [item("LIVE", 1, 1)]).id)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=insert, daemon=True)
    thread.start()
    try:
        seen: list[int] = []
        token = ""
        for _ in range(200):
            page = stub.ListOrders(
                pb.ListOrdersRequest(customer_id=customer.id, page_size=4, page_token=token)
            )
            seen += _ids(page.orders)
            token = page.next_page_token
            if not token:
                break
            # Every page boundary sees at least one insert land (the writer never pauses).
            landed = len(inserted)
            wait_for(
                lambda n=landed: len(inserted) > n or bool(failures), 10, "a concurrent insert"
            )
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures, failures
    assert inserted, "the concurrent writer never inserted anything"
    everything = list_all_orders(stub, customer_id=customer.id)
    expected = [o.id for o in everything if o.id <= seen[0]]
    assert seen == expected, "a page repeated or skipped an order while rows were being inserted"
    assert len(seen) == len(set(seen)) and len(seen) >= 30
