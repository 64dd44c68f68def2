"""Many writers, many watchers: no watcher misses, repeats or reorders an event.

Eight writers drive orders through their lifecycle at once while twenty watchers follow:
half from before the first change, the others started while the writes go on, replaying
from the first cursor and then following live, four of them filtered to one customer. Each
stream must be exactly the outbox's events in position order (all of them, or the
customer's), read from the database itself once the writes are over.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from events_watch import Watcher
from harness import ServerFactory, new_customer, new_order
from orders.v1 import orders_pb2 as pb
from sqlalchemy.pool import NullPool

WRITERS = 8
ORDERS_PER_WRITER = 100  # three transitions each, whichever way it goes: 2,400 events
FAST = {"ORDERS_EVENT_HEARTBEAT_SECONDS": "0.2", "ORDERS_EVENT_POLL_SECONDS": "0.05"}
E = pb.OrderEvent


def _outbox(database_url: str) -> list[tuple[int, int, int]]:
    """(type, order id, customer id) of every event, by position, from the table itself."""
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT type, order_id, customer_id FROM order_events ORDER BY position"
            ).all()
    finally:
        engine.dispose()
    return [(E.Type.Value(kind), order_id, customer_id) for kind, order_id, customer_id in rows]


# Thousands of calls on a machine the suite shares with itself: more than the default bound.
@pytest.mark.timeout(400)
def test_concurrent_writers_and_watchers_see_every_event_once_in_order(
    server_factory: ServerFactory,
) -> None:
    server = server_factory.start("events-concurrency", FAST)
    customers = [new_customer(server.stub).id for _ in range(WRITERS)]
    first = Watcher(server.new_stub())
    start = first.heartbeat()
    early = [first] + [Watcher(server.new_stub(), after=start) for _ in range(5)]
    filtered_early = [Watcher(server.new_stub(), customer_id=customers[i]) for i in range(2)]
    for watcher in filtered_early:
        watcher.heartbeat()
    failures: list[BaseException] = []

    def write(customer_id: int, writer: int) -> None:
        stub = server.new_stub()
        try:
            for n in range(ORDERS_PER_WRITER):
                order = new_order(stub, customer_id)
                if (n + writer) % 3:
                    stub.PayOrder(pb.PayOrderRequest(id=order.id))
                    stub.ShipOrder(pb.ShipOrderRequest(id=order.id))
                else:
                    stub.CancelOrder(pb.CancelOrderRequest(id=order.id))
                    stub.ArchiveOrder(pb.ArchiveOrderRequest(id=order.id))
        except BaseException as error:
            failures.append(error)

    writers = [
        threading.Thread(target=write, args=(customer, i)) for i, customer in enumerate(customers)
    ]
    for thread in writers:
        thread.start()
    # The late half joins while the writers run: a replay from the start, then live.
    late = [Watcher(server.new_stub(), after=start) for _ in range(10)]
    filtered_late = [
        Watcher(server.new_stub(), after=watcher.cursor, customer_id=customers[i])
        for i, watcher in enumerate(filtered_early)
    ]
    for thread in writers:
        thread.join(300)
    assert not any(thread.is_alive() for thread in writers), "the writers did not finish"
    assert not failures, failures

    expected = _outbox(server.database_url)
    total = WRITERS * ORDERS_PER_WRITER * 3
    assert len(expected) == total
    everyone = [(kind, order_id) for kind, order_id, _ in expected]
    for watcher in early + late:
        # A watcher that skipped an event would wait for it for ever: what it got meanwhile
        # then shows where.
        got = watcher.events(total, timeout=60, partial=True)
        assert [(e.type, e.order.id) for e in got] == everyone
        assert len({e.cursor for e in got}) == total  # a distinct cursor each: no repeat
    for i, (one, other) in enumerate(zip(filtered_early, filtered_late, strict=True)):
        mine = [
            (kind, order_id) for kind, order_id, customer in expected if customer == customers[i]
        ]
        for watcher in (one, other):
            got = watcher.events(len(mine), timeout=60, partial=True)
            assert [(e.type, e.order.id) for e in got] == mine
    # Nothing beyond: every stream is exactly the outbox.
    for watcher in [*early, *late, *filtered_early, *filtered_late]:
        assert watcher.quiet(0.3) == []
        watcher.cancel()
