"""A REST call's deadline reaches the database ("deadlines honoured end to
end: the remaining deadline becomes the statement timeout; an expired call stops its query").

A native gRPC caller's grpc-timeout travels through Envoy as it is (tests/test_deadlines.py
covers the server's side). A REST caller usually sends none: Envoy bounds the request by its
route timeout and tells the server in `x-envoy-expected-rq-timeout-ms`, which the server takes
as the call's deadline. Without that, Envoy would answer 504 while the server's query ran on.

PostgreSQL only: a lock held by the test stalls the server's query for as long as the test
wants, and pg_stat_activity shows whether the query is still waiting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import figures
import psycopg
import pytest
from gateway_stack import Gateway, start_envoy
from harness import ROOT, OrdersServer, ServerFactory, libpq_conninfo

REST_TIMEOUT = "timeout: 60s"


@pytest.fixture
def server(postgres_servers: ServerFactory) -> OrdersServer:
    return postgres_servers.start("rest-deadline")


@pytest.fixture
def locked_orders(server: OrdersServer) -> Iterator[psycopg.Connection]:
    """Holds an ACCESS EXCLUSIVE lock on orders: every read of it waits."""
    with psycopg.connect(libpq_conninfo(server.database_url)) as connection:
        connection.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        yield connection
        connection.rollback()


def _waiting_queries(server: OrdersServer) -> list[str]:
    """The server's statements waiting on a lock in its database."""
    with psycopg.connect(libpq_conninfo(server.database_url), autocommit=True) as connection:
        rows = connection.execute(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).fetchall()
    return [row[0] for row in rows]


def _gone_within(server: OrdersServer, seconds: float) -> float | None:
    """Seconds until no query of the server waits any more (None: still waiting)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if not _waiting_queries(server):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_the_route_timeout_becomes_the_server_deadline(
    server: OrdersServer, locked_orders: psycopg.Connection, tmp_path: Path
) -> None:
    # envoy.yaml as shipped, but with its REST routes' 60 s cut to 2 s, so the test is short.
    template = (ROOT / "envoy.yaml").read_text(encoding="utf-8")
    assert template.count(REST_TIMEOUT) >= 3, "envoy.yaml's REST route timeouts have moved"
    envoy = start_envoy(
        server.port, tmp_path / "envoy.log", template.replace(REST_TIMEOUT, "timeout: 2s")
    )
    try:
        gateway = Gateway(server, envoy)
        started = time.monotonic()
        reply = gateway.rest.get("/api/orders/")
        answered = time.monotonic() - started
        assert reply.status == 504, reply.body[:500]
        # The server's query must stop with Envoy's timeout, not run on behind a 504.
        stopped = _gone_within(server, 3.0)
        assert stopped is not None, (
            f"the server's query still waits after Envoy gave up: {_waiting_queries(server)}"
        )
    finally:
        envoy.stop()
    assert 1.5 < answered < 6, f"answered after {answered:.2f} s, the route timeout is 2 s"
    figures.record(
        "rest-route-timeout (postgresql)",
        route_timeout_s=2,
        answered_s=round(answered, 2),
        query_gone_after_answer_s=round(stopped, 2),
    )


def test_a_rest_client_may_send_a_shorter_deadline(
    server: OrdersServer, locked_orders: psycopg.Connection, tmp_path: Path
) -> None:
    # envoy.yaml as shipped. A REST client bounds its call as a gRPC client would.
    envoy = start_envoy(server.port, tmp_path / "envoy.log")
    try:
        gateway = Gateway(server, envoy)
        started = time.monotonic()
        reply = gateway.rest.get("/api/orders/", headers={"grpc-timeout": "1S"})
        answered = time.monotonic() - started
        error = reply.error(504)
        stopped = _gone_within(server, 3.0)
    finally:
        envoy.stop()
    assert error["code"] == 4, error  # DEADLINE_EXCEEDED (grpc's own, once the deadline passed)
    assert "deadline" in error["message"].lower(), error
    assert stopped is not None, "the server's query still waits after its deadline"
    assert 0.8 < answered < 4, f"answered after {answered:.2f} s for a 1 s deadline"
    figures.record(
        "rest-client-deadline (postgresql)",
        deadline_s=1,
        answered_s=round(answered, 2),
        query_gone_after_answer_s=round(stopped, 2),
    )
