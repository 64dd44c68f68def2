"""Logs as JSON lines and Prometheus metrics: what operators read.

Every call is one log line carrying the `x-request-id` Envoy sets (or the client sent), so a
REST request in Envoy's access log and its gRPC call here share one id. Metrics are served on
a loopback port; with several server processes, the supervisor serves all of theirs at once
(prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)

__all__ = [
    "CALLS",
    "CALL_SECONDS",
    "DB_CONNECTIONS_IN_USE",
    "DB_READS",
    "REPLICA_FALLBACKS",
    "REPLICA_LAG",
    "SEED_ROWS",
    "SEED_ROWS_PER_SECOND",
    "configure_logging",
    "serve_metrics",
]

CALLS = Counter(
    "orders_grpc_calls", "gRPC calls served, by method and status code", ["method", "code"]
)
CALL_SECONDS = Histogram(
    "orders_grpc_call_seconds",
    "gRPC call duration, by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SEED_ROWS = Counter("orders_seed_rows", "rows written by committed seeds", ["table"])
SEED_ROWS_PER_SECOND = Gauge(
    "orders_seed_rows_per_second",
    "rows per second of the last seed that committed",
    multiprocess_mode="mostrecent",
)
DB_READS = Counter(
    "orders_db_reads",
    "reads of the read RPCs with a read replica configured, by the database that answered",
    ["database"],
)
REPLICA_FALLBACKS = Counter(
    "orders_replica_fallbacks",
    "reads the primary answered instead of the replica, by reason: down, lag, lsn (not"
    " replayed as far as the caller's last write in time), error (failed on the replica)",
    ["reason"],
)
REPLICA_LAG = Gauge(
    "orders_replica_lag_seconds",
    "how far the read replica's replay is behind the primary, as last measured",
    multiprocess_mode="livemax",
)
DB_CONNECTIONS_IN_USE = Gauge(
    "orders_db_connections_in_use",
    "database connections checked out of the pool",
    multiprocess_mode="livesum",
)

# Attributes every LogRecord has; anything else on a record came through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object a line: time, level, logger, pid, message, and the call's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "text":
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(process)d %(name)s %(message)s")
        )
    else:
        handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def serve_metrics(host: str, port: int) -> bool:
    """Serves /metrics on host:port (0: not at all). In a supervisor of several processes
    (PROMETHEUS_MULTIPROC_DIR set) it serves the sum of every process's metrics. A port that
    is taken costs the metrics, not the service: it is logged and the server goes on."""
    if port == 0:
        return False
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        logging.getLogger("orders.metrics").warning(
            "metrics not served: cannot listen on %s:%d (%s)", host, port, exc
        )
        return False
    logging.getLogger("orders.metrics").info("metrics on http://%s:%d/metrics", host, port)
    return True
