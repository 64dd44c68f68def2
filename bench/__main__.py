"""`scripts/bench [--size tiny|small|medium|large]`: the side-by-side benchmark.

One run: throwaway PostgreSQL databases (orders_bench_<random>_*, created from
BENCH_DATABASE_URL, the admin connection, and dropped at the end), the service's own servers
and Envoy on 127.0.0.1, the raw-psycopg floor of each workload next to it, and one table with
the issue's targets, PASS or FAIL.

Phases, in order:
1. seeds through the Seed RPC (50x5x3 several times, then the big one), each beside raw COPY
   of the same rows into a database migrated the same way; a 1k-order database for the
   small-size figures;
2. VACUUM ANALYZE of the databases (what autovacuum does shortly after a seed), so the plans
   measured are those of a settled database;
3. throughput at the medium size (100k orders): 1 server process vs 2, direct gRPC (our own
   client) vs REST through Envoy (wrk);
4. (large only) more seeds to reach 1M orders / 100k customers, then VACUUM ANALYZE;
5. latencies, every case interleaved in rounds: GetSummary and ListOrders at 1k orders and at
   the large size, GetOrder, and the hand-written SQL of each; GetCustomer against
   Health/Check and through Envoy, ListOrders against a psycopg + protobuf floor
   (bench/overhead.py);
6. memory: the server's RSS over a mixed load after a warm-up;
6b. the read replica: reads over a primary and its streaming standby vs the primary alone with
   writes running, and the cost of read-your-writes' position check (bench/replica.py);
6c. traces: GetSummary and ListOrders with tracing off, on at 1% sampling and at 100%
   (bench/tracing.py);
6d. order events: 50 watchers under a steady 200 transitions/s, every event to every
   watcher and its lag, and a transition's cost with the outbox vs without (bench/events.py);
7. with --django PATH, the same workloads over REST beside the Django service this one
   replaces (bench/django.py); without it, those rows say n/a.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import psycopg
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

from .django import DjangoPhase
from .events import EventsPhase
from .floor import SUMMARY_AGGREGATE, SUMMARY_ROLLUP, FloorReader, FloorSeeder, list_sql
from .load import LoadResult, planned_start, run_load
from .overhead import Overhead
from .peer import check_peer
from .replica import ReplicaPhase
from .report import Row, Table, fmt_mb, fmt_ms, fmt_ratio, verdict
from .stack import (
    DEFAULT_ADMIN_URL,
    BackendCpu,
    BenchDatabases,
    CpuWindow,
    Gateway,
    H2loadResult,
    RssSampler,
    Server,
    ensure_h2load,
    ensure_wrk,
    free_port,
    grpc_failures,
    libpq,
    migrate,
    run_h2load,
    run_wrk,
    say,
)
from .stats import Case, run_interleaved
from .tracing import TracingPhase

STATEMENTS = "orders-sql-statements"
PAID = pb.Order.Status.Value("PAID")
# Three substring searches (seeded emails are seed-<id>@seed.invalid):
# - one customer's email: selective, the trigram index's case (set per database below);
# - EMAIL_SPREAD, ids ending in 7: a broad one, 10% of the customers, spread over all the orders
#   as any substring unrelated to when customers ordered is (a domain, a first name);
# - EMAIL, ids starting with 5: about 11% of the customers, none of whom owns any of the newest
#   orders: the worst case, reported beside the targets (docs/benchmarks.md says why).
EMAIL = "seed-5"
EMAIL_SPREAD = "7@"
# An email no customer has: the search must find nothing fast, at any size.
NOBODY = "nobody-matches-this"
SMALL_SEED = (50, 5, 3)
REFERENCE = (100, 10, 5)  # the 1k-order database


@dataclass(frozen=True)
class Size:
    big: tuple[int, int, int]  # the measured big seed (the 10,000 x 10 x 5)
    small_repeats: int  # how many 50x5x3 seeds, alternated with the floor's
    fills: int  # more big seeds afterwards (large: up to 1M orders)
    latency_seconds: float  # per case, over all rounds
    rounds: int
    throughput_seconds: float
    throughput_rounds: int
    memory_seconds: float
    memory_warmup: float

    @property
    def throughput_warmup(self) -> float:
        return min(1.0, self.throughput_seconds / 2)


SIZES = {
    # An internal smoke size (tests/test_bench_smoke.py): every phase, seconds each.
    "tiny": Size((300, 10, 5), 3, 0, 0.1, 2, 1, 1, 2, 0.5),
    "small": Size((2000, 10, 5), 5, 0, 0.25, 3, 2, 1, 3, 1),
    "medium": Size((10_000, 10, 5), 7, 0, 1.5, 5, 6, 2, 60, 5),
    # Four throughput rounds, alternated: the size that decides the targets, two of which sit
    # near their line on a 2-core machine (2 processes vs 1, REST vs direct).
    "large": Size((10_000, 10, 5), 7, 9, 2.0, 5, 6, 4, 60, 5),
}


def _orders(seed: tuple[int, int, int]) -> int:
    return seed[0] * seed[1]


def _rows(seed: tuple[int, int, int]) -> int:
    c, o, i = seed
    return c + c * o + c * o * i


def _k(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 < 50_000:
        return f"{n // 1_000_000}M"
    if n >= 1000:
        return f"{round(n / 1000)}k"
    return str(n)


def _seed_label(seed: tuple[int, int, int]) -> str:
    return f"{seed[0]:,}x{seed[1]}x{seed[2]}"


def _trailer_statements(call: Any) -> int | None:
    for key, value in call.trailing_metadata() or ():
        if key == STATEMENTS:
            return int(value)
    return None


@dataclass
class SeedResult:
    seconds: float
    statements: int | None
    max_gap: float
    messages: int
    rss_start: int
    rss_peak: int
    ok: bool
    error: str = ""
    server_elapsed: float | None = None  # the load's own time, as the last message says
    server_cpu: float | None = None  # the server's CPU seconds during the call
    postgres_cpu: float | None = None  # the database's backends' CPU seconds during the call


class Bench:
    def __init__(
        self,
        size_name: str,
        admin_url: str,
        install: bool,
        log_dir: Path,
        django: Path | None = None,
        chart: Path | None = None,
    ) -> None:
        self.size_name = size_name
        self.size = SIZES[size_name]
        self.install = install
        self.log_dir = log_dir
        self.log = log_dir / "bench.log"
        self.dbs = BenchDatabases(admin_url)
        self.servers: list[Server] = []
        self.gateway: Gateway | None = None
        self.table = Table()
        self.channels: list[grpc.Channel] = []
        self.facts: dict[str, Any] = {}
        self.django = DjangoPhase(django, size_name, self.dbs, log_dir, install, chart)
        self.replica = ReplicaPhase(size_name, log_dir)
        self.events = EventsPhase(size_name, self.dbs, log_dir)
        self.tracing = TracingPhase(size_name, log_dir, self.dbs)

    # ----------------------------------------------------------------------------------------
    def run(self) -> None:
        self.facts["postgresql"] = self.dbs.check()
        phases: list[tuple[str, Callable[[], None]]] = [
            ("setup", self.setup),
            ("seeds", self.seeds),
            ("settle", self.settle),
            ("throughput", self.throughput),
        ]
        if self.size.fills:
            phases += [("fill", self.fill), ("settle again", self.settle)]
        phases += [("latencies", self.latencies), ("memory", self.memory)]
        phases.append(("read replica", lambda: self.replica.run(self.table)))
        phases.append(("order events", lambda: self.events.run(self.table)))
        phases.append(("tracing", lambda: self.tracing.run(self.table)))
        phases.append(("vs Django", lambda: self.django.run(self.table)))
        timings = self.facts["phase_seconds"] = {}
        for name, phase in phases:
            started = time.monotonic()
            phase()
            timings[name] = round(time.monotonic() - started, 1)
            say(f"{name}: {timings[name]:.0f} s")

    def close(self) -> None:
        self.facts["django"] = self.django.figures
        self.facts["read_replica"] = self.replica.figures
        self.facts["order_events"] = self.events.figures
        try:
            self.events.close()
        except Exception as exc:  # the rest must still be stopped and dropped
            say(f"cleanup of the order events phase: {exc}")
        self.facts["tracing"] = self.tracing.figures
        try:
            self.tracing.close()
        except Exception as exc:  # the rest must still be stopped and dropped
            say(f"cleanup of the tracing phase: {exc}")
        try:
            self.replica.close()
        except Exception as exc:  # the rest must still be stopped and dropped
            say(f"cleanup of the read replica phase: {exc}")
        try:
            self.django.close()
        except Exception as exc:  # the rest must still be stopped and dropped
            say(f"cleanup of the Django phase: {exc}")
        for channel in self.channels:
            channel.close()
        if self.gateway is not None:
            self.gateway.stop()
        for server in self.servers:
            server.stop()
        self.dbs.close()

    def start_servers(self, *specs: tuple[str, str, dict[str, str]]) -> list[Server]:
        """(url, name, env) each: all launched at once, then each awaited."""
        servers = [Server(url, name, self.log_dir / f"{name}.log", env) for url, name, env in specs]
        self.servers.extend(servers)
        for server in servers:
            server.launch()
        for server in servers:
            server.start(launched=True)
        return servers

    def stub(self, server: Server) -> pb_grpc.OrdersServiceStub:
        channel = grpc.insecure_channel(server.address, options=[("grpc.enable_http_proxy", 0)])
        self.channels.append(channel)
        return pb_grpc.OrdersServiceStub(channel)

    def stop_server(self, server: Server) -> None:
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    # ----------------------------------------------------------------------------------------
    def setup(self) -> None:
        say(f"size {self.size_name}: creating databases {self.dbs.prefix}_*")
        self.url_large = self.dbs.create("large")
        self.url_1k = self.dbs.create("1k")
        self.url_floor_a = self.dbs.create("floor_a")
        self.url_floor_b = self.dbs.create("floor_b")
        self.url_seed2 = self.dbs.create("seed2")
        urls = (self.url_large, self.url_1k, self.url_floor_a, self.url_floor_b, self.url_seed2)
        with ThreadPoolExecutor(len(urls)) as pool:
            list(
                pool.map(
                    lambda u: migrate(u, self.log_dir / f"migrate-{u.rsplit('/', 1)[-1]}.log"), urls
                )
            )
        self.srv_large, self.srv_1k, self.srv_seed2 = self.start_servers(
            (self.url_large, "server-large", _metrics_env()),
            (self.url_1k, "server-1k", {}),
            (self.url_seed2, "server-seed2", {}),
        )
        self.stub_large = self.stub(self.srv_large)
        self.stub_1k = self.stub(self.srv_1k)
        self.facts["server_processes_default"] = self.srv_large.serving_processes()

    # ----------------------------------------------------------------------------------------
    def seed_call(
        self, stub: pb_grpc.OrdersServiceStub, server: Server, seed: tuple[int, int, int]
    ) -> SeedResult:
        c, o, i = seed
        stamps: list[float] = []
        last = None
        error = ""
        cpu_before = server.cpu()
        database = server.database_url.rsplit("/", 1)[-1]
        with (
            BackendCpu(self.dbs.admin_url, database) as postgres,
            RssSampler(server, interval=0.05, limit=3600) as rss,
        ):
            started = time.perf_counter()
            call = stub.Seed(
                pb.SeedRequest(customers=c, orders_per_customer=o, items_per_order=i),
                timeout=1800,
            )
            try:
                for message in call:
                    stamps.append(time.perf_counter())
                    last = message
            except grpc.RpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            elapsed = time.perf_counter() - started
        marks = [started, *stamps]
        gaps = [b - a for a, b in itertools.pairwise(marks)] or [elapsed]
        ok = (
            not error
            and last is not None
            and last.done
            and last.phase == pb.SeedResponse.PHASE_DONE
        )
        if not ok and not error:
            error = f"last message: {last}"
        return SeedResult(
            seconds=elapsed,
            statements=None if error else _trailer_statements(call),
            max_gap=max(gaps),
            messages=len(stamps),
            rss_start=rss.start,
            rss_peak=rss.peak,
            ok=ok,
            error=error,
            server_elapsed=last.elapsed.ToTimedelta().total_seconds() if last else None,
            server_cpu=server.cpu() - cpu_before,
            postgres_cpu=postgres.used,
        )

    def seeds(self) -> None:
        floor_a = FloorSeeder(self.url_floor_a)
        floor_b = FloorSeeder(self.url_floor_b)
        try:
            small: list[SeedResult] = []
            small_floor: list[float] = []
            small_floor_cpu: list[tuple[float, float | None]] = []
            floor_statements = 0
            say(f"seed {_seed_label(SMALL_SEED)} x{self.size.small_repeats}, beside raw COPY")
            for r in range(self.size.small_repeats):
                if r % 2:
                    small.append(self.seed_call(self.stub_large, self.srv_large, SMALL_SEED))
                seconds, floor_statements = floor_a.seed(*SMALL_SEED)
                small_floor.append(seconds)
                small_floor_cpu.append((floor_a.last_python_cpu, floor_a.last_postgres_cpu))
                if not r % 2:
                    small.append(self.seed_call(self.stub_large, self.srv_large, SMALL_SEED))
            big = self.size.big
            say(f"seed {_seed_label(big)} ({_rows(big):,} rows): raw COPY, Seed RPC, raw COPY")
            # Twice each, alternated: into the databases that took the small seeds, then into
            # fresh ones (the second project run into a database of its own, dropped after).
            floor_big = [floor_a.seed(*big)[0]]
            floor_big_cpu = [(floor_a.last_python_cpu, floor_a.last_postgres_cpu)]
            big_runs = [self.seed_call(self.stub_large, self.srv_large, big)]
            floor_big.append(floor_b.seed(*big)[0])
            floor_big_cpu.append((floor_b.last_python_cpu, floor_b.last_postgres_cpu))
            big_runs.append(self.seed_call(self.stub(self.srv_seed2), self.srv_seed2, big))
        finally:
            floor_a.close()
            floor_b.close()
        self.stop_server(self.srv_seed2)
        for url in (self.url_floor_a, self.url_floor_b, self.url_seed2):
            self.dbs.drop(url)
        say(f"seed {_seed_label(REFERENCE)} into the 1k-order database")
        ref = self.seed_call(self.stub_1k, self.srv_1k, REFERENCE)
        if not ref.ok:
            raise RuntimeError(f"the reference seed failed: {ref.error}")
        self.orders_large = _orders(big) + len(small) * _orders(SMALL_SEED)

        failed = [s.error for s in [*small, *big_runs] if not s.ok]
        ok_small = [s for s in small if s.ok]
        p_small = statistics.median(s.seconds for s in ok_small) if ok_small else math.nan
        f_small = statistics.median(small_floor)
        ratio_small = p_small / f_small
        self.table.add(
            Row(
                f"seed {_seed_label(SMALL_SEED)} (median of {len(small)})",
                fmt_ms(p_small * 1000),
                f"raw COPY {fmt_ms(f_small * 1000)}",
                fmt_ratio(ratio_small),
                f"{self._stmts({s.statements for s in small})} / {floor_statements}",
                f"max gap {max(s.max_gap for s in small):.2f} s",
                f"+{fmt_mb(max(s.rss_peak - s.rss_start for s in small))}",
                "<= 1.5x raw COPY",
                verdict(ratio_small <= 1.5 if ok_small else False),
                note=f"{len(small)} Seed calls alternated with {len(small_floor)} raw COPYs; "
                + self._cpu_note(ok_small, small_floor_cpu, 1000, "ms")
                + (("; failed: " + "; ".join(failed)) if failed else ""),
            )
        )
        all_ok = all(r.ok for r in big_runs)
        p_big = statistics.mean(r.seconds for r in big_runs)
        f_big = statistics.mean(floor_big)
        ratio_big = p_big / f_big if all_ok else math.nan
        scaled = (
            ""
            if big == (10_000, 10, 5)
            else f" (size {self.size_name}: the issue's is 10,000x10x5)"
        )
        statements = {r.statements for r in big_runs}
        self.table.add(
            Row(
                f"seed {_seed_label(big)} ({_rows(big):,} rows){scaled}",
                f"{p_big:.2f} s (runs {', '.join(f'{r.seconds:.2f}' for r in big_runs)})"
                if all_ok
                else "FAILED",
                f"raw COPY {f_big:.2f} s (runs {', '.join(f'{x:.2f}' for x in floor_big)})",
                fmt_ratio(ratio_big),
                f"{self._stmts(statements)} / {floor_statements}",
                f"{min(r.messages for r in big_runs)}+ messages",
                f"peak {fmt_mb(max(r.rss_peak for r in big_runs))}",
                "<= 1.25x raw COPY",
                verdict(all_ok and ratio_big <= 1.25),
                note="raw COPY, Seed, raw COPY, Seed, alternated: the first of each into the"
                " database that took the small seeds, the second into a fresh one; means; "
                + self._cpu_note(big_runs, floor_big_cpu, 1, "s")
                + (
                    f"; failed: {'; '.join(r.error for r in big_runs if not r.ok)}"
                    if not all_ok
                    else ""
                ),
            )
        )
        constant = len(statements | {s.statements for s in small}) == 1 and None not in statements
        self.table.add(
            Row(
                "seed: SQL statements whatever the size",
                f"{self._stmts({s.statements for s in small})} at {_rows(SMALL_SEED)} rows,"
                f" {self._stmts(statements)} at {_rows(big):,}",
                f"{floor_statements} (4 COPY + setval)",
                "",
                self._stmts(statements),
                "",
                "",
                "constant",
                verdict(constant),
            )
        )
        worst = max(big_runs, key=lambda r: r.rss_peak - r.rss_start)
        growth = worst.rss_peak - worst.rss_start
        self.table.add(
            Row(
                f"seed {_seed_label(big)}: server RSS growth",
                f"+{fmt_mb(growth)}",
                "",
                "",
                "",
                "",
                f"{fmt_mb(worst.rss_start)} -> peak {fmt_mb(worst.rss_peak)}",
                "< 100 MB",
                verdict(all_ok and growth < 100e6),
                note="RSS of the server's process tree (VmRSS, /proc/<pid>/status), sampled"
                " every 50 ms during the call; the larger of the two runs",
            )
        )
        slowest = max(big_runs, key=lambda r: r.max_gap)
        self.table.add(
            Row(
                f"seed {_seed_label(big)}: longest wait for a progress message",
                f"{slowest.max_gap:.2f} s",
                "",
                "",
                "",
                f"{slowest.messages} messages in {slowest.seconds:.1f} s",
                "",
                "<= 1 s",
                verdict(all_ok and slowest.max_gap <= 1.0),
                note="from the call's start to the first message, and between messages, as the"
                " client received them; the longer of the two runs",
            )
        )

    @staticmethod
    def _cpu_note(
        project: list[SeedResult], floor: list[tuple[float, float | None]], scale: float, unit: str
    ) -> str:
        """Where the time went: CPU of the server and of its PostgreSQL backends during the
        Seed call, beside the floor's own process and its backend (medians)."""

        def med(values: list[float | None]) -> str:
            known = [v for v in values if v is not None]
            if not known:
                return "?"
            value = statistics.median(known)
            if value == 0:  # below one clock tick of /proc
                return f"<{10 if scale > 1 else 0.01} {unit}"
            return f"{value * scale:.{0 if scale > 1 else 2}f} {unit}"

        return (
            f"the server's own account of the seed: {med([p.server_elapsed for p in project])};"
            f" CPU during the call: server {med([p.server_cpu for p in project])} +"
            f" PostgreSQL {med([p.postgres_cpu for p in project])}; raw COPY: its Python"
            f" {med([f[0] for f in floor])} + PostgreSQL {med([f[1] for f in floor])}"
        )

    def fill(self) -> None:
        """Large: more big seeds through the service until 1M orders."""
        results: list[SeedResult] = []
        say(
            f"filling to the large size: {self.size.fills} more seeds of"
            f" {_seed_label(self.size.big)}"
        )
        for n in range(self.size.fills):
            result = self.seed_call(self.stub_large, self.srv_large, self.size.big)
            results.append(result)
            say(f"  fill {n + 1}/{self.size.fills}: {result.seconds:.1f} s {result.error}")
            if not result.ok:
                raise RuntimeError(f"a fill seed failed: {result.error}")
        self.orders_large += self.size.fills * _orders(self.size.big)
        times = [r.seconds for r in results]
        self.table.add(
            Row(
                f"seed {_seed_label(self.size.big)} x{len(results)} more, into a growing database",
                f"median {statistics.median(times):.2f} s (first {times[0]:.2f}, last"
                f" {times[-1]:.2f})",
                "",
                "",
                self._stmts({r.statements for r in results}),
                f"max gap {max(r.max_gap for r in results):.2f} s",
                f"+{fmt_mb(max(r.rss_peak - r.rss_start for r in results))} max",
                "",
                "",
                note="the seeds that take the large database to 1M orders; the last one loads"
                " into 900k orders",
            )
        )

    def settle(self) -> None:
        started = time.monotonic()
        for url in (self.url_large, self.url_1k):
            with psycopg.connect(libpq(url), autocommit=True, connect_timeout=5) as conn:
                conn.execute("VACUUM (ANALYZE)")
        say(f"VACUUM ANALYZE: {time.monotonic() - started:.1f} s")

    @staticmethod
    def _stmts(values: set[int | None]) -> str:
        known = sorted(v for v in values if v is not None)
        if not known:
            return "?"
        return str(known[0]) if len(known) == 1 else f"{known[0]}-{known[-1]}"

    # ----------------------------------------------------------------------------------------
    def _load(
        self,
        server: Server,
        workload: str,
        seconds: float,
        warmup: float,
        concurrency: int = 16,
        ids: dict[str, tuple[int, int]] | None = None,
        target: str | None = None,
    ) -> tuple[LoadResult, float | None]:
        """Our gRPC load on `target` (default: the server itself); the server's CPU beside."""
        start_at = planned_start(warmup)
        cpu = CpuWindow(server.pids, start_at, seconds)
        result = run_load(
            target or server.address,
            workload,
            seconds,
            processes=2,
            concurrency=concurrency,
            channels_per_process=4,
            start_at=start_at,
            **(ids or {}),
        )
        return result, cpu.cores()

    def throughput(self) -> None:
        s = self.size
        at = _k(self.orders_large)
        # 1 process vs 2: detected by what the server does with ORDERS_GRPC_PROCESSES.
        say("throughput: GetSummary, 1 server process vs 2")
        one, two = self.start_servers(
            (self.url_large, "server-1proc", {"ORDERS_GRPC_PROCESSES": "1", **_metrics_env()}),
            (self.url_large, "server-2proc", {"ORDERS_GRPC_PROCESSES": "2", **_metrics_env()}),
        )
        time.sleep(1.0)  # workers a server may start after it reports SERVING
        n_one, n_two = one.serving_processes(), two.serving_processes()
        supported = n_two > n_one
        self.facts["processes_seen"] = {"ORDERS_GRPC_PROCESSES=1": n_one, "=2": n_two}
        if not supported:
            self.stop_server(two)
        runs: dict[str, list[tuple[LoadResult, float | None]]] = {"one": [], "two": []}
        h2load = ensure_h2load(self.install)
        h2runs: dict[str, list[tuple[H2loadResult, float | None, int]]] = {"one": [], "two": []}
        for _ in range(s.throughput_rounds):
            runs["one"].append(
                self._load(one, "summary", s.throughput_seconds, s.throughput_warmup)
            )
            if supported:
                runs["two"].append(
                    self._load(two, "summary", s.throughput_seconds, s.throughput_warmup)
                )
            if h2load:
                h2runs["one"].append(self._h2load(h2load, one, s.throughput_seconds))
                if supported:
                    h2runs["two"].append(self._h2load(h2load, two, s.throughput_seconds))
        rss_one = one.rss()
        rss_two = two.rss() if supported else None
        self.stop_server(one)
        if supported:
            self.stop_server(two)
        r1 = statistics.mean(r.requests_per_second for r, _ in runs["one"])
        self.table.add(
            self._load_row(f"GetSummary(50) gRPC, 1 server process, @{at}", runs["one"], rss_one)
        )
        if supported:
            r2 = statistics.mean(r.requests_per_second for r, _ in runs["two"])
            row = self._load_row(
                f"GetSummary(50) gRPC, 2 server processes, @{at}", runs["two"], rss_two
            )
            row.floor = f"1 process: {r1:,.0f} req/s"
            row.ratio = fmt_ratio(r2 / r1)
            if not h2runs["two"]:
                row.target = ">= 1.4x 1 process"
                row.verdict = verdict(r2 / r1 >= 1.4)
            self.table.add(row)
        if h2runs["one"]:
            h1 = statistics.mean(r.requests_per_second for r, _, _ in h2runs["one"])
            self.table.add(
                self._h2load_row(
                    f"GetSummary(50) gRPC (h2load), 1 server process, @{at}", h2runs["one"]
                )
            )
            if h2runs["two"]:
                h2 = statistics.mean(r.requests_per_second for r, _, _ in h2runs["two"])
                row = self._h2load_row(
                    f"GetSummary(50) gRPC (h2load), 2 server processes, @{at}", h2runs["two"]
                )
                failed = sum(r.errors + f for r, _, f in h2runs["one"] + h2runs["two"])
                row.floor = f"1 process: {h1:,.0f} req/s"
                row.ratio = fmt_ratio(h2 / h1)
                row.target = ">= 1.4x 1 process"
                row.verdict = verdict(h2 / h1 >= 1.4 and failed == 0)
                self.table.add(row)
        if not supported:
            self.table.add(
                Row(
                    f"GetSummary(50) gRPC, 2 server processes, @{at}",
                    "n/a",
                    f"1 process: {r1:,.0f} req/s",
                    "n/a",
                    "",
                    "",
                    "",
                    ">= 1.4x 1 process",
                    "n/a",
                    note="the server does not support ORDERS_GRPC_PROCESSES yet: with =2 it ran"
                    f" {n_two} Python process(es), with =1 {n_one}",
                )
            )

        # Direct gRPC (our client) vs REST through Envoy (wrk), on the default server.
        say("throughput: GetSummary, direct gRPC vs REST through Envoy")
        self.gateway = Gateway(self.srv_large, self.log_dir / "envoy.log")
        self.gateway.start()
        url = f"http://127.0.0.1:{self.gateway.http_port}/api/orders/summary?limit=50"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=10) as response:
            body = json.loads(response.read())
            assert response.status == 200 and len(body["customers"]) == 50, body
        wrk = ensure_wrk(self.install)
        grpc_runs: list[tuple[LoadResult, float | None]] = []
        proxied_runs: list[tuple[LoadResult, float | None]] = []
        envoy_target = f"127.0.0.1:{self.gateway.http_port}"
        rest_runs: list[tuple[Any, float | None, float | None]] = []
        h2_direct: list[tuple[H2loadResult, float | None, int]] = []
        if wrk:
            run_wrk(wrk, url, 2, 16, 1)  # warm-up
        for _ in range(s.throughput_rounds):
            grpc_runs.append(
                self._load(self.srv_large, "summary", s.throughput_seconds, s.throughput_warmup)
            )
            if h2load:
                h2_direct.append(self._h2load(h2load, self.srv_large, s.throughput_seconds))
            if self.size_name in ("medium", "large"):  # a diagnostic: the hop without JSON
                proxied_runs.append(
                    self._load(
                        self.srv_large,
                        "summary",
                        s.throughput_seconds,
                        s.throughput_warmup,
                        target=envoy_target,
                    )
                )
            if wrk:
                seconds = max(1, round(s.throughput_seconds))
                start_at = time.time() + 0.3
                server_cpu = CpuWindow(self.srv_large.pids, start_at, seconds - 0.6)
                envoy_cpu = CpuWindow(
                    lambda: [self.gateway.pid] if self.gateway and self.gateway.pid else [],
                    start_at,
                    seconds - 0.6,
                )
                result = run_wrk(wrk, url, 2, 16, seconds)
                rest_runs.append((result, server_cpu.cores(), envoy_cpu.cores()))
        rss = self.srv_large.rss()
        processes = self.srv_large.serving_processes()
        g = statistics.mean(r.requests_per_second for r, _ in grpc_runs)
        self.table.add(
            self._load_row(
                f"GetSummary(50) gRPC, default server ({processes} process(es)), @{at}",
                grpc_runs,
                rss,
            )
        )
        direct_label, g_ours = "direct gRPC", g
        if h2_direct:
            # REST comes from wrk, a client in C: the direct figure it is held to comes from
            # one in C too, not from our Python client, which costs the server cores.
            self.table.add(
                self._h2load_row(
                    f"GetSummary(50) gRPC (h2load), default server ({processes} process(es)),"
                    f" @{at}",
                    h2_direct,
                )
            )
            g = statistics.mean(r.requests_per_second for r, _, _ in h2_direct)
            direct_label = "direct gRPC (h2load)"
        if proxied_runs:
            proxied = self._load_row(f"GetSummary(50) gRPC through Envoy, @{at}", proxied_runs, rss)
            p = statistics.mean(r.requests_per_second for r, _ in proxied_runs)
            proxied.floor = f"direct gRPC: {g_ours:,.0f} req/s"
            proxied.ratio = fmt_ratio(p / g_ours)
            proxied.note += (
                "; native gRPC through the same Envoy: the proxy hop without transcoding"
            )
            self.table.add(proxied)
        if rest_runs:
            rest = statistics.mean(r.requests_per_second for r, _, _ in rest_runs)
            errors = sum(r.errors for r, _, _ in rest_runs)
            cores = [c for _, c, _ in rest_runs if c is not None]
            envoy = [c for _, _, c in rest_runs if c is not None]
            wrk_cpu = sum(r.cpu_seconds for r, _, _ in rest_runs) / sum(
                r.duration for r, _, _ in rest_runs
            )
            note = (
                f"wrk -t2 -c16, {len(rest_runs)} run(s) of {seconds} s, {errors} errors; Envoy"
                f" upstream: {self.gateway.upstreams}; server {statistics.mean(cores):.2f} cores"
                f" ({statistics.mean(cores) / rest * 1000:.2f} ms a call), Envoy"
                f" {statistics.mean(envoy):.2f} cores, wrk {wrk_cpu:.2f} cores"
                if cores and envoy
                else f"{errors} errors"
            )
            self.table.add(
                Row(
                    f"GetSummary(50) REST through Envoy, @{at}",
                    f"{rest:,.0f} req/s",
                    f"{direct_label}: {g:,.0f} req/s",
                    fmt_ratio(rest / g),
                    "",
                    f"{fmt_ms(statistics.median(r.p50_ms for r, _, _ in rest_runs))} /"
                    f" {fmt_ms(max(r.p99_ms for r, _, _ in rest_runs))}",
                    fmt_mb(rss),
                    ">= 0.70x direct gRPC",
                    verdict(rest / g >= 0.70 and errors == 0),
                    note=note,
                )
            )
            target_size = (
                "at 100k orders"
                if self.orders_large >= 100_000
                else f"at {at} (size {self.size_name}; the issue's is 100k)"
            )
            self.table.add(
                Row(
                    f"GetSummary(50) through Envoy {target_size}",
                    f"{rest:,.0f} req/s",
                    "",
                    "",
                    "",
                    "",
                    "",
                    ">= 800 req/s",
                    verdict(rest >= 800 and errors == 0),
                )
            )
        else:
            self.table.add(
                Row(
                    f"GetSummary(50) REST through Envoy, @{at}",
                    "n/a",
                    f"direct gRPC: {g:,.0f} req/s",
                    "",
                    "",
                    "",
                    "",
                    ">= 0.70x direct gRPC; >= 800 req/s",
                    "n/a",
                    note="wrk is not installed (Debian package wrk) and was not installed",
                )
            )

    def _h2load(
        self, h2load: str, server: Server, seconds: float
    ) -> tuple[H2loadResult, float | None, int]:
        """GetSummary(50) from h2load (16 connections, a call in flight on each), the server's
        CPU beside, and the calls it answered with a status other than OK meanwhile."""
        message = pb.GetSummaryRequest(limit=50).SerializeToString()
        method = "/orders.v1.OrdersService/GetSummary"
        run_h2load(h2load, server.address, method, message, 16, 1)  # warm-up
        failed_before = grpc_failures(_metrics_url(server))
        whole = max(1, round(seconds))
        cpu = CpuWindow(server.pids, time.time() + 0.3, whole - 0.6)
        result = run_h2load(h2load, server.address, method, message, 16, whole)
        return result, cpu.cores(), grpc_failures(_metrics_url(server)) - failed_before

    def _h2load_row(self, name: str, runs: list[tuple[H2loadResult, float | None, int]]) -> Row:
        rps = statistics.mean(r.requests_per_second for r, _, _ in runs)
        errors = sum(r.errors for r, _, _ in runs)
        failed = sum(f for _, _, f in runs)
        client = sum(r.cpu_seconds for r, _, _ in runs) / sum(r.duration for r, _, _ in runs)
        server = [c for _, c, _ in runs if c is not None]
        note = (
            f"h2load (nghttp2, in C), {len(runs)} run(s) of {runs[0][0].duration:.0f} s,"
            f" {runs[0][0].connections} connections with a call in flight on each; client CPU"
            f" {client:.2f} cores, server CPU "
            + (
                f"{statistics.mean(server):.2f} cores"
                f" ({statistics.mean(server) / rps * 1000:.2f} ms a call)"
                if server and rps
                else "?"
            )
            + f"; {errors} HTTP errors, {failed} calls failed (the server's"
            " orders_grpc_calls_total, not counting the calls h2load cancels as it stops)"
        )
        mean = statistics.mean(r.mean_ms for r, _, _ in runs)
        return Row(name, f"{rps:,.0f} req/s", "", "", "", f"mean {fmt_ms(mean)}", "", note=note)

    def _load_row(
        self, name: str, runs: list[tuple[LoadResult, float | None]], rss: int | None
    ) -> Row:
        rps = statistics.mean(r.requests_per_second for r, _ in runs)
        errors = sum(r.errors for r, _ in runs)
        client = statistics.mean(r.client_cores for r, _ in runs)
        server = [c for _, c in runs if c is not None]
        first = runs[0][0]
        note = (
            f"{len(runs)} run(s) of {first.seconds:.0f} s, {first.concurrency} calls in flight"
            f" from {first.processes} client processes (grpc.aio, 4 channels each); "
            f"client CPU {client:.2f} cores, server CPU "
            + (
                f"{statistics.mean(server):.2f} cores"
                f" ({statistics.mean(server) / rps * 1000:.2f} ms a call)"
                if server and rps
                else "?"
            )
            + f"; {errors} errors"
            + (f" (first: {first.first_error})" if errors else "")
        )
        return Row(
            name,
            f"{rps:,.0f} req/s",
            "",
            "",
            "",
            f"{fmt_ms(statistics.median(r.p50_ms for r, _ in runs))} /"
            f" {fmt_ms(max(r.p99_ms for r, _ in runs))}",
            fmt_mb(rss),
            note=note,
        )

    # ----------------------------------------------------------------------------------------
    def _walk(
        self, stub: pb_grpc.OrdersServiceStub, page_size: int, pages: int
    ) -> tuple[str, int] | None:
        """The token of page `pages` + 1 and the last order id before it, or None if the
        walk ends first."""
        token = ""
        last_id = 0
        for _ in range(pages):
            reply = stub.ListOrders(
                pb.ListOrdersRequest(page_size=page_size, page_token=token), timeout=30
            )
            if not reply.next_page_token or not reply.orders:
                return None
            token = reply.next_page_token
            last_id = reply.orders[-1].id
        return token, last_id

    def latencies(self) -> None:
        s = self.size
        big = _k(self.orders_large)
        say(f"latencies at 1k and at {big} orders, interleaved")
        with psycopg.connect(libpq(self.url_large), autocommit=True) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY random() LIMIT 500")]
        rng = random.Random(4)
        floors = {"1k": FloorReader(self.url_1k), "large": FloorReader(self.url_large)}
        stubs = {"1k": self.stub_1k, "large": self.stub_large}
        cases: dict[str, Case] = {}

        def rpc(
            stub_method: Callable[..., Any], request_of: Callable[[], Any]
        ) -> Callable[[], int | None]:
            def call() -> int | None:
                _, c = stub_method.with_call(request_of(), timeout=30)
                return _trailer_statements(c)

            return call

        variants: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
            "no filter": ({}, {"status": None, "email": None}),
            "status=PAID": ({"status": PAID}, {"status": "PAID", "email": None}),
            f"email '{EMAIL_SPREAD}'": (
                {"email": EMAIL_SPREAD},
                {"status": None, "email": EMAIL_SPREAD},
            ),
            f"email '{EMAIL}'": ({"email": EMAIL}, {"status": None, "email": EMAIL}),
            f"email '{NOBODY}' (no customer)": (
                {"email": NOBODY},
                {"status": None, "email": NOBODY},
            ),
        }
        walks: dict[str, tuple[str, int] | None] = {}
        one_customer: dict[str, str] = {}
        for where in ("1k", "large"):
            stub, floor = stubs[where], floors[where]
            # A selective search: the email of one customer from the middle of the ids (about
            # 10 orders), where the trigram index, not a walk down the orders, must serve.
            row = floor.conn.execute(
                "SELECT id FROM customers ORDER BY id"
                " OFFSET (SELECT count(*) / 2 FROM customers) LIMIT 1"
            ).fetchone()
            one_customer[where] = email = f"seed-{row[0] if row else 1}@"
            variants["email, one customer"] = (
                {"email": email},
                {"status": None, "email": email},
            )
            cases[f"summary {where}"] = Case(
                f"summary {where}", rpc(stub.GetSummary, lambda: pb.GetSummaryRequest(limit=50))
            )
            cases[f"summary floor {where}"] = Case("", lambda f=floor: f.summary(50))
            for label, (req, sql) in variants.items():
                cases[f"list {label} {where}"] = Case(
                    label, rpc(stub.ListOrders, lambda req=req: pb.ListOrdersRequest(**req))
                )
                cases[f"list floor {label} {where}"] = Case(
                    "", lambda f=floor, sql=sql: f.list_orders(sql["status"], sql["email"], None)
                )
            walks[where] = walk = self._walk(stub, 5, 99)
            if walk:
                token, after = walk
                cases[f"page100 {where}"] = Case(
                    "page100",
                    rpc(
                        stub.ListOrders,
                        lambda t=token: pb.ListOrdersRequest(page_size=5, page_token=t),
                    ),
                )
                cases[f"page100 floor {where}"] = Case(
                    "", lambda f=floor, a=after: f.list_orders(None, None, a, limit=5)
                )
        cases["getorder large"] = Case(
            "getorder",
            rpc(self.stub_large.GetOrder, lambda: pb.GetOrderRequest(id=rng.choice(ids))),
        )
        cases["getorder floor large"] = Case("", lambda: floors["large"].get_order(rng.choice(ids)))
        cases["paid+email large"] = Case(
            "paid+email",
            rpc(self.stub_large.ListOrders, lambda: pb.ListOrdersRequest(status=PAID, email=EMAIL)),
        )
        cases["paid+email floor large"] = Case(
            "", lambda: floors["large"].list_orders("PAID", EMAIL, None)
        )
        deep = self._walk(self.stub_large, 50, 99)
        if deep:
            token, after = deep
            cases["page100x50 large"] = Case(
                "page100x50",
                rpc(
                    self.stub_large.ListOrders,
                    lambda t=token: pb.ListOrdersRequest(page_size=50, page_token=t),
                ),
            )
            cases["page100x50 floor large"] = Case(
                "", lambda a=after: floors["large"].list_orders(None, None, a, limit=50)
            )
        # GetCustomer against Health/Check and through Envoy, ListOrders against the
        # psycopg + protobuf floor (bench/overhead.py), interleaved with the rest.
        if self.gateway is None:
            self.gateway = Gateway(self.srv_large, self.log_dir / "envoy.log")
            self.gateway.start()
        overhead = Overhead(
            self.srv_large.address,
            self.url_large,
            self.gateway.http_port,
            [
                (big, self.url_large, self.srv_large.address),
                ("1k", self.url_1k, self.srv_1k.address),
            ],
        )
        for key, case in overhead.build().items():
            cases[f"overhead {key}"] = case
        try:
            run_interleaved(
                list(cases.values()),
                seconds_per_case=s.latency_seconds,
                rounds=s.rounds,
                max_calls_per_case=3000,
            )
            self._explain(floors, walks, one_customer)
        finally:
            for f in floors.values():
                f.close()
            overhead.close()
        rss = {"1k": self.srv_1k.rss(), "large": self.srv_large.rss()}
        self.latency_cases = cases
        at = {"1k": "@1k", "large": f"@{big}"}

        def lat(case: Case) -> str:
            if not case.n:
                return "n/a"
            return f"{fmt_ms(case.p50_ms)} / {fmt_ms(case.p99_ms)}"

        def add(
            key: str,
            title: str,
            where: str,
            target: str = "",
            ok: bool | None = None,
            floor_label: str = "",
            baseline: tuple[str, float] | None = None,
            note: str = "",
        ) -> None:
            case = cases[key]
            floor = cases.get(key.replace(" ", " floor ", 1) if " " in key else "")
            errors = f"; {case.errors} errors ({case.last_error})" if case.errors else ""
            if baseline is not None:
                label, value = baseline
                floor_cell, ratio = f"{label}: {fmt_ms(value)}", case.p50_ms / value
            elif floor is not None and floor.n:
                floor_cell = f"{floor_label}{fmt_ms(floor.p50_ms)}"
                ratio = case.p50_ms / floor.p50_ms
            else:
                floor_cell, ratio = "", math.nan
            self.table.add(
                Row(
                    f"{title} {at[where]}",
                    fmt_ms(case.p50_ms),
                    floor_cell,
                    fmt_ratio(ratio),
                    self._stmts(case.statements),
                    lat(case),
                    fmt_mb(rss[where]),
                    target,
                    verdict(ok) if target else "",
                    note=(note + errors).lstrip("; "),
                )
            )

        def grow(name: str) -> float:
            return cases[f"{name} large"].p50_ms / cases[f"{name} 1k"].p50_ms

        add(
            "summary 1k",
            "GetSummary(50) p50",
            "1k",
            floor_label="aggregate SQL ",
            note=f"{cases['summary 1k'].n} calls, interleaved with every other case in"
            f" {s.rounds} rounds; floor = the aggregate over orders a hand-written query runs",
        )
        g = grow("summary")
        add(
            "summary large",
            "GetSummary(50) p50",
            "large",
            f"<= 2x the 1k p50: {g:.2f}x",
            g <= 2,
            floor_label="aggregate SQL ",
        )
        add("getorder large", "GetOrder p50", "large", floor_label="SQL ")
        vs = cases["summary large"].p50_ms / cases["getorder large"].p50_ms
        add(
            "summary large",
            "GetSummary(50) vs GetOrder",
            "large",
            f"<= 1.5x GetOrder: {vs:.2f}x",
            vs <= 1.5,
            baseline=("GetOrder", cases["getorder large"].p50_ms),
        )
        for label in variants:
            if label == "email, one customer":
                add(
                    f"list {label} 1k",
                    f"ListOrders email '{one_customer['1k']}' (one customer) p50",
                    "1k",
                    floor_label="SQL ",
                )
                g = grow(f"list {label}")
                add(
                    f"list {label} large",
                    f"ListOrders email '{one_customer['large']}' (one customer) p50",
                    "large",
                    f"<= 2x the 1k p50: {g:.2f}x",
                    g <= 2,
                    floor_label="SQL ",
                    note="a selective substring: one customer's ~10 orders, found through the"
                    " trigram index",
                )
                continue
            add(f"list {label} 1k", f"ListOrders {label} p50", "1k", floor_label="SQL ")
            g = grow(f"list {label}")
            if label == f"email '{EMAIL}'":
                add(
                    f"list {label} large",
                    f"ListOrders {label} p50",
                    "large",
                    floor_label="SQL ",
                    note=f"{g:.2f}x the 1k p50; the worst case of a substring search, no target:"
                    " a broad match (11% of the customers) owning none of the newest orders, so"
                    " the newest-first walk reads every newer order first (docs/benchmarks.md)",
                )
                continue
            add(
                f"list {label} large",
                f"ListOrders {label} p50",
                "large",
                f"<= 2x the 1k p50: {g:.2f}x",
                g <= 2,
                floor_label="SQL ",
            )
        if walks["1k"] and walks["large"]:
            add("page100 1k", "ListOrders page 100 (5 a page) p50", "1k", floor_label="SQL ")
            g = grow("page100")
            add(
                "page100 large",
                "ListOrders page 100 (5 a page) p50",
                "large",
                f"<= 2x the 1k p50: {g:.2f}x",
                g <= 2,
                floor_label="SQL ",
                note="page 100 of a walk at 5 orders a page (1k orders hold about 190 pages);"
                " the token replayed; floor = the same keyset query",
            )
        else:
            self.table.add(
                Row(
                    "ListOrders page 100 (5 a page)",
                    "n/a",
                    target="<= 2x the 1k p50",
                    verdict="FAIL",
                    note="the walk ended before page 100",
                )
            )
        if deep:
            ratio = cases["page100x50 large"].p50_ms / cases["list no filter large"].p50_ms
            add(
                "page100x50 large",
                "ListOrders page 100 (50 a page) vs page 1",
                "large",
                baseline=("page 1", cases["list no filter large"].p50_ms),
                note=f"keyset: page 100 costs {ratio:.2f}x page 1 (OFFSET would read 4,950 rows"
                " first)",
            )
        add(
            "paid+email large",
            f"ListOrders status=PAID + email '{EMAIL}' p50",
            "large",
            floor_label="SQL ",
        )
        statements = set().union(
            *(
                c.statements
                for k, c in cases.items()
                if k.startswith(("list ", "page100")) and " floor " not in k
            )
        )
        most = max(statements) if statements else None
        self.table.add(
            Row(
                "ListOrders: SQL statements a page, every case above",
                self._stmts(statements),
                "2 (orders+customers, then items)",
                "",
                self._stmts(statements),
                "",
                "",
                "<= 2",
                verdict(most is not None and most <= 2),
            )
        )
        overhead.rows(self.table, f"@{big}", rss["large"])

    def _explain(
        self,
        floors: dict[str, FloorReader],
        walks: dict[str, tuple[str, int] | None],
        one_customer: dict[str, str],
    ) -> None:
        """EXPLAIN ANALYZE of the SQL behind every case, written to plans.txt in the logs."""
        out = []
        for where, floor in floors.items():
            queries: list[tuple[str, str, tuple[Any, ...]]] = [
                ("summary: the aggregate (floor)", SUMMARY_AGGREGATE, (50,)),
                ("summary: the rollup (the service's query)", SUMMARY_ROLLUP, (50,)),
            ]
            for label, status, email, after, limit in (
                ("list, no filter", None, None, None, 50),
                ("list, status=PAID", "PAID", None, None, 50),
                (f"list, email {EMAIL_SPREAD!r}", None, EMAIL_SPREAD, None, 50),
                (f"list, email {EMAIL!r}", None, EMAIL, None, 50),
                (f"list, email {NOBODY!r}", None, NOBODY, None, 50),
                (f"list, status=PAID + email {EMAIL!r}", "PAID", EMAIL, None, 50),
                (f"list, email {one_customer[where]!r}", None, one_customer[where], None, 50),
                ("list, page 100 at 5 a page", None, None, (walks.get(where) or ("", 0))[1], 5),
            ):
                query, params = list_sql(status, email, after or None, floor.email_key)
                queries.append((label, query, (*params, limit)))
            for label, query, params in queries:
                try:
                    plan = floor.explain(query, params)
                except psycopg.Error as exc:
                    plan = f"failed: {exc}"
                out.append(f"=== {where}: {label}\n{query} {params}\n{plan}\n")
        (self.log_dir / "plans.txt").write_text("\n".join(out), encoding="utf-8")

    # ----------------------------------------------------------------------------------------
    def memory(self) -> None:
        s = self.size
        say(
            f"memory: mixed load for {s.memory_seconds:.0f} s after {s.memory_warmup:.0f} s of"
            " warm-up"
        )
        with psycopg.connect(libpq(self.url_large), autocommit=True) as conn:
            row = conn.execute("SELECT min(id), max(id) FROM orders").fetchone()
            crow = conn.execute("SELECT min(id), max(id) FROM customers").fetchone()
        ids = {
            "order_ids": (int(row[0]), int(row[1])),
            "customer_ids": (int(crow[0]), int(crow[1])),
        }
        start_at = planned_start(s.memory_warmup)
        with RssSampler(self.srv_large, interval=0.5, limit=s.memory_seconds + 120) as rss:
            result, cores = None, None
            cpu = CpuWindow(self.srv_large.pids, start_at, s.memory_seconds)
            result = run_load(
                self.srv_large.address,
                "mixed",
                s.memory_seconds,
                processes=2,
                concurrency=8,
                start_at=start_at,
                **ids,
            )
            cores = cpu.cores()
        window = [v for t, v in rss.samples if start_at <= t <= start_at + s.memory_seconds]
        if not window:
            window = [v for _, v in rss.samples]
        first, top, low, last = window[0], max(window), min(window), window[-1]
        drift = max(top / first - 1, 1 - low / first)
        self.table.add(
            Row(
                f"server RSS over {s.memory_seconds:.0f} s of mixed load @{_k(self.orders_large)}",
                f"{fmt_mb(first)} -> {fmt_mb(last)} (max {fmt_mb(top)})",
                "",
                f"{top / first:.3f}x",
                "",
                f"{fmt_ms(result.p50_ms)} / {fmt_ms(result.p99_ms)}",
                fmt_mb(last),
                "within 10% of the start",
                verdict(drift <= 0.10 and result.errors == 0),
                note=f"{result.requests_per_second:,.0f} req/s, 8 calls in flight: GetSummary 30%,"
                " GetOrder 25%, ListOrders 35% (no filter, PAID, an email), CreateOrder+PayOrder"
                f" 10%; {len(window)} samples after {s.memory_warmup:.0f} s of warm-up; client"
                f" {result.client_cores:.2f} cores, server {cores or 0:.2f} cores; {result.errors}"
                " errors" + (f" (first: {result.first_error})" if result.errors else ""),
            )
        )


