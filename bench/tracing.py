"""What traces cost: GetSummary and ListOrders (a first page of 50) over direct gRPC against three
servers on one database, side by side: tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT), on with 1%
of the calls sampled (parentbased_traceidratio 0.01), and on with every call sampled. The
servers export by OTLP/gRPC to a receiver in this process that counts the spans and drops them.

Each workload runs on each server in turn, the order rotated every round, and a server's
figures are the medians of its rounds: throughput with the same closed-loop client (one load
process, 8 calls in flight), and the server process's CPU time per call. The verdict is on the
CPU per call: a server busy on its share of the cores serves in inverse proportion to it,
while its throughput also moves with whatever else runs on a shared machine. The client and
the receiver share the two cores with the server, so the 100% figure's throughput also pays
for the receiver's work.

`python -m bench.tracing [--size tiny|small|medium|large]` runs this phase alone on SQLite, or
on PostgreSQL with BENCH_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from .load import planned_start, run_load
from .report import Row, Table, verdict
from .stack import (
    BenchDatabases,
    CpuWindow,
    Server,
    migrate,
    process_tree,
    say,
    seed_through_rpc,
)

__all__ = ["TracingPhase"]


@dataclass(frozen=True)
class _Shape:
    customers: int  # seeded with 5 orders of 3 items each
    seconds: float  # of load per server, workload and round
    rounds: int


_SHAPES = {
    "tiny": _Shape(200, 1.0, 1),
    "small": _Shape(1000, 2.0, 2),
    "medium": _Shape(2000, 2.0, 6),
    "large": _Shape(5000, 3.0, 8),
}
# (label, the OTEL_* variables of its server); the first is the baseline.
CASES: tuple[tuple[str, dict[str, str]], ...] = (
    ("off", {}),
    ("1%", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}),
    ("100%", {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}),
)
WORKLOADS = (("GetSummary", "summary"), ("ListOrders", "list"))
MAX_COST_AT_1_PERCENT = 0.05


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that counts the spans it is sent and keeps none."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        n = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self._lock:
            self.spans += n
        return trace_service_pb2.ExportTraceServiceResponse()

    def stop(self) -> None:
        self._server.stop(0)


class TracingPhase:
    def __init__(self, size_name: str, log_dir: Path, dbs: BenchDatabases | None) -> None:
        """`dbs`: PostgreSQL databases of the bench's own; None: a SQLite file in `log_dir`."""
        self.shape = _SHAPES[size_name]
        self.log_dir = log_dir
        self.dbs = dbs
        self.figures: dict[str, Any] = {}
        self._servers: list[Server] = []
        self._sink: _Sink | None = None

    def run(self, table: Table) -> None:
        shape = self.shape
        log = self.log_dir / "tracing.log"
        if self.dbs is None:
            url = f"sqlite:///{self.log_dir / 'tracing.sqlite3'}"
        else:
            url = self.dbs.create("tracing")
        migrate(url, log)
        self._sink = sink = _Sink()
        endpoint = f"http://127.0.0.1:{sink.port}"
        for label, otel in CASES:
            env = {"ORDERS_GRPC_PROCESSES": "1", "ORDERS_METRICS_PORT": "0", **otel}
            if otel:
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
            server = Server(url, f"tracing-{label.rstrip('%')}", log, env)
            self._servers.append(server)
            server.start()
        servers = dict(zip((label for label, _ in CASES), self._servers, strict=True))
        seed_through_rpc(servers["off"].address, shape.customers, 5, 3)
        say(f"tracing: {shape.rounds} rounds of {shape.seconds:.0f} s per server and workload")
        figures: dict[str, Any] = {"customers": shape.customers, "rounds": shape.rounds}
        for name, workload in WORKLOADS:
            rates: dict[str, list[float]] = {label: [] for label, _ in CASES}
            cpu: dict[str, list[float]] = {label: [] for label, _ in CASES}
            errors = 0
            for round_ in range(shape.rounds):
                labels = [label for label, _ in CASES]
                labels = labels[round_ % len(labels) :] + labels[: round_ % len(labels)]
                for label in labels:
                    server = servers[label]
                    start_at = planned_start(0.5)
                    window = CpuWindow(
                        lambda s=server: process_tree(s.process.pid) if s.process else [],
                        start_at,
                        shape.seconds,
                    )
                    result = run_load(
                        server.address,
                        workload,
                        shape.seconds,
                        processes=1,
                        concurrency=8,
                        start_at=start_at,
                    )
                    window.cores()  # waits for the window's end
                    rates[label].append(result.requests_per_second)
                    if window.used is not None and result.calls:
                        cpu[label].append(window.used / result.calls * 1e6)
                    errors += result.errors
            medians = {label: statistics.median(r) for label, r in rates.items()}
            cpu_medians = {label: statistics.median(c) if c else None for label, c in cpu.items()}
            figures[name] = {
                "calls_per_second": rates,
                "median": medians,
                "server_cpu_us_per_call": cpu,
                "median_cpu_us_per_call": cpu_medians,
                "errors": errors,
            }
            off, off_cpu = medians["off"], cpu_medians["off"]
            for label, _ in CASES:
                change = medians[label] / off - 1 if off else None
                per_call = cpu_medians[label]
                cost = None if per_call is None or not off_cpu else per_call / off_cpu - 1
                row = Row(
                    f"{name}, tracing {label} (direct gRPC)",
                    project=f"{medians[label]:,.0f} calls/s",
                    floor="" if per_call is None else f"{per_call:.0f} us CPU/call",
                    ratio=""
                    if label == "off"
                    else f"{100 * (change or 0):+.1f}% calls/s, {100 * (cost or 0):+.1f}% CPU",
                    note=(
                        "tracing off, on with 1% of the calls sampled, on with all of them: "
                        "throughput and the server's CPU time per call, medians of interleaved "
                        "rounds; the target is on the CPU per call (bench/tracing.py)"
                        if label == "off" and name == WORKLOADS[0][0]
                        else ""
                    ),
                )
                if label == "1%":
                    row.target = f"<= {MAX_COST_AT_1_PERCENT:.0%} more CPU a call than off"
                    row.verdict = verdict(
                        None if cost is None or errors else cost <= MAX_COST_AT_1_PERCENT
                    )
                table.add(row)
        figures["spans_received"] = sink.spans
        self.figures = figures

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()
        if self._sink is not None:
            self._sink.stop()
            self._sink = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__)
    parser.add_argument("--size", choices=sorted(_SHAPES), default="small")
    args = parser.parse_args(argv)
    admin_url = os.environ.get("BENCH_DATABASE_URL")
    dbs = BenchDatabases(admin_url) if admin_url else None
    with tempfile.TemporaryDirectory(prefix="orders-bench-tracing-") as folder:
        phase = TracingPhase(args.size, Path(folder), dbs)
        table = Table()
        try:
            phase.run(table)
        finally:
            phase.close()
            if dbs is not None:
                dbs.close()
    print(table.markdown())
    print(f"spans received: {phase.figures.get('spans_received')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
