"""The read replica's phase: what moving the reads to a streaming hot standby does, with a write
load running, and what read-your-writes costs a read.

A throwaway primary and its standby (the tests' own clusters, tests/reliability/pg_cluster.py:
initdb, then pg_basebackup -R) on free ports of 127.0.0.1, one database seeded through the
Seed RPC, and two servers over the same primary: one reading there only, one with
ORDERS_READ_DATABASE_URL on the standby. Then, side by side:

- mixed load: reader threads (GetOrder, ListOrders by customer, GetSummary, GetCustomer) and a
  writer thread (CreateOrder then PayOrder) against each server in turn, alternated over
  rounds: reads a second, their p50 / p99, writes a second, and for the replica server how
  many reads each database answered (its metrics);
- the LSN check: GetOrder on the replica server without a position, with a position the
  replica is known to have replayed (no check: the monitor has seen it), and right after the
  caller's own write with that write's position (a check on the replica, and a wait or the
  primary when it is not there yet), next to the same write-then-read on the primary-only
  server. Each is timed on the read alone, interleaved over rounds.

On one machine the standby shares the primary's cores: the figures show the mechanism's cost
and how the reads spread, not the capacity a standby on its own host adds.
"""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

from .context import trailer_statements
from .report import Row, Table, fmt_ms, fmt_ratio
from .stack import (
    ROOT,
    Server,
    free_port,
    libpq,
    metric_sum,
    migrate,
    say,
    seed_through_rpc,
    stop_all,
)

__all__ = ["ReplicaPhase"]

