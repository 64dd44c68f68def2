"""Work interrupted half-way, on SQLite and PostgreSQL.

- A REST client that drops its connection in the middle of a seed's stream, through Envoy:
  none of the seed's rows remain, and the server takes the next seed (PostgreSQL only: the
  database's part is that of a cancelled call, tested on both in tests/test_seed.py).
- The server SIGKILLed in the middle of a seed (every process of it, supervisor and workers):
  none of its rows remain, and a server started again on the same database serves it,
  consistent.
- SIGTERM under a steady load of calls: health says NOT_SERVING at once, yet the server keeps
  serving for its drain (ORDERS_DRAIN_SECONDS), so that balancers stop sending before it stops;
  every call already in flight completes successfully; calls after the drain are refused as
  UNAVAILABLE (never CANCELLED, never a hang, never INTERNAL), and the server exits 0.

The gRPC client cancelling a seed, and a gRPC client process that dies, are in
tests/test_seed.py; a seed in flight at SIGTERM finishing, or cut at the end of the grace
period, in tests/test_operations.py.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import figures
import grpc
import psycopg
import sqlalchemy as sa
from gateway_stack import Gateway
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import (
    OrdersServer,
    ServerFactory,
    libpq_conninfo,
    long_seed,
    new_customer,
    run_seed,
    seed_request,
    table_counts,
    wait_until_no_writer,
)
from invariants import assert_invariants
from load import Load, grpc_outcome
from orders.v1 import orders_pb2 as pb
from processes import kill_tree
from sqlalchemy.pool import NullPool

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrdersService"].full_name


def _writing(line: dict) -> bool:
    written = int(line["customers_done"]) + int(line["orders_done"]) + int(line["items_done"])
    return not line["done"] and (written > 0 or line["phase"] != "PHASE_STARTED")


def test_rest_client_dropping_the_seed_stream_leaves_none_of_its_rows(
    postgres_servers: ServerFactory, start_gateway: Callable[[OrdersServer], Gateway]
) -> None:
    # On PostgreSQL only: what this adds to tests/test_seed.py (a gRPC client cancelling a seed,
    # on both databases, down to the rollback) is Envoy's side, turning a dropped HTTP/1.1
    # client into a cancelled call, and that does not depend on the database.
    backend = "postgresql"
    server = postgres_servers.start("rest-drop")
    gateway = start_gateway(server)
    request = long_seed(server, backend, seconds=6.0)
    before = table_counts(server.database_url)
    body = json.dumps(
        {
            "customers": request.customers,
            "orders_per_customer": request.orders_per_customer,
            "items_per_order": request.items_per_order,
        }
    )
    connection = http.client.HTTPConnection("127.0.0.1", gateway.config.http_port, timeout=60)
    connection.request(
        "POST", "/api/dev/seed/", body=body, headers={"content-type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200, response.read()[:500]
    started = time.monotonic()
    lines = []
    while True:
        raw = response.readline()
        assert raw, f"the stream ended before the seed was writing: {lines}"
        if not raw.strip():
            continue
        lines.append(json.loads(raw))
        if _writing(lines[-1]) or time.monotonic() - started > 1.5:
            break
    assert not lines[-1]["done"], f"the seed finished before the client dropped: {lines[-1]}"
    # Drop the connection with a reset, as a killed client or a broken network would. (The
    # response holds the socket's file: both must be closed for the descriptor to go.)
    sock = connection.sock
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    response.close()
    connection.close()
    assert sock.fileno() == -1
    dropped = time.monotonic()

    wait_until_no_writer(server.database_url, timeout=30)
    rolled_back = time.monotonic() - dropped
    assert table_counts(server.database_url) == before, "the dropped seed left rows behind"
    time.sleep(0.5)
    assert table_counts(server.database_url) == before, "rows appeared after the drop"
    figures.record(
        f"seed-dropped-over-rest ({backend})",
        seed_rows=request.customers * (1 + request.orders_per_customer * 6),
        lines_read=len(lines),
        rolled_back_within_s=round(rolled_back, 2),
    )
    # Not wedged: the next seed, over REST, lands whole.
    stream = gateway.rest.stream(
        "/api/dev/seed/", {"customers": 3, "orders_per_customer": 2, "items_per_order": 1}
    )
    assert stream.last["phase"] == "PHASE_DONE", stream.last
    assert table_counts(server.database_url)["customers"] == before["customers"] + 3
    assert_invariants(server)


def test_server_killed_mid_seed_leaves_none_of_its_rows(
    start_server: Callable[..., OrdersServer], backend: str, log_dir: Path
) -> None:
    server = start_server()
    kept = new_customer(server.stub)
    request = long_seed(server, backend, seconds=6.0)
    before = table_counts(server.database_url)
    killed: list[float] = []

    def kill_once_writing(run, call) -> None:  # type: ignore[no-untyped-def]
        last = run.messages[-1]
        writing = last.customers_done + last.orders_done + last.items_done > 0
        if not killed and not last.done and (writing or time.monotonic() - run.started > 1.5):
            assert server.process is not None
            killed.extend(kill_tree(server.process.pid))

    run = run_seed(server.stub, request, on_message=kill_once_writing, timeout=60)
    assert killed, "the server was never killed"
    assert run.error is not None and run.error.code() == grpc.StatusCode.UNAVAILABLE, run.error
    assert not any(m.done for m in run.messages), "the seed finished before the kill"
    assert server.wait(timeout=10) == -signal.SIGKILL

    # PostgreSQL rolls the dead connection's transaction back; SQLite's next opener does.
    wait_until_no_writer(server.database_url, timeout=30)
    assert table_counts(server.database_url) == before, "a killed seed left rows behind"
    again = OrdersServer(
        server.database_url, {}, log_dir / f"{server.name}-again.log", "again", migrate=False
    )
    again.start()
    try:
        assert again.stub.GetCustomer(pb.GetCustomerRequest(id=kept.id)).email == kept.email
        run_seed(again.stub, seed_request(2, 1, 1)).expect_done()
        assert table_counts(again.database_url)["customers"] == before["customers"] + 2
        assert_invariants(again, customers_seen=[kept.id])
    finally:
        again.stop()
    figures.record(
        f"seed-server-sigkill ({backend})",
        seed_rows=run.rows(),
        messages_before_kill=len(run.messages),
    )


DRAIN = 1.5  # ORDERS_DRAIN_SECONDS of the SIGTERM test


def _health(server: OrdersServer) -> str:
    stub = health_pb2_grpc.HealthStub(server.channel)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(stub.Check(request, timeout=5).status)


@contextmanager
def _writes_held(database_url: str, customer_id: int) -> Iterator[None]:
    """Holds back every CreateOrder for `customer_id` until the block ends: SQLite's write
    lock (BEGIN IMMEDIATE), or on PostgreSQL the customer's row locked FOR UPDATE, which the
    new order's foreign key check waits for. Calls held so are surely in flight, however fast
    the server answers."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with closing(sqlite3.connect(str(url.database), isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")
        return
    with psycopg.connect(libpq_conninfo(database_url), connect_timeout=5) as conn:
        conn.execute("SELECT 1 FROM customers WHERE id = %s FOR UPDATE", (customer_id,))
        try:
            yield
        finally:
            conn.rollback()


