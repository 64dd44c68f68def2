"""Envoy's own 400s in plain words, through a real Envoy in front of a real server: a wrong
JSON type, an unknown query parameter, a value out of range, a malformed body each get a message
a REST client can act on, with no proto type name (`TYPE_INT32`, `orders.v1.ListOrdersRequest`,
`type.googleapis.com/...`) in it; the server's own errors pass untouched."""

from __future__ import annotations

import pytest
from gateway_stack import Gateway

INVALID_ARGUMENT = 3
PROTO_WORDS = ("TYPE_", "type.googleapis.com", "orders.v1", "Proto field", "Root element")

CASES = [
    # (method, path, body, message)
    ("GET", "/api/orders/?stauts=paid", None, 'unknown query parameter "stauts"'),
    ("GET", "/api/orders/?page=2", None, 'unknown query parameter "page"'),
    ("GET", "/api/customers/?page_size=abc", None, "page_size: must be an integer"),
    ("GET", "/api/orders/?page_size=1.5", None, "page_size: must be an integer"),
    (
        "GET",
        "/api/orders/?page_size=99999999999",
        None,
        "page_size: is out of range (a 32-bit integer)",
    ),
    ("GET", "/api/orders/?include_archived=maybe", None, "include_archived: must be true or false"),
    (
        "GET",
        "/api/orders/?status=bogus",
        None,
        "status: must be one of STATUS_UNSPECIFIED, DRAFT, PAID, SHIPPED, CANCELLED (in any case)",
    ),
    ("GET", "/api/orders/abc/", None, "id: must be an integer"),
    ("GET", "/api/orders/summary/?limit=ten", None, "limit: must be an integer"),
    ("POST", "/api/customers/?bogus=1", "{}", 'unknown query parameter "bogus"'),
    (
        "POST",
        "/api/customers/",
        '{"email": ',
        "the body is not valid JSON: Unexpected end of string. Expected a value.",
    ),
    ("POST", "/api/customers/", "not json", "the body is not valid JSON: Unexpected token."),
    (
        "POST",
        "/api/customers/",
        '{"email": "a@example.com" "name": "A"}',
        "the body is not valid JSON: Expected , or } after key:value pair.",
    ),
    ("POST", "/api/customers/", '["a", "list"]', "the body must be a JSON object"),
    ("POST", "/api/customers/", '{"email": 5, "name": "A"}', "email: must be a string"),
    (
        "POST",
        "/api/customers/",
        '{"email": {"a": 1}, "name": "A"}',
        "email: must be a single value, not an object",
    ),
    ("POST", "/api/customers/", '{"email": ["a"]}', "a list where a single value is expected"),
    ("POST", "/api/orders/", '{"customer_id": "abc"}', "customer_id: must be an integer"),
    (
        "POST",
        "/api/orders/",
        '{"customer_id": "99999999999999999999"}',
        "customer_id: is out of range (a 64-bit integer)",
    ),
    (
        "POST",
        "/api/orders/",
        '{"customer_id": 1, "items": [{"sku": "A", "quantity": "x"}]}',
        "items[0].quantity: must be an integer",
    ),
    (
        "POST",
        "/api/orders/",
        '{"customer_id": 1, "items": [{"sku": "A", "quantity": {}}]}',
        "items[0].quantity: must be a single value, not an object",
    ),
    (
        "POST",
        "/api/orders/",
        '{"customer_id": 1, "items": [{"sku": "A", "quantity": [1]}]}',
        "items[0]: a list where a single value is expected",
    ),
    ("POST", "/api/orders/", '{"customer_id": 1, "items": [5]}', "items[0]: must be a JSON object"),
    ("POST", "/api/dev/seed/", '{"customers": true}', "customers: must be an integer"),
]


@pytest.mark.parametrize(("method", "path", "body", "message"), CASES)
def test_envoys_own_400_is_in_plain_words(
    gateway: Gateway, method: str, path: str, body: str | None, message: str
) -> None:
    reply = gateway.rest.request(method, path, body)
    error = reply.error(400)
    assert error == {"code": INVALID_ARGUMENT, "message": message}, error
    assert not any(word in reply.body.decode() for word in PROTO_WORDS), reply.body
    assert reply.headers["content-length"] == str(len(reply.body)), reply.headers


def test_the_servers_own_errors_pass_untouched(gateway: Gateway) -> None:
    reply = gateway.rest.post("/api/customers/", {"email": "", "name": ""})
    body = reply.error(400)
    assert body["message"] == "email: is required; name: is required", body
    assert body["details"][0]["@type"].endswith("google.rpc.BadRequest"), body
    assert reply.headers["content-length"] == str(len(reply.body))


def test_a_message_of_another_shape_is_left_as_it_is(gateway: Gateway) -> None:
    # Already plain, and naming the field: nothing to rewrite.
    body = gateway.rest.post("/api/orders/1/pay/", {"id": "2"}).error(400)
    assert body["message"] == (
        'The binding value "1" of the field id is conflicting with the value "2" in the body.'
    )


def test_a_head_of_envoys_own_400_has_no_body_and_no_stale_length(gateway: Gateway) -> None:
    # A HEAD never carries the message, so it cannot be put in plain words there: the answer
    # gives no length rather than the length of the message before the rewrite.
    path = "/api/orders/?page_size=abc"
    assert gateway.rest.get(path).status == 400
    head = gateway.rest.request("HEAD", path)
    assert head.status == 400 and head.body == b"", head
    assert "content-length" not in head.headers, head.headers
