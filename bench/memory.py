"""Phase 6, memory: the large server's RSS over a mixed load after a warm-up; the target holds
when every sample is within 10% of the first."""

from __future__ import annotations

import time

import psycopg

from .context import Context, Stack, count_label
from .load import planned_start, run_load
from .report import Row, fmt_mb, fmt_ms, verdict
from .stack import CpuWindow, RssSampler, libpq, say

__all__ = ["run"]


def run(ctx: Context, stack: Stack) -> None:
    s = ctx.size
    server = stack.large.server
    say(f"memory: mixed load for {s.memory_seconds:.0f} s after {s.memory_warmup:.0f} s of warm-up")
    with psycopg.connect(libpq(stack.large.url), autocommit=True) as conn:
        orders = conn.execute("SELECT min(id), max(id) FROM orders").fetchone()
        customers = conn.execute("SELECT min(id), max(id) FROM customers").fetchone()
    assert orders is not None and customers is not None  # aggregates always return a row
    start_at = planned_start(s.memory_warmup)  # wall clock: the load's processes share it
    # The sampler stamps its samples with the monotonic clock.
    measured_from = time.monotonic() + (start_at - time.time())
    with RssSampler(server, interval=0.5, limit=s.memory_seconds + 120) as rss:
        cpu = CpuWindow(server.pids, start_at, s.memory_seconds)
        result = run_load(
            server.address,
            "mixed",
            s.memory_seconds,
            processes=2,
            concurrency=8,
            start_at=start_at,
            order_ids=(int(orders[0]), int(orders[1])),
            customer_ids=(int(customers[0]), int(customers[1])),
        )
        cores = cpu.cores()
    window = [v for t, v in rss.samples if measured_from <= t <= measured_from + s.memory_seconds]
    if not window:
        window = [v for _, v in rss.samples]
    first, top, low, last = window[0], max(window), min(window), window[-1]
    drift = max(top / first - 1, 1 - low / first)
    ctx.table.add(
        Row(
            workload=f"server RSS over {s.memory_seconds:.0f} s of mixed load"
            f" @{count_label(stack.orders)}",
            project=f"{fmt_mb(first)} -> {fmt_mb(last)} (max {fmt_mb(top)})",
            ratio=f"{top / first:.3f}x",
            latency=f"{fmt_ms(result.p50_ms)} / {fmt_ms(result.p99_ms)}",
            rss=fmt_mb(last),
            target="within 10% of the start",
            verdict=verdict(drift <= 0.10 and result.errors == 0),
            note=f"{result.requests_per_second:,.0f} req/s, 8 calls in flight: GetSummary 30%,"
            " GetOrder 25%, ListOrders 35% (no filter, PAID, an email), CreateOrder+PayOrder"
            f" 10%; {len(window)} samples after {s.memory_warmup:.0f} s of warm-up; client"
            f" {result.client_cores:.2f} cores, server {cores or 0:.2f} cores; {result.errors}"
            " errors" + (f" (first: {result.first_error})" if result.errors else ""),
        )
    )
