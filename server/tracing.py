"""Traces (OpenTelemetry), sent by OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Off (the variable unset), `tracer` stays None: nothing of OpenTelemetry is imported, no tracer
provider is installed, and each hook below costs one test of that global.

On, each RPC is a SERVER span, the child of the caller's W3C `traceparent` (Envoy's span for a
request through the gateway); under it one span per database read or write, and under those
one span per SQL statement: its text with placeholders, never values, and the rows it returned
or changed. A seed adds a span per phase. The sampler, exporter and batching come from the
standard OTEL_* variables (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_SERVICE_NAME,
OTEL_EXPORTER_OTLP_*, OTEL_BSP_*), read by the SDK itself.

The spans are made here rather than by opentelemetry-instrumentation-grpc, -sqlalchemy or
-psycopg, which do not fit this server: the gRPC one is a second interceptor that rewraps every
handler and never sees a status sent with abort_with_status (every error here), so it reports
failed calls as OK; the database ones put the driver's error text in the span's status (a
unique violation's text carries the row's values, an email among them), record no row counts,
and miss the read path, which runs on the driver's own connection (psycopg's, or SQLite's
`connection.execute`). Attribute names follow the semantic conventions those use.

Nothing personal goes into an attribute: statements are templates, a filter's value is never
an attribute, an error is its gRPC code or its exception's type (never its message), and the
caller's token is named by the right it holds, never by its text.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from sqlalchemy import Engine

__all__ = [
    "Phases",
    "configure",
    "database_work",
    "end_call",
    "instrument_engine",
    "recording",
    "shutdown",
    "start_call",
    "statement",
    "tracer",
]

log = logging.getLogger("orders.tracing")

tracer: Tracer | None = None
_provider: TracerProvider | None = None
# Whether the current call is sampled: what the hooks below ask before making anything, at the
# cost of a context variable's read (an unsampled call makes its own span and nothing else).
_sampled: contextvars.ContextVar[bool] = contextvars.ContextVar("orders_sampled", default=False)
_T = TypeVar("_T")

DEFAULT_SERVICE_NAME = "orders-server"


def enabled_by(env: Mapping[str, str]) -> bool:
    """Whether these variables ask for traces: an OTLP endpoint, and the SDK not disabled."""
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    return bool(endpoint and endpoint.strip()) and not disabled and exporter != "none"


def configure(env: Mapping[str, str] = os.environ) -> bool:
    """Installs the tracer provider and the OTLP exporter when `env` asks for traces; once per
    process (each server process has its own exporter thread). Returns whether tracing is on."""
    global tracer, _provider
    if tracer is not None:
        return True
    if not enabled_by(env):
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))  # sampler: OTEL_TRACES_*
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    tracer = provider.get_tracer("orders.server")
    log.info("traces go to %s", _endpoint(env))
    return True


def _endpoint(env: Mapping[str, str]) -> str:
    return (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or ""
    )


def shutdown(timeout_seconds: float = 5.0) -> None:
    """Sends the spans still queued (a stopping process ends without the interpreter's exit
    handlers)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_seconds * 1000))
        _provider.shutdown()


# ---- one RPC ------------------------------------------------------------------------------


def _api() -> tuple[Any, Any, Any]:
    """opentelemetry's trace, propagate and context modules, imported on first use."""
    global _modules
    if _modules is None:
        from opentelemetry import context, propagate, trace

        _modules = (trace, propagate, context)
    return _modules


_modules: tuple[Any, Any, Any] | None = None


def start_call(
    method: str, traceparent: str | None, tracestate: str | None
) -> tuple[Span, Any, Any] | None:
    """The RPC's SERVER span, current until end_call: the child of the caller's traceparent
    when there is one (the global propagator reads it: W3C trace context by default). None
    when the sampler leaves the call out: then nothing is made current, and nothing below it
    makes a span either."""
    assert tracer is not None
    trace, propagate, context = _api()
    parent: Context | None = None
    if traceparent is not None:
        carrier = {"traceparent": traceparent}
        if tracestate is not None:
            carrier["tracestate"] = tracestate
        parent = propagate.extract(carrier)
    full_name = method.lstrip("/")
    # The attributes only once sampled: the SDK copies them even for a span it drops.
    span = tracer.start_span(full_name, context=parent, kind=trace.SpanKind.SERVER)
    if not span.is_recording():
        return None
    service, _, name = full_name.partition("/")
    span.set_attributes({"rpc.system": "grpc", "rpc.service": service, "rpc.method": name})
    token = context.attach(trace.set_span_in_context(span, parent))
    return span, token, _sampled.set(True)


