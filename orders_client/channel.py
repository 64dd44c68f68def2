"""The channel to the orders service: where it is, the caller's token, and the retry policy.

Retries live in the gRPC service config (gRFC A6), so the gRPC core retries a call that ends
UNAVAILABLE, with exponential backoff and jitter, without any loop in this package.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from .methods import METHODS, SERVICE

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TARGET",
    "NON_RETRIED_METHODS",
    "RETRIED_METHODS",
    "SERVICE",
    "RetryPolicy",
    "open_channel",
    "resolve_target",
    "resolve_token",
    "service_config",
]

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_VARIABLE = "ORDERS_TARGET"
TOKEN_VARIABLE = "ORDERS_TOKEN"  # an API token (ORDERS_API_TOKENS on the server)
ADMIN_TOKEN_VARIABLE = "ORDERS_ADMIN_TOKEN"  # the server's admin token: Seed, and everything
# From the method table (methods.py), which says why each method is or is not retried.
ADMIN_METHODS = tuple(m.name for m in METHODS.values() if m.admin_only)
RETRIED_METHODS = tuple(m.name for m in METHODS.values() if m.retryable)
NON_RETRIED_METHODS = tuple(m.name for m in METHODS.values() if not m.retryable)


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retryPolicy. Retry n waits about min(initial * multiplier**(n-1), max): grpcio
    jitters it by +-20%. The defaults wait 0.2 + 0.4 + 0.8 + 1.6 s: a server restarting (about
    a second) is waited for, and a server that is down is reported within about 3 s."""

    max_attempts: int = 5  # the first attempt included; gRPC caps it at 5
    initial_backoff: float = 0.2
    max_backoff: float = 2.0
    backoff_multiplier: float = 2.0

    def as_json(self) -> dict[str, Any]:
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff),
            "maxBackoff": _duration(self.max_backoff),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }


DEFAULT_RETRY = RetryPolicy()


def _duration(seconds: float) -> str:
    """A google.protobuf.Duration in its JSON form, as the service config wants it."""
    return f"{seconds:.3f}s"


def service_config(retry: RetryPolicy | None = DEFAULT_RETRY) -> str:
    """The JSON of the `grpc.service_config` channel option; no retry when `retry` is None."""
    method_config: list[dict[str, Any]] = []
    if retry is not None:
        method_config.append(
            {
                "name": [{"service": SERVICE, "method": m} for m in RETRIED_METHODS],
                "retryPolicy": retry.as_json(),
            }
        )
    return json.dumps({"methodConfig": method_config})


def resolve_target(target: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """`target`, else ORDERS_TARGET, else 127.0.0.1:50051."""
    env = os.environ if environ is None else environ
    return target or env.get(TARGET_VARIABLE, "").strip() or DEFAULT_TARGET


def resolve_token(
    token: str | None = None,
    environ: Mapping[str, str] | None = None,
    variable: str = TOKEN_VARIABLE,
) -> str | None:
    """`token`, else the environment variable (ORDERS_TOKEN), else none. A token is sent as an
    HTTP/2 header value: printable ASCII only (ValueError otherwise, the token not shown)."""
    if token:
        found, source = token, "the token"
    else:
        env = os.environ if environ is None else environ
        found, source = env.get(variable, "").strip(), variable
    if not found:
        return None
    if not all(" " <= ch <= "~" for ch in found):
        # gRPC would refuse every call with INTERNAL "Invalid metadata", and log it to stderr.
        raise ValueError(
            f"{source} must be printable ASCII (a header value); it holds other characters"
        )
    return found


_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: tuple[tuple[str, str], ...]):
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = (*(base.metadata or ()), *metadata)
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call: the admin token to Seed when there is
    one, the API token to the rest, and whichever there is when there is only one (the admin
    token may do everything). Call credentials would need a secure channel; the service
    speaks plaintext h2c."""

    def __init__(self, token: str | None, admin_token: str | None) -> None:
        def header(value: str | None) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {value}"),) if value else ()

        self._regular = header(token or admin_token)
        self._admin = header(admin_token or token)
        self._admin_paths = {f"/{SERVICE}/{m}" for m in ADMIN_METHODS}

    def _metadata(self, method: str | bytes) -> tuple[tuple[str, str], ...]:
        path = method.decode() if isinstance(method, bytes) else method
        return self._admin if path in self._admin_paths else self._regular

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _Request], grpc._CallFuture[_Response]],
        client_call_details: grpc.ClientCallDetails,
        request: _Request,
    ) -> grpc._CallFuture[_Response]:
        metadata = self._metadata(client_call_details.method)
        return continuation(_CallDetails(client_call_details, metadata), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _Request], grpc._CallIterator[_Response]],
        client_call_details: grpc.ClientCallDetails,
        request: _Request,
    ) -> grpc._CallIterator[_Response]:
        metadata = self._metadata(client_call_details.method)
        return continuation(_CallDetails(client_call_details, metadata), request)


def open_channel(
    target: str | None = None,
    token: str | None = None,
    *,
    admin_token: str | None = None,
    retry: RetryPolicy | None = DEFAULT_RETRY,
    environ: Mapping[str, str] | None = None,
) -> grpc.Channel:
    """A plaintext channel to the service at `target` (default: ORDERS_TARGET, then
    127.0.0.1:50051), retrying UNAVAILABLE per `retry`, with a bearer token on every call:
    `token` (default: ORDERS_TOKEN) and `admin_token` (default: ORDERS_ADMIN_TOKEN), the
    admin token going to Seed."""
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(retry)),
        # Notice a restarted server soon: the default first reconnect waits a whole second,
        # and calls fail at once (then burn their retries) while the channel waits.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]
    channel = grpc.insecure_channel(resolve_target(target, environ), options=options)
    api = resolve_token(token, environ)
    admin = resolve_token(admin_token, environ, ADMIN_TOKEN_VARIABLE)
    if api is None and admin is None:
        return channel
    return grpc.intercept_channel(channel, _BearerToken(api, admin))
