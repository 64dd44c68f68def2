"""docs/openapi.yaml: generated from the protos' google.api.http routes (scripts/openapi),
never stale, and true: schemathesis fuzzes every route through Envoy into a server on
PostgreSQL, and no answer is a 5xx or strays from the document.

The bounded run tries up to 10 generated cases per operation besides schemathesis' coverage and
stateful phases (a fixed seed: the same cases every run); with ORDERS_RELIABILITY_LONG=1
(scripts/reliability) or ORDERS_FUZZ_REST_SECONDS it fuzzes for that long instead (300 s). The
number of cases tried is a figure of the run (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import figures
import yaml
from gateway_stack import Gateway
from harness import ROOT, OrdersServer, ServerFactory, run_seed, seed_request
from invariants import assert_invariants
from orders.v1 import orders_pb2 as pb

DOCUMENT = ROOT / "docs" / "openapi.yaml"
HERE = Path(__file__).resolve().parent
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "ndjson_stream_conformance",  # schemathesis_hooks.py: every line of the Seed stream
    # Any method a path does not document is a 405 with `Allow`; OPTIONS' `Allow` is exactly the
    # documented methods.
    "unsupported_method",
    "allow_header_conformance",
]
# The methods the coverage phase sends where a path does not document them: schemathesis' own
# list but QUERY, which Envoy refuses before routing unless it carries a Content-Type (a 400).
CONFIG = """
[phases.coverage]
unexpected-methods = ["get", "put", "post", "delete", "options", "patch", "trace"]
"""


def test_openapi_document_is_current() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/openapi.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (
        "docs/openapi.yaml is stale: run scripts/openapi and commit it\n" + done.stderr[-4000:]
    )


def test_openapi_document_has_one_operation_per_rpc_at_its_route() -> None:
    document = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.")
    with (ROOT / "pyproject.toml").open("rb") as file:
        assert document["info"]["version"] == tomllib.load(file)["project"]["version"]
    # The RPCs' own operations; HEAD and OPTIONS are Envoy's, on every path (below).
    operations = {
        op["operationId"]: (verb.upper(), path)
        for path, item in document["paths"].items()
        for verb, op in item.items()
        if verb not in ("head", "options")
    }
    service = pb.DESCRIPTOR.services_by_name["OrdersService"]
    assert set(operations) == {m.name for m in service.methods}
    assert operations["CancelOrder"] == ("POST", "/api/orders/{id}/cancel/")
    assert operations["GetSummary"] == ("GET", "/api/orders/summary/")
    assert "201" in document["paths"]["/api/orders/"]["post"]["responses"]
    order = document["components"]["schemas"]["Order"]["properties"]
    assert order["id"]["type"] == "string", "int64 renders as a JSON string"
    assert order["status"]["allOf"][0]["$ref"].endswith("Order.Status")
    seed = document["paths"]["/api/dev/seed/"]["post"]["responses"]["200"]
    assert list(seed["content"]) == ["application/x-ndjson"]
    for path, item in document["paths"].items():
        assert "204" in item["options"]["responses"], path
        assert ("head" in item) == ("get" in item), path
    assert "Allow" in document["components"]["responses"]["Error405"]["headers"]


def _run_schemathesis(
    target: str, report: Path, seed: int | None, seconds: int | None, examples: int | None
) -> dict:
    env = dict(os.environ)
    env["SCHEMATHESIS_HOOKS"] = "schemathesis_hooks"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["ORDERS_OPENAPI"] = str(DOCUMENT)
    env.pop("HTTP_PROXY", None)
    env.pop("http_proxy", None)
    config = report.parent / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(config),
        "run",
        str(DOCUMENT),
        "--url",
        target,
        "--checks",
        ",".join(CHECKS),
        "--request-timeout",
        "30",
        # An open-ended stream: every case would wait out the request timeout. Its bad input
        # (cursors, filters) is tested through Envoy in tests/gateway/test_gateway_events.py.
        "--exclude-operation-id",
        "WatchOrders",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    if seed is not None:
        command += ["--seed", str(seed)]
    if seconds is not None:  # fuzzing and stateful testing repeat until the time is spent
        command += ["--max-time", str(seconds)]
    if examples is not None:
        command += ["--max-examples", str(examples)]
    done = subprocess.run(
        command,
        cwd=report.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=(seconds or 0) + 240,
    )
    assert report.exists(), f"schemathesis wrote no report (exit {done.returncode})\n{done.stdout}"
    result = json.loads(report.read_text(encoding="utf-8"))
    result["_output"] = done.stdout[-12000:] + done.stderr[-4000:]
    result["_exit"] = done.returncode
    return result


def test_schemathesis_through_envoy_on_postgresql(
    postgres_servers: ServerFactory,
    start_gateway: Callable[[OrdersServer], Gateway],
    tmp_path: Path,
) -> None:
    # A small row cap: the fuzzer's seeds stay cheap, the bigger ones are refused (a 400).
    server = postgres_servers.start("fuzz-rest", {"ORDERS_SEED_MAX_ROWS": "500"})
    # Rows for the generated ids to find: customers 1-30, orders 1-90, in every status.
    run_seed(server.stub, seed_request(30, 3, 2)).expect_done()
    gateway = start_gateway(server)
    # Bounded by size (so a loaded machine runs the same cases, only slower), or in the long
    # run by time.
    seconds = os.environ.get("ORDERS_FUZZ_REST_SECONDS") or figures.scaled(None, 300)
    examples = None if seconds else 10
    seed = None if figures.LONG else 20261126
    result = _run_schemathesis(
        gateway.config.rest_url,
        tmp_path / "st.json",
        seed,
        int(seconds) if seconds else None,
        examples,
    )

    cases = result["test_cases"]
    figures.record(
        "rest-fuzz (schemathesis, Envoy + PostgreSQL)",
        seconds=round(result["running_time"], 1),
        cases=cases["generated"],
        with_failures=cases["with_failures"],
        errored=cases["errored"],
        seed=result["seed"],
    )
    assert not result["failures"] and not result["errors"] and result["_exit"] == 0, (
        f"schemathesis found failures: {json.dumps(result['failures'], indent=1)}\n"
        f"errors: {result['errors']}\n{result['_output']}"
    )
    assert cases["generated"] >= 150, f"too few cases were tried: {cases}"
    assert server.process is not None and server.process.poll() is None, "the server died"
    assert_invariants(server)
