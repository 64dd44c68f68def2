"""Native gRPC (and gRPC-Web) through the Envoy port: a Python client, grpcurl with server
reflection, the way operators and internal services call it."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from gateway_stack import Gateway, grpc_web_get_customer, grpcurl, start_envoy
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from harness import free_port, unique_email
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

SERVICE = "orders.v1.OrdersService"


@pytest.fixture
def channel(gateway: Gateway) -> grpc.Channel:
    with grpc.insecure_channel(gateway.target) as channel:
        yield channel


def test_python_client_through_envoy(channel: grpc.Channel) -> None:
    stub = pb_grpc.OrdersServiceStub(channel)
    email = unique_email()
    customer, call = stub.CreateCustomer.with_call(
        pb.CreateCustomerRequest(email=email, name="Grace"), timeout=10
    )
    assert customer.id > 0 and customer.email == email
    # The status rewrite is for REST callers only: native callers keep the metadata.
    assert ("x-http-code", "201") in call.trailing_metadata()
    assert stub.GetCustomer(pb.GetCustomerRequest(id=customer.id), timeout=10) == customer

    order = stub.CreateOrder(
        pb.CreateOrderRequest(
            customer_id=customer.id,
            items=[pb.OrderItem(sku="A", quantity=2, unit_price_cents=250)],
        ),
        timeout=10,
    )
    assert order.total_cents == 500 and order.status == pb.Order.DRAFT


def test_errors_keep_their_code_and_rich_details_through_envoy(channel: grpc.Channel) -> None:
    stub = pb_grpc.OrdersServiceStub(channel)
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetCustomer(pb.GetCustomerRequest(id=987654321), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as invalid:
        stub.CreateCustomer(pb.CreateCustomerRequest(email="", name=""), timeout=10)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(invalid.value)
    assert status is not None and status.details, "google.rpc.Status details lost on the way"
    assert status.details[0].Is(error_details_pb2.BadRequest.DESCRIPTOR)


def test_server_streaming_seed_through_envoy(channel: grpc.Channel) -> None:
    stub = pb_grpc.OrdersServiceStub(channel)
    messages = list(
        stub.Seed(pb.SeedRequest(customers=3, orders_per_customer=2, items_per_order=1), timeout=60)
    )
    assert messages[0].phase == pb.SeedResponse.PHASE_STARTED
    assert messages[-1].phase == pb.SeedResponse.PHASE_DONE and messages[-1].done
    assert messages[-1].items_done == 6


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_through_envoy(channel: grpc.Channel, service: str) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpcurl_lists_and_describes_through_envoy_by_reflection(gateway: Gateway) -> None:
    listed = grpcurl(gateway.target, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {SERVICE, "grpc.health.v1.Health"} <= services, listed.stdout
    described = grpcurl(gateway.target, "describe", SERVICE)
    assert described.returncode == 0 and "rpc Seed" in described.stdout, described.stderr


def test_grpcurl_calls_through_envoy(gateway: Gateway) -> None:
    email = unique_email()
    created = grpcurl(
        "-d",
        json.dumps({"email": email, "name": "Op"}),
        gateway.target,
        f"{SERVICE}/CreateCustomer",
    )
    assert created.returncode == 0, created.stderr
    customer = json.loads(created.stdout)
    assert customer["email"] == email
    fetched = grpcurl(
        "-d", json.dumps({"id": customer["id"]}), gateway.target, f"{SERVICE}/GetCustomer"
    )
    assert fetched.returncode == 0 and json.loads(fetched.stdout) == customer, fetched.stderr


def test_grpc_web_through_envoy(gateway: Gateway) -> None:
    status, headers, body = grpc_web_get_customer(gateway, 987654321)
    assert status == 200
    assert headers["content-type"].startswith("application/grpc-web")
    # A not-found customer: no message frame, the status in headers or in a trailer frame.
    trailers = headers.get("grpc-status", "")
    if not trailers:
        assert body[:1] == b"\x80", body
        trailers = body[5:].decode()
    assert "grpc-status: 5" in trailers or trailers == "5", trailers


def test_envoy_own_replies_stay_grpc_for_grpc_callers(envoy_logs: Path) -> None:
    """The JSON bodies of Envoy's local replies are for REST callers: a gRPC caller of a server
    that is down gets UNAVAILABLE with Envoy's plain message."""
    envoy = start_envoy(free_port(), envoy_logs / "envoy-grpc-no-server.log")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{envoy.config.http_port}") as channel:
            stub = pb_grpc.OrdersServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.GetCustomer(pb.GetCustomerRequest(id=1), timeout=10)
    finally:
        envoy.stop()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not (failed.value.details() or "").lstrip().startswith("{"), failed.value.details()
