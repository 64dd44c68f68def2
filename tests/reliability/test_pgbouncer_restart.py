"""PgBouncer, in transaction mode between the server and PostgreSQL, restarted under a steady
load: the pooler's crash (SIGTERM, every connection cut at once) and its return, driven as
test_postgres_restart.py drives a crash of PostgreSQL itself, with the same checks: every
failed call is UNAVAILABLE (503 with code 14 over REST), never INTERNAL and never slow; the
server recovers by itself; no order is half-written and every acknowledged one exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import figures
import pytest
from gateway_stack import Gateway
from harness import DEFAULT_TEST_DATABASE_URL, OrdersServer, PostgresDatabases, new_customer
from load import Load
from pgbouncer import PgBouncerDatabases, PgBouncerUnavailable
from test_postgres_restart import _check_outcome, _crash_and_restart, _grpc_worker, _rest_worker


@pytest.fixture
def pooled() -> Iterator[PgBouncerDatabases]:
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    in_ci = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
    try:
        PostgresDatabases(url).check()
        databases = PgBouncerDatabases(url)
    except PgBouncerUnavailable as exc:
        if in_ci:
            pytest.fail(f"{exc}; CI=true requires this test", pytrace=False)
        pytest.skip(str(exc))
    except Exception as exc:  # PostgreSQL unreachable: the rules of the other PostgreSQL tests
        if in_ci:
            pytest.fail(f"PostgreSQL unreachable ({exc}); CI=true requires it", pytrace=False)
        pytest.skip(f"PostgreSQL NOT TESTED: {exc}")
    try:
        yield databases
    finally:
        databases.close()


def test_pgbouncer_restart_under_load_fails_only_unavailable_and_half_writes_nothing(
    pooled: PgBouncerDatabases,
    start_gateway: Callable[[OrdersServer], Gateway],
    reliability_logs: Path,
) -> None:
    url = pooled.create()
    server = OrdersServer(
        url,
        dict(pooled.server_env),
        reliability_logs / "pgbouncer-restart-server.log",
        "pgbouncer-restart",
        migrate=False,
    )
    server.start()
    load: Load | None = None
    try:
        gateway = start_gateway(server)
        customer = new_customer(server.stub)
        workers = {
            "grpc-1": _grpc_worker(server, customer.id),
            "grpc-2": _grpc_worker(server, customer.id),
            "rest": _rest_worker(gateway, customer.id),
        }
        load = Load(workers, max_seconds=figures.scaled(60, 300), pause=0.01).start()
        load.wait_for_calls(20, timeout=20)
        windows, recoveries = _crash_and_restart(
            pooled.pgbouncer,  # type: ignore[arg-type]  # the same start/stop as a cluster
            load,
            set(workers),
            cycles=figures.scaled(1, 3),
        )
        time.sleep(1.0)
        calls = load.stop()
        direct = pooled.direct_url(url)
        _check_outcome(server, direct, calls, windows, recoveries, customer.id, "pgbouncer-crash")
    finally:
        if load is not None:
            load.stop()
        server.stop()
