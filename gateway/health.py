"""Probing a gRPC server's grpc.health.v1.Health: used to wait for the server before starting
Envoy in front of it, and as the server container's health check in docker-compose.yml."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2

__all__ = ["is_serving", "wait_until_serving"]


def is_serving(target: str, service: str = "", timeout: float = 2.0) -> bool:
    """True if ``target`` (host:port, plaintext) reports SERVING for ``service`` ('' is the
    server as a whole)."""
    # Straight to the target, whatever proxy the environment names.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        # The method by name: the typing stubs of HealthStub leave its methods out.
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def wait_until_serving(
    target: str,
    service: str = "",
    timeout: float = 30.0,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Waits until ``target`` is SERVING; raises TimeoutError, or InterruptedError as soon as
    ``should_stop()`` says so (the server died, or a signal asked to stop)."""
    deadline = time.monotonic() + timeout
    while not is_serving(target, service, timeout=1.0):
        if should_stop is not None and should_stop():
            raise InterruptedError(f"stopped while waiting for {target}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{target} was not SERVING after {timeout:.0f} s")
        time.sleep(0.1)
