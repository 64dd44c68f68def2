"""One interceptor around every call: admits it (or not, at shutdown), checks its rights, logs
it, counts its SQL statements, maps its errors.

One interceptor, not one per concern: grpcio runs every interceptor on every call, and each
re-wraps the handler; one wrap does all of it (about 1.5 us a call less than two).

Per-call state (request id, statement count) lives in ContextVars, as in grpc/grpc's
examples/python/interceptors.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import grpc

from ..domain.access import AccessPolicy, Right
from ..domain.errors import FieldViolation, InvalidArgument
from ..observability import CALL_SECONDS, CALLS
from ..storage.database import StatementCount, deadline, statements_counted
from .status import to_grpc_status, to_status_proto

__all__ = [
    "STATEMENTS_TRAILER",
    "CallInterceptor",
    "ShutdownGate",
    "metadata_value",
    "record_call",
    "request_id",
]

STATEMENTS_TRAILER = "orders-sql-statements"
# Set by Envoy's router on every request it sends with a route timeout (REST routes: 60 s).
EXPECTED_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"

log = logging.getLogger("orders.calls")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return None


def _code_set(context: grpc.ServicerContext) -> bool:
    # ServicerContext.code() exists at run time (grpcio >= 1.38) but not in the stubs.
    return cast(Any, context).code() is not None


class _Call:
    """What the interceptor knows about one call while it runs."""

    def __init__(self, method: str, context: grpc.ServicerContext) -> None:
        self.method = method
        self.context = context
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK

    def trailer(self, count: StatementCount) -> tuple[tuple[str, str], ...]:
        return ((STATEMENTS_TRAILER, str(count.value)),)

    def fail(self, error: BaseException, count: StatementCount) -> None:
        """Ends the call with `error` as a google.rpc.Status (raises)."""
        status = to_status_proto(error, request_id.get())
        self.code = grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == status.code))
        if self.code == grpc.StatusCode.INTERNAL:
            log.error(
                "unexpected error in %s (request id %s)",
                self.method,
                request_id.get(),
                exc_info=error,
            )
        self.context.abort_with_status(to_grpc_status(status, self.trailer(count)))

    def finish(self, count: StatementCount) -> None:
        if not _code_set(self.context) and not self.context.is_active():
            self.code = grpc.StatusCode.CANCELLED
        record_call(self.method, self.code, time.perf_counter() - self.started, count.value)


def record_call(method: str, code: grpc.StatusCode, seconds: float, statements: int) -> None:
    """A finished call's metrics and its log line (scripts/compare_server_modes.py's asyncio
    interceptor records its calls with it too, so that both do the same work)."""
    CALLS.labels(method, code.name).inc()
    CALL_SECONDS.labels(method).observe(seconds)
    fields = {
        "method": method,
        "code": code.name,
        "duration_ms": round(seconds * 1000, 2),
        "statements": statements,
        "request_id": request_id.get(),
    }
    log.info(
        "call method=%s code=%s duration_ms=%.2f statements=%d request_id=%s",
        method,
        code.name,
        fields["duration_ms"],
        statements,
        fields["request_id"] or "-",
        extra=fields,
    )


def _add_trailer(context: grpc.ServicerContext, trailer: tuple[tuple[str, str], ...]) -> None:
    """Adds to what the handler put in the trailing metadata (a create's x-http-code)."""
    context.set_trailing_metadata(tuple(context.trailing_metadata() or ()) + trailer)


def _is_abort(error: BaseException, context: grpc.ServicerContext) -> bool:
    # context.abort() raises a bare Exception after setting the code: let it through.
    return _code_set(context) and type(error) is Exception


@contextmanager
def _call_scope(
    method: str, context: grpc.ServicerContext
) -> Iterator[tuple[_Call, StatementCount]]:
    """What every call runs inside: its request id, its statement count, its deadline, and
    the log line and metrics at its end."""
    rid, expected_ms = None, None
    for name, value in context.invocation_metadata() or ():  # one pass for both
        if name == "x-request-id":
            rid = str(value)
        elif name == EXPECTED_TIMEOUT_HEADER:
            expected_ms = str(value)
    token = request_id.set(rid)
    call = _Call(method, context)
    with statements_counted() as count:
        try:
            with deadline(_time_allowed(context.time_remaining(), expected_ms)):
                yield call, count
        finally:
            call.finish(count)
            request_id.reset(token)


def _time_allowed(remaining: float | None, expected_ms: str | None) -> float | None:
    """The call's remaining time: its gRPC deadline, or less when Envoy expects the request
    to be over sooner. A REST call carries no grpc-timeout (unless its client sends one); Envoy
    tells the server its route timeout in x-envoy-expected-rq-timeout-ms instead, and gives up
    on the request then, so the server's work must stop then too."""
    if expected_ms is not None and expected_ms.isascii() and expected_ms.isdigit():
        envoy_seconds = int(expected_ms) / 1000
        if 0 < envoy_seconds and (remaining is None or envoy_seconds < remaining):
            return envoy_seconds
    return remaining


class ShutdownGate:
    """Counts the service's calls in flight and, once closed, refuses new ones as UNAVAILABLE.

    grpcio, once stopped, cancels a call that reaches it before the client has seen the
    connection go (CANCELLED, which clients do not retry). Closing this gate first, and stopping
    grpcio only when the calls in flight are done, answers such a call UNAVAILABLE instead: the
    status that tells a client (and Envoy, for a read) to try again elsewhere. CallInterceptor
    admits only the service's calls through it: health is what tells balancers the server is
    going, so health and reflection pass.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._in_flight = 0
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no call of the service is in flight; False if some still are."""
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight == 0, timeout=max(timeout, 0.0))

    def admit(self, context: grpc.ServicerContext) -> None:
        """Counts the call in flight until it ends, or aborts it (raises) once closed."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._in_flight += 1
        if closed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        # Called once the call is over, however it ends (a streamed response included);
        # False when it is already over.
        if not context.add_callback(self._done):
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()


_Check = Callable[[grpc.ServicerContext], None]


def _wrap_unary(
    behavior: Callable[..., Any], method: str, admit: _Check, guard: _Check
) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        # First, outside the call's scope: a call refused at shutdown is neither logged nor
        # counted in the metrics.
        admit(context)
        with _call_scope(method, context) as (call, count):
            try:
                guard(context)
                _refuse_undecodable(request)
                response = behavior(request, context)
            except Exception as error:
                if _is_abort(error, context):
                    raise
                call.fail(error, count)
            _add_trailer(context, call.trailer(count))
            return response

    return handle


def _wrap_stream(
    behavior: Callable[..., Iterator[Any]], method: str, admit: _Check, guard: _Check
) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # Not a generator itself: the call is admitted (counted in flight) when grpcio calls
        # the handler, not later when it first asks for a response.
        admit(context)
        return respond(request, context)

    def respond(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with _call_scope(method, context) as (call, count):
            try:
                guard(context)
                _refuse_undecodable(request)
                yield from behavior(request, context)
            except Exception as error:
                if _is_abort(error, context):
                    raise
                call.fail(error, count)
            _add_trailer(context, call.trailer(count))

    return handle


class _Undecodable:
    """A request message that did not parse; the call answers INVALID_ARGUMENT for it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpcio answers a request it cannot parse with INTERNAL and a traceback in the log; a
    malformed message is the caller's mistake, so it is handed on to be refused properly."""
    if parse is None:
        return None

    def lenient(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as error:
            return _Undecodable(error)

    return lenient


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            [FieldViolation("request", "is not a valid protobuf message of this method's type")]
        )


def _open(_context: grpc.ServicerContext) -> None:
    pass


class CallInterceptor(grpc.ServerInterceptor):
    """`rights` maps each method of the service to the right it needs; those methods go
    through `gate` (when given), then the access policy. Others (health, reflection) are open
    and never refused at shutdown; every call is logged and measured."""

    def __init__(
        self, policy: AccessPolicy, rights: Mapping[str, Right], gate: ShutdownGate | None = None
    ) -> None:
        self._policy = policy
        self._rights = rights
        self._admit = _open if gate is None else gate.admit

    def _checks(self, method: str) -> tuple[_Check, _Check]:
        """The method's admission at the gate and its access check, in that order."""
        needed = self._rights.get(method)
        if needed is None:
            return _open, _open

        def guard(context: grpc.ServicerContext) -> None:
            self._policy.check(needed, metadata_value(context, "authorization"))

        return self._admit, guard

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        admit, guard = self._checks(method)
        kwargs = {
            "request_deserializer": handler.request_deserializer
            if handler.request_streaming
            else _lenient(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, admit, guard), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, admit, guard), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, admit, guard), **kwargs
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method, admit, guard), **kwargs
        )
