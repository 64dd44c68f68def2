"""One interceptor around every call: admits it (or not, at shutdown), checks its rights, sets
its per-call state (server/calls.py), maps its errors, and records it (metrics, log line).

One interceptor, not one per concern, and straight-line code rather than nested context
managers: grpcio runs every interceptor on every call and each re-wraps the handler, and the
service's queries are cheap enough that the machinery around a call is what shows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import grpc

from .. import calls, tracing
from ..domain.access import AccessPolicy, Right
from ..domain.errors import FieldViolation, InvalidArgument
from ..observability import CALL_SECONDS, CALLS
from ..storage.replica import UNKNOWN_POSITION, parse_lsn
from .status import to_grpc_status, to_status_proto

__all__ = [
    "LSN_TRAILER",
    "MIN_LSN_HEADER",
    "STATEMENTS_TRAILER",
    "CallInterceptor",
    "ShutdownGate",
    "metadata_value",
]

STATEMENTS_TRAILER = "orders-sql-statements"
# Read-your-writes with a read replica: a write answers with where its commit left the
# primary's WAL (trailing metadata, so that it leaves with the response); a read that sends it
# back is answered by the replica only once the replica has replayed that far.
LSN_TRAILER = "x-orders-lsn"
MIN_LSN_HEADER = "x-orders-min-lsn"
# Set by Envoy's router on every request it sends with a route timeout (REST routes: 60 s).
EXPECTED_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"

log = logging.getLogger("orders.calls")


def metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return None


def _code_set(context: grpc.ServicerContext) -> bool:
    # ServicerContext.code() exists at run time (grpcio >= 1.38) but not in the stubs.
    return cast(Any, context).code() is not None


def _begin(
    context: grpc.ServicerContext,
) -> tuple[calls.Call, str | None, tuple[str | None, str | None]]:
    """The call's state from its metadata, read in one pass, its authorization header, and
    its W3C trace context (traceparent, tracestate)."""
    request_id = expected_ms = authorization = min_lsn = traceparent = tracestate = None
    for name, value in context.invocation_metadata() or ():
        if name == "x-request-id":
            request_id = str(value)
        elif name == EXPECTED_TIMEOUT_HEADER:
            expected_ms = str(value)
        elif name == "authorization" and authorization is None:
            authorization = str(value)
        elif name == MIN_LSN_HEADER:
            min_lsn = str(value)
        elif name == "traceparent":
            traceparent = str(value)
        elif name == "tracestate":
            tracestate = str(value)
    seconds = _time_allowed(context.time_remaining(), expected_ms)
    call = calls.Call(request_id, seconds)
    if min_lsn is not None:
        try:
            call.min_lsn = parse_lsn(min_lsn)
        except ValueError:
            call.min_lsn = UNKNOWN_POSITION  # no replica can be known to be that far
    return call, authorization, (traceparent, tracestate)


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


def _failure(error: BaseException, method: str, call: calls.Call) -> tuple[grpc.StatusCode, Any]:
    """The code `error` ends the call with, and the status to abort it with: a
    google.rpc.Status, with the statement count in the trailer."""
    status = to_status_proto(error, call.request_id)
    code = _CODE_OF_NUMBER[status.code]
    if code == grpc.StatusCode.INTERNAL:
        log.error("unexpected error in %s (request id %s)", method, call.request_id, exc_info=error)
    return code, to_grpc_status(status, _trailer(call))


_CODE_OF_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _trailer(call: calls.Call) -> tuple[tuple[str, str], ...]:
    return ((STATEMENTS_TRAILER, str(call.statements)),)


def _add_trailer(context: grpc.ServicerContext, call: calls.Call) -> None:
    """Adds to what the handler put in the trailing metadata (a create's x-http-code)."""
    trailer = _trailer(call)
    if call.lsn is not None:
        trailer += ((LSN_TRAILER, call.lsn),)
    context.set_trailing_metadata(tuple(context.trailing_metadata() or ()) + trailer)


def _is_abort(error: BaseException, context: grpc.ServicerContext) -> bool:
    # context.abort() raises a bare Exception after setting the code: let it through.
    return _code_set(context) and type(error) is Exception


class _Recorder:
    """A finished call's metrics and log line. The labelled metrics are looked up once per
    method and code (prometheus_client's labels() costs as much as the increment). A call that
    ends OK is logged at DEBUG: at INFO its JSON line cost more than the rest of the machinery
    together, and Envoy's access log already has every REST request; any other outcome is
    logged at INFO."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._histograms: dict[str, Any] = {}

    def __call__(
        self, method: str, code: grpc.StatusCode, seconds: float, call: calls.Call
    ) -> None:
        counter = self._counters.get((method, code))
        if counter is None:
            counter = self._counters[method, code] = CALLS.labels(method, code.name)
        counter.inc()
        histogram = self._histograms.get(method)
        if histogram is None:
            histogram = self._histograms[method] = CALL_SECONDS.labels(method)
        histogram.observe(seconds)
        level = logging.DEBUG if code == grpc.StatusCode.OK else logging.INFO
        if not log.isEnabledFor(level):
            return
        duration_ms = round(seconds * 1000, 2)
        log.log(
            level,
            "call method=%s code=%s duration_ms=%.2f statements=%d request_id=%s",
            method,
            code.name,
            duration_ms,
            call.statements,
            call.request_id or "-",
            extra={
                "method": method,
                "code": code.name,
                "duration_ms": duration_ms,
                "statements": call.statements,
                "request_id": call.request_id,
            },
        )


def _outcome(context: grpc.ServicerContext, code: grpc.StatusCode) -> grpc.StatusCode:
    """CANCELLED for a call that ended without a code of its own and is no longer active (its
    client went away)."""
    if code == grpc.StatusCode.OK and not context.is_active() and not _code_set(context):
        return grpc.StatusCode.CANCELLED
    return code


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


_Admit = Callable[[grpc.ServicerContext], None]
_Guard = Callable[[str | None], Right | None]


def _responder(
    behavior: Callable[..., Iterator[Any]],
    method: str,
    guard: _Guard,
    record: _Recorder,
    replica: bool = False,
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """The call's responses inside its scope: its state set, its access checked, its error
    mapped, and the call recorded when the last response has gone (or the call failed).
    `replica`: the call's reads may be answered by a read replica."""

    def respond(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        call, authorization, trace_context = _begin(context)
        call.replica = replica
        token = calls.begin(call)
        # The call's span (tracing on, the service's methods: not the balancers' health
        # checks): current until the call ends, so that what the call does is its children.
        traced = (
            None
            if tracing.tracer is None or method.startswith("/grpc.")
            else tracing.start_call(method, *trace_context)
        )
        code = grpc.StatusCode.OK
        granted = None
        try:
            granted = guard(authorization)
            _refuse_undecodable(request)
            yield from behavior(request, context)
            _add_trailer(context, call)
        except Exception as error:
            if _is_abort(error, context):
                raise
            code, status = _failure(error, method, call)
            context.abort_with_status(status)
        finally:
            calls.end(token)
            outcome = _outcome(context, code)
            if traced is not None:
                tracing.end_call(
                    *traced,
                    outcome.name,
                    outcome.value[0],
                    call.request_id,
                    None if granted is None else granted.name.lower(),
                    call.statements,
                )
            record(method, outcome, time.perf_counter() - started, call)

    return respond


def _wrap_unary(
    behavior: Callable[..., Any],
    method: str,
    admit: _Admit,
    guard: _Guard,
    record: _Recorder,
    replica: bool = False,
) -> Callable[..., Any]:
    def single(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield behavior(request, context)

    respond = _responder(single, method, guard, record, replica)

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        # First: a call refused at shutdown is neither logged nor counted in the metrics.
        admit(context)
        (response,) = respond(request, context)  # to the end: trailer and record included
        return response

    return handle


def _wrap_stream(
    behavior: Callable[..., Iterator[Any]],
    method: str,
    admit: _Admit,
    guard: _Guard,
    record: _Recorder,
) -> Callable[..., Any]:
    respond = _responder(behavior, method, guard, record)

    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # Not a generator itself: the call is admitted (counted in flight) when grpcio calls
        # the handler, not later when it first asks for a response.
        admit(context)
        return respond(request, context)

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


def _admit_any(_context: grpc.ServicerContext) -> None:
    pass


def _allow_any(_authorization: str | None) -> Right | None:
    return None


class CallInterceptor(grpc.ServerInterceptor):
    """`rights` maps each method of the service to the right it needs; those methods go
    through `gate` (when given), then the access policy. Others (health, reflection) are open
    and never refused at shutdown; every call is recorded."""

    def __init__(
        self, policy: AccessPolicy, rights: Mapping[str, Right], gate: ShutdownGate | None = None
    ) -> None:
        self._policy = policy
        self._rights = rights
        self._admit = _admit_any if gate is None else gate.admit
        self._record = _Recorder()

    def _checks(self, method: str) -> tuple[_Admit, _Guard]:
        """The method's admission at the gate and its access check, in that order."""
        needed = self._rights.get(method)
        if needed is None:
            return _admit_any, _allow_any

        def guard(authorization: str | None) -> Right | None:
            return self._policy.check(needed, authorization)

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
            # The unary reads may be answered by a read replica; writes, seeds and streams
            # read the primary.
            replica = self._rights.get(method) == Right.READ
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, admit, guard, self._record, replica),
                **kwargs,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, admit, guard, self._record), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, admit, guard, self._record), **kwargs
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method, admit, guard, self._record), **kwargs
        )
