"""A smoke run of the benchmark (scripts/bench, `python -m bench`) at its internal `tiny` size:
every phase runs end to end against PostgreSQL, the table comes out with every row, the
statement-count targets (which do not depend on the machine's speed) pass, and the throwaway
databases are gone afterwards. The timing targets are not asserted: CI machines are shared.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import harness
import psycopg
import pytest

ROWS = (
    "seed 50x5x3",
    "seed: SQL statements whatever the size",
    "server RSS growth",
    "longest wait for a progress message",
    "GetSummary(50) gRPC, 1 server process",
    "GetSummary(50) gRPC, 2 server processes",
    "GetSummary(50) REST through Envoy",
    "GetSummary(50) p50 @1k",
    "GetSummary(50) vs GetOrder",
    "ListOrders no filter p50",
    "ListOrders status=PAID p50",
    "ListOrders email",
    "ListOrders page 100 (5 a page) p50",
    "ListOrders: SQL statements a page",
    "ListOrders email 'nobody-matches-this' (no customer) p50",
    "GetCustomer vs Health/Check p50",
    "ListOrders status=PAID page_size=50 (50 orders x 5 items) p50",
    "GetCustomer through Envoy (native gRPC) p50",
    "GetCustomer through Envoy (REST, one kept-alive HTTP/1.1 connection) p50",
    "server RSS over",
    "read replica: reads/s with writes running",
    "read replica: GetOrder, right after its write, with its position",
    "events: 50 watchers x",
    "events: commit -> delivery lag p99",
    "events: a transition's p50, outbox vs none",
    "GetSummary, tracing 1% (direct gRPC)",
    "ListOrders, tracing 100% (direct gRPC)",
)
# Without --django PATH the comparison with the Django service does not run: its rows say n/a.
DJANGO_ROWS = (
    "REST vs Django: customer detail p50",
    "REST vs Django: summary(50) p50",
    "REST vs Django: paid list of 50 p50",
    "REST vs Django: paid list of 50 + a broad email substring p50",
    "REST vs Django: paid list + an email matching nobody p50",
    "REST vs Django: summary(50), wrk -t2 -c16",
    "REST vs Django: paid list of 50, wrk -t2 -c16",
)


def _admin_url() -> str:
    return (
        os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or harness.DEFAULT_TEST_DATABASE_URL
    )


@pytest.mark.timeout(300)
def test_bench_tiny_runs_every_phase_and_cleans_up() -> None:
    url = _admin_url()
    try:
        psycopg.connect(harness.libpq_conninfo(url), connect_timeout=5).close()
    except psycopg.Error as exc:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"PostgreSQL at {url} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {url} is unreachable: {exc}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERS_")}
    env["BENCH_DATABASE_URL"] = url
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "tiny", "--no-install"],
        cwd=harness.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr[-4000:]}"
    assert "| workload | this project |" in out, out
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    for row in ROWS:
        assert any(row in line.split("|")[1] for line in lines), f"no row {row!r}:\n{out}"
    table = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines
    }
    statements = next(v for k, v in table.items() if k.startswith("seed: SQL statements"))
    assert statements[-1] == "PASS", statements
    pages = next(v for k, v in table.items() if k.startswith("ListOrders: SQL statements"))
    assert pages[-1] == "PASS", pages
    for row in DJANGO_ROWS:
        cells = next((v for k, v in table.items() if k.startswith(row)), None)
        assert cells is not None, f"no row {row!r}:\n{out}"
        assert cells[1] == "n/a" and cells[-1] == "n/a", cells
    assert re.search(r"^targets: \d+ PASS, \d+ FAIL, \d+ n/a$", out, re.M), out

    prefix = re.search(r"creating databases (orders_bench_[0-9a-f]+)_", done.stderr)
    assert prefix, done.stderr[-2000:]
    with psycopg.connect(harness.libpq_conninfo(url), autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix.group(1) + "%",)
        ).fetchall()
    assert not left, f"the benchmark left databases behind: {left}"
