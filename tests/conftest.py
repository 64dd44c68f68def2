"""Fixtures: every test runs on SQLite and on PostgreSQL (ids `sqlite` / `postgresql`).

- `shared_server` / `stub`: one server per backend for the session; tests isolate themselves
  by creating their own customers (unique emails) and filtering by customer_id.
- `start_server(**env)`: a server of the current backend over a FRESH database, stopped at the
  end of the test (summary, statement counts, seed guard configurations, shutdown).

PostgreSQL comes from TEST_DATABASE_URL (default: the local server's `test` database); the
session creates databases of its own there and drops them at the end. When it cannot be
reached, CI=true fails the run; elsewhere the PostgreSQL half is skipped, loudly. The modules
of THROUGH_PGBOUNCER run a third time (id `pgbouncer`) through a PgBouncer of the session's own
(tests/pgbouncer.py) in front of that server.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness
import pytest
import sqlalchemy as sa
from harness import OrdersServer, PostgresDatabases, ServerFactory, SqliteDatabases
from pgbouncer import PgBouncerDatabases, PgBouncerUnavailable

BACKENDS = ("sqlite", "postgresql")
# These modules also run against PostgreSQL through a real PgBouncer in transaction mode
# (backend id `pgbouncer`, ORDERS_TRANSACTION_POOLING=1): between them every RPC, deadlines,
# seeds and errors, over gRPC and REST.
THROUGH_PGBOUNCER = frozenset(
    {
        "test_customers.py",
        "test_orders.py",
        "test_list_orders.py",
        "test_summary.py",
        "test_deadlines.py",
        "test_errors.py",
        "test_seed.py",
        "test_gateway_rest.py",
        "test_events.py",
    }
)


@pytest.hookimpl(tryfirst=True)  # ahead of the fixture's own params, which it then replaces
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    if "databases" not in metafunc.fixturenames or definition.path.name not in THROUGH_PGBOUNCER:
        return
    for mark in definition.iter_markers("parametrize"):
        if mark.args and "databases" in str(mark.args[0]):
            return  # a test that chose its backends itself
    definition.add_marker(
        pytest.mark.parametrize("databases", (*BACKENDS, "pgbouncer"), indirect=True)
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fast: in process, no server or Envoy started (scripts/test --fast)"
    )


_postgres_skipped: list[str] = []
_log_offsets = pytest.StashKey[dict[int, int]]()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session", params=BACKENDS)
def databases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqliteDatabases | PostgresDatabases]:
    if request.param == "sqlite":
        yield SqliteDatabases(tmp_path_factory.mktemp("sqlite"))
        return
    url = os.environ.get("TEST_DATABASE_URL", harness.DEFAULT_TEST_DATABASE_URL)
    shown = sa.make_url(url).render_as_string(hide_password=True)
    try:
        PostgresDatabases(url).check()
    except Exception as exc:  # any failure to reach it: refused, auth, DNS, timeout
        reason = f"PostgreSQL at {shown} is unreachable ({type(exc).__name__}: {exc})".strip()
        if _in_ci():
            pytest.fail(
                f"{reason}; CI=true requires the PostgreSQL half of the suite", pytrace=False
            )
        if not _postgres_skipped:
            _postgres_skipped.append(reason)
            warnings.warn(f"SKIPPING every PostgreSQL test: {reason}", stacklevel=1)
        pytest.skip(f"PostgreSQL NOT TESTED: {reason}")
    dbs = PostgresDatabases(url) if request.param == "postgresql" else _through_pgbouncer(url)
    yield dbs
    dbs.close()


def _through_pgbouncer(url: str) -> PgBouncerDatabases:
    """PgBouncer (installed by apt-get when missing) in front of the test PostgreSQL. Without
    it CI=true fails; elsewhere these tests are skipped, loudly."""
    try:
        return PgBouncerDatabases(url)
    except PgBouncerUnavailable as exc:
        if _in_ci():
            pytest.fail(f"{exc}; CI=true requires the PgBouncer tests", pytrace=False)
        warnings.warn(f"SKIPPING the tests through PgBouncer: {exc}", stacklevel=1)
        pytest.skip(f"PgBouncer NOT TESTED: {exc}")


@pytest.fixture(scope="session")
def backend(databases: SqliteDatabases | PostgresDatabases) -> str:
    return databases.kind


@pytest.fixture(scope="session")
def server_factory(
    databases: SqliteDatabases | PostgresDatabases, log_dir: Path
) -> Iterator[ServerFactory]:
    factory = ServerFactory(databases, log_dir)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def shared_server(server_factory: ServerFactory) -> OrdersServer:
    return server_factory.start("shared")


@pytest.fixture
def stub(shared_server: OrdersServer) -> Any:
    return shared_server.stub


@pytest.fixture
def start_server(server_factory: ServerFactory) -> Iterator[Callable[..., OrdersServer]]:
    """start_server(NAME=value, ...) -> a server over a fresh database with that environment."""
    started: list[OrdersServer] = []

    def start(**env: str) -> OrdersServer:
        server = server_factory.start("fresh", env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --------------------------------------------------------------------------------------------
# What the servers logged during a failing test goes into its report.


@pytest.fixture(autouse=True)
def _remember_server_logs(request: pytest.FixtureRequest) -> None:
    request.node.stash[_log_offsets] = {id(s): s.log_size() for s in harness.ALL_SERVERS}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        offsets = item.stash.get(_log_offsets, {})
        for server in harness.ALL_SERVERS:
            since = offsets.get(id(server), 0)
            if server.log_size() > since:
                report.sections.append(
                    (f"server log: {server.name}", server.log_text(since=since, limit=4000))
                )
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _postgres_skipped:
        terminalreporter.section("POSTGRESQL NOT TESTED", sep="!", red=True, bold=True)
        terminalreporter.write_line(_postgres_skipped[0], red=True, bold=True)
        terminalreporter.write_line(
            "Every PostgreSQL test was skipped. Start PostgreSQL or set TEST_DATABASE_URL;"
            " with CI=true this fails the run.",
            red=True,
            bold=True,
        )
