"""API tokens and the admin token: who may call what, on direct gRPC (the gateway passes the
same `authorization` header through as metadata)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from harness import SERVICE_NAME, OrdersServer, call_error, details_of
from orders.v1 import orders_pb2 as pb

from server.domain.access import AccessPolicy, Right, parse_api_tokens
from server.domain.errors import PermissionDenied, Unauthenticated

READ, WRITE, ADMIN = "r-token-1", "w-token-2", "admin-token-3"
WRONG = "wrong-secret-token-4"
GRPCURL = Path(sys.executable).parent / "grpcurl"


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


def test_tokens_are_compared_as_fixed_length_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither a token's content nor its length may show in the time a check takes: every
    comparison is of two 32-byte digests, against every configured token, whatever is sent."""
    from server.domain import access

    policy = AccessPolicy(api_tokens=parse_api_tokens(f"read:{READ},{WRITE}"), admin_token=ADMIN)
    compared: list[tuple[int, int]] = []
    real = access.hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", recording)
    for sent in ("", "x", READ[:-1], READ, READ + "x", ADMIN, "y" * 10_000):
        compared.clear()
        try:
            policy.check(Right.READ, f"Bearer {sent}")
        except (PermissionDenied, Unauthenticated):
            pass
        assert compared == [(32, 32)] * 3, (sent[:20], compared)
    for near in (READ[:-1], READ + "x", READ.upper(), f" {WRITE}x"):
        with pytest.raises(PermissionDenied):
            policy.check(Right.READ, f"Bearer {near}")


def test_the_policy_shows_no_token() -> None:
    policy = AccessPolicy(api_tokens=parse_api_tokens(f"read:{READ}"), admin_token=ADMIN)
    for text in (repr(policy), str(policy)):
        assert READ not in text and ADMIN not in text, text


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
    # DEBUG: a log line for every call, the ones that succeed included.
    server = start_server(
        ORDERS_API_TOKENS=f"read:{READ}", ORDERS_ADMIN_TOKEN=ADMIN, ORDERS_LOG_LEVEL="DEBUG"
    )
    for token in (READ, ADMIN, "wrong-secret-token"):
        _code(
            lambda t=token: server.stub.GetSummary(  # type: ignore[misc]
                pb.GetSummaryRequest(), metadata=_auth(t), timeout=10
            )
        )
    log = server.log_text()
    for secret in (READ, ADMIN, "wrong-secret-token"):
        assert secret not in log


def _error_text(err: grpc.RpcError) -> str:
    """Everything a caller sees of an error: the message, the google.rpc.Status (its message
    and every detail, ErrorInfo metadata included) and the trailing metadata."""
    got = details_of(err)
    parts = [got.message, repr(got.info)]
    status = rpc_status.from_call(err)
    if status is not None:
        parts.append(status.message)
        parts.extend(repr(detail) + repr(detail.value) for detail in status.details)
    parts.extend(repr(item) for item in err.trailing_metadata() or ())  # type: ignore[attr-defined]
    return "\n".join(parts)


def test_a_refused_token_is_never_echoed_in_the_error(
    start_server: Callable[..., OrdersServer],
) -> None:
    server = start_server(ORDERS_API_TOKENS=f"read:{READ},write:{WRITE}", ORDERS_ADMIN_TOKEN=ADMIN)
    stub = server.stub
    new = pb.CreateCustomerRequest(email="echo-test@example.com", name="E")

    def summary(**kwargs: Any) -> object:
        return stub.GetSummary(pb.GetSummaryRequest(), **kwargs)

    def create(**kwargs: Any) -> object:
        return stub.CreateCustomer(new, **kwargs)

    def seed(**kwargs: Any) -> object:
        return list(stub.Seed(pb.SeedRequest(customers=1), **kwargs))

    refusals = [  # (what, call, authorization sent, the ErrorInfo reason expected)
        ("unknown token", summary, f"Bearer {WRONG}", "TOKEN_INVALID"),
        ("wrong scheme", summary, f"Basic {WRONG}", "TOKEN_INVALID"),
        ("read token writing", create, f"Bearer {READ}", "TOKEN_LACKS_RIGHT"),
        ("write token seeding", seed, f"Bearer {WRITE}", "ADMIN_TOKEN_INVALID"),
        ("unknown admin token", seed, f"Bearer {WRONG}", "ADMIN_TOKEN_INVALID"),
    ]
    for what, call, authorization, reason in refusals:
        err = call_error(
            lambda _request, c=call, a=authorization: c(  # type: ignore[misc]
                metadata=(("authorization", a),), timeout=30
            ),
            None,
        )
        got = details_of(err)
        assert got.code == grpc.StatusCode.PERMISSION_DENIED, (what, got)
        assert got.has_status and got.reason == reason and got.message, (what, got)
        text = _error_text(err)
        for secret in (READ, WRITE, ADMIN, WRONG):
            assert secret not in text, (what, secret, text)


def test_reflection_stays_open_with_tokens_for_real_grpcurl(
    start_server: Callable[..., OrdersServer],
) -> None:
    server = start_server(ORDERS_API_TOKENS=f"read:{READ}", ORDERS_ADMIN_TOKEN=ADMIN)
    listed = _grpcurl(server.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert SERVICE_NAME in listed.stdout.split(), listed.stdout
    described = _grpcurl(server.address, "describe", SERVICE_NAME)
    assert described.returncode == 0 and "rpc Seed" in described.stdout, described.stderr
    # ...while the service itself is guarded, for grpcurl as for any client.
    refused = _grpcurl(server.address, f"{SERVICE_NAME}/GetSummary")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused
    allowed = _grpcurl(
        "-H", f"authorization: Bearer {READ}", server.address, f"{SERVICE_NAME}/GetSummary"
    )
    assert allowed.returncode == 0, allowed.stderr


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