# --------------------------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), {mem}, {platform.system()} {platform.release()}"


def _metrics_env() -> dict[str, str]:
    """A Prometheus port of its own for a server whose calls the benchmark counts."""
    return {"ORDERS_METRICS_PORT": str(free_port())}


def _metrics_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.extra_env['ORDERS_METRICS_PORT']}/metrics"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size",
        choices=("small", "medium", "large", "tiny"),
        default="medium",
        help="small: a smoke run (< 60 s); medium (default): 100k orders, < 5 min;"
        " large: 1M orders / 100k customers",
    )
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install wrk")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--django",
        type=Path,
        metavar="PATH",
        help="the Django peer (a folder with pg-up.sh, django-up.sh, seed.py, django-down.sh):"
        " measure ours beside it through REST; without it the Django rows are n/a",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        metavar="PATH",
        help="where the Django comparison's chart (SVG) goes; default"
        " docs/benchmarks-django.svg when --django is given",
    )
    args = parser.parse_args(argv)
    if args.django is not None:
        check_peer(args.django)
    chart = args.chart
    if chart is None and args.django is not None:
        chart = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-django.svg"

    admin_url = os.environ.get("BENCH_DATABASE_URL", "").strip() or DEFAULT_ADMIN_URL
    log_dir = Path(tempfile.mkdtemp(prefix="orders-bench-"))

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    load_before = loadavg()
    when = datetime.now(UTC)
    bench = Bench(args.size, admin_url, not args.no_install, log_dir, args.django, chart)
    failure = ""
    try:
        bench.run()
    except KeyboardInterrupt:
        failure = "interrupted"
    except Exception as exc:  # the table so far is still printed
        import traceback

        traceback.print_exc()
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            bench.close()
        except Exception as exc:
            say(f"cleanup: {exc}")
    elapsed = time.monotonic() - started
    passed, failed, na = bench.table.verdicts()
    header = (
        f"scripts/bench --size {args.size}: {when:%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s;"
        f" {machine()}; PostgreSQL {bench.facts.get('postgresql', '?')};"
        f" load average {load_before} at the start, {loadavg()} at the end;"
        " Python processes of a server by default:"
        f" {bench.facts.get('server_processes_default', '?')}"
    )
    summary = f"targets: {passed} PASS, {failed} FAIL, {na} n/a" + (
        f"; the run stopped early: {failure}" if failure else ""
    )
    text = f"{header}\n\n{bench.table.markdown()}\n\n{summary}\n"
    print(text)
    say(f"logs in {log_dir}")
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    if args.json:
        figures = {
            "facts": bench.facts,
            "rows": [r.__dict__ for r in bench.table.rows],
            "cases": {
                k: {"p50_ms": c.p50_ms, "p99_ms": c.p99_ms, "n": c.n, "errors": c.errors}
                for k, c in getattr(bench, "latency_cases", {}).items()
            },
        }
        args.json.write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
