"""One interceptor around every call: logs it, counts its SQL statements, maps its errors.

Per-call state (request id, statement count) lives in ContextVars, as in grpc/grpc's
examples/python/interceptors.
"""

from __future__ import annotations

import contextvars
import logging
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

__all__ = ["STATEMENTS_TRAILER", "CallInterceptor", "metadata_value", "request_id"]

STATEMENTS_TRAILER = "orders-sql-statements"

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
        seconds = time.perf_counter() - self.started
        CALLS.labels(self.method, self.code.name).inc()
        CALL_SECONDS.labels(self.method).observe(seconds)
        fields = {
            "method": self.method,
            "code": self.code.name,
            "duration_ms": round(seconds * 1000, 2),
            "statements": count.value,
            "request_id": request_id.get(),
        }
        log.info(
            "call method=%s code=%s duration_ms=%.2f statements=%d request_id=%s",
            *(fields[k] or "-" for k in ("method", "code")),
            fields["duration_ms"],
            count.value,
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
    token = request_id.set(metadata_value(context, "x-request-id"))
    call = _Call(method, context)
    with statements_counted() as count:
        try:
            with deadline(context.time_remaining()):
                yield call, count
        finally:
            call.finish(count)
            request_id.reset(token)


def _wrap_unary(
    behavior: Callable[..., Any], method: str, guard: Callable[[grpc.ServicerContext], None]
) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
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
    behavior: Callable[..., Iterator[Any]],
    method: str,
    guard: Callable[[grpc.ServicerContext], None],
) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
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
    """`rights` maps a method's full name to the right it needs; methods not in it (health,
    reflection) are open."""

    def __init__(self, policy: AccessPolicy, rights: Mapping[str, Right]) -> None:
        self._policy = policy
        self._rights = rights

    def _guard(self, method: str) -> Callable[[grpc.ServicerContext], None]:
        needed = self._rights.get(method)
        if needed is None:
            return _open

        def guard(context: grpc.ServicerContext) -> None:
            self._policy.check(needed, metadata_value(context, "authorization"))

        return guard

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        guard = self._guard(method)
        kwargs = {
            "request_deserializer": handler.request_deserializer
            if handler.request_streaming
            else _lenient(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, guard), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, guard), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, guard), **kwargs
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method, guard), **kwargs
        )
