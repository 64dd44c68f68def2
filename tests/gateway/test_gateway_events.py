"""WatchOrders through a real Envoy, on SQLite and PostgreSQL: GET /api/orders/events as
newline-delimited JSON, resumed with ?after=, its errors as JSON; and native gRPC through the
same port."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
from gateway_stack import Gateway
from harness import OrdersServer, ServerFactory, new_customer, new_order
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

FAST = {"ORDERS_EVENT_HEARTBEAT_SECONDS": "0.2", "ORDERS_EVENT_POLL_SECONDS": "0.05"}


@pytest.fixture(scope="module")
def events_gateway(
    server_factory: ServerFactory, start_gateway: Callable[[OrdersServer], Gateway]
) -> Gateway:
    return start_gateway(server_factory.start("events-gateway", FAST))


class RestWatcher:
    """GET /api/orders/events read line by line in a thread of its own."""

    def __init__(self, gateway: Gateway, **query: Any) -> None:
        path = "/api/orders/events" + (f"?{urlencode(query)}" if query else "")
        self.connection = http.client.HTTPConnection(
            "127.0.0.1", gateway.config.http_port, timeout=30
        )
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.cursor = ""
        self.last: dict[str, Any] = {}
        if self.response.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while line := self.response.readline():
                if line.strip():
                    self.lines.put(json.loads(line))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # closed by the test

    def next(self, timeout: float = 15.0) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        self.cursor = line["cursor"]
        self.last = line
        return line

    def events(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        ends = time.monotonic() + timeout
        while len(found) < count:
            line = self.next(max(0.01, ends - time.monotonic()))
            if line["type"] != "HEARTBEAT":
                found.append(line)
        return found

    def heartbeat(self) -> str:
        while self.next()["type"] != "HEARTBEAT":
            pass
        return self.cursor

    def close(self) -> None:
        self.connection.close()


def test_events_stream_as_json_lines_with_heartbeats(events_gateway: Gateway) -> None:
    stub = events_gateway.server.stub
    customer = new_customer(stub)
    watcher = RestWatcher(events_gateway, customer_id=customer.id)
    assert watcher.response.status == 200
    assert watcher.response.getheader("content-type") == "application/x-ndjson"
    beat = watcher.heartbeat()
    assert beat
    assert "order" not in watcher.last  # a heartbeat carries the cursor and the time only
    order = new_order(stub, customer.id)
    stub.PayOrder(pb.PayOrderRequest(id=order.id))
    created, paid = watcher.events(2)
    assert (created["type"], paid["type"]) == ("CREATED", "PAID")
    assert created["order"]["id"] == paid["order"]["id"] == str(order.id)
    assert paid["order"]["status"] == "PAID" and paid["order"]["customer"]["id"] == str(customer.id)
    assert created["time"].endswith("Z")
    watcher.close()

    # Resumed from the first event's cursor: the second, and nothing else.
    resumed = RestWatcher(events_gateway, customer_id=customer.id, after=created["cursor"])
    (again,) = resumed.events(1)
    assert again == paid
    resumed.close()


def test_bad_cursors_are_json_errors_naming_the_field(events_gateway: Gateway) -> None:
    stub = events_gateway.server.stub
    customer = new_customer(stub)
    watcher = RestWatcher(events_gateway, customer_id=customer.id)
    cursor = watcher.heartbeat()
    watcher.close()
    for query in ({"after": "garbage"}, {"after": cursor}, {"customer_id": -1}):
        reply = events_gateway.rest.get("/api/orders/events?" + urlencode(query))
        body = reply.error(400)
        assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        violations = [
            d for d in body.get("details", []) if "fieldViolations" in d or "field_violations" in d
        ]
        assert violations, body
        assert ("after" in body["message"]) or ("customer_id" in body["message"]), body


def test_native_grpc_watch_through_envoy(events_gateway: Gateway) -> None:
    stub = events_gateway.server.stub
    customer = new_customer(stub)
    channel = grpc.insecure_channel(events_gateway.target)
    through = pb_grpc.OrdersServiceStub(channel)
    call = through.WatchOrders(pb.WatchOrdersRequest(customer_id=customer.id), timeout=30)
    first = next(call)
    assert first.type == pb.OrderEvent.HEARTBEAT
    order = new_order(stub, customer.id)
    for message in call:
        if message.type != pb.OrderEvent.HEARTBEAT:
            assert message.type == pb.OrderEvent.CREATED and message.order.id == order.id
            break
    call.cancel()
    channel.close()


def test_head_answers_at_once_without_a_stream(events_gateway: Gateway) -> None:
    started = time.monotonic()
    reply = events_gateway.rest.request("HEAD", "/api/orders/events")
    assert reply.status == 200 and reply.body == b""
    assert reply.content_type == "application/x-ndjson"
    assert time.monotonic() - started < 10  # not held open like the GET it describes


def test_an_expired_cursor_is_a_400_that_says_to_start_again(
    server_factory: ServerFactory, start_gateway: Callable[[OrdersServer], Gateway]
) -> None:
    gateway = start_gateway(
        server_factory.start("events-retention", {**FAST, "ORDERS_EVENT_RETENTION": "1s"})
    )
    stub = gateway.server.stub
    customer = new_customer(stub)
    watcher = RestWatcher(gateway, customer_id=customer.id)
    watcher.heartbeat()
    new_order(stub, customer.id)
    (event,) = watcher.events(1)
    watcher.close()
    new_order(stub, customer.id)  # the event after the cursor: once pruned, the cursor is stale
    path = "/api/orders/events?" + urlencode({"customer_id": customer.id, "after": event["cursor"]})
    # Retention runs every half of its period: within seconds the event is gone.
    ends = time.monotonic() + 30
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.config.http_port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        status = response.status
        body = response.read() if status != 200 else b""
        connection.close()
        if status != 200:
            break
        assert time.monotonic() < ends, "the event was never pruned"
        time.sleep(0.2)
    assert status == 400, body
    error = json.loads(body)
    assert error["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "older than the oldest kept event" in error["message"]
    assert "empty `after`" in error["message"]
