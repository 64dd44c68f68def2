"""Seed over REST: newline-delimited JSON read as a stream, the outcome in the last line, the
admin token forwarded as metadata, and no route timeout on the way."""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from gateway_stack import Gateway
from harness import (
    OrdersServer,
    ServerFactory,
    long_seed,
    table_counts,
    unique_email,
    wait_until_no_writer,
)
from orders.v1 import orders_pb2 as pb
from sqlalchemy.pool import NullPool


def seed_body(customers: int, orders: int = 0, items: int = 0) -> dict[str, int]:
    return {"customers": customers, "orders_per_customer": orders, "items_per_order": items}


def test_seed_streams_one_json_line_per_progress_message_as_it_happens(
    gateway_each_backend: Gateway, backend: str
) -> None:
    request = long_seed(gateway_each_backend.server, backend, seconds=2.5)
    # The seed rate is measured once a session; if the machine got faster since (other work
    # ended), the seed is too short to watch: double it, a few times at most.
    for _ in range(4):
        body = seed_body(request.customers, request.orders_per_customer, request.items_per_order)
        stream = gateway_each_backend.rest.stream("/api/dev/seed/", body)
        if stream.ended - stream.lines[0].arrived >= 1.5 or request.customers >= 80_000:
            break
        request.customers = min(2 * request.customers, 80_000)

    # Newline-delimited JSON, and said so (the transcoder alone calls it application/json).
    assert stream.status == 200 and stream.headers["content-type"] == "application/x-ndjson"
    lines = stream.lines
    assert len(lines) >= 3, [line.data for line in lines]
    assert lines[0].data["phase"] == "PHASE_STARTED" and lines[0].data["done"] is False
    # Streamed, not buffered: the first line arrived long before the response ended, and no
    # silence between two lines lasted much more than the server's one-second promise.
    assert stream.ended - lines[0].arrived >= 1.0, (stream.ended - lines[0].arrived, len(lines))
    gaps = [b.arrived - a.arrived for a, b in itertools.pairwise(lines)]
    assert max(gaps) < 1.8, gaps
    assert [line.data["done"] for line in lines] == [False] * (len(lines) - 1) + [True]

    last = stream.last
    customers = request.customers
    orders = customers * request.orders_per_customer
    items = orders * request.items_per_order
    assert last["phase"] == "PHASE_DONE", last
    assert (last["customers_done"], last["customers_total"]) == (str(customers), str(customers))
    assert (last["orders_done"], last["orders_total"]) == (str(orders), str(orders))
    assert (last["items_done"], last["items_total"]) == (str(items), str(items))


def _rows_per_table(database_url: str) -> dict[str, int]:
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        tables = [t for t in sa.inspect(engine).get_table_names() if t != "alembic_version"]
        with engine.connect() as conn:
            return {
                t: conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in tables
            }
    finally:
        engine.dispose()


def _fail_every_item_insert(database_url: str, backend: str) -> None:
    """A trigger that makes the database refuse order items: a seed then fails in its ITEMS
    phase, after its customers and orders were written in the same transaction."""
    statements = {
        "sqlite": [
            "CREATE TRIGGER gateway_test_no_items BEFORE INSERT ON order_items"
            " BEGIN SELECT RAISE(ABORT, 'injected failure: no more items'); END"
        ],
        "postgresql": [
            "CREATE FUNCTION gateway_test_no_items() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'injected failure: no more items'; END $$",
            "CREATE TRIGGER gateway_test_no_items BEFORE INSERT ON order_items"
            " FOR EACH ROW EXECUTE FUNCTION gateway_test_no_items()",
        ],
    }[backend]
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def test_seed_failing_partway_says_so_in_its_last_line_and_leaves_no_rows(
    server_factory: ServerFactory,
    start_gateway: Callable[[OrdersServer], Gateway],
    backend: str,
) -> None:
    gateway = start_gateway(server_factory.start("gateway-seed-failure"))
    rest = gateway.rest
    kept = rest.post("/api/customers/", {"email": unique_email(), "name": "Kept"}).json()
    url = gateway.server.database_url
    before = _rows_per_table(url)
    _fail_every_item_insert(url, backend)

    stream = rest.stream("/api/dev/seed/", seed_body(40, 5, 3))

    assert stream.status == 200  # the stream had begun: the outcome is in its last line
    last = stream.last
    assert last["phase"] == "PHASE_FAILED" and last["done"] is True, last
    assert last["error"]["code"] != 0 and last["error"]["message"], last
    assert int(last["customers_done"]) == 40 and int(last["orders_done"]) == 200, (
        "the failure should come partway, after customers and orders were written",
        last,
    )
    wait_until_no_writer(url, timeout=10)
    assert _rows_per_table(url) == before, "a failed seed must leave none of its rows"
    assert rest.get(f"/api/customers/{kept['id']}/").status == 200


