"""API tokens and the admin token: who may call what, on direct gRPC (the gateway passes the
same `authorization` header through as metadata)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import OrdersServer
from orders.v1 import orders_pb2 as pb

from server.domain.access import AccessPolicy, Right, parse_api_tokens
from server.domain.errors import PermissionDenied, Unauthenticated

READ, WRITE, ADMIN = "r-token-1", "w-token-2", "admin-token-3"


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def test_tokens_are_parsed_with_their_rights(tmp_path: Path) -> None:
    assert parse_api_tokens(" a , read:b,write:c\n# comment\n") == (
        (b"a", Right.WRITE),
        (b"b", Right.READ),
        (b"c", Right.WRITE),
    )
    file = tmp_path / "tokens"
    file.write_text("read:x\ny\n")
    assert parse_api_tokens(f"@{file}") == ((b"x", Right.READ), (b"y", Right.WRITE))


def test_policy_without_tokens_is_open_except_seed_in_production() -> None:
    AccessPolicy().check(Right.WRITE, None)
    AccessPolicy().check(Right.ADMIN, None)
    with pytest.raises(Unauthenticated):
        AccessPolicy(is_production=True).check(Right.ADMIN, None)
    with pytest.raises(PermissionDenied):
        AccessPolicy(is_production=True).check(Right.ADMIN, "Bearer anything")


def test_policy_with_tokens_checks_each_right() -> None:
    policy = AccessPolicy(api_tokens=parse_api_tokens(f"read:{READ},{WRITE}"), admin_token=ADMIN)
    with pytest.raises(Unauthenticated):
        policy.check(Right.READ, None)
    with pytest.raises(PermissionDenied):
        policy.check(Right.READ, "Bearer nope")
    with pytest.raises(PermissionDenied):
        policy.check(Right.READ, f"Basic {READ}")
    policy.check(Right.READ, f"Bearer {READ}")
    with pytest.raises(PermissionDenied) as lacking:
        policy.check(Right.WRITE, f"Bearer {READ}")
    assert lacking.value.reason == "TOKEN_LACKS_RIGHT"
    policy.check(Right.WRITE, f"bearer {WRITE}")
    with pytest.raises(PermissionDenied):
        policy.check(Right.ADMIN, f"Bearer {WRITE}")
    policy.check(Right.ADMIN, f"Bearer {ADMIN}")
    policy.check(Right.WRITE, f"Bearer {ADMIN}")


def test_api_tokens_guard_every_rpc_but_health_and_reflection(
    start_server: Callable[..., OrdersServer],
) -> None:
    server = start_server(ORDERS_API_TOKENS=f"read:{READ},write:{WRITE}", ORDERS_ADMIN_TOKEN=ADMIN)
    stub = server.stub
    new = pb.CreateCustomerRequest(email="token-test@example.com", name="T")
    assert _code(lambda: stub.GetSummary(pb.GetSummaryRequest(), timeout=10)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert _code(
        lambda: stub.GetSummary(pb.GetSummaryRequest(), metadata=_auth("x"), timeout=10)
    ) == (grpc.StatusCode.PERMISSION_DENIED)
    assert _code(
        lambda: stub.GetSummary(pb.GetSummaryRequest(), metadata=_auth(READ), timeout=10)
    ) == (grpc.StatusCode.OK)
    assert _code(lambda: stub.CreateCustomer(new, metadata=_auth(READ), timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _code(lambda: stub.CreateCustomer(new, metadata=_auth(WRITE), timeout=10)) == (
        grpc.StatusCode.OK
    )
    seed = pb.SeedRequest(customers=1)
    assert _code(lambda: list(stub.Seed(seed, metadata=_auth(WRITE), timeout=30))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _code(lambda: list(stub.Seed(seed, metadata=_auth(ADMIN), timeout=30))) == (
        grpc.StatusCode.OK
    )
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
        health_pb2.HealthCheckResponse.SERVING
    )


def test_tokens_never_reach_the_log(start_server: Callable[..., OrdersServer]) -> None:
    server = start_server(ORDERS_API_TOKENS=f"read:{READ}", ORDERS_ADMIN_TOKEN=ADMIN)
    for token in (READ, ADMIN, "wrong-secret-token"):
        _code(
            lambda t=token: server.stub.GetSummary(  # type: ignore[misc]
                pb.GetSummaryRequest(), metadata=_auth(t), timeout=10
            )
        )
    log = server.log_text()
    for secret in (READ, ADMIN, "wrong-secret-token"):
        assert secret not in log