def test_sigterm_under_load_drains_then_refuses_as_unavailable(
    start_server: Callable[..., OrdersServer], backend: str
) -> None:
    server = start_server(ORDERS_SHUTDOWN_GRACE="20", ORDERS_DRAIN_SECONDS=str(DRAIN))
    # Pages of 500 orders with 10,000 items: calls long enough to be in flight at the signal.
    run_seed(server.stub, seed_request(100, 5, 20)).expect_done()
    customer = new_customer(server.stub)
    stubs = [server.new_stub() for _ in range(6)]

    def reader(stub):  # type: ignore[no-untyped-def]
        return lambda _n: grpc_outcome(
            lambda: len(stub.ListOrders(pb.ListOrdersRequest(page_size=500), timeout=30).orders)
        )

    def writer(stub):  # type: ignore[no-untyped-def]
        request = pb.CreateOrderRequest(
            customer_id=customer.id, items=[pb.OrderItem(sku="T", quantity=1, unit_price_cents=5)]
        )
        return lambda _n: grpc_outcome(lambda: stub.CreateOrder(request, timeout=30).id)

    workers = {f"reader-{i}": reader(s) for i, s in enumerate(stubs[:4])}
    workers |= {f"writer-{i}": writer(s) for i, s in enumerate(stubs[4:])}
    load = Load(workers, max_seconds=60).start()
    load.wait_for_calls(12, timeout=30)
    # The writers' next calls wait on a lock across the signal: in flight at the signal, and
    # held there for a while after it.
    with _writes_held(server.database_url, customer.id):
        time.sleep(0.3)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        # At once NOT_SERVING, so that balancers stop sending calls here...
        while (health := _health(server)) == "SERVING" and (
            time.monotonic() < signalled + DRAIN / 2
        ):
            time.sleep(0.02)
        not_serving_after = time.monotonic() - signalled
        time.sleep(max(0.0, signalled + 0.3 - time.monotonic()))
    code = server.wait(timeout=30)
    stopped = time.monotonic()
    time.sleep(0.5)  # calls after the exit: refused
    calls = load.stop()

    in_flight = [c for c in calls if c.started < signalled - 0.05 and c.ended > signalled]
    before_signal = [c for c in calls if c.started < signalled - 0.05]
    failed_before = [c for c in before_signal if not c.ok]
    # ...while it keeps serving through the drain. Margins: the signal is handled within the
    # server's 0.2 s poll; a call is admitted when a worker thread takes it up, which on a busy
    # server can be a few hundred ms after the client sent it.
    draining = [c for c in calls if signalled + 0.25 <= c.started <= signalled + DRAIN / 2]
    # ...then refuses every new call as UNAVAILABLE, which a client retries, never CANCELLED.
    stopping = [c for c in calls if signalled + DRAIN / 2 < c.started <= stopped]
    after = [c for c in calls if c.started > stopped]
    figures.record(
        f"sigterm-under-load ({backend})",
        calls=len(calls),
        in_flight_at_signal=len(in_flight),
        failed_in_flight=len(failed_before),
        not_serving_within_s=round(not_serving_after, 2),
        served_while_draining=sum(c.ok for c in draining),
        failed_while_draining=sum(not c.ok for c in draining),
        refused_while_stopping=sum(c.outcome == "UNAVAILABLE" for c in stopping),
        cancelled=sum(c.outcome == "CANCELLED" for c in calls),
        exit_s=round(stopped - signalled, 2),
    )
    assert code == 0, f"exit code {code} after SIGTERM\n{server.log_text()}"
    assert health == "NOT_SERVING", f"health still {health} {not_serving_after:.2f}s after SIGTERM"
    assert in_flight, "no call was in flight at the signal: nothing was tested"
    assert not failed_before, f"calls in flight at SIGTERM failed: {failed_before[:5]}"
    assert draining and all(c.ok for c in draining), [c for c in draining if not c.ok][:5]
    assert stopped - signalled >= DRAIN, "the server did not wait for the drain"
    assert after and all(c.outcome == "UNAVAILABLE" for c in after), {c.outcome for c in after}
    assert all(c.seconds < 5 for c in after), "a call to a stopped server must fail at once"
    unexpected = [c for c in calls if c.outcome not in ("OK", "UNAVAILABLE")]
    assert not unexpected, unexpected[:5]
    # Every order acknowledged is there, whole; the server is gone, so its database tells.
    created = {c.value for c in calls if c.ok and c.worker.startswith("writer")}
    engine = sa.create_engine(server.database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            stored = dict(
                conn.execute(
                    sa.text("SELECT id, total_cents FROM orders WHERE customer_id = :c"),
                    {"c": customer.id},
                ).all()
            )
    finally:
        engine.dispose()
    assert {i: stored.get(i) for i in created} == dict.fromkeys(created, 5)
    assert_invariants(server, customers_seen=[customer.id], use_api=False)
