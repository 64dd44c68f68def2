"""Seed: totals, progress while it runs, concurrency, all-or-nothing, bounds and the admin guard."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from typing import Any

import grpc
import pytest
from harness import (
    OrdersServer,
    Phase,
    SeedRun,
    ServerFactory,
    details_of,
    list_all_customers,
    list_all_orders,
    long_seed,
    new_customer,
    run_seed,
    seed_request,
    table_counts,
    wait_until_no_writer,
)
from orders.v1 import orders_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
TOKEN = "test-admin-token-3f9c"


def expect_refused(
    run: SeedRun, code: grpc.StatusCode, reason: str | None = None, fields: list[str] | None = None
) -> None:
    """The seed ended with `code`; if it streamed anything, the last message says it failed."""
    assert run.error is not None, f"the seed should have been refused with {code.name}"
    got = details_of(run.error)
    assert got.code == code, f"expected {code.name}, got {got.code.name}: {got.message}"
    assert all(m.phase != Phase.PHASE_DONE for m in run.messages)
    if run.messages:
        last = run.last
        assert last.done and last.phase == Phase.PHASE_FAILED and last.error.code == code.value[0]
    if reason is not None:
        assert got.info is not None and got.info.domain == "orders.v1", got
        assert got.info.reason == reason
    if fields is not None:
        assert sorted(got.fields) == sorted(fields), got.fields


def check_progress_messages(run: SeedRun) -> None:
    """What every successful seed stream looks like."""
    r = run.request
    totals = (
        r.customers,
        r.customers * r.orders_per_customer,
        r.customers * r.orders_per_customer * r.items_per_order,
    )
    first, last = run.messages[0], run.last
    assert first.phase == Phase.PHASE_STARTED and not first.done
    assert last.done and last.phase == Phase.PHASE_DONE and not last.HasField("error")
    assert [m.done for m in run.messages].count(True) == 1, "only the last message is done"
    for m in run.messages:
        assert (m.customers_total, m.orders_total, m.items_total) == totals, m
    assert (last.customers_done, last.orders_done, last.items_done) == totals
    for a, b in itertools.pairwise(run.messages):
        assert b.customers_done >= a.customers_done and b.orders_done >= a.orders_done
        assert b.items_done >= a.items_done, "progress never goes backwards"
        assert b.elapsed.ToNanoseconds() >= a.elapsed.ToNanoseconds()


# --------------------------------------------------------------------------------------------
# What a seed creates.


def test_seed_creates_exactly_what_was_asked_and_reports_the_totals(stub) -> None:
    run = run_seed(stub, seed_request(12, 3, 2))
    run.expect_done()
    check_progress_messages(run)
    customers = stub.ListCustomers(pb.ListCustomersRequest(page_size=12)).customers
    emails = [c.email for c in customers]
    assert all(e.endswith("@seed.invalid") for e in emails), emails
    assert len({e.lower() for e in emails}) == 12
    statuses = set()
    for customer in customers:
        orders = list_all_orders(stub, customer_id=customer.id, include_archived=True)
        assert len(orders) == 3
        for order in orders:
            assert len(order.items) == 2 and order.customer == customer
            assert all(i.sku and i.quantity > 0 and i.unit_price_cents >= 0 for i in order.items)
            assert order.total_cents == sum(i.quantity * i.unit_price_cents for i in order.items)
            statuses.add(order.status)
    assert len(statuses) >= 2, f"a seed makes a mix of statuses, got only {statuses}"


def test_seed_of_customers_without_orders_or_items(stub) -> None:
    run = run_seed(stub, seed_request(3, 0, 0))
    run.expect_done()
    check_progress_messages(run)
    newest = stub.ListCustomers(pb.ListCustomersRequest(page_size=3)).customers
    for customer in newest:
        assert customer.email.endswith("@seed.invalid")
        assert list_all_orders(stub, customer_id=customer.id, include_archived=True) == []


@pytest.mark.parametrize(
    ("customers", "orders", "items", "fields"),
    [
        (0, 0, 0, ["customers"]),
        (-1, 1, 1, ["customers"]),
        (100_001, 0, 0, ["customers"]),
        (1, -1, 0, ["orders_per_customer"]),
        (1, 1_001, 0, ["orders_per_customer"]),
        (1, 1, -1, ["items_per_order"]),
        (1, 1, 101, ["items_per_order"]),
        (-5, 5_000, 500, ["customers", "orders_per_customer", "items_per_order"]),
    ],
)
def test_seed_outside_its_bounds_is_invalid_argument_naming_each_field(
    shared_server: OrdersServer, customers: int, orders: int, items: int, fields: list[str]
) -> None:
    before = table_counts(shared_server.database_url)
    run = run_seed(shared_server.stub, seed_request(customers, orders, items), timeout=30)
    expect_refused(run, INVALID, fields=fields)
    assert table_counts(shared_server.database_url) == before


def test_seed_above_the_default_row_cap_is_refused_before_writing(shared_server) -> None:
    before = table_counts(shared_server.database_url)
    run = run_seed(shared_server.stub, seed_request(100_000, 1_000, 100), timeout=30)
    expect_refused(run, INVALID)
    assert run.duration < 10
    assert table_counts(shared_server.database_url) == before


def test_seed_row_cap_is_configurable_and_counts_every_row(start_server) -> None:
    server = start_server(ORDERS_SEED_MAX_ROWS="100")
    expect_refused(run_seed(server.stub, seed_request(10, 3, 3)), INVALID)  # 130 rows
    assert table_counts(server.database_url) == {"customers": 0, "orders": 0, "order_items": 0}
    run_seed(server.stub, seed_request(10, 3, 2)).expect_done()  # 100 rows
    assert table_counts(server.database_url) == {"customers": 10, "orders": 30, "order_items": 60}


# --------------------------------------------------------------------------------------------
# Long seeds, on a server of their own.


@pytest.fixture(scope="module")
def seed_server(server_factory: ServerFactory) -> OrdersServer:
    return server_factory.start("seeding")


def test_seed_progress_arrives_while_it_runs_not_all_at_the_end(seed_server, backend) -> None:
    request = long_seed(seed_server, backend, seconds=3.0)
    run = run_seed(seed_server.stub, request)
    # The machine got faster since the rate was measured (other work ended): watch bigger ones.
    for _ in range(3):
        if run.error is not None or run.duration >= 2.0 or request.customers >= 80_000:
            break
        request.customers = min(2 * request.customers, 80_000)
        run = run_seed(seed_server.stub, request)
    run.expect_done()
    check_progress_messages(run)
    assert run.duration >= 1.5, f"the seed took {run.duration:.2f}s: too short to watch it"
    offsets = [t - run.started for t in run.arrivals]
    assert offsets[0] < 1.5, f"the first message came {offsets[0]:.2f}s after the call started"
    gaps = [b - a for a, b in itertools.pairwise(run.arrivals)]
    assert max(gaps) < 1.6, f"a gap of {max(gaps):.2f}s between progress messages (at most 1s)"
    early = [o for o in offsets if o < run.duration / 2]
    assert len(early) >= 2, f"messages arrived at {offsets}: not during the seed"


def test_two_seeds_at_once_both_finish_with_unique_emails(seed_server, backend) -> None:
    request = long_seed(seed_server, backend, seconds=1.0)
    before = table_counts(seed_server.database_url)
    barrier = threading.Barrier(2)
    runs: list[SeedRun] = []

    def seed() -> None:
        stub = seed_server.new_stub()
        barrier.wait(timeout=10)
        runs.append(run_seed(stub, request))

    threads = [threading.Thread(target=seed) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    assert len(runs) == 2
    for run in runs:
        run.expect_done()
        check_progress_messages(run)
    a, b = runs
    assert a.started < b.ended and b.started < a.ended, "the two seeds did not overlap"
    after = table_counts(seed_server.database_url)
    per_seed = request.customers, request.customers * 10, request.customers * 50
    assert after == {
        "customers": before["customers"] + 2 * per_seed[0],
        "orders": before["orders"] + 2 * per_seed[1],
        "order_items": before["order_items"] + 2 * per_seed[2],
    }
    emails = [c.email.lower() for c in list_all_customers(seed_server.stub)]
    assert len(emails) == len(set(emails)) == after["customers"]


def _writing(message: pb.SeedResponse) -> bool:
    return not message.done and (
        message.customers_done + message.orders_done + message.items_done > 0
        or message.phase in (Phase.PHASE_ORDERS, Phase.PHASE_ITEMS, Phase.PHASE_COMMITTING)
    )


def _assert_nothing_left(server: OrdersServer, before: dict[str, int]) -> None:
    wait_until_no_writer(server.database_url, timeout=30)
    assert table_counts(server.database_url) == before, "the interrupted seed left rows behind"
    time.sleep(0.5)
    assert table_counts(server.database_url) == before, "rows appeared after the seed was dropped"
    assert len(list_all_customers(server.stub)) == before["customers"]
    # The server is not wedged: a small seed works and adds exactly its rows.
    run_seed(server.stub, seed_request(2, 1, 1)).expect_done()
    after = table_counts(server.database_url)
    assert after["customers"] == before["customers"] + 2


def test_seed_cancelled_by_its_client_leaves_no_rows(seed_server, backend) -> None:
    request = long_seed(seed_server, backend, seconds=6.0)
    before = table_counts(seed_server.database_url)

    def cancel_once_writing(run: SeedRun, call: Any) -> None:
        if _writing(run.messages[-1]) or time.monotonic() - run.started > 1.5:
            call.cancel()

    run = run_seed(seed_server.stub, request, on_message=cancel_once_writing)
    assert run.error is not None and run.error.code() == grpc.StatusCode.CANCELLED, run.error
    assert not any(m.done for m in run.messages), "the seed finished before it was cancelled"
    _assert_nothing_left(seed_server, before)


DROPPING_CLIENT = """
import sys, grpc
from orders.v1 import orders_pb2 as pb, orders_pb2_grpc as pb_grpc
stub = pb_grpc.OrdersServiceStub(grpc.insecure_channel(sys.argv[1]))
request = pb.SeedRequest(customers=int(sys.argv[2]), orders_per_customer=int(sys.argv[3]),
                         items_per_order=int(sys.argv[4]))
