"""HTTP as REST clients expect it, through a real Envoy in front of a real server: HEAD on
every GET route, OPTIONS with `Allow` on every path, 405 with `Allow` for a method a path does
not have (404 stays for unknown paths), browsers from the origins of ORDERS_CORS_ORIGINS and
from no other (no CORS header at all when it is unset), and no gRPC header in what a REST
client gets while native gRPC callers on the same port keep theirs.

The paths and their methods are read here from the generated module's descriptor (the protos'
HTTP rules), not from gateway/routes.py, which derives Envoy's routes from gateway/orders.pb.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_stack import Gateway, grpc_web_get_customer, grpcurl, start_envoy
from google.api import annotations_pb2
from harness import unique_email
from orders.v1 import orders_pb2 as pb
from rest_client import Reply, RestClient

SERVICE = "orders.v1.OrdersService"
UNIMPLEMENTED = 12
GRPC_HEADERS = ("grpc-status", "grpc-message", "grpc-accept-encoding", "grpc-encoding")
# Headers that differ between two answers to the same request.
VOLATILE = {"date", "x-envoy-upstream-service-time"}
ORIGIN, OTHER_ORIGIN = "http://localhost:3000", "https://app.example.com"
STRANGER = "https://evil.example.com"
CORS_REQUEST_HEADERS = {
    "content-type",
    "authorization",
    "idempotency-key",
    "x-request-id",
    "x-orders-min-lsn",
}


def http_rules() -> dict[str, set[str]]:
    """Path template (`/api/orders/{id}`) -> the methods of the rules at exactly that path."""
    rules: dict[str, set[str]] = {}
    for method in pb.DESCRIPTOR.services_by_name["OrdersService"].methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        for binding in [rule, *rule.additional_bindings]:
            kind = binding.WhichOneof("pattern")
            assert kind not in (None, "custom"), method.name
            rules.setdefault(getattr(binding, kind), set()).add(kind.upper())
    return rules


RULES = http_rules()
# GET paths whose answer is a stream that lasts as long as its caller stays (order events):
# no whole body to compare a HEAD with; test_gateway_events.py tests their HEAD.
ENDLESS = {
    method.GetOptions().Extensions[annotations_pb2.http].get
    for method in pb.DESCRIPTOR.services_by_name["OrdersService"].methods
    if method.server_streaming and method.GetOptions().Extensions[annotations_pb2.http].get
}
# /api/orders/summary also matches /api/orders/{id}: both are GET only, so every path's
# methods are its own rules' here (asserted below).
assert RULES["/api/orders/summary"] == RULES["/api/orders/{id}"] == {"GET"}


def allowed(template: str) -> set[str]:
    methods = RULES[template] | {"OPTIONS"}
    return methods | {"HEAD"} if "GET" in methods else methods


def allow_set(value: str) -> set[str]:
    return {m.strip() for m in value.split(",") if m.strip()}


@pytest.fixture(scope="module")
def ids(gateway: Gateway) -> dict[str, str]:
    """A customer and an order that exist, for the `{id}` of each path."""
    rest = gateway.rest
    customer = rest.post("/api/customers/", {"email": unique_email("http"), "name": "Ann"})
    assert customer.status == 201, customer
    cid = customer.json()["id"]
    order = rest.post(
        "/api/orders/",
        {"customer_id": cid, "items": [{"sku": "A-1", "quantity": 2, "unit_price_cents": 150}]},
    )
    assert order.status == 201, order
    return {"customers": cid, "orders": order.json()["id"]}


def concrete(template: str, ids: dict[str, str], slash: str = "/") -> str:
    """/api/orders/{id} -> /api/orders/7/ (an order that exists)."""
    resource = template.split("/")[2]
    return template.replace("{id}", ids.get(resource, "1")) + slash


def raw_head(port: int, path: str) -> tuple[str, bytes]:
    """HEAD over a bare socket, the connection closed by Envoy after the answer: the status
    line and headers, and every byte sent after them (which must be none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            f"HEAD {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, after = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), after


def stable(reply: Reply) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k not in VOLATILE}