def end_call(
    span: Span,
    token: Any,
    sampled: Any,
    code_name: str,
    code_number: int,
    request_id: str | None,
    token_name: str | None,
    statements: int,
) -> None:
    """Ends the RPC's span: its gRPC status code (a failed call's span is an error, described
    by the code's name alone: a message may quote the caller's input), its request id, the
    right of the token it came with, and how many SQL statements it ran."""
    from opentelemetry import context
    from opentelemetry.trace import Status, StatusCode

    try:
        span.set_attribute("rpc.grpc.status_code", code_number)
        span.set_attribute("orders.sql_statements", statements)
        if request_id is not None:
            span.set_attribute("orders.request_id", request_id)
        if token_name is not None:
            span.set_attribute("orders.token", token_name)
        if code_number != 0:
            span.set_attribute("error.type", code_name)
            span.set_status(Status(StatusCode.ERROR, code_name))
        span.end()
    finally:
        _sampled.reset(sampled)
        context.detach(token)


# ---- the database -------------------------------------------------------------------------


def recording() -> bool:
    """Whether the current call is sampled (what the hooks check before anything else)."""
    return _sampled.get()


@contextmanager
def database_work(kind: str, work: Any, system: str) -> Iterator[Any]:
    """`work` (a read's or a write's context manager) inside a span of its own, when the call
    is sampled; the statements it runs are that span's children."""
    if not recording():
        with work as value:
            yield value
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    assert tracer is not None
    with tracer.start_as_current_span(
        f"db.{kind}",
        kind=trace.SpanKind.INTERNAL,
        attributes={"db.system": system},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            with work as value:
                yield value
        except BaseException as error:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise


_names: dict[str, str] = {}


def _operation(text: str) -> str:
    """SELECT, INSERT, COPY, ...: the statement's first word."""
    name = _names.get(text)
    if name is None:
        words = text.split(None, 1)
        name = _names[text] = words[0].upper() if words else "SQL"
        if len(_names) > 10_000:  # statements are templates: a few dozen in practice
            _names.clear()
    return name


def statement(
    system: str, text: str, run: Callable[[], _T], rows: Callable[[_T], int | None]
) -> _T:
    """Runs one SQL statement (`run`) in a CLIENT span when the call is sampled: its text
    (placeholders, no values), and `rows(result)` as the rows it returned."""
    if not recording():
        return run()
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    assert tracer is not None
    operation = _operation(text)
    span = tracer.start_span(
        operation,
        kind=trace.SpanKind.CLIENT,
        attributes={"db.system": system, "db.operation": operation, "db.statement": text},
    )
    try:
        result = run()
    except BaseException as error:
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
        raise
    count = rows(result)
    if count is not None and count >= 0:
        span.set_attribute("db.response.returned_rows", count)
    span.end()
    return result


def instrument_engine(engine: Engine) -> None:
    """A CLIENT span per statement SQLAlchemy sends on `engine` (the writes), as `statement`
    makes them for the read path; the driver's error text stays out of it."""
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
    from sqlalchemy import event

    system = "sqlite" if engine.dialect.name == "sqlite" else "postgresql"

    def before(
        _conn: Any, _cursor: Any, text: str, _params: Any, context: Any, _many: bool
    ) -> None:
        if context is None or not recording():
            return
        assert tracer is not None
        operation = _operation(text)
        context._orders_span = tracer.start_span(
            operation,
            kind=trace.SpanKind.CLIENT,
            attributes={"db.system": system, "db.operation": operation, "db.statement": text},
        )

    def after(_conn: Any, cursor: Any, _text: str, _params: Any, context: Any, _many: bool) -> None:
        span = getattr(context, "_orders_span", None)
        if span is None:
            return
        context._orders_span = None
        # A statement that returns rows (RETURNING) has its count only once they are fetched.
        rowcount = getattr(cursor, "rowcount", -1)
        if cursor.description is None and isinstance(rowcount, int) and rowcount >= 0:
            span.set_attribute("db.response.returned_rows", rowcount)
        span.end()

    def failed(exception_context: Any) -> None:
        span = getattr(exception_context.execution_context, "_orders_span", None)
        if span is None:
            return
        exception_context.execution_context._orders_span = None
        kind = type(exception_context.original_exception).__name__
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
        span.end()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "handle_error", failed)


# ---- the seed -----------------------------------------------------------------------------


class Phases:
    """A seed's phases as consecutive child spans of the current one (`seed.<phase>`), each
    current while it lasts, so that its statements are its children: enter() ends the phase
    before. A no-op when tracing is off or the call is not sampled."""

    __slots__ = ("_parent", "_span", "_token")

    def __init__(self) -> None:
        self._span: Span | None = None
        self._token: Any = None
        self._parent: Context | None = None
        if tracer is not None and recording():
            from opentelemetry import context

            self._parent = context.get_current()

    def enter(self, phase: str, rows: int | None = None) -> None:
        """Ends the phase before (with the `rows` it wrote) and starts `phase`."""
        if self._parent is None:
            return
        from opentelemetry import context, trace

        assert tracer is not None
        self.close(rows=rows)
        self._span = tracer.start_span(f"seed.{phase}", context=self._parent)
        self._token = context.attach(trace.set_span_in_context(self._span, self._parent))

    def close(self, error: BaseException | None = None, *, rows: int | None = None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        context.detach(self._token)
        if rows is not None:
            span.set_attribute("orders.rows", rows)
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
