"""WatchOrders over native gRPC, on SQLite and PostgreSQL: one event per change, replay then
live, resuming, the customer filter, heartbeats, bad and expired cursors, the watcher limit,
and a replica stopped under its watchers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from events_watch import HEARTBEAT, Watcher
from harness import OrdersServer, ServerFactory, expect_error, new_customer, new_order
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

E = pb.OrderEvent
# Short, so that the tests that wait for a heartbeat wait little; the other waits are bounded
# by what they wait for, not by a guess of the machine's speed.
FAST = {"ORDERS_EVENT_HEARTBEAT_SECONDS": "0.2", "ORDERS_EVENT_POLL_SECONDS": "0.05"}


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> OrdersServer:
    return server_factory.start("events", FAST)


@pytest.fixture
def stub(server: OrdersServer) -> Any:
    return server.stub


def watching(stub: Any, customer_id: int = 0, after: str = "") -> Watcher:
    """A watcher that has surely begun: its first heartbeat came, so every change made from
    here on reaches it."""
    watcher = Watcher(stub, after=after, customer_id=customer_id)
    watcher.heartbeat()
    return watcher


def first_error(stub: Any, request: pb.WatchOrdersRequest) -> grpc.RpcError | None:
    """The error a watch starts with; None when it sends something first."""
    try:
        next(iter(stub.WatchOrders(request, timeout=10)))
    except grpc.RpcError as error:
        return error
    return None


def kinds(events: list[pb.OrderEvent]) -> list[tuple[int, int]]:
    return [(e.type, e.order.id) for e in events]


def test_each_change_is_one_event_with_the_order_it_left(stub: Any) -> None:
    customer = new_customer(stub)
    watcher = watching(stub, customer.id)
    a = new_order(stub, customer.id)
    paid = stub.PayOrder(pb.PayOrderRequest(id=a.id))
    stub.PayOrder(pb.PayOrderRequest(id=a.id))  # a repeat changes nothing: no event
    shipped = stub.ShipOrder(pb.ShipOrderRequest(id=a.id))
    expect_error(
        stub.CancelOrder, pb.CancelOrderRequest(id=a.id), grpc.StatusCode.FAILED_PRECONDITION
    )
    archived = stub.ArchiveOrder(pb.ArchiveOrderRequest(id=a.id))
    stub.ArchiveOrder(pb.ArchiveOrderRequest(id=a.id))
    b = new_order(stub, customer.id)
    cancelled = stub.CancelOrder(pb.CancelOrderRequest(id=b.id))
    events = watcher.events(6)
    assert kinds(events) == [
        (E.CREATED, a.id),
        (E.PAID, a.id),
        (E.SHIPPED, a.id),
        (E.ARCHIVED, a.id),
        (E.CREATED, b.id),
        (E.CANCELLED, b.id),
    ]
    for event, answer in zip(events, [a, paid, shipped, archived, b, cancelled], strict=True):
        assert event.order == answer  # the order as the change left it, customer and items
        assert event.time == answer.updated_at
        assert event.cursor
    assert watcher.quiet(0.5) == []  # and nothing more
    watcher.cancel()


def test_replay_then_live_without_gap_or_repeat(stub: Any) -> None:
    customer = new_customer(stub)
    first = watching(stub, customer.id)
    start = first.cursor
    orders = [new_order(stub, customer.id) for _ in range(30)]
    # A second watcher from the same cursor while more changes commit: it replays the first
    # thirty from the table, then follows live.
    late = Watcher(stub, after=start, customer_id=customer.id)
    paid: list[int] = []

    def pay_all() -> None:
        for order in orders:
            paid.append(stub.PayOrder(pb.PayOrderRequest(id=order.id)).id)

    writer = threading.Thread(target=pay_all)
    writer.start()
    writer.join(60)
    expected = [(E.CREATED, o.id) for o in orders] + [(E.PAID, i) for i in paid]
    assert kinds(first.events(60)) == expected
    replayed = late.events(60)
    assert kinds(replayed) == expected
    positions = [e.cursor for e in replayed]
    assert len(set(positions)) == len(positions)
    assert late.quiet(0.5) == [] and first.quiet(0.1) == []
    first.cancel()
    late.cancel()


def test_resume_from_any_cursor_continues_after_it(stub: Any) -> None:
    customer = new_customer(stub)
    watcher = watching(stub, customer.id)
    orders = [new_order(stub, customer.id) for _ in range(5)]
    events = watcher.events(5)
    watcher.cancel()
    for i, event in enumerate(events):
        resumed = Watcher(stub, after=event.cursor, customer_id=customer.id)
        rest = resumed.events(4 - i) if i < 4 else []
        assert [e.order.id for e in rest] == [o.id for o in orders[i + 1 :]]
        assert resumed.quiet(0.3) == []
        resumed.cancel()


def test_customer_filter_and_the_cursor_bound_to_it(stub: Any) -> None:
    mine, other = new_customer(stub), new_customer(stub)
    watcher = watching(stub, mine.id)
    everyone = watching(stub)
    theirs = new_order(stub, other.id)
    ours = new_order(stub, mine.id)
    assert kinds(watcher.events(1)) == [(E.CREATED, ours.id)]
    seen = [e.order.id for e in everyone.events(2)]
    assert seen == [theirs.id, ours.id]
    for cursor, customer_id in (
        (watcher.cursor, other.id),
        (watcher.cursor, 0),
        (everyone.cursor, mine.id),
    ):
        got = expect_error(
            lambda r: next(iter(stub.WatchOrders(r))),
            pb.WatchOrdersRequest(after=cursor, customer_id=customer_id),
            grpc.StatusCode.INVALID_ARGUMENT,
            fields=["after"],
        )
        assert "another customer_id" in got.message and "empty `after`" in got.message
    watcher.cancel()
    everyone.cancel()


def test_heartbeats_carry_a_cursor_to_resume_from(stub: Any) -> None:
    customer = new_customer(stub)
    watcher = Watcher(stub, customer_id=customer.id)
    beats = [watcher.next() for _ in range(3)]
    assert all(b.type == HEARTBEAT and b.cursor and not b.HasField("order") for b in beats)
    assert all(b.time.seconds > 0 for b in beats)
    watcher.cancel()
    order = new_order(stub, customer.id)
    resumed = Watcher(stub, after=beats[-1].cursor, customer_id=customer.id)
    assert kinds(resumed.events(1)) == [(E.CREATED, order.id)]
    resumed.cancel()


@pytest.mark.parametrize(
    ("after", "customer_id", "fields"),
    [
        ("not a cursor", 0, ["after"]),
        ("eyJhZnRlciI6MSwiZiI6IjEyMyJ9", 0, ["after"]),  # a page token's shape
        ("", -1, ["customer_id"]),
    ],
)
def test_bad_requests_are_refused_naming_the_field(
    stub: Any, after: str, customer_id: int, fields: list[str]
) -> None:
    expect_error(
        lambda r: next(iter(stub.WatchOrders(r))),
        pb.WatchOrdersRequest(after=after, customer_id=customer_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        fields=fields,
    )


def test_a_cursor_older_than_the_kept_events_is_refused(
    start_server: Callable[..., OrdersServer],
) -> None:
    server = start_server(ORDERS_EVENT_RETENTION="1s", **FAST)
    stub = server.stub
    customer = new_customer(stub)
    watcher = watching(stub, customer.id)
    new_order(stub, customer.id)
    old = watcher.events(1)[0].cursor
    new_order(stub, customer.id)
    watcher.cancel()
    # Retention runs every half of its period: within a few seconds the first event is gone.
    request = pb.WatchOrdersRequest(after=old, customer_id=customer.id)
    ends = time.monotonic() + 30
    while first_error(stub, request) is None:
        assert time.monotonic() < ends, "the first event was never pruned"
        time.sleep(0.2)
    got = expect_error(
        lambda r: next(iter(stub.WatchOrders(r))),
        request,
        grpc.StatusCode.FAILED_PRECONDITION,
        reason="CURSOR_EXPIRED",
    )
    assert "older than the oldest kept event" in got.message and "empty `after`" in got.message


def test_watchers_beyond_the_limit_are_refused(start_server: Callable[..., OrdersServer]) -> None:
    server = start_server(ORDERS_MAX_WATCHERS="2", **FAST)
    stub = server.stub
    first, second = watching(stub), watching(stub)
    expect_error(
        lambda r: next(iter(stub.WatchOrders(r))),
        pb.WatchOrdersRequest(),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        reason="WATCHER_LIMIT",
    )
    first.cancel()
    # The cancelled stream's place is free again once the server has seen it go.
    ends = time.monotonic() + 15
    while first_error(stub, pb.WatchOrdersRequest()) is not None:
        assert time.monotonic() < ends, "the cancelled watcher's place never came free"
        time.sleep(0.1)
    third = watching(stub)
    # Other calls are served all along: watchers have threads of their own.
    assert new_customer(stub).id
    second.cancel()
    third.cancel()


def test_a_stopped_replica_ends_its_watchers_and_another_resumes_them(
    server_factory: ServerFactory, tmp_path: Any
) -> None:
    first = server_factory.start("replica-a", FAST)
    # A second replica over the same database.
    # What the way to the database asks of a server (a pooler: transaction pooling), as the
    # factory gives its own.
    env = {**server_factory.databases.server_env, **FAST}
    second = OrdersServer(
        first.database_url, env, tmp_path / "replica-b.log", "replica-b", migrate=False
    )
    second.start()
    try:
        customer = new_customer(first.stub)
        # A channel of the test's own: the harness closes its channels when it stops a server.
        channel = grpc.insecure_channel(first.address)
        watcher = watching(pb_grpc.OrdersServiceStub(channel), customer.id)
        stop = threading.Event()
        made: list[int] = []

        def write() -> None:  # a steady stream of changes through the replica that stays
            while not stop.is_set() and len(made) < 400:
                made.append(new_order(second.stub, customer.id).id)

        writer = threading.Thread(target=write)
        writer.start()
        got = watcher.events(5)
        first.request_stop()
        error = watcher.wait_end()
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert "resume" in (error.details() or "")
        while not watcher.messages.empty():
            message = watcher.next()
            if message.type != HEARTBEAT:
                got.append(message)
        resumed = Watcher(second.stub, after=watcher.cursor, customer_id=customer.id)
        time.sleep(0.3)
        stop.set()
        writer.join(60)
        got += resumed.events(len(made) - len(got))
        assert [e.order.id for e in got] == made  # every one, once, in order
        assert resumed.quiet(0.3) == []
        resumed.cancel()
        channel.close()
    finally:
        second.stop()
        first.stop()


def test_watching_needs_the_read_right_when_tokens_are_set(
    start_server: Callable[..., OrdersServer],
) -> None:
    server = start_server(ORDERS_API_TOKENS="read:reader-7f3a", **FAST)
    stub = server.stub
    request = pb.WatchOrdersRequest()
    expect_error(
        lambda r: next(iter(stub.WatchOrders(r))),
        request,
        grpc.StatusCode.UNAUTHENTICATED,
        reason="TOKEN_MISSING",
    )
    reader = [("authorization", "Bearer reader-7f3a")]
    first = next(iter(stub.WatchOrders(request, metadata=reader, timeout=10)))
    assert first.type == HEARTBEAT