# -- HEAD -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template", sorted(t for t, m in RULES.items() if "GET" in m and t not in ENDLESS)
)
def test_head_on_every_get_route_is_the_gets_status_and_headers_without_a_body(
    gateway: Gateway, ids: dict[str, str], template: str
) -> None:
    rest = gateway.rest
    for slash in ("/", ""):
        path = concrete(template, ids, slash)
        got = rest.get(path)
        head = rest.request("HEAD", path)
        assert got.status == head.status == 200, (path, got, head)
        assert stable(head) == stable(got), path
        assert head.headers["content-length"] == str(len(got.body)) and got.body
        status_line, after = raw_head(gateway.config.http_port, path)
        assert status_line.startswith("HTTP/1.1 200"), status_line
        assert after == b"", f"HEAD {path} was sent a body: {after[:200]!r}"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/orders/987654321/", 404),  # the server's NOT_FOUND
        ("/api/orders/?status=bogus", 400),  # the transcoder's rejection
        ("/api/nothing-here/", 404),  # no such path
    ],
)
def test_head_of_an_error_is_its_status_and_headers_without_a_body(
    gateway: Gateway, path: str, status: int
) -> None:
    got = gateway.rest.get(path)
    assert got.status == status and got.json()["code"], got
    head = gateway.rest.request("HEAD", path)
    assert head.status == status and head.content_type == got.content_type, head
    status_line, after = raw_head(gateway.config.http_port, path)
    assert status_line.startswith(f"HTTP/1.1 {status}"), status_line
    assert after == b"", f"HEAD {path} was sent a body: {after[:200]!r}"


# -- OPTIONS and 405 ------------------------------------------------------------------------


@pytest.mark.parametrize("template", sorted(RULES))
def test_options_on_every_known_path_is_a_204_with_its_methods(
    gateway: Gateway, ids: dict[str, str], template: str
) -> None:
    for slash in ("/", ""):
        reply = gateway.rest.request("OPTIONS", concrete(template, ids, slash))
        assert reply.status == 204 and reply.body == b"", reply
        assert allow_set(reply.headers["allow"]) == allowed(template), reply.headers


def test_allow_spells_out_each_kind_of_path(gateway: Gateway) -> None:
    # What the derivation must give, written out once for a path of each kind.
    expected = {
        "/api/customers/": "GET, HEAD, POST, OPTIONS",
        "/api/orders/7/": "GET, HEAD, OPTIONS",
        "/api/orders/summary/": "GET, HEAD, OPTIONS",
        "/api/orders/7/cancel/": "POST, OPTIONS",
        "/api/dev/seed/": "POST, OPTIONS",
    }
    for path, allow in expected.items():
        assert gateway.rest.request("OPTIONS", path).headers["allow"] == allow, path


def test_options_on_an_unknown_path_is_a_404(gateway: Gateway) -> None:
    assert gateway.rest.request("OPTIONS", "/api/nothing-here/").error(404)["code"] == 5


@pytest.mark.parametrize("template", sorted(RULES))
def test_a_method_a_path_does_not_have_is_a_405_with_allow(
    gateway: Gateway, ids: dict[str, str], template: str
) -> None:
    path = concrete(template, ids)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        if method in allowed(template):
            continue
        reply = gateway.rest.request(method, path, b'{"id": "1"}' if method != "HEAD" else None)
        assert reply.status == 405, (method, path, reply)
        assert allow_set(reply.headers["allow"]) == allowed(template), reply.headers
        if method == "HEAD":
            assert reply.body == b"" and reply.content_type == "application/json", reply
            continue
        body = reply.error(405)
        assert body["code"] == UNIMPLEMENTED, body
        assert body["message"].startswith(f"{method} is not allowed on {template}"), body
        assert "TYPE_" not in body["message"] and "orders.v1" not in body["message"], body


