"""The gRPC server: the orders service, health, reflection, graceful shutdown."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from datetime import timedelta
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from orders.v1 import orders_pb2, orders_pb2_grpc
from sqlalchemy import event

from orders_client.methods import METHODS

from .. import tracing
from ..config import Settings
from ..domain.access import AccessPolicy, Right, parse_api_tokens
from ..domain.book import OrderBook
from ..domain.events import EventHub
from ..observability import DB_CONNECTIONS_IN_USE, serve_metrics
from ..storage.database import Database
from .interceptor import CallInterceptor, ShutdownGate
from .servicer import OrdersServicer

__all__ = ["RIGHTS", "SERVICE_NAME", "OrdersServer"]

_SERVICE = orders_pb2.DESCRIPTOR.services_by_name["OrdersService"]
SERVICE_NAME = _SERVICE.full_name


def _right(method: str) -> Right:
    """Every method of the service needs a right: the method table's, and the admin token for
    a method the table lacks, so that a new RPC is closed until someone classifies it."""
    entry = METHODS.get(method)
    return Right.ADMIN if entry is None else Right[entry.access.name]


RIGHTS = {f"/{SERVICE_NAME}/{m.name}": _right(m.name) for m in _SERVICE.methods}
log = logging.getLogger("orders.server")
# After the last call of the service ends, before the process closes its connections.
_LAST_WRITES_SECONDS = 0.2


def _access_policy(settings: Settings) -> AccessPolicy:
    """Who may call what, from the settings' tokens."""
    try:
        tokens = parse_api_tokens(settings.api_tokens)
    except OSError as exc:
        raise SystemExit(f"ORDERS_API_TOKENS names a file that cannot be read: {exc}") from None
    return AccessPolicy(
        api_tokens=tokens, admin_token=settings.admin_token, is_production=settings.is_production
    )


class OrdersServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database = Database(
            settings.database_url,
            pool_size=settings.grpc_workers,
            transaction_pooling=settings.transaction_pooling,
            read_url=settings.read_database_url,
            max_replica_lag=settings.max_replica_lag,
            replica_wait=settings.replica_wait,
        )
        event.listen(self.database.engine, "checkout", lambda *_: DB_CONNECTIONS_IN_USE.inc())
        event.listen(self.database.engine, "checkin", lambda *_: DB_CONNECTIONS_IN_USE.dec())
        self.book = book = OrderBook(
            self.database,
            seed_max_rows=settings.seed_max_rows,
            max_concurrent_seeds=settings.max_concurrent_seeds,
        )
        self.events = EventHub(
            self.database,
            poll_seconds=settings.event_poll_seconds,
            heartbeat_seconds=settings.event_heartbeat_seconds,
            retention=timedelta(seconds=settings.event_retention_seconds),
            max_watchers=settings.max_watchers,
            listen=not settings.transaction_pooling,
        )
        self.health = health.HealthServicer()
        self.gate = ShutdownGate()
        # A watch holds its thread for as long as it streams: the watchers get threads of
        # their own on top of the workers, so that they never starve the other calls.
        threads = settings.grpc_workers + settings.max_watchers
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc"),
            # One interceptor: the gate, then access, logging and metrics, in a single wrap of
            # the handler per call. A call the gate refuses at shutdown never reaches the rest.
            interceptors=[CallInterceptor(_access_policy(settings), RIGHTS, self.gate)],
            # Several processes share the port (the kernel spreads connections over them);
            # a single one treats a port already in use as an error, not a second listener.
            # A larger request is RESOURCE_EXHAUSTED before it is read ("Received message
            # larger than max").
            options=[
                ("grpc.so_reuseport", 1 if settings.grpc_processes > 1 else 0),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
            ],
        )
        orders_pb2_grpc.add_OrdersServiceServicer_to_server(
            OrdersServicer(book, self.events), self.server
        )
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
        self.events.start()
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
        # Watches never end by themselves: ended now, UNAVAILABLE, their clients resume from
        # their last cursor on another replica (or this one, restarted).
        self.events.close()
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
        tracing.shutdown()  # the last spans, before the process ends without exit handlers
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
