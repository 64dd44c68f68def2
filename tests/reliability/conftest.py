"""Fixtures of the reliability tests: secrets and deadlines where they need
PostgreSQL or Envoy (points 2-3), fuzzing through Envoy and over gRPC, faults (a database
restarted, seeds interrupted, a replica killed) and concurrency (points 4-9).

Everything runs on loopback and is bounded in time. Each test keeps its own figures (cases
tried, failures, recovery times) with `figures.record`; they are printed at the end of the run
and, when ORDERS_RELIABILITY_REPORT names a file, written there as JSON (scripts/reliability
does that, with ORDERS_RELIABILITY_LONG=1 for the long variants).

- `postgres_servers`: a ServerFactory on PostgreSQL only (TEST_DATABASE_URL, the same rules as
  the root conftest: CI=true fails when it is unreachable, elsewhere the tests are skipped).
- `start_gateway(server)`: an Envoy rendered from envoy.yaml in front of one server, as
  tests/gateway does it (its helpers are reused from there).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from harness import DEFAULT_TEST_DATABASE_URL, ROOT, OrdersServer, PostgresDatabases, ServerFactory

# The gateway package at the top of the repository, and tests/gateway's helpers (gateway_stack,
# rest_client): this folder reuses them rather than copying them.
for path in (str(ROOT / "tests" / "gateway"), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

import figures  # noqa: E402
from gateway_stack import Gateway, start_envoy  # noqa: E402


@pytest.fixture(scope="session")
def postgres_servers(
    tmp_path_factory: pytest.TempPathFactory, log_dir: Path
) -> Iterator[ServerFactory]:
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    shown = sa.make_url(url).render_as_string(hide_password=True)
    databases = PostgresDatabases(url)
    try:
        databases.check()
    except Exception as exc:  # refused, auth, DNS, timeout
        reason = f"PostgreSQL at {shown} is unreachable ({type(exc).__name__}: {exc})"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"{reason}; CI=true requires the PostgreSQL tests", pytrace=False)
        warnings.warn(f"SKIPPING PostgreSQL reliability tests: {reason}", stacklevel=1)
        pytest.skip(f"PostgreSQL NOT TESTED: {reason}")
    factory = ServerFactory(databases, log_dir)
    yield factory
    factory.close()
    databases.close()


@pytest.fixture(scope="session")
def reliability_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reliability-logs")


@pytest.fixture
def start_gateway(reliability_logs: Path) -> Iterator[Callable[[OrdersServer], Gateway]]:
    """An Envoy in front of a server, stopped at the end of the test."""
    gateways: list[Gateway] = []

    def start(server: OrdersServer) -> Gateway:
        log = reliability_logs / f"envoy-{server.name}-{len(gateways) + 1}.log"
        gateway = Gateway(server, start_envoy(server.port, log))
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        gateway.envoy.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not figures.RECORDED:
        return
    terminalreporter.section("reliability figures")
    for line in figures.lines():
        terminalreporter.write_line(line)
    figures.write_report()