def test_a_delete_on_an_order_and_a_get_on_a_transition_are_405s(gateway: Gateway) -> None:
    deleted = gateway.rest.request("DELETE", "/api/orders/3/")
    assert deleted.status == 405 and deleted.headers["allow"] == "GET, HEAD, OPTIONS", deleted
    assert deleted.json() == {
        "code": UNIMPLEMENTED,
        "message": "DELETE is not allowed on /api/orders/{id}; it allows GET, HEAD, OPTIONS",
    }
    got = gateway.rest.get("/api/orders/3/cancel/")
    assert got.status == 405 and got.headers["allow"] == "POST, OPTIONS", got
    assert got.error(405)["code"] == UNIMPLEMENTED


# -- CORS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cors(gateway: Gateway, envoy_logs: Path) -> Iterator[RestClient]:
    """A second Envoy in front of the same server, rendered with
    ORDERS_CORS_ORIGINS="http://localhost:3000, https://app.example.com"."""
    envoy = start_envoy(
        gateway.server.port, envoy_logs / "envoy-cors.log", cors_origins=(ORIGIN, OTHER_ORIGIN)
    )
    try:
        yield RestClient("127.0.0.1", envoy.config.http_port)
    finally:
        envoy.stop()


def cors_headers(reply: Reply) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k.startswith("access-control-")}


def preflight(rest: RestClient, path: str, origin: str, method: str = "POST") -> Reply:
    return rest.request(
        "OPTIONS",
        path,
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "content-type,idempotency-key",
        },
    )


@pytest.mark.parametrize("origin", [ORIGIN, OTHER_ORIGIN])
def test_a_preflight_from_an_allowed_origin_gets_the_paths_methods_and_headers(
    cors: RestClient, origin: str
) -> None:
    for path, methods in (
        ("/api/orders/7/pay/", {"POST", "OPTIONS"}),
        ("/api/orders/", {"GET", "HEAD", "POST", "OPTIONS"}),
        ("/api/customers/7", {"GET", "HEAD", "OPTIONS"}),
    ):
        reply = preflight(cors, path, origin)
        assert 200 <= reply.status < 300, reply
        headers = cors_headers(reply)
        assert headers["access-control-allow-origin"] == origin, headers
        assert allow_set(headers["access-control-allow-methods"]) == methods, (path, headers)
        assert allow_set(headers["access-control-allow-headers"]) == CORS_REQUEST_HEADERS
        assert int(headers["access-control-max-age"]) > 0
        assert "access-control-allow-credentials" not in headers


def test_a_preflight_from_any_other_origin_gets_no_cors_header(cors: RestClient) -> None:
    for origin in (STRANGER, "http://localhost:3001", "null", ORIGIN + "/"):
        reply = preflight(cors, "/api/orders/7/pay/", origin)
        assert reply.status == 204 and reply.headers["allow"] == "POST, OPTIONS", reply
        assert cors_headers(reply) == {}, (origin, reply.headers)


def test_real_answers_carry_allow_origin_for_an_allowed_origin_only(cors: RestClient) -> None:
    email = unique_email("cors")
    answers: list[tuple[str, str, Any, int]] = [
        ("POST", "/api/customers/", {"email": email, "name": "C"}, 201),
        ("GET", "/api/customers/?page_size=1", None, 200),
        ("HEAD", "/api/customers/?page_size=1", None, 200),
        ("GET", "/api/customers/987654321/", None, 404),  # the server's error
        ("GET", "/api/orders/?stauts=paid", None, 400),  # the transcoder's
        ("DELETE", "/api/orders/1/", None, 405),  # Envoy's own
        ("POST", "/api/customers/", {"email": email, "name": "C"}, 409),
    ]
    for method, path, body, status in answers:
        for origin, expected in ((ORIGIN, ORIGIN), (STRANGER, None), (None, None)):
            headers = {"origin": origin} if origin else {}
            if method == "POST" and status == 201 and origin != ORIGIN:
                continue  # one create is enough
            reply = cors.request(method, path, body, headers)
            assert reply.status == status, (method, path, origin, reply)
            assert reply.headers.get("access-control-allow-origin") == expected, (
                method,
                path,
                origin,
                reply.headers,
            )
            if expected is None:
                assert cors_headers(reply) == {}, reply.headers


