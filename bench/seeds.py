"""Phase 1, the seeds through the Seed RPC beside raw COPY of the same rows (bench/floor.py):
50x5x3 several times, then the size's big seed twice; the 1k-order reference database; at
the large size, more big seeds up to 1M orders; and VACUUM (ANALYZE) after each."""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import dataclass

import grpc
import psycopg
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

from .context import Context, Seed, Stack, statements, trailer_statements
from .floor import FloorSeeder
from .report import Row, fmt_mb, fmt_ms, fmt_ratio, verdict
from .stack import BackendCpu, RssSampler, Server, libpq, say

__all__ = ["fill", "run", "settle"]

SMALL_SEED = (50, 5, 3)
REFERENCE = (100, 10, 5)  # the 1k-order database


def orders_of(seed: Seed) -> int:
    return seed[0] * seed[1]


def rows_of(seed: Seed) -> int:
    c, o, i = seed
    return c + c * o + c * o * i


def seed_label(seed: Seed) -> str:
    return f"{seed[0]:,}x{seed[1]}x{seed[2]}"


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


# (its Python's CPU seconds, its backend's) for one raw COPY
FloorCpu = tuple[float, float | None]


def seed_call(
    ctx: Context, stub: pb_grpc.OrdersServiceStub, server: Server, seed: Seed
) -> SeedResult:
    c, o, i = seed
    stamps: list[float] = []
    last: pb.SeedResponse | None = None
    error = ""
    cpu_before = server.cpu()
    database = server.database_url.rsplit("/", 1)[-1]
    with (
        BackendCpu(ctx.dbs.admin_url, database) as postgres,
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
    ok = not error and last is not None and last.done and last.phase == pb.SeedResponse.PHASE_DONE
    if not ok and not error:
        error = f"last message: {last}"
    return SeedResult(
        seconds=elapsed,
        statements=None if error else trailer_statements(call),
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


def run(ctx: Context, stack: Stack) -> int:
    """The seeds' rows; the number of orders the large database then holds."""
    large = stack.large
    floor_a = FloorSeeder(stack.floor_a)
    floor_b = FloorSeeder(stack.floor_b)
    try:
        small: list[SeedResult] = []
        small_floor: list[float] = []
        small_floor_cpu: list[FloorCpu] = []
        floor_statements = 0
        say(f"seed {seed_label(SMALL_SEED)} x{ctx.size.small_repeats}, beside raw COPY")
        for r in range(ctx.size.small_repeats):
            if r % 2:
                small.append(seed_call(ctx, large.stub, large.server, SMALL_SEED))
            seconds, floor_statements = floor_a.seed(*SMALL_SEED)
            small_floor.append(seconds)
            small_floor_cpu.append((floor_a.last_python_cpu, floor_a.last_postgres_cpu))
            if not r % 2:
                small.append(seed_call(ctx, large.stub, large.server, SMALL_SEED))
        big = ctx.size.big
        say(f"seed {seed_label(big)} ({rows_of(big):,} rows): raw COPY, Seed RPC, raw COPY")
        # Twice each, alternated: into the databases that took the small seeds, then into
        # fresh ones (the second project run into a database of its own, dropped after).
        floor_big = [floor_a.seed(*big)[0]]
        floor_big_cpu = [(floor_a.last_python_cpu, floor_a.last_postgres_cpu)]
        big_runs = [seed_call(ctx, large.stub, large.server, big)]
        floor_big.append(floor_b.seed(*big)[0])
        floor_big_cpu.append((floor_b.last_python_cpu, floor_b.last_postgres_cpu))
        big_runs.append(seed_call(ctx, ctx.stub(stack.seed2), stack.seed2, big))
    finally:
        floor_a.close()
        floor_b.close()
    ctx.stop_server(stack.seed2)
    for url in (stack.floor_a, stack.floor_b, stack.seed2.database_url):
        ctx.dbs.drop(url)
    say(f"seed {seed_label(REFERENCE)} into the 1k-order database")
    ref = seed_call(ctx, stack.one_k.stub, stack.one_k.server, REFERENCE)
    if not ref.ok:
        raise RuntimeError(f"the reference seed failed: {ref.error}")
    _small_row(ctx, small, small_floor, small_floor_cpu, floor_statements, big_runs)
    _big_rows(ctx, small, big_runs, floor_big, floor_big_cpu, floor_statements)
    return orders_of(big) + len(small) * orders_of(SMALL_SEED)


def _small_row(
    ctx: Context,
    small: list[SeedResult],
    small_floor: list[float],
    small_floor_cpu: list[FloorCpu],
    floor_statements: int,
    big_runs: list[SeedResult],
) -> None:
    failed = [s.error for s in [*small, *big_runs] if not s.ok]
    ok_small = [s for s in small if s.ok]
    p_small = statistics.median(s.seconds for s in ok_small) if ok_small else math.nan
    f_small = statistics.median(small_floor)
    ratio_small = p_small / f_small
    ctx.table.add(
        Row(
            workload=f"seed {seed_label(SMALL_SEED)} (median of {len(small)})",
            project=fmt_ms(p_small * 1000),
            floor=f"raw COPY {fmt_ms(f_small * 1000)}",
            ratio=fmt_ratio(ratio_small),
            statements=f"{statements(s.statements for s in small)} / {floor_statements}",
            latency=f"max gap {max(s.max_gap for s in small):.2f} s",
            rss=f"+{fmt_mb(max(s.rss_peak - s.rss_start for s in small))}",
            target="<= 1.5x raw COPY",
            verdict=verdict(ratio_small <= 1.5 if ok_small else False),
            note=f"{len(small)} Seed calls alternated with {len(small_floor)} raw COPYs; "
            + _cpu_note(ok_small, small_floor_cpu, 1000, "ms")
            + (("; failed: " + "; ".join(failed)) if failed else ""),
        )
    )


def _big_rows(
    ctx: Context,
    small: list[SeedResult],
    big_runs: list[SeedResult],
    floor_big: list[float],
    floor_big_cpu: list[FloorCpu],
    floor_statements: int,
) -> None:
    big = ctx.size.big
    all_ok = all(r.ok for r in big_runs)
    p_big = statistics.mean(r.seconds for r in big_runs)
    f_big = statistics.mean(floor_big)
    ratio_big = p_big / f_big if all_ok else math.nan
    scaled = (
        "" if big == (10_000, 10, 5) else f" (size {ctx.size_name}: the issue's is 10,000x10x5)"
    )
    counts = {r.statements for r in big_runs}
    ctx.table.add(
        Row(
            workload=f"seed {seed_label(big)} ({rows_of(big):,} rows){scaled}",
            project=f"{p_big:.2f} s (runs {', '.join(f'{r.seconds:.2f}' for r in big_runs)})"
            if all_ok
            else "FAILED",
            floor=f"raw COPY {f_big:.2f} s (runs {', '.join(f'{x:.2f}' for x in floor_big)})",
            ratio=fmt_ratio(ratio_big),
            statements=f"{statements(counts)} / {floor_statements}",
            latency=f"{min(r.messages for r in big_runs)}+ messages",
            rss=f"peak {fmt_mb(max(r.rss_peak for r in big_runs))}",
            target="<= 1.25x raw COPY",
            verdict=verdict(all_ok and ratio_big <= 1.25),
            note="raw COPY, Seed, raw COPY, Seed, alternated: the first of each into the"
            " database that took the small seeds, the second into a fresh one; means; "
            + _cpu_note(big_runs, floor_big_cpu, 1, "s")
            + (
                f"; failed: {'; '.join(r.error for r in big_runs if not r.ok)}"
                if not all_ok
                else ""
            ),
        )
    )
    small_counts = {s.statements for s in small}
    constant = len(counts | small_counts) == 1 and None not in counts
    ctx.table.add(
        Row(
            workload="seed: SQL statements whatever the size",
            project=f"{statements(small_counts)} at {rows_of(SMALL_SEED)} rows,"
            f" {statements(counts)} at {rows_of(big):,}",
            floor=f"{floor_statements} (4 COPY + setval)",
            statements=statements(counts),
            target="constant",
            verdict=verdict(constant),
        )
    )
    worst = max(big_runs, key=lambda r: r.rss_peak - r.rss_start)
    growth = worst.rss_peak - worst.rss_start
    ctx.table.add(
        Row(
            workload=f"seed {seed_label(big)}: server RSS growth",
            project=f"+{fmt_mb(growth)}",
            rss=f"{fmt_mb(worst.rss_start)} -> peak {fmt_mb(worst.rss_peak)}",
            target="< 100 MB",
            verdict=verdict(all_ok and growth < 100e6),
            note="RSS of the server's process tree (VmRSS, /proc/<pid>/status), sampled"
            " every 50 ms during the call; the larger of the two runs",
        )
    )
    slowest = max(big_runs, key=lambda r: r.max_gap)
    ctx.table.add(
        Row(
            workload=f"seed {seed_label(big)}: longest wait for a progress message",
            project=f"{slowest.max_gap:.2f} s",
            latency=f"{slowest.messages} messages in {slowest.seconds:.1f} s",
            target="<= 1 s",
            verdict=verdict(all_ok and slowest.max_gap <= 1.0),
            note="from the call's start to the first message, and between messages, as the"
            " client received them; the longer of the two runs",
        )
    )


def _cpu_note(project: list[SeedResult], floor: list[FloorCpu], scale: float, unit: str) -> str:
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


def fill(ctx: Context, stack: Stack) -> int:
    """Large: more big seeds through the service until 1M orders; how many orders they
    added."""
    size = ctx.size
    results: list[SeedResult] = []
    say(f"filling to the large size: {size.fills} more seeds of {seed_label(size.big)}")
    for n in range(size.fills):
        result = seed_call(ctx, stack.large.stub, stack.large.server, size.big)
        results.append(result)
        say(f"  fill {n + 1}/{size.fills}: {result.seconds:.1f} s {result.error}")
        if not result.ok:
            raise RuntimeError(f"a fill seed failed: {result.error}")
    times = [r.seconds for r in results]
    ctx.table.add(
        Row(
            workload=f"seed {seed_label(size.big)} x{len(results)} more, into a growing database",
            project=f"median {statistics.median(times):.2f} s (first {times[0]:.2f}, last"
            f" {times[-1]:.2f})",
            statements=statements(r.statements for r in results),
            latency=f"max gap {max(r.max_gap for r in results):.2f} s",
            rss=f"+{fmt_mb(max(r.rss_peak - r.rss_start for r in results))} max",
            note="the seeds that take the large database to 1M orders; the last one loads"
            " into 900k orders",
        )
    )
    return size.fills * orders_of(size.big)


def settle(stack: Stack) -> None:
    """VACUUM (ANALYZE), as autovacuum would do within a minute: the plans measured are
    those of a settled database, not of tables without statistics."""
    started = time.monotonic()
    for url in (stack.large.url, stack.one_k.url):
        with psycopg.connect(libpq(url), autocommit=True, connect_timeout=5) as conn:
            conn.execute("VACUUM (ANALYZE)")
    say(f"VACUUM ANALYZE: {time.monotonic() - started:.1f} s")
