"""The gRPC server: the orders service, health, reflection, graceful shutdown."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from orders.v1 import orders_pb2, orders_pb2_grpc
from sqlalchemy import event

from ..config import Settings
from ..domain.access import AccessPolicy, Right, parse_api_tokens
from ..domain.book import OrderBook
from ..observability import DB_CONNECTIONS_IN_USE, serve_metrics
from ..storage.database import Database
from .interceptor import CallInterceptor
from .servicer import OrdersServicer

__all__ = ["SERVICE_NAME", "OrdersServer"]

_SERVICE = orders_pb2.DESCRIPTOR.services_by_name["OrdersService"]
SERVICE_NAME = _SERVICE.full_name
_READS = {"GetCustomer", "ListCustomers", "GetOrder", "ListOrders", "GetSummary"}
_WRITES = {"CreateCustomer", "CreateOrder", "PayOrder", "ShipOrder", "CancelOrder", "ArchiveOrder"}


def _right(method: str) -> Right:
    """Every method of the service needs a right; one not named above needs the admin token."""
    if method in _READS:
        return Right.READ
    return Right.WRITE if method in _WRITES else Right.ADMIN


RIGHTS = {f"/{SERVICE_NAME}/{m.name}": _right(m.name) for m in _SERVICE.methods}
log = logging.getLogger("orders.server")
# After the last call of the service ends, before the process closes its connections.
_LAST_WRITES_SECONDS = 0.2


def _access_policy(settings: Settings) -> AccessPolicy:
    try:
        tokens = parse_api_tokens(settings.api_tokens)
    except OSError as exc:
        raise SystemExit(f"ORDERS_API_TOKENS names a file that cannot be read: {exc}") from None
    return AccessPolicy(
        api_tokens=tokens, admin_token=settings.admin_token, is_production=settings.is_production
    )


class ShutdownGate(grpc.ServerInterceptor):
    """Counts the service's calls in flight and, once closed, refuses new ones as UNAVAILABLE.

    grpcio, once stopped, cancels a call that reaches it before the client has seen the
    connection go (CANCELLED, which clients do not retry). Closing this gate first, and stopping
    grpcio only when the calls in flight are done, answers such a call UNAVAILABLE instead: the
    status that tells a client (and Envoy, for a read) to try again elsewhere. Health and
    reflection pass through: health is what tells balancers the server is going.
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

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._admit(handler.unary_unary), **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._admit(handler.unary_stream), **kwargs)
        return handler  # the service has no client-streaming method

    def _admit(self, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
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
            return behavior(request, context)

        return admitted

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()


class OrdersServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(
            settings.database_url,
            pool_size=settings.grpc_workers,
            transaction_pooling=settings.transaction_pooling,
        )
        event.listen(self.database.engine, "checkout", lambda *_: DB_CONNECTIONS_IN_USE.inc())
        event.listen(self.database.engine, "checkin", lambda *_: DB_CONNECTIONS_IN_USE.dec())
        self.book = book = OrderBook(
            self.database,
            seed_max_rows=settings.seed_max_rows,
            max_concurrent_seeds=settings.max_concurrent_seeds,
        )
        self.health = health.HealthServicer()
        self.gate = ShutdownGate()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="rpc"),
            # The gate first: a call it refuses at shutdown never reaches the service.
            interceptors=[self.gate, CallInterceptor(_access_policy(settings), RIGHTS)],
            # Several processes share the port (the kernel spreads connections over them);
            # a single one treats a port already in use as an error, not a second listener.
            options=[("grpc.so_reuseport", 1 if settings.grpc_processes > 1 else 0)],
        )
        orders_pb2_grpc.add_OrdersServiceServicer_to_server(OrdersServicer(book), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise SystemExit(f"cannot listen on {address}: is the port already in use?")
        # Each process also listens on a Unix socket of its own, so that Envoy can balance
        # over the processes evenly instead of leaving it to the kernel's connection hash.
        self.socket_path = settings.socket_path
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        if self.server.add_insecure_port(f"unix:{self.socket_path}") == 0:
            raise SystemExit(f"cannot listen on unix:{self.socket_path}")

    def start(self) -> None:
        if self.settings.worker_index < 0:  # a supervisor serves its workers' metrics
            serve_metrics(self.settings.metrics_host, self.settings.metrics_port)
        self.server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving gRPC on %s:%d and unix:%s (database %s, environment %s)",
            self.settings.grpc_host,
            self.port,
            self.socket_path,
            self.database.url.render_as_string(hide_password=True),
            self.settings.environment,
        )

    def stop(self) -> bool:
        """Stops in an order that costs no call: reports NOT_SERVING and keeps serving for
        ORDERS_DRAIN_SECONDS (balancers' health checks see it and stop sending calls here),
        then refuses new calls as UNAVAILABLE while those in flight finish, within
        ORDERS_SHUTDOWN_GRACE seconds; calls still running then are cancelled.

        Returns True when grpcio is left serving (every call is over; the gate refuses new
        ones) for the exit of the process to close its connections: see serve_until_signalled.
        """
        self.health.enter_graceful_shutdown()
        drain = self.settings.drain_seconds
        if drain > 0:
            log.info("NOT_SERVING; serving on for %.1f s while balancers notice", drain)
            time.sleep(drain)
        self.gate.close()
        grace = self.settings.shutdown_grace
        if self.gate.wait_idle(grace):
            # Every call of the service is over. grpcio's own stop would now cancel a call that
            # reached the server in the meantime (CANCELLED, which no client retries; grpcio
            # does so to any call not yet handed to Python: grpc/grpc#41785). Closing the
            # connections instead, with the process, answers such a call UNAVAILABLE. A moment
            # first, for the last answers to leave.
            time.sleep(_LAST_WRITES_SECONDS)
            left_serving = True
        else:
            log.warning("calls still running after the %.1f s grace; cancelling them", grace)
            self.server.stop(0).wait()
            left_serving = False
        self.book.stop_seeds()
        self.database.dispose()
        self.socket_path.unlink(missing_ok=True)
        log.info("stopped")
        return left_serving

    def serve_until_signalled(self) -> None:
        stopping = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; stopping", signal.Signals(signum).name)
            stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        # Polled: a signal that lands on one of grpc's threads only runs its Python handler
        # when the main thread next executes bytecode, which a bare wait() would never do.
        while not stopping.wait(0.2):
            pass
        if self.stop():
            # grpcio still holds its connections (see stop): the process ends here, closing
            # them, rather than in the interpreter's exit, which would stop grpcio first.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