def test_seed_refused_before_it_starts_is_a_json_error(gateway: Gateway) -> None:
    reply = gateway.rest.post("/api/dev/seed/", seed_body(-1, -2, 0))
    body = reply.error(400)
    fields = {v["field"] for d in body["details"] for v in d.get("field_violations", [])}
    assert {"customers", "orders_per_customer"} <= fields, body


@pytest.fixture(scope="module")
def guarded_gateway(
    sqlite_servers: ServerFactory, start_gateway: Callable[[OrdersServer], Gateway]
) -> Gateway:
    server = sqlite_servers.start("gateway-admin-token", {"ORDERS_ADMIN_TOKEN": "s3cret-token"})
    return start_gateway(server)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Bearer wrong"}, 403),
        ({"authorization": "Bearer s3cret-token"}, 200),
    ],
    ids=["no-token", "wrong-token", "right-token"],
)
def test_seed_admin_token_travels_as_the_authorization_header(
    guarded_gateway: Gateway, headers: dict[str, str], status: int
) -> None:
    if status == 200:
        stream = guarded_gateway.rest.stream("/api/dev/seed/", seed_body(1), headers)
        assert stream.status == 200 and stream.last["phase"] == "PHASE_DONE", stream
    else:
        guarded_gateway.rest.post("/api/dev/seed/", seed_body(1), headers).error(status)


def _routes(gateway: Gateway) -> list[dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{gateway.config.admin_url}/config_dump?resource=static_route_configs") as r:
        dump = json.load(r)
    routes: list[dict[str, Any]] = []
    for config in dump["configs"]:
        for host in config["route_config"]["virtual_hosts"]:
            routes.extend(host["routes"])
    return routes


def test_long_streams_are_not_cut_by_a_route_timeout(gateway: Gateway) -> None:
    """A seed may run for minutes: its route, and native gRPC's, have no timeout (0s)."""
    routes = _routes(gateway)
    seed = [r for r in routes if r["match"].get("prefix") == "/api/dev/seed"]
    grpc = [r for r in routes if r["match"].get("headers")]
    assert seed and seed[0]["route"]["timeout"] == "0s", seed
    assert grpc and grpc[0]["route"]["timeout"] == "0s", grpc


def test_a_seed_beyond_the_servers_limit_is_a_429_that_writes_nothing(
    sqlite_servers: ServerFactory, start_gateway: Callable[[OrdersServer], Gateway]
) -> None:
    # ORDERS_MAX_CONCURRENT_SEEDS=1: while one seed runs (over gRPC), a REST seed is refused
    # before it starts, as an ordinary JSON error; once the first is over, seeds work again.
    server = sqlite_servers.start("gateway-seed-limit", {"ORDERS_MAX_CONCURRENT_SEEDS": "1"})
    gateway = start_gateway(server)
    request = long_seed(server, "sqlite", seconds=20.0)  # measures the rate with seeds first
    before = table_counts(server.database_url)
    running = server.stub.Seed(request)
    try:
        assert next(running).phase == pb.SeedResponse.PHASE_STARTED
        refused = gateway.rest.post("/api/dev/seed/", seed_body(1))
        body = refused.error(429)
        assert body["code"] == 8, body  # RESOURCE_EXHAUSTED
        assert "ORDERS_MAX_CONCURRENT_SEEDS" in body["message"], body
        reasons = [d.get("reason") for d in body["details"]]
        assert "SEED_LIMIT" in reasons, body
    finally:
        running.cancel()
    wait_until_no_writer(server.database_url, timeout=30)
    # Neither the refused seed nor the cancelled one left a row.
    assert table_counts(server.database_url) == before
    for _ in range(50):  # the slot frees once the cancelled seed has rolled back
        stream = gateway.rest.stream("/api/dev/seed/", seed_body(1))
        if stream.status == 200:
            break
        time.sleep(0.1)
    assert stream.status == 200 and stream.last["phase"] == "PHASE_DONE", stream
    assert stream.last["customers_done"] == "1", stream.last