# The tests' own clusters (pg_cluster.py), on a path of their own that mypy does not see.
for _path in (ROOT / "tests" / "reliability", ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from pg_cluster import ClusterUnavailable, ThrowawayCluster  # type: ignore[import-not-found]  # noqa: E402

LSN_TRAILER = "x-orders-lsn"
MIN_LSN_HEADER = "x-orders-min-lsn"


@dataclass(frozen=True)
class _Shape:
    customers: int  # seeded with 5 orders of 3 items each
    seconds: float  # of mixed load per server and round
    rounds: int
    lsn_calls: int  # per case and round


_SHAPES = {
    "tiny": _Shape(200, 1.0, 2, 20),
    "small": _Shape(1000, 2.0, 2, 60),
    "medium": _Shape(2000, 4.0, 3, 150),
    "large": _Shape(5000, 6.0, 3, 300),
}
READERS = 4


@dataclass
class _Mixed:
    reads: int = 0
    writes: int = 0
    errors: int = 0
    last_error: str = ""
    seconds: float = 0.0
    read_latencies: list[float] = field(default_factory=list)


def _ms(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class ReplicaPhase:
    def __init__(self, size_name: str, log_dir: Path) -> None:
        self.shape = _SHAPES.get(size_name, _SHAPES["medium"])
        self.log_dir = log_dir
        self.clusters: list[ThrowawayCluster] = []
        self.servers: list[Server] = []
        self.channels: list[grpc.Channel] = []
        self.figures: dict[str, Any] = {}
        self.rng = random.Random(11)

    def close(self) -> None:
        stop_all(self.channels, self.servers)
        for cluster in reversed(self.clusters):
            try:
                cluster.destroy()
            except Exception as exc:  # the others must still go
                say(f"replica phase: could not remove a cluster: {exc}")
        self.clusters.clear()

    def _stub(self, server: Server) -> pb_grpc.OrdersServiceStub:
        channel = grpc.insecure_channel(server.address, options=[("grpc.enable_http_proxy", 0)])
        self.channels.append(channel)
        return pb_grpc.OrdersServiceStub(channel)

    def run(self, table: Table) -> None:
        try:
            primary = ThrowawayCluster()
        except ClusterUnavailable as exc:
            table.add(
                Row(
                    workload="read replica: reads spread over primary + standby",
                    project="n/a",
                    note=str(exc),
                )
            )
            return
        self.clusters.append(primary)
        primary.init()
        primary.start()
        url = primary.create_database("orders")
        migrate(url, self.log_dir / "migrate-replica.log")
        standby = primary.standby()
        self.clusters.append(standby)
        standby.start()
        metrics_port = free_port()
        alone = Server(url, "primary-only", self.log_dir / "replica-off.log", {})
        spread = Server(
            url,
            "with-standby",
            self.log_dir / "replica-on.log",
            {
                "ORDERS_READ_DATABASE_URL": standby.url("orders"),
                "ORDERS_METRICS_PORT": str(metrics_port),
            },
        )
        self.servers += [alone, spread]
        for server in self.servers:
            server.launch()
        for server in self.servers:
            server.start(launched=True)
        say(f"replica phase: seeding {self.shape.customers} customers x 5 orders x 3 items")
        seed_through_rpc(alone.address, self.shape.customers, 5, 3)
        with psycopg.connect(libpq(url), autocommit=True, connect_timeout=5) as conn:
            self.order_ids = [int(r[0]) for r in conn.execute("SELECT id FROM orders")]
            self.customer_ids = [int(r[0]) for r in conn.execute("SELECT id FROM customers")]
            conn.execute("VACUUM ANALYZE")
        self._wait_caught_up(spread, metrics_port)
        self._mixed(table, alone, spread, metrics_port)
        self._lsn_cost(table, alone, spread, metrics_port)

    def _wait_caught_up(self, server: Server, metrics_port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        stub = self._stub(server)
        while time.monotonic() < deadline:
            before = metric_sum(metrics_port, "orders_db_reads_total", database="replica")
            stub.GetSummary(pb.GetSummaryRequest(limit=1), timeout=10)
            if metric_sum(metrics_port, "orders_db_reads_total", database="replica") > before:
                return
            time.sleep(0.2)
        raise RuntimeError("the standby never took reads")

    # ----------------------------------------------------------------------------------------
    def _mixed(self, table: Table, alone: Server, spread: Server, metrics_port: int) -> None:
        results = {alone.name: _Mixed(), spread.name: _Mixed()}
        counters = ("primary", "replica")
        before = {
            db: metric_sum(metrics_port, "orders_db_reads_total", database=db) for db in counters
        }
        for r in range(self.shape.rounds):
            order = (alone, spread) if r % 2 == 0 else (spread, alone)
            for server in order:
                self._mixed_window(server, results[server.name])
        after = {
            db: metric_sum(metrics_port, "orders_db_reads_total", database=db) for db in counters
        }
        served = {db: int(after[db] - before[db]) for db in counters}
        lag = metric_sum(metrics_port, "orders_replica_lag_seconds")
        off, on = results[alone.name], results[spread.name]
        rate = {name: m.reads / m.seconds if m.seconds else 0.0 for name, m in results.items()}
        writes = {name: m.writes / m.seconds if m.seconds else 0.0 for name, m in results.items()}
        self.figures["mixed"] = {
            name: {
                "reads_per_s": round(rate[name], 1),
                "writes_per_s": round(writes[name], 1),
                "read_p50_ms": round(_ms(m.read_latencies, 0.5), 3),
                "read_p99_ms": round(_ms(m.read_latencies, 0.99), 3),
                "errors": m.errors,
            }
            for name, m in results.items()
        }
        self.figures["reads_served"] = served
        share = served["replica"] / max(1, served["replica"] + served["primary"])
        note = (
            f"{READERS} reader threads and 1 writer (CreateOrder + PayOrder) per server,"
            f" {self.shape.rounds} alternated rounds of {self.shape.seconds:.0f} s each; reads"
            f" a second, writes a second beside them. With the standby it answered"
            f" {served['replica']} reads, the primary {served['primary']} ({share:.0%} on the"
            f" standby); lag at the end {lag * 1000:.0f} ms. The standby shares this machine's"
            " cores with the primary."
            + "".join(
                f" {name}: {m.errors} errors ({m.last_error})"
                for name, m in results.items()
                if m.errors
            )
        )
        table.add(
            Row(
                workload="read replica: reads/s with writes running, primary + standby vs"
                " primary only",
                project=f"{rate[spread.name]:.0f} reads/s, {writes[spread.name]:.0f} writes/s",
                floor=f"{rate[alone.name]:.0f} reads/s, {writes[alone.name]:.0f} writes/s",
                ratio=fmt_ratio(rate[spread.name] / rate[alone.name] if rate[alone.name] else None),
                latency=f"{fmt_ms(_ms(on.read_latencies, 0.5))} / "
                f"{fmt_ms(_ms(on.read_latencies, 0.99))} vs "
                f"{fmt_ms(_ms(off.read_latencies, 0.5))} / "
                f"{fmt_ms(_ms(off.read_latencies, 0.99))}",
                note=note,
            )
        )

    def _mixed_window(self, server: Server, into: _Mixed) -> None:
        stop = threading.Event()
        lock = threading.Lock()
        rng_seed = self.rng.randrange(1 << 30)

        def reader(k: int) -> None:
            stub = self._stub(server)
            rng = random.Random(rng_seed + k)
            reads: list[Callable[[], Any]] = [
                lambda: stub.GetOrder(
                    pb.GetOrderRequest(id=rng.choice(self.order_ids)), timeout=10
                ),
                lambda: stub.ListOrders(
                    pb.ListOrdersRequest(customer_id=rng.choice(self.customer_ids), page_size=10),
                    timeout=10,
                ),
                lambda: stub.GetSummary(pb.GetSummaryRequest(limit=10), timeout=10),
                lambda: stub.GetCustomer(
                    pb.GetCustomerRequest(id=rng.choice(self.customer_ids)), timeout=10
                ),
            ]
            n = k
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    reads[n % len(reads)]()
                except grpc.RpcError as err:
                    with lock:
                        into.errors += 1
                        into.last_error = f"{err.code().name}: {err.details()}"
                    continue
                finally:
                    n += 1
                elapsed = time.perf_counter() - started
                with lock:
                    into.reads += 1
                    into.read_latencies.append(elapsed)

        def writer() -> None:
            stub = self._stub(server)
            rng = random.Random(rng_seed - 1)
            line = pb.OrderItem(sku="BENCH-R", quantity=1, unit_price_cents=100)
            while not stop.is_set():
                try:
                    order = stub.CreateOrder(
                        pb.CreateOrderRequest(
                            customer_id=rng.choice(self.customer_ids), items=[line]
                        ),
                        timeout=10,
                    )
                    stub.PayOrder(pb.PayOrderRequest(id=order.id), timeout=10)
                except grpc.RpcError as err:
                    with lock:
                        into.errors += 1
                        into.last_error = f"{err.code().name}: {err.details()}"
                    continue
                with lock:
                    into.writes += 2

        threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(READERS)]
        threads.append(threading.Thread(target=writer, daemon=True))
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(self.shape.seconds)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        into.seconds += time.monotonic() - started

    # ----------------------------------------------------------------------------------------
    def _lsn_cost(self, table: Table, alone: Server, spread: Server, metrics_port: int) -> None:
        on, off = self._stub(spread), self._stub(alone)
        customer = self.customer_ids[0]
        line = pb.OrderItem(sku="BENCH-LSN", quantity=1, unit_price_cents=100)
        first, call = on.CreateOrder.with_call(
            pb.CreateOrderRequest(customer_id=customer, items=[line]), timeout=10
        )
        old = [(MIN_LSN_HEADER, _trailer(call, LSN_TRAILER))]
        time.sleep(1.0)  # the monitor has seen the standby replay it by now
        cases: dict[str, list[float]] = {}
        statements: dict[str, set[int]] = {}

        def timed(name: str, read: Callable[[], Any]) -> None:
            started = time.perf_counter()
            _response, done = read()
            cases.setdefault(name, []).append(time.perf_counter() - started)
            statements.setdefault(name, set()).add(trailer_statements(done) or 0)

        def get(stub: pb_grpc.OrdersServiceStub, order_id: int, metadata: Any = None) -> Any:
            return lambda: stub.GetOrder.with_call(
                pb.GetOrderRequest(id=order_id), timeout=10, metadata=metadata
            )

        def write_then_read(stub: pb_grpc.OrdersServiceStub, with_position: bool) -> Any:
            created, call = stub.CreateOrder.with_call(
                pb.CreateOrderRequest(customer_id=customer, items=[line]), timeout=10
            )
            position = _trailer(call, LSN_TRAILER)
            metadata = [(MIN_LSN_HEADER, position)] if with_position and position else None
            return get(stub, created.id, metadata)

        names = (
            "no position",
            "position already replayed",
            "right after its write, with its position",
            "right after its write, primary only",
        )
        fell_back = metric_sum(metrics_port, "orders_replica_fallbacks_total", reason="lsn")
        for r in range(self.shape.rounds):
            for name in names if r % 2 == 0 else tuple(reversed(names)):
                for _ in range(self.shape.lsn_calls):
                    if name == "no position":
                        timed(name, get(on, first.id))
                    elif name == "position already replayed":
                        timed(name, get(on, first.id, old))
                    elif name.endswith("with its position"):
                        timed(name, write_then_read(on, True))
                    else:
                        timed(name, write_then_read(off, False))
        fell_back = (
            metric_sum(metrics_port, "orders_replica_fallbacks_total", reason="lsn") - fell_back
        )
        calls = self.shape.rounds * self.shape.lsn_calls
        self.figures["lsn_check"] = {
            name: {
                "p50_ms": round(_ms(cases[name], 0.5), 3),
                "p99_ms": round(_ms(cases[name], 0.99), 3),
                "mean_ms": round(statistics.fmean(cases[name]) * 1000, 3),
                "statements": sorted(statements[name]),
            }
            for name in names
        }
        self.figures["lsn_check"]["primary_answered_after_write"] = int(fell_back)
        base = _ms(cases["no position"], 0.5)
        for name in names:
            p50 = _ms(cases[name], 0.5)
            note = ""
            if name.endswith("with its position"):
                note = (
                    f"the read alone is timed; the standby had not replayed the write in time"
                    f" for {int(fell_back)} of {calls} reads, which the primary answered"
                )
            table.add(
                Row(
                    workload=f"read replica: GetOrder, {name}",
                    project=fmt_ms(p50),
                    floor=fmt_ms(base) if name != "no position" else "",
                    ratio=fmt_ratio(p50 / base) if name != "no position" and base else "",
                    statements="/".join(str(s) for s in sorted(statements[name])),
                    latency=f"{fmt_ms(p50)} / {fmt_ms(_ms(cases[name], 0.99))}",
                    note=note,
                )
            )


def _trailer(call: Any, key: str) -> str:
    for name, value in call.trailing_metadata() or ():
        if name == key:
            return str(value)
    return ""
