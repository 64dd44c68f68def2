"""orders_client: one typed method per RPC, pagers over every page, the Seed stream, bearer
tokens, default deadlines, and retries of UNAVAILABLE through the gRPC service config."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from harness import ROOT, OrdersServer, list_all_customers, unique_email
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

from orders_client import (
    Deadlines,
    OrdersClient,
    OrdersError,
    RetryPolicy,
    service_config,
)
from orders_client.channel import NON_RETRIED_METHODS, RETRIED_METHODS

Status = pb.Order.Status
Phase = pb.SeedResponse.Phase
ADMIN = "client-admin-token-8d1e"
WRITER = "client-write-token-51aa"
# Tests of the client's own behaviour, whatever database the server uses: run on SQLite only.
ONE_BACKEND = pytest.mark.parametrize("databases", ["sqlite"], indirect=True)


@pytest.fixture
def client(shared_server: OrdersServer) -> Iterator[OrdersClient]:
    with OrdersClient.connect(shared_server.address, environ={}) as c:
        yield c


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _line(sku: str = "SKU-1", quantity: int = 1, price: int = 100) -> pb.OrderItem:
    return pb.OrderItem(sku=sku, quantity=quantity, unit_price_cents=price)


# --------------------------------------------------------------------------------------------
# Every RPC, typed.


def test_every_rpc_of_the_service_has_a_client_method_and_a_retry_decision() -> None:
    rpcs = [m.name for m in pb.DESCRIPTOR.services_by_name["OrdersService"].methods]
    missing = [rpc for rpc in rpcs if not callable(getattr(OrdersClient, _snake(rpc), None))]
    assert not missing, f"OrdersClient lacks a method for {missing}"
    assert sorted(RETRIED_METHODS + NON_RETRIED_METHODS) == sorted(rpcs)


def test_customer_and_order_lifecycle_through_the_client(client: OrdersClient) -> None:
    email = unique_email("client")
    customer = client.create_customer(email, "Client Test")
    assert customer.id > 0 and customer.email == email
    assert client.get_customer(customer.id) == customer

    order = client.create_order(customer.id, [_line("A", 2, 1250), _line("B", 1, 99)])
    assert order.status == Status.DRAFT and order.total_cents == 2599
    assert order.customer == customer
    assert client.get_order(order.id) == order
    assert client.pay_order(order.id).status == Status.PAID
    assert client.ship_order(order.id).status == Status.SHIPPED
    assert client.archive_order(order.id).is_archived

    other = client.create_order(customer.id, [_line()])
    assert client.cancel_order(other.id).status == Status.CANCELLED
    # The regression every change keeps fixed: cancelling never touches the customer.
    assert client.get_customer(customer.id) == customer

    page = client.list_orders(customer_id=customer.id, include_archived=True)
    assert [o.id for o in page.orders] == [other.id, order.id] and page.next_page_token == ""
    assert [o.id for o in client.list_orders(customer_id=customer.id).orders] == [other.id]
    paid = client.list_orders(customer_id=customer.id, status="shipped", include_archived=True)
    assert [o.id for o in paid.orders] == [order.id]
    assert client.list_orders(email=email.upper(), include_archived=True).orders[0].id == other.id


def test_summary_through_the_client(client: OrdersClient) -> None:
    customer = client.create_customer(unique_email("top"), "Top")
    for _ in range(2):  # the largest order allowed, twice: at the top of any summary
        order = client.create_order(customer.id, [_line(quantity=99, price=10_000_000_000)])
        client.pay_order(order.id)
    rows = client.get_summary(limit=1000).customers
    assert rows and rows[0].total_cents >= rows[-1].total_cents
    mine = [r for r in rows if r.customer_id == customer.id]
    assert [(r.order_count, r.total_cents) for r in mine] == [(2, 2 * 99 * 10_000_000_000)]
    assert len(client.get_summary(limit=1).customers) == 1


# --------------------------------------------------------------------------------------------
# Pagers.


def test_iter_orders_reaches_every_order_across_pages(client: OrdersClient) -> None:
    customer = client.create_customer(unique_email("pager"), "Pager")
    made = [client.create_order(customer.id, [_line(price=i)]).id for i in range(7)]
    archived = client.archive_order(made[3]).id

    pages = list(client.iter_order_pages(customer_id=customer.id, page_size=2))
    assert [len(p.orders) for p in pages] == [2, 2, 2]
    assert all(p.next_page_token for p in pages[:-1]) and pages[-1].next_page_token == ""

    seen = [o.id for o in client.iter_orders(customer_id=customer.id, page_size=2)]
    assert seen == sorted(set(made) - {archived}, reverse=True), "newest first, each once"
    every = [o.id for o in client.iter_orders(customer_id=customer.id, include_archived=True)]
    assert every == sorted(made, reverse=True)


def test_iter_customers_reaches_every_customer_across_pages(
    shared_server: OrdersServer, client: OrdersClient
) -> None:
    made = [client.create_customer(unique_email("pc"), f"C{i}").id for i in range(5)]
    # Newest first: the five just made lead, over three pages of two.
    pages = list(itertools.islice(client.iter_customer_pages(page_size=2), 3))
    ids = [[c.id for c in page.customers] for page in pages]
    assert ids[:2] == [[made[4], made[3]], [made[2], made[1]]] and ids[2][0] == made[0]
    assert all(page.next_page_token for page in pages)
    # Every customer, each once: the same as the harness's own paging of ListCustomers.
    every = [c.id for c in client.iter_customers(page_size=500)]
    assert every == [c.id for c in list_all_customers(shared_server.stub)]
    assert len(set(every)) == len(every) and set(made) <= set(every)


# --------------------------------------------------------------------------------------------
# Errors.


def test_a_failed_call_raises_orders_error_with_the_server_details(client: OrdersClient) -> None:
    with pytest.raises(OrdersError) as caught:
        client.get_order(987_654_321)
    err = caught.value
    assert err.code == grpc.StatusCode.NOT_FOUND and err.reason == "ORDER_NOT_FOUND"
    assert str(err) == "NOT_FOUND: order 987654321 does not exist"

    with pytest.raises(OrdersError) as caught:
        client.list_orders(page_size=-1, customer_id=-2)
    err = caught.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in err.violations) == ["customer_id", "page_size"]
    assert "\n" not in str(err)


def test_status_filter_takes_names_in_any_case_and_refuses_unknown_ones(
    client: OrdersClient,
) -> None:
    with pytest.raises(ValueError, match="unknown order status 'sent'"):
        client.list_orders(status="sent")
    assert client.list_orders(status="Paid", page_size=1) is not None


# --------------------------------------------------------------------------------------------
# Seed.


def test_seed_yields_every_progress_message_to_the_done_one(client: OrdersClient) -> None:
    messages = list(client.seed(4, 3, 2))
    first, last = messages[0], messages[-1]
    assert first.phase == Phase.PHASE_STARTED and not first.done
    assert last.phase == Phase.PHASE_DONE and last.done
    assert (last.customers_done, last.orders_done, last.items_done) == (4, 12, 24)


def test_a_refused_seed_raises_orders_error_naming_every_bad_field(client: OrdersClient) -> None:
    with pytest.raises(OrdersError) as caught:
        list(client.seed(0, -1, 101))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in caught.value.violations) == [
        "customers",
        "items_per_order",
        "orders_per_customer",
    ]


# --------------------------------------------------------------------------------------------
# Tokens.


@ONE_BACKEND
def test_tokens_come_from_the_environment_and_seed_gets_the_admin_one(start_server: Any) -> None:
    server = start_server(ORDERS_ADMIN_TOKEN=ADMIN, ORDERS_API_TOKENS=f"write:{WRITER}")

    def attempt(environ: dict[str, str]) -> tuple[str, str]:
        """(outcome of a read, outcome of a seed) with this environment."""
        out = []
        with OrdersClient.connect(server.address, environ=environ) as client:
            for call in (lambda: client.list_customers(), lambda: list(client.seed(1))):
                try:
                    call()
                    out.append("OK")
                except OrdersError as err:
                    out.append(err.code.name)
        return out[0], out[1]

    assert attempt({}) == ("UNAUTHENTICATED", "UNAUTHENTICATED")
    assert attempt({"ORDERS_TOKEN": "wrong"}) == ("PERMISSION_DENIED", "PERMISSION_DENIED")
    assert attempt({"ORDERS_TOKEN": WRITER}) == ("OK", "PERMISSION_DENIED")
    assert attempt({"ORDERS_ADMIN_TOKEN": ADMIN}) == ("OK", "OK")
    assert attempt({"ORDERS_TOKEN": WRITER, "ORDERS_ADMIN_TOKEN": ADMIN}) == ("OK", "OK")
    # An argument wins over the environment.
    with OrdersClient.connect(
        server.address, token=WRITER, environ={"ORDERS_TOKEN": "wrong"}
    ) as client:
        assert client.list_customers() is not None


# --------------------------------------------------------------------------------------------
# Deadlines and retries, against a stand-in server that counts attempts and fails on purpose.


class _StandIn(pb_grpc.OrdersServiceServicer):
    """GetOrder fails UNAVAILABLE `failures` times then answers; CreateOrder always fails
    UNAVAILABLE; GetCustomer is NOT_FOUND; GetSummary takes `delay` seconds."""

    def __init__(self, failures: int = 0, delay: float = 0.0) -> None:
        self.calls: Counter[str] = Counter()
        self.failures = failures
        self.delay = delay

    def GetOrder(self, request: pb.GetOrderRequest, context: Any) -> pb.Order:
        self.calls["GetOrder"] += 1
        if self.calls["GetOrder"] <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "down for a moment")
        return pb.Order(id=request.id)

    def CreateOrder(self, request: pb.CreateOrderRequest, context: Any) -> pb.Order:
        self.calls["CreateOrder"] += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "the database dropped the commit")

    def GetCustomer(self, request: pb.GetCustomerRequest, context: Any) -> pb.Customer:
        self.calls["GetCustomer"] += 1
        context.abort(grpc.StatusCode.NOT_FOUND, "no such customer")

    def GetSummary(self, request: pb.GetSummaryRequest, context: Any) -> pb.GetSummaryResponse:
        self.calls["GetSummary"] += 1
        time.sleep(self.delay)
        return pb.GetSummaryResponse()


@pytest.fixture
def stand_in() -> Iterator[tuple[_StandIn, str]]:
    servicer = _StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_OrdersServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_the_service_config_retries_unavailable_with_backoff() -> None:
    config = json.loads(service_config())
    (entry,) = config["methodConfig"]
    assert {n["service"] for n in entry["name"]} == {"orders.v1.OrdersService"}
    assert {n["method"] for n in entry["name"]} == set(RETRIED_METHODS)
    policy = entry["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= policy["maxAttempts"] <= 5  # gRPC refuses fewer than 2 and caps at 5
    for key in ("initialBackoff", "maxBackoff"):
        assert re.fullmatch(r"\d+(\.\d+)?s", policy[key]), policy[key]
    assert policy["backoffMultiplier"] > 0
    assert json.loads(service_config(None)) == {"methodConfig": []}


def test_unavailable_is_retried_until_the_server_answers(stand_in: tuple[_StandIn, str]) -> None:
    servicer, address = stand_in
    servicer.failures = 2
    with OrdersClient.connect(address, environ={}) as client:
        assert client.get_order(7).id == 7
    assert servicer.calls["GetOrder"] == 3


def test_retries_stop_after_max_attempts(stand_in: tuple[_StandIn, str]) -> None:
    servicer, address = stand_in
    servicer.failures = 100
    quick = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)
    with OrdersClient.connect(address, retry=quick, environ={}) as client:
        with pytest.raises(OrdersError) as caught:
            client.get_order(7)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls["GetOrder"] == 4


def test_creates_and_other_errors_are_not_retried(stand_in: tuple[_StandIn, str]) -> None:
    servicer, address = stand_in
    with OrdersClient.connect(address, environ={}) as client:
        with pytest.raises(OrdersError, match="UNAVAILABLE"):
            client.create_order(1, [_line()])
        with pytest.raises(OrdersError, match="NOT_FOUND"):
            client.get_customer(1)
    assert servicer.calls["CreateOrder"] == 1, "a second CreateOrder could make a second order"
    assert servicer.calls["GetCustomer"] == 1


def test_every_call_gets_the_default_deadline(stand_in: tuple[_StandIn, str]) -> None:
    servicer, address = stand_in
    servicer.delay = 2.0
    with OrdersClient.connect(address, deadlines=Deadlines(unary=0.3), environ={}) as client:
        started = time.monotonic()
        with pytest.raises(OrdersError) as caught:
            client.get_summary()
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5
        # A timeout named by the caller wins over the default.
        servicer.delay = 0.5
        assert client.get_summary(timeout=5) is not None


@ONE_BACKEND
def test_a_server_that_starts_after_the_first_call_is_waited_for(start_server: Any) -> None:
    """The real thing: the server stops, the call starts while nothing listens on the port,
    the server comes back on that port, and the same call succeeds through the retry policy."""
    server = start_server()
    with OrdersClient.connect(server.address, environ={}) as client:
        customer = client.create_customer(unique_email("retry"), "Retry")
    server.stop()

    # Without the retry policy the call fails at once: it is the policy that waits.
    with OrdersClient.connect(server.address, retry=None, environ={}) as client:
        with pytest.raises(OrdersError) as caught:
            client.get_customer(customer.id)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE

    restarted: list[subprocess.Popen[bytes]] = []

    def restart() -> None:
        time.sleep(0.3)  # the call below is already failing its first attempts
        restarted.append(
            subprocess.Popen(
                [sys.executable, "-m", "server", "serve"],
                cwd=ROOT,
                env=server.env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    # Retries at about 1, 3, 7 and 15 s: a busy machine's start-up still fits.
    patient = RetryPolicy(initial_backoff=1.0, max_backoff=8.0)
    starter = threading.Thread(target=restart)
    try:
        with OrdersClient.connect(server.address, retry=patient, environ={}) as client:
            started = time.monotonic()
            starter.start()
            assert client.get_customer(customer.id) == customer
            assert time.monotonic() - started > 0.3
    finally:
        starter.join()
        for process in restarted:
            process.terminate()
            process.wait(timeout=15)
