"""What operators read: Prometheus metrics on a loopback port, and JSON log lines carrying the
x-request-id Envoy sets, so that a REST request and its gRPC call share one id."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from harness import OrdersServer, free_port
from orders.v1 import orders_pb2 as pb

from gateway.config import GatewayConfig
from gateway.envoy import Envoy

SUMMARY = "/orders.v1.OrdersService/GetSummary"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _metrics(port: int) -> str:
    with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels}` of a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_metrics_count_calls_latency_seed_rows_and_pool(
    start_server: Callable[..., OrdersServer],
) -> None:
    port = free_port()
    server = start_server(ORDERS_METRICS_PORT=str(port))
    for _ in range(3):
        server.stub.GetSummary(pb.GetSummaryRequest(), timeout=10)
    try:
        server.stub.GetOrder(pb.GetOrderRequest(id=0), timeout=10)
    except Exception:
        pass
    list(server.stub.Seed(pb.SeedRequest(customers=7, orders_per_customer=2, items_per_order=3)))
    text = _metrics(port)
    assert _value(text, "orders_grpc_calls_total", method=SUMMARY, code="OK") == 3
    assert (
        _value(
            text,
            "orders_grpc_calls_total",
            method="/orders.v1.OrdersService/GetOrder",
            code="INVALID_ARGUMENT",
        )
        == 1
    )
    assert _value(text, "orders_grpc_call_seconds_count", method=SUMMARY) == 3
    assert _value(text, "orders_seed_rows_total", table="customers") == 7
    assert _value(text, "orders_seed_rows_total", table="orders") == 14
    assert _value(text, "orders_seed_rows_total", table="order_items") == 42
    assert _value(text, "orders_seed_rows_per_second") > 0
    assert "orders_db_connections_in_use" in text
    assert _value(text, "orders_db_connections_in_use") == 0  # every connection returned


def test_each_call_is_one_json_log_line_with_its_request_id(
    start_server: Callable[..., OrdersServer],
) -> None:
    # At DEBUG every call has its line; at INFO (the default) only those that did not end OK.
    for level, logged_ok in (("DEBUG", True), ("INFO", False)):
        server = start_server(ORDERS_LOG_LEVEL=level)
        ok, failed = str(uuid.uuid4()), str(uuid.uuid4())
        server.stub.GetSummary(pb.GetSummaryRequest(), metadata=(("x-request-id", ok),))
        with pytest.raises(grpc.RpcError):
            server.stub.GetOrder(
                pb.GetOrderRequest(id=999_999), metadata=(("x-request-id", failed),)
            )
        lines = {
            rid: [line for line in _json_lines(server.log_text()) if line.get("request_id") == rid]
            for rid in (ok, failed)
        }
        assert len(lines[failed]) == 1, lines
        line = lines[failed][0]
        assert (line["method"], line["code"], line["statements"], line["level"]) == (
            "/orders.v1.OrdersService/GetOrder",
            "NOT_FOUND",
            1,
            "INFO",
        )
        assert isinstance(line["duration_ms"], float)
        if logged_ok:
            assert len(lines[ok]) == 1, lines
            line = lines[ok][0]
            assert (line["method"], line["code"], line["statements"], line["level"]) == (
                SUMMARY,
                "OK",
                1,
                "DEBUG",
            )
        else:
            assert lines[ok] == [], lines


def test_a_rest_request_and_its_grpc_call_share_one_request_id(
    start_server: Callable[..., OrdersServer], tmp_path: Path
) -> None:
    server = start_server(ORDERS_LOG_LEVEL="DEBUG")  # the line of a call that ends OK
    envoy_log = tmp_path / "envoy.log"
    config = GatewayConfig(http_port=free_port(), admin_port=free_port(), upstream_port=server.port)
    request_id = str(uuid.uuid4())
    with Envoy(config, log_path=envoy_log, log_level="info"):
        request = urllib.request.Request(
            f"{config.rest_url}/api/orders/summary/", headers={"x-request-id": request_id}
        )
        with _OPENER.open(request, timeout=10) as reply:
            assert reply.status == 200
    server_lines = [
        entry for entry in _json_lines(server.log_text()) if entry.get("request_id") == request_id
    ]
    envoy_lines = [
        entry
        for entry in _json_lines(envoy_log.read_text())
        if entry.get("request_id") == request_id
    ]
    assert [entry["method"] for entry in server_lines] == [SUMMARY]
    # The REST method and path, not the gRPC call's POST /orders.v1.OrdersService/GetSummary.
    assert [(entry["method"], entry["path"], entry["status"]) for entry in envoy_lines] == [
        ("GET", "/api/orders/summary/", 200)
    ]
