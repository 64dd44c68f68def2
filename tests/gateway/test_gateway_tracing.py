"""Traces through a real Envoy, on SQLite and PostgreSQL: Envoy and the server both send their
spans by OTLP/gRPC to a receiver of the test's own (tests/trace_receiver.py), as one
OTEL_EXPORTER_OTLP_ENDPOINT given to scripts/run makes them do.

Envoy sends its spans every few seconds: each test makes its requests first, then waits (for
at most 30 s) for the spans it needs.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gateway_stack import Gateway, start_envoy
from harness import ServerFactory, unique_email
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc
from trace_receiver import ReceivedSpan, TraceReceiver, render

READ_TOKEN = f"read-token-{secrets.token_hex(8)}"
WRITE_TOKEN = f"write-token-{secrets.token_hex(8)}"
ADMIN_TOKEN = f"admin-token-{secrets.token_hex(8)}"
READ = {"authorization": f"Bearer {READ_TOKEN}"}
WRITE = {"authorization": f"Bearer {WRITE_TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
LIST_ORDERS = "orders.v1.OrdersService/ListOrders"
# What no span may carry: the tokens, and every email these tests send (added as they go).
SECRETS: set[str] = {READ_TOKEN, WRITE_TOKEN, ADMIN_TOKEN}


@pytest.fixture(scope="module")
def receiver() -> Iterator[TraceReceiver]:
    receiver = TraceReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced(
    server_factory: ServerFactory, receiver: TraceReceiver, envoy_logs: Path
) -> Iterator[Gateway]:
    server = server_factory.start(
        "traced",
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # the server's batches: at once, for the tests
            "ORDERS_API_TOKENS": f"read:{READ_TOKEN},write:{WRITE_TOKEN}",
            "ORDERS_ADMIN_TOKEN": ADMIN_TOKEN,
        },
    )
    envoy = start_envoy(
        server.port,
        envoy_logs / f"envoy-traced-{server.name}.log",
        trace_collector=("127.0.0.1", receiver.port),
    )
    yield Gateway(server, envoy)
    envoy.stop()
    server.stop()


def _request_id() -> str:
    return f"trace-test-{secrets.token_hex(8)}"


def _server_span(receiver: TraceReceiver, request_id: str) -> ReceivedSpan:
    """The server's span of the call with `request_id`, once Envoy's span of its trace is in."""

    def found(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.attributes.get("orders.request_id") == request_id]
        return bool(mine) and any(
            s.trace_id == mine[0].trace_id and s.service == "orders-envoy" for s in spans
        )

    spans = receiver.wait_for(found, timeout=30)
    (span,) = [s for s in spans if s.attributes.get("orders.request_id") == request_id]
    return span


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.parent_id == parent.span_id), key=lambda s: s.start_ns)


def _envoy_parent(spans: list[ReceivedSpan], span: ReceivedSpan) -> ReceivedSpan:
    (envoy,) = [s for s in spans if s.span_id == span.parent_id]
    assert envoy.service == "orders-envoy" and envoy.kind == "SERVER", envoy
    return envoy


def test_one_rest_list_orders_is_one_trace_from_envoy_to_each_sql_statement(
    traced: Gateway, receiver: TraceReceiver
) -> None:
    email = unique_email("traced")
    SECRETS.add(email)
    customer = traced.rest.post("/api/customers/", {"email": email, "name": "Ada"}, WRITE).json()
    order = {"customer_id": customer["id"], "items": [{"sku": "BOOK", "quantity": 2}]}
    assert traced.rest.post("/api/orders/", order, WRITE).status == 201
    request_id = _request_id()
    reply = traced.rest.get(
        f"/api/orders/?email={email}&page_size=5", {**READ, "x-request-id": request_id}
    )
    assert reply.status == 200 and len(reply.json()["orders"]) == 1, reply.body

    server = _server_span(receiver, request_id)
    spans = receiver.trace(server.trace_id)
    print(render(spans, ("db.response.returned_rows", "rpc.grpc.status_code")))
    envoy = _envoy_parent(spans, server)
    assert envoy.parent_id == ""  # the trace's root: the client sent no traceparent
    assert envoy.name == "GET /api/orders/"
    assert envoy.attributes["http.url"] == "/api/orders/"  # no query string: it had the email
    assert envoy.attributes["guid:x-request-id"] == request_id
    assert (server.name, server.kind, server.service) == (LIST_ORDERS, "SERVER", "orders-server")
    assert server.attributes["rpc.grpc.status_code"] == 0 and not server.error
    assert server.attributes["orders.token"] == "read"
    (read,) = _children(spans, server)
    assert read.name == "db.read"
    statements = _children(spans, read)
    assert statements and all(s.kind == "CLIENT" for s in statements)
    assert len(statements) == server.attributes["orders.sql_statements"]
    first = statements[0]
    assert first.attributes["db.operation"] in ("SELECT", "WITH")
    assert "FROM orders" in first.attributes["db.statement"]
    assert first.attributes["db.response.returned_rows"] == 1
    for span in spans:
        assert span.start_ns <= span.end_ns
    _nothing_personal(receiver.spans)


def test_a_caller_s_traceparent_is_continued_and_its_sampling_followed(
    traced: Gateway, receiver: TraceReceiver
) -> None:
    caller_trace, unsampled_trace = secrets.token_hex(16), secrets.token_hex(16)
    caller_span = secrets.token_hex(8)
    not_sampled = {**READ, "traceparent": f"00-{unsampled_trace}-{caller_span}-00"}
    assert traced.rest.get("/api/orders/summary/?limit=3", not_sampled).status == 200
    request_id = _request_id()
    sampled = {
        **READ,
        "traceparent": f"00-{caller_trace}-{caller_span}-01",
        "x-request-id": request_id,
    }
    assert traced.rest.get("/api/orders/summary/?limit=3", sampled).status == 200
    # Native gRPC through Envoy is traced the same way.
    grpc_request_id = _request_id()
    with grpc.insecure_channel(traced.target) as channel:
        pb_grpc.OrdersServiceStub(channel).GetSummary(
            pb.GetSummaryRequest(limit=3),
            metadata=[("x-request-id", grpc_request_id), ("authorization", READ["authorization"])],
            timeout=10,
        )

    server = _server_span(receiver, request_id)
    assert server.trace_id == caller_trace
    envoy = _envoy_parent(receiver.trace(caller_trace), server)
    assert envoy.parent_id == caller_span
    assert server.name == "orders.v1.OrdersService/GetSummary"

    over_grpc = _server_span(receiver, grpc_request_id)
    envoy = _envoy_parent(receiver.trace(over_grpc.trace_id), over_grpc)
    assert envoy.name == "POST /orders.v1.OrdersService/GetSummary"
    # The caller said "not sampled", before the others: neither Envoy nor the server sent it.
    assert receiver.trace(unsampled_trace) == []
    _nothing_personal(receiver.spans)


def test_errors_mark_their_spans_and_carry_no_message(
    traced: Gateway, receiver: TraceReceiver
) -> None:
    missing_id, taken_id, anonymous_id = _request_id(), _request_id(), _request_id()
    assert (
        traced.rest.get("/api/orders/999999999/", {**READ, "x-request-id": missing_id}).status
        == 404
    )
    email = unique_email("taken")
    SECRETS.add(email)
    body = {"email": email, "name": "Grace"}
    assert traced.rest.post("/api/customers/", body, WRITE).status == 201
    taken = traced.rest.post("/api/customers/", body, {**WRITE, "x-request-id": taken_id})
    assert taken.status == 409, taken.body
    assert traced.rest.get("/api/orders/", {"x-request-id": anonymous_id}).status == 401

    missing = _server_span(receiver, missing_id)
    assert missing.error and missing.status_message == "NOT_FOUND"
    assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.attributes["error.type"] == "NOT_FOUND"

    server = _server_span(receiver, taken_id)
    assert server.error and server.status_message == "ALREADY_EXISTS"
    spans = receiver.trace(server.trace_id)
    print(render(spans, ("error.type",)))
    failed = [s for s in spans if s.kind == "CLIENT" and s.error]
    # The unique index refused the INSERT: its span is an error named by the exception's type;
    # the driver's message (which quotes the email) is nowhere.
    assert failed and failed[0].attributes["db.operation"] == "INSERT", failed
    assert failed[0].status_message == failed[0].attributes["error.type"]
    assert failed[0].status_message in ("IntegrityError", "UniqueViolation")  # sqlite3, psycopg

    anonymous = _server_span(receiver, anonymous_id)
    assert anonymous.error and anonymous.status_message == "UNAUTHENTICATED"
    assert "orders.token" not in anonymous.attributes
    _nothing_personal(receiver.spans)


def test_the_seed_s_phases_are_spans_under_its_call(
    traced: Gateway, receiver: TraceReceiver
) -> None:
    request_id = _request_id()
    body = {"customers": 3, "orders_per_customer": 2, "items_per_order": 2}
    stream = traced.rest.stream("/api/dev/seed/", body, {**ADMIN, "x-request-id": request_id})
    assert stream.status == 200 and stream.last.get("phase") == "PHASE_DONE", stream.lines

    server = _server_span(receiver, request_id)
    spans = receiver.trace(server.trace_id)
    print(render(spans, ("orders.rows",)))
    assert server.name == "orders.v1.OrdersService/Seed" and not server.error
    assert server.attributes["orders.token"] == "admin"
    (write,) = [s for s in _children(spans, server) if s.name == "db.write"]
    phases = [s for s in _children(spans, write) if s.name.startswith("seed.")]
    assert [p.name for p in phases] == [
        "seed.reserve_ids",
        "seed.customers",
        "seed.orders",
        "seed.customer_totals",
        "seed.items",
        "seed.commit",
    ]
    rows = {p.name: p.attributes.get("orders.rows") for p in phases}
    assert (rows["seed.customers"], rows["seed.orders"], rows["seed.items"]) == (3, 6, 12)
    (load,) = _children(spans, phases[1])
    assert load.attributes["db.statement"].startswith(("COPY customers", "INSERT INTO customers"))
    _nothing_personal(receiver.spans)


def _nothing_personal(spans: list[ReceivedSpan]) -> None:
    """No token and no email in any span's name, status or attribute (each test checks every
    span received so far, whichever backend ran last)."""
    assert spans
    for span in spans:
        texts = [span.name, span.status_message, *map(str, span.attributes.values())]
        for text in texts:
            for secret in SECRETS:
                assert secret not in text, (span.service, span.name, text)
            assert "@example.com" not in text, (span.service, span.name, text)
