"""REST/JSON through a real Envoy in front of a real server: the Django-era routes, the JSON
they render, and Envoy's own rejections, each with its status code and a JSON body."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_stack import Gateway, start_envoy
from harness import free_port, unique_email
from orders.v1 import orders_pb2 as pb
from rest_client import RestClient

INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION = 3, 5, 6, 9
RESOURCE_EXHAUSTED, UNAVAILABLE = 8, 14
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def create_customer(rest: RestClient, email: str | None = None) -> dict[str, Any]:
    reply = rest.post("/api/customers/", {"email": email or unique_email(), "name": "Ann"})
    assert reply.status == 201, reply
    return reply.json()  # type: ignore[no-any-return]


def create_order(rest: RestClient, customer_id: str, quantity: int = 2) -> dict[str, Any]:
    body = {
        "customer_id": customer_id,
        "items": [{"sku": "A-1", "quantity": quantity, "unit_price_cents": 150}],
    }
    reply = rest.post("/api/orders/", body)
    assert reply.status == 201, reply
    return reply.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
def test_every_route_answers_with_and_without_the_trailing_slash(
    gateway: Gateway, slash: str
) -> None:
    rest = gateway.rest
    email = unique_email()
    created = rest.post(f"/api/customers{slash}", {"email": email, "name": "Ann"})
    assert created.status == 201, created
    customer = created.json()
    cid = customer["id"]
    assert rest.get(f"/api/customers/{cid}{slash}").json() == customer
    listed = rest.get(f"/api/customers{slash}?page_size=500")
    assert listed.status == 200 and cid in {c["id"] for c in listed.json()["customers"]}

    order = rest.post(
        f"/api/orders{slash}",
        {"customer_id": cid, "items": [{"sku": "A-1", "quantity": 2, "unit_price_cents": 150}]},
    )
    assert order.status == 201, order
    oid = order.json()["id"]
    assert rest.get(f"/api/orders/{oid}{slash}").json()["id"] == oid
    listed = rest.get(f"/api/orders{slash}?customer_id={cid}")
    assert [o["id"] for o in listed.json()["orders"]] == [oid]

    for action, status in (("pay", "PAID"), ("ship", "SHIPPED")):
        reply = rest.post(f"/api/orders/{oid}/{action}{slash}")
        assert reply.status == 200 and reply.json()["status"] == status, reply
    archived = rest.post(f"/api/orders/{oid}/archive{slash}")
    assert archived.status == 200 and archived.json()["is_archived"] is True, archived

    other = create_order(rest, cid)["id"]
    cancelled = rest.post(f"/api/orders/{other}/cancel{slash}")
    assert cancelled.status == 200 and cancelled.json()["status"] == "CANCELLED", cancelled

    summary = rest.get(f"/api/orders/summary{slash}?limit=5")
    assert summary.status == 200 and isinstance(summary.json()["customers"], list), summary

    seeded = rest.stream(f"/api/dev/seed{slash}", {"customers": 2, "orders_per_customer": 1})
    assert seeded.status == 200 and seeded.last["phase"] == "PHASE_DONE", seeded


def test_json_uses_proto_names_prints_defaults_int64_as_strings_enums_by_name(
    gateway: Gateway,
) -> None:
    rest = gateway.rest
    customer = create_customer(rest)
    order = create_order(rest, customer["id"], quantity=3)
    assert set(order) >= {
        "id",
        "customer_id",
        "customer",
        "status",
        "is_archived",
        "total_cents",
        "items",
        "created_at",
        "updated_at",
    }
    assert isinstance(order["id"], str) and order["id"].isdigit()
    assert order["customer_id"] == customer["id"] and order["customer"] == customer
    assert order["status"] == "DRAFT"
    assert order["is_archived"] is False  # a default, printed
    assert order["total_cents"] == "450"  # int64: a string
    assert order["items"][0]["unit_price_cents"] == "150" and order["items"][0]["quantity"] == 3
    assert RFC3339.match(order["created_at"]) and RFC3339.match(customer["created_at"])
    empty = rest.get(f"/api/orders/?customer_id={create_customer(rest)['id']}").json()
    assert empty == {"orders": [], "next_page_token": ""}  # [] and "" printed


def test_int64_accepted_as_number_or_string(gateway: Gateway) -> None:
    rest = gateway.rest
    cid = create_customer(rest)["id"]
    for value in (int(cid), cid):
        reply = rest.post(
            "/api/orders/",
            {"customer_id": value, "items": [{"sku": "X", "quantity": 1, "unit_price_cents": 1}]},
        )
        assert reply.status == 201, reply


@pytest.mark.parametrize("spelling", ["paid", "PAID", "Paid"])
def test_status_filter_in_any_case(gateway: Gateway, spelling: str) -> None:
    rest = gateway.rest
    cid = create_customer(rest)["id"]
    paid = create_order(rest, cid)["id"]
    assert rest.post(f"/api/orders/{paid}/pay/").status == 200
    create_order(rest, cid)  # stays DRAFT
    reply = rest.get(f"/api/orders/?status={spelling}&customer_id={cid}")
    assert reply.status == 200, reply
    assert [o["id"] for o in reply.json()["orders"]] == [paid]


@pytest.mark.parametrize("value", ["bogus", "9", "-1"])
def test_unknown_status_is_a_400(gateway: Gateway, value: str) -> None:
    body = gateway.rest.get(f"/api/orders/?status={value}").error(400)
    assert body["code"] == INVALID_ARGUMENT


def test_unknown_query_parameter_is_a_400_naming_it(gateway: Gateway) -> None:
    body = gateway.rest.get("/api/orders/?stauts=paid").error(400)
    assert body["code"] == INVALID_ARGUMENT and "stauts" in body["message"]


def test_plus_in_a_query_parameter_is_a_space(gateway: Gateway) -> None:
    rest = gateway.rest
    tag = secrets.token_hex(4)
    cid = create_customer(rest, f"shop+{tag}@example.com")["id"]
    create_order(rest, cid)
    assert len(rest.get(f"/api/orders/?email=shop%2B{tag}").json()["orders"]) == 1
    assert rest.get(f"/api/orders/?email=shop+{tag}").json()["orders"] == []  # "shop <tag>"


@pytest.mark.parametrize(
    "body",
    ['{"email": "a@example.com", "name": ', "not json at all", '["a", "list"]'],
    ids=["truncated", "garbage", "array"],
)
def test_malformed_json_is_a_400(gateway: Gateway, body: str) -> None:
    reply = gateway.rest.post("/api/customers/", body)
    assert reply.error(400)["code"] == INVALID_ARGUMENT


@pytest.mark.parametrize(
    "body",
    [
        {"email": 5, "name": "Ann"},
        {"email": {"a": 1}, "name": "Ann"},
        {"customer_id": "abc", "items": []},
    ],
    ids=["number-for-string", "object-for-string", "text-for-int64"],
)
def test_wrong_json_type_is_a_400(gateway: Gateway, body: dict[str, Any]) -> None:
    path = "/api/orders/" if "customer_id" in body else "/api/customers/"
    assert gateway.rest.post(path, body).error(400)["code"] == INVALID_ARGUMENT


@pytest.mark.parametrize(
    "name", ["5f%", "x!y", "a#b", "a$b", "a&b", "a'b", "a*b", "a+b", "a^b", "a`b", "a|b", "~"]
)
def test_a_header_name_grpc_cannot_carry_is_dropped_not_a_500(gateway: Gateway, name: str) -> None:
    # Valid in HTTP, not in gRPC metadata: the server's HTTP/2 layer refused the whole call as
    # INTERNAL ("Illegal header key"). Found by schemathesis in a long run.
    listed = gateway.rest.get("/api/orders/?page_size=1", headers={name: "x"})
    assert listed.status == 200, listed.body[:300]
    body = {"email": unique_email("hdr"), "name": "H"}
    created = gateway.rest.post("/api/customers/", body, headers={name: "x"})
    assert created.status == 201, created.body[:300]


def test_the_largest_page_of_orders_is_transcoded(gateway: Gateway) -> None:
    # The largest page the server sends: 500 orders of 10 items each (5,000 items, the page's
    # budget), every field at its longest. Envoy buffers a response to transcode it; a page
    # over its buffer would be a 500. (A page of 1,000-item orders ends after 5 of them.)
    stub = gateway.server.stub
    email = "x" * (254 - len("-0123456789abcdef@example.com")) + unique_email("")
    customer = stub.CreateCustomer(pb.CreateCustomerRequest(email=email[-254:], name="n" * 200))
    lines = [
        pb.OrderItem(sku=f"{n:02d}" + "S" * 62, quantity=1_000_000, unit_price_cents=99_999)
        for n in range(10)
    ]
    for _ in range(500):
        stub.CreateOrder(pb.CreateOrderRequest(customer_id=customer.id, items=lines))
    reply = gateway.rest.get(f"/api/orders/?customer_id={customer.id}&page_size=500")
    assert reply.status == 200, reply.body[:300]
    page = reply.json()
    assert len(page["orders"]) == 500 and page["next_page_token"] == ""
    assert len(reply.body) > 1_000_000  # JSON; about 0.7 MB as protobuf


def test_body_over_one_mebibyte_is_a_413(gateway: Gateway) -> None:
    prefix, suffix = b'{"email": "big@example.com", "name": "', b'"}'
    filler = 1024 * 1024 - len(prefix) - len(suffix)
    at_limit = gateway.rest.post("/api/customers/", prefix + b"n" * filler + suffix)
    assert at_limit.status != 413, "a body of exactly 1 MiB is allowed"
    over = gateway.rest.post("/api/customers/", prefix + b"n" * (filler + 1) + suffix)
    assert over.error(413)["code"] == RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/nothing-here/"),
        ("GET", "/"),
        ("POST", "/api/orders/1/refund/"),
        ("DELETE", "/api/customers/1/orders/"),
    ],
)
def test_unknown_route_is_a_404(gateway: Gateway, method: str, path: str) -> None:
    # A known path with a method it does not have is a 405 (test_gateway_http.py).
    body = gateway.rest.request(method, path).error(404)
    assert body["code"] == NOT_FOUND


def test_path_and_body_ids_that_disagree_are_a_400(gateway: Gateway) -> None:
    rest = gateway.rest
    oid = create_order(rest, create_customer(rest)["id"])["id"]
    other = str(int(oid) + 1000)
    assert (
        rest.post(f"/api/orders/{oid}/pay/", {"id": other}).error(400)["code"] == INVALID_ARGUMENT
    )
    assert rest.get(f"/api/orders/{oid}/").json()["status"] == "DRAFT"  # nothing was paid
    same = rest.post(f"/api/orders/{oid}/pay/", {"id": oid})
    assert same.status == 200 and same.json()["status"] == "PAID", same


def test_creates_answer_201_and_a_duplicate_email_409_with_details(gateway: Gateway) -> None:
    rest = gateway.rest
    email = unique_email()
    create_customer(rest, email)
    duplicate = rest.post("/api/customers/", {"email": email.upper(), "name": "Ann"})
    body = duplicate.error(409)  # never turned into a 201 by the create's x-http-code
    assert body["code"] == ALREADY_EXISTS
    assert "x-http-code" not in duplicate.headers
    assert any(d["@type"].endswith("google.rpc.ErrorInfo") for d in body["details"]), body


def test_not_found_is_a_404_and_failed_precondition_a_400(gateway: Gateway) -> None:
    rest = gateway.rest
    assert rest.get("/api/customers/987654321/").error(404)["code"] == NOT_FOUND
    assert rest.get("/api/orders/987654321/").error(404)["code"] == NOT_FOUND
    missing = rest.post(
        "/api/orders/",
        {"customer_id": "987654321", "items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]},
    )
    assert missing.error(404)["code"] == NOT_FOUND
    oid = create_order(rest, create_customer(rest)["id"])["id"]
    assert rest.post(f"/api/orders/{oid}/ship/").error(400)["code"] == FAILED_PRECONDITION


def test_invalid_argument_details_render_as_json(gateway: Gateway) -> None:
    body = gateway.rest.post("/api/customers/", {"email": "", "name": ""}).error(400)
    assert body["code"] == INVALID_ARGUMENT
    bad = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert bad and {v["field"] for v in bad[0]["field_violations"]} >= {"email"}, body


def test_cancelling_an_order_over_rest_keeps_its_customer(gateway_each_backend: Gateway) -> None:
    """The regression of the Django service: cancelling an order deleted its customer."""
    rest = gateway_each_backend.rest
    customer = create_customer(rest)
    for pay_first in (False, True):
        oid = create_order(rest, customer["id"])["id"]
        if pay_first:
            assert rest.post(f"/api/orders/{oid}/pay/").status == 200
        cancelled = rest.post(f"/api/orders/{oid}/cancel/")
        assert cancelled.status == 200 and cancelled.json()["status"] == "CANCELLED", cancelled
        again = rest.get(f"/api/customers/{customer['id']}/")
        assert again.status == 200 and again.json() == customer, again
        assert rest.get(f"/api/orders/{oid}/").json()["customer"] == customer


def test_creates_and_conflicts_on_each_backend(gateway_each_backend: Gateway) -> None:
    rest = gateway_each_backend.rest
    email = unique_email()
    customer = create_customer(rest, email)
    assert (
        rest.post("/api/customers/", {"email": email.title(), "name": "B"}).error(409)["code"]
        == ALREADY_EXISTS
    )
    order = create_order(rest, customer["id"])
    assert order["total_cents"] == "300" and order["status"] == "DRAFT"


def test_an_unreachable_server_is_a_503_json(start_envoy_without_server: RestClient) -> None:
    body = start_envoy_without_server.get("/api/orders/").error(503)
    assert body["code"] == UNAVAILABLE


@pytest.fixture
def start_envoy_without_server(envoy_logs: Path) -> Iterator[RestClient]:
    envoy = start_envoy(free_port(), envoy_logs / "envoy-no-server.log")
    try:
        yield RestClient("127.0.0.1", envoy.config.http_port)
    finally:
        envoy.stop()