def test_without_cors_origins_no_answer_has_a_cors_header(gateway: Gateway) -> None:
    # The default: ORDERS_CORS_ORIGINS unset, no cross-origin access.
    rest = gateway.rest
    reply = preflight(rest, "/api/orders/7/pay/", ORIGIN)
    assert reply.status == 204 and cors_headers(reply) == {}, reply.headers
    for method, path in (("GET", "/api/orders/?page_size=1"), ("DELETE", "/api/orders/1/")):
        reply = rest.request(method, path, headers={"origin": ORIGIN})
        assert reply.status in (200, 405) and cors_headers(reply) == {}, reply.headers


# -- gRPC's own headers ---------------------------------------------------------------------


def test_rest_answers_carry_no_grpc_header(gateway: Gateway, ids: dict[str, str]) -> None:
    rest = gateway.rest
    replies = {
        "GET 200": rest.get(f"/api/orders/{ids['orders']}/"),
        "HEAD 200": rest.request("HEAD", f"/api/orders/{ids['orders']}/"),
        "POST 201": rest.post("/api/customers/", {"email": unique_email("g"), "name": "G"}),
        "POST 200": rest.post(f"/api/orders/{ids['orders']}/archive/"),
        "server 404": rest.get("/api/orders/987654321/"),
        "server 400": rest.post("/api/customers/", {"email": "", "name": ""}),
        "transcoder 400": rest.get("/api/orders/?stauts=paid"),
        "Envoy 405": rest.request("DELETE", "/api/orders/1/"),
        "OPTIONS 204": rest.request("OPTIONS", "/api/orders/"),
    }
    stream = rest.stream("/api/dev/seed/", {"customers": 1})
    assert stream.last["phase"] == "PHASE_DONE"
    every = {name: reply.headers for name, reply in replies.items()}
    every["seed stream"] = stream.headers
    for name, headers in every.items():
        leaked = [h for h in GRPC_HEADERS if h in headers]
        assert not leaked, f"{name} answered with {leaked}: {headers}"


def test_the_seed_stream_is_ndjson_and_a_refused_seed_json(gateway: Gateway) -> None:
    stream = gateway.rest.stream("/api/dev/seed/", {"customers": 1})
    assert stream.status == 200 and stream.headers["content-type"] == "application/x-ndjson"
    assert stream.last["done"] is True
    refused = gateway.rest.post("/api/dev/seed/", {"customers": -1})
    assert refused.error(400)["code"] == 3 and refused.content_type == "application/json"


def test_native_grpc_through_the_same_port_keeps_its_headers(gateway: Gateway) -> None:
    # grpcurl -v prints the response headers and trailers of a call as received.
    called = grpcurl(
        "-v", "-d", json.dumps({"id": 987654321}), gateway.target, f"{SERVICE}/GetOrder"
    )
    assert "NotFound" in called.stdout + called.stderr, called.stderr
    done = grpcurl(
        "-v",
        "-d",
        json.dumps({"email": unique_email("native"), "name": "N"}),
        gateway.target,
        f"{SERVICE}/CreateCustomer",
    )
    assert done.returncode == 0, done.stderr
    headers = done.stdout.split("Response headers received:", 1)[1].split("\n\n", 1)[0]
    assert "grpc-accept-encoding:" in headers, done.stdout
    # gRPC-Web over HTTP/1.1, an error with no message: the status comes as headers, kept.
    _, received, _ = grpc_web_get_customer(gateway, 987654321)
    assert received.get("grpc-status") == "5" and received.get("grpc-message"), received
