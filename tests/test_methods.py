"""The method table (orders_client/methods.py) against the service it describes, and against
what reads it: the server's access rights, the client's retry config and bearer tokens, the
servicer's success status, the OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from google.api import annotations_pb2
from orders.v1 import orders_pb2 as pb

from orders_client import service_config
from orders_client.channel import _BearerToken
from orders_client.methods import METHODS, SERVICE, Access
from server.domain.access import Right
from server.transport import app, servicer

# In process: no server (scripts/test --fast runs these).
pytestmark = pytest.mark.fast

DESCRIBED = pb.DESCRIPTOR.services_by_name["OrdersService"]
OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def test_the_table_classifies_every_method_of_the_service_and_no_other() -> None:
    described = [method.name for method in DESCRIBED.methods]
    missing = [name for name in described if name not in METHODS]
    assert not missing, (
        f"{missing} not in orders_client/methods.py: the server lets only the admin token call"
        " them, the client never retries them, and the OpenAPI generator refuses them"
    )
    assert list(METHODS) == described, "an entry for no method, or not in the protos' order"
    assert SERVICE == DESCRIBED.full_name


def test_each_entry_is_coherent() -> None:
    for entry in METHODS.values():
        assert entry.http_status in (200, 201), entry
        assert entry.path == f"/{DESCRIBED.full_name}/{entry.name}"
        assert entry.admin_only == (entry.access is Access.ADMIN)
        if entry.creates:
            # A create that may have committed before UNAVAILABLE must not be sent again.
            assert entry.access is Access.WRITE and not entry.retryable, entry


def test_the_server_asks_each_method_for_the_table_right() -> None:
    assert set(app.RIGHTS) == {entry.path for entry in METHODS.values()}
    for entry in METHODS.values():
        assert app.RIGHTS[entry.path] == Right[entry.access.name], entry.name
    admin_only = {path for path, right in app.RIGHTS.items() if right == Right.ADMIN}
    assert admin_only == {entry.path for entry in METHODS.values() if entry.admin_only}


def test_a_method_missing_from_the_table_is_for_the_admin_token_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "METHODS", {})
    for method in DESCRIBED.methods:
        assert app._right(method.name) == Right.ADMIN


def test_the_client_retries_exactly_the_retryable_methods() -> None:
    (entry,) = json.loads(service_config())["methodConfig"]
    retried = [name["method"] for name in entry["name"]]
    assert retried == [m.name for m in METHODS.values() if m.retryable]


def test_the_client_sends_the_admin_token_to_admin_methods_only() -> None:
    bearer = _BearerToken("api-token", "admin-token")
    for entry in METHODS.values():
        expected = "admin-token" if entry.admin_only else "api-token"
        assert bearer._metadata(entry.path) == (("authorization", f"Bearer {expected}"),)


def test_the_servicer_sends_the_table_status_of_each_create() -> None:
    sent = {
        "CreateCustomer": servicer._CUSTOMER_CREATED,
        "CreateOrder": servicer._ORDER_CREATED,
    }
    assert set(sent) == {m.name for m in METHODS.values() if m.http_status != 200}
    for name, trailer in sent.items():
        assert trailer == (("x-http-code", str(METHODS[name].http_status)),)


def test_the_openapi_document_answers_each_route_with_the_table_status() -> None:
    routed = {
        m.name for m in DESCRIBED.methods if m.GetOptions().HasExtension(annotations_pb2.http)
    }
    document = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    found: dict[str, set[str]] = {}
    for item in document["paths"].values():
        for operation in item.values():
            if operation["operationId"] in METHODS:
                codes = {code for code in operation["responses"] if code.startswith("2")}
                found.setdefault(operation["operationId"], set()).update(codes)
    assert set(found) == routed
    for name, codes in found.items():
        assert codes == {str(METHODS[name].http_status)}, name
