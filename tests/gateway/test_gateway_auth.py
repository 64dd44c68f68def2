"""API tokens through a real Envoy, on SQLite and on PostgreSQL: the `authorization` header of a
REST call reaches the server as metadata and its refusals come back as JSON google.rpc.Status
(401 / code 16 without a token, 403 / code 7 with a token that may not), native gRPC through
Envoy's port is guarded the same way while reflection and health stay open, and no token,
right or wrong, is ever echoed in a response nor written to the server's or Envoy's log."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import pytest
from gateway_stack import Gateway, grpcurl
from grpc_status import rpc_status
from harness import SERVICE_NAME, OrdersServer, ServerFactory, table_counts, unique_email
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc
from rest_client import Reply

# Random, so that finding one in a log or a response cannot be a coincidence.
READ = f"read-token-{secrets.token_hex(8)}"
WRITE = f"write-token-{secrets.token_hex(8)}"
ADMIN = f"admin-token-{secrets.token_hex(8)}"
WRONG = f"wrong-token-{secrets.token_hex(8)}"
TOKENS = (READ, WRITE, ADMIN, WRONG)
UNAUTHENTICATED, PERMISSION_DENIED = 16, 7


@pytest.fixture(scope="module")
def guarded(
    server_factory: ServerFactory, start_gateway: Callable[[OrdersServer], Gateway]
) -> Gateway:
    server = server_factory.start(
        "gateway-api-tokens",
        {
            "ORDERS_API_TOKENS": f"read:{READ},write:{WRITE}",
            "ORDERS_ADMIN_TOKEN": ADMIN,
            # The most the server ever logs: a token must not show up even there.
            "ORDERS_LOG_LEVEL": "DEBUG",
        },
    )
    return start_gateway(server)


def _headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"authorization": f"Bearer {token}"}


def _assert_no_token(what: str, *texts: str | bytes) -> None:
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        for token in TOKENS:
            assert token.encode() not in data, f"{what} echoes a token: {data[:500]!r}"


def _call(
    gateway: Gateway,
    method: str,
    path: str,
    token: str | None,
    body: Mapping[str, Any] | None = None,
    raw_authorization: str | None = None,
) -> Reply:
    """A REST call with `token` (or a raw authorization header); whatever it answers, neither
    its body nor any of its headers may contain a token."""
    headers = _headers(token)
    if raw_authorization is not None:
        headers = {"authorization": raw_authorization}
    if method == "POST" and body is None:
        body = {}
    reply = gateway.rest.request(method, path, body, headers)
    _assert_no_token(f"{method} {path}", reply.body, json.dumps(reply.headers))
    return reply


def _refusal(reply: Reply, status: int, code: int, reason: str) -> dict[str, Any]:
    body = reply.error(status)
    assert body["code"] == code, body
    reasons = {d.get("reason") for d in body.get("details", [])}
    assert reason in reasons, body
    return body


# --------------------------------------------------------------------------------------------
# REST.


@pytest.mark.parametrize("path", ["/api/orders/", "/api/customers/", "/api/orders/summary/"])
def test_rest_without_a_token_is_401_unauthenticated(guarded: Gateway, path: str) -> None:
    _refusal(_call(guarded, "GET", path, None), 401, UNAUTHENTICATED, "TOKEN_MISSING")


def test_rest_with_a_wrong_token_is_403_permission_denied(guarded: Gateway) -> None:
    _refusal(_call(guarded, "GET", "/api/orders/", WRONG), 403, PERMISSION_DENIED, "TOKEN_INVALID")
    wrong_scheme = _call(guarded, "GET", "/api/orders/", None, raw_authorization=f"Basic {READ}")
    _refusal(wrong_scheme, 403, PERMISSION_DENIED, "TOKEN_INVALID")
    unknown_admin = _call(guarded, "POST", "/api/dev/seed/", WRONG, {"customers": 1})
    _refusal(unknown_admin, 403, PERMISSION_DENIED, "ADMIN_TOKEN_INVALID")


def test_rest_read_token_reads_but_may_not_write(guarded: Gateway) -> None:
    for path in ("/api/orders/", "/api/customers/?page_size=5", "/api/orders/summary/"):
        reply = _call(guarded, "GET", path, READ)
        assert reply.status == 200, reply

    before = table_counts(guarded.server.database_url)
    email = unique_email("read-only")
    refused = _call(guarded, "POST", "/api/customers/", READ, {"email": email, "name": "R"})
    _refusal(refused, 403, PERMISSION_DENIED, "TOKEN_LACKS_RIGHT")
    seed = _call(guarded, "POST", "/api/dev/seed/", READ, {"customers": 1})
    _refusal(seed, 403, PERMISSION_DENIED, "ADMIN_TOKEN_INVALID")
    assert table_counts(guarded.server.database_url) == before
    listed = _call(guarded, "GET", "/api/customers/?page_size=500", ADMIN).json()
    assert email not in {c["email"] for c in listed["customers"]}, "a refused write happened"


def test_rest_write_token_writes_but_may_not_seed(guarded: Gateway) -> None:
    email = unique_email("writer")
    created = _call(guarded, "POST", "/api/customers/", WRITE, {"email": email, "name": "W"})
    assert created.status == 201 and created.json()["email"] == email, created
    cid = created.json()["id"]
    item = {"sku": "TOK-1", "quantity": 1, "unit_price_cents": 100}
    order = _call(guarded, "POST", "/api/orders/", WRITE, {"customer_id": cid, "items": [item]})
    assert order.status == 201, order
    fetched = _call(guarded, "GET", f"/api/customers/{cid}/", WRITE)
    assert fetched.status == 200 and fetched.json() == created.json(), fetched
    seed = _call(guarded, "POST", "/api/dev/seed/", WRITE, {"customers": 1})
    _refusal(seed, 403, PERMISSION_DENIED, "ADMIN_TOKEN_INVALID")


def test_rest_admin_token_may_do_everything(guarded: Gateway) -> None:
    email = unique_email("admin")
    created = _call(guarded, "POST", "/api/customers/", ADMIN, {"email": email, "name": "A"})
    assert created.status == 201, created
    cid = created.json()["id"]
    item = {"sku": "TOK-2", "quantity": 2, "unit_price_cents": 150}
    order = _call(guarded, "POST", "/api/orders/", ADMIN, {"customer_id": cid, "items": [item]})
    assert order.status == 201, order
    paid = _call(guarded, "POST", f"/api/orders/{order.json()['id']}/pay/", ADMIN)
    assert paid.status == 200 and paid.json()["status"] == "PAID", paid
    for path in (f"/api/orders/?customer_id={cid}", "/api/customers/", "/api/orders/summary/"):
        assert _call(guarded, "GET", path, ADMIN).status == 200, path

    stream = guarded.rest.stream("/api/dev/seed/", {"customers": 2}, _headers(ADMIN))
    assert stream.status == 200 and stream.last["phase"] == "PHASE_DONE", stream
    _assert_no_token(
        "the seed stream", json.dumps(stream.headers), json.dumps([x.data for x in stream.lines])
    )


# --------------------------------------------------------------------------------------------
# Native gRPC through Envoy's port.


def test_grpcurl_reflection_and_health_stay_open_the_service_does_not(guarded: Gateway) -> None:
    listed = grpcurl("-max-time", "20", guarded.target, "list")
    assert listed.returncode == 0, listed.stderr
    assert SERVICE_NAME in listed.stdout.split(), listed.stdout

    health = grpcurl("-max-time", "20", guarded.target, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "SERVING", health

    summary = f"{SERVICE_NAME}/GetSummary"
    missing = grpcurl("-max-time", "20", guarded.target, summary)
    assert missing.returncode != 0 and "Code: Unauthenticated" in missing.stderr, missing

    auth = ["-H", f"authorization: Bearer {WRONG}"]
    wrong = grpcurl("-max-time", "20", *auth, guarded.target, summary)
    assert wrong.returncode != 0 and "Code: PermissionDenied" in wrong.stderr, wrong
    _assert_no_token("grpcurl's error for a wrong token", wrong.stdout, wrong.stderr)

    auth = ["-H", f"authorization: Bearer {READ}"]
    read = grpcurl("-max-time", "20", *auth, guarded.target, f"{SERVICE_NAME}/ListOrders")
    assert read.returncode == 0, read.stderr
    assert "orders" in json.loads(read.stdout) or read.stdout.strip() == "{}", read.stdout
    written = grpcurl(
        "-max-time",
        "20",
        *auth,
        "-d",
        json.dumps({"email": unique_email("grpcurl"), "name": "G"}),
        guarded.target,
        f"{SERVICE_NAME}/CreateCustomer",
    )
    assert written.returncode != 0 and "Code: PermissionDenied" in written.stderr, written


def test_grpc_errors_through_envoy_echo_no_token(guarded: Gateway) -> None:
    """What grpcurl does not print: the metadata and rich status of a refusal."""
    with grpc.insecure_channel(guarded.target) as channel:
        stub = pb_grpc.OrdersServiceStub(channel)
        for token, code in (
            (WRONG, grpc.StatusCode.PERMISSION_DENIED),
            (READ, grpc.StatusCode.PERMISSION_DENIED),
        ):
            request = pb.CreateCustomerRequest(email=unique_email("meta"), name="M")
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateCustomer(request, metadata=tuple(_headers(token).items()), timeout=10)
            error: Any = refused.value
            assert error.code() == code
            status = rpc_status.from_call(error)
            assert status is not None and status.details, "google.rpc.Status lost on the way"
            _assert_no_token(
                "a refusal through Envoy",
                error.details() or "",
                repr(error.initial_metadata()),
                repr(error.trailing_metadata()),
                status.SerializeToString(),
            )


# --------------------------------------------------------------------------------------------
# Logs. Last in this module: it stops the module's Envoy and server to read whole logs.


def test_no_token_reaches_the_server_log_or_envoys_log(guarded: Gateway) -> None:
    # Each token once more, by REST and by native gRPC, refused and accepted, so that this
    # test proves something even when run on its own.
    for token in (*TOKENS, None):
        _call(guarded, "GET", "/api/orders/", token)
        _call(guarded, "POST", "/api/customers/", token, {"email": unique_email(), "name": "L"})
        auth = [] if token is None else ["-H", f"authorization: Bearer {token}"]
        grpcurl("-max-time", "20", *auth, guarded.target, f"{SERVICE_NAME}/GetSummary")

    # Stopped, Envoy has flushed its access log and the server everything it had to say.
    guarded.envoy.stop()
    guarded.server.stop()
    envoy_log = guarded.envoy.log_path
    assert envoy_log is not None
    logs = {"server": guarded.server.log_path.read_text(), "envoy": envoy_log.read_text()}

    # The logs are the right ones and not empty: they saw these calls...
    assert "/api/orders/" in logs["envoy"] and "GetSummary" in logs["envoy"], logs["envoy"][-3000:]
    assert "GetSummary" in logs["server"] and "PERMISSION_DENIED" in logs["server"], logs["server"][
        -3000:
    ]
    # ...and never wrote down what was presented.
    for name, text in logs.items():
        for token in TOKENS:
            assert token not in text, f"the {name} log contains a token ({token[:6]}...)"