for m in stub.Seed(request, timeout=120):
    written = m.customers_done + m.orders_done + m.items_done
    print("done" if m.done else ("writing" if written or m.phase >= 3 else "started"), flush=True)
"""


def test_seed_of_a_client_that_dies_leaves_no_rows(seed_server, backend) -> None:
    request = long_seed(seed_server, backend, seconds=6.0)
    before = table_counts(seed_server.database_url)
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DROPPING_CLIENT,
            seed_server.address,
            str(request.customers),
            str(request.orders_per_customer),
            str(request.items_per_order),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    started = time.monotonic()
    lines = []
    try:
        for line in client.stdout:
            lines.append(line.strip())
            if lines[-1] == "writing" or time.monotonic() - started > 1.5:
                break
    finally:
        client.kill()  # SIGKILL: the connection drops, no goodbye
        client.wait(timeout=10)
    assert lines and "done" not in lines, f"the client saw {lines}"
    _assert_nothing_left(seed_server, before)


# --------------------------------------------------------------------------------------------
# The admin guard.


@pytest.fixture(scope="module")
def guarded_server(server_factory: ServerFactory) -> OrdersServer:
    return server_factory.start("guarded", {"ORDERS_ADMIN_TOKEN": TOKEN})


def test_guarded_seed_without_credentials_is_unauthenticated(guarded_server) -> None:
    before = table_counts(guarded_server.database_url)
    run = run_seed(guarded_server.stub, seed_request(2, 1, 1))
    expect_refused(run, grpc.StatusCode.UNAUTHENTICATED, reason="ADMIN_TOKEN_MISSING")
    assert table_counts(guarded_server.database_url) == before


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}x", "Bearer wrong", f"Bearer {TOKEN.upper()}"])
def test_guarded_seed_with_a_wrong_token_is_permission_denied(guarded_server, header: str) -> None:
    before = table_counts(guarded_server.database_url)
    run = run_seed(guarded_server.stub, seed_request(2, 1, 1), metadata=[("authorization", header)])
    expect_refused(run, grpc.StatusCode.PERMISSION_DENIED, reason="ADMIN_TOKEN_INVALID")
    assert table_counts(guarded_server.database_url) == before


def test_guarded_seed_with_a_token_but_no_bearer_scheme_is_refused(guarded_server) -> None:
    before = table_counts(guarded_server.database_url)
    run = run_seed(guarded_server.stub, seed_request(2, 1, 1), metadata=[("authorization", TOKEN)])
    assert run.error is not None, "a bare token is not `Bearer <token>`"
    assert run.error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    assert table_counts(guarded_server.database_url) == before


def test_guarded_seed_with_the_right_token_works(guarded_server) -> None:
    run = run_seed(
        guarded_server.stub, seed_request(2, 1, 1), metadata=[("authorization", f"Bearer {TOKEN}")]
    )
    run.expect_done()
    check_progress_messages(run)


def test_the_guard_covers_only_seed(guarded_server) -> None:
    customer = new_customer(guarded_server.stub)
    assert guarded_server.stub.GetCustomer(pb.GetCustomerRequest(id=customer.id)) == customer
    guarded_server.stub.ListOrders(pb.ListOrdersRequest())
    guarded_server.stub.GetSummary(pb.GetSummaryRequest())


def test_production_without_a_token_refuses_every_seed(start_server) -> None:
    server = start_server(ORDERS_ENV="production")
    empty = {"customers": 0, "orders": 0, "order_items": 0}
    expect_refused(
        run_seed(server.stub, seed_request(2, 1, 1)),
        grpc.StatusCode.UNAUTHENTICATED,
        reason="ADMIN_TOKEN_MISSING",
    )
    for header in ("Bearer anything", f"Bearer {TOKEN}"):
        expect_refused(
            run_seed(server.stub, seed_request(2, 1, 1), metadata=[("authorization", header)]),
            grpc.StatusCode.PERMISSION_DENIED,
            reason="ADMIN_TOKEN_INVALID",
        )
    assert table_counts(server.database_url) == empty
    # Everything else works in production.
    assert new_customer(server.stub).id > 0


def test_production_with_a_token_seeds_only_with_that_token(start_server) -> None:
    server = start_server(ORDERS_ENV="production", ORDERS_ADMIN_TOKEN=TOKEN)
    expect_refused(run_seed(server.stub, seed_request(2, 1, 1)), grpc.StatusCode.UNAUTHENTICATED)
    run = run_seed(
        server.stub, seed_request(2, 1, 1), metadata=[("authorization", f"Bearer {TOKEN}")]
    )
    run.expect_done()
    assert table_counts(server.database_url) == {"customers": 2, "orders": 2, "order_items": 2}
