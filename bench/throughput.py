"""Phase 3, throughput: GetSummary(50) from our load client (bench/load.py) and from h2load,
against a server of 1 process, one of 2 and the default one; ours also through Envoy as
native gRPC (medium and large); REST through Envoy with wrk. Envoy stays up afterwards for
the latencies' Envoy hop."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request

from orders.v1 import orders_pb2 as pb

from .context import Context, Stack, count_label, metrics_env, metrics_url
from .load import LoadResult, planned_start, run_load
from .report import Row, fmt_mb, fmt_ms, fmt_ratio, verdict
from .stack import (
    CpuWindow,
    H2loadResult,
    Server,
    WrkResult,
    ensure_h2load,
    ensure_wrk,
    grpc_failures,
    run_h2load,
    run_wrk,
    say,
)

__all__ = ["run"]

# One run of our client: its result and the server's CPU (cores) meanwhile.
LoadRun = tuple[LoadResult, float | None]
# One run of h2load: its result, the server's CPU, and the calls the server failed meanwhile.
H2Run = tuple[H2loadResult, float | None, int]


def run(ctx: Context, stack: Stack) -> None:
    h2load = _processes(ctx, stack)
    _direct_vs_rest(ctx, stack, h2load)


def _processes(ctx: Context, stack: Stack) -> str | None:
    """1 server process vs 2 (ORDERS_GRPC_PROCESSES), from our client and from h2load (its
    path, None when it is missing, returned for the next step)."""
    s = ctx.size
    at = count_label(stack.orders)
    say("throughput: GetSummary, 1 server process vs 2")
    one, two = ctx.start_servers(
        (stack.large.url, "server-1proc", {"ORDERS_GRPC_PROCESSES": "1", **metrics_env()}),
        (stack.large.url, "server-2proc", {"ORDERS_GRPC_PROCESSES": "2", **metrics_env()}),
    )
    time.sleep(1.0)  # workers a server may start after it reports SERVING
    ctx.facts["processes_seen"] = {
        "ORDERS_GRPC_PROCESSES=1": one.serving_processes(),
        "=2": two.serving_processes(),
    }
    runs: dict[str, list[LoadRun]] = {"one": [], "two": []}
    h2load = ensure_h2load(ctx.install)
    h2runs: dict[str, list[H2Run]] = {"one": [], "two": []}
    for _ in range(s.throughput_rounds):
        runs["one"].append(_load(one, "summary", s.throughput_seconds, s.throughput_warmup))
        runs["two"].append(_load(two, "summary", s.throughput_seconds, s.throughput_warmup))
        if h2load:
            h2runs["one"].append(_h2load(h2load, one, s.throughput_seconds))
            h2runs["two"].append(_h2load(h2load, two, s.throughput_seconds))
    rss_one, rss_two = one.rss(), two.rss()
    ctx.stop_server(one)
    ctx.stop_server(two)
    r1 = statistics.mean(r.requests_per_second for r, _ in runs["one"])
    r2 = statistics.mean(r.requests_per_second for r, _ in runs["two"])
    ctx.table.add(_load_row(f"GetSummary(50) gRPC, 1 server process, @{at}", runs["one"], rss_one))
    row = _load_row(f"GetSummary(50) gRPC, 2 server processes, @{at}", runs["two"], rss_two)
    row.floor = f"1 process: {r1:,.0f} req/s"
    row.ratio = fmt_ratio(r2 / r1)
    if not h2runs["two"]:  # the target then falls back on our client's figures
        row.target = ">= 1.4x 1 process"
        row.verdict = verdict(r2 / r1 >= 1.4)
    ctx.table.add(row)
    if h2runs["one"]:
        h1 = statistics.mean(r.requests_per_second for r, _, _ in h2runs["one"])
        h2 = statistics.mean(r.requests_per_second for r, _, _ in h2runs["two"])
        ctx.table.add(
            _h2load_row(f"GetSummary(50) gRPC (h2load), 1 server process, @{at}", h2runs["one"])
        )
        row = _h2load_row(f"GetSummary(50) gRPC (h2load), 2 server processes, @{at}", h2runs["two"])
        failed = sum(r.errors + f for r, _, f in h2runs["one"] + h2runs["two"])
        row.floor = f"1 process: {h1:,.0f} req/s"
        row.ratio = fmt_ratio(h2 / h1)
        row.target = ">= 1.4x 1 process"
        row.verdict = verdict(h2 / h1 >= 1.4 and failed == 0)
        ctx.table.add(row)
    return h2load


def _direct_vs_rest(ctx: Context, stack: Stack, h2load: str | None) -> None:
    """Direct gRPC (our client, h2load) vs REST through Envoy (wrk), on the default server."""
    s = ctx.size
    at = count_label(stack.orders)
    server = stack.large.server
    say("throughput: GetSummary, direct gRPC vs REST through Envoy")
    gateway = ctx.gateway_for(server)
    url = f"http://127.0.0.1:{gateway.http_port}/api/orders/summary?limit=50"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        body = json.loads(response.read())
        assert response.status == 200 and len(body["customers"]) == 50, body
    wrk = ensure_wrk(ctx.install)
    grpc_runs: list[LoadRun] = []
    proxied_runs: list[LoadRun] = []
    envoy_target = f"127.0.0.1:{gateway.http_port}"
    rest_runs: list[tuple[WrkResult, float | None, float | None]] = []
    h2_direct: list[H2Run] = []
    seconds = max(1, round(s.throughput_seconds))
    if wrk:
        run_wrk(wrk, url, 2, 16, 1)  # warm-up
    for _ in range(s.throughput_rounds):
        grpc_runs.append(_load(server, "summary", s.throughput_seconds, s.throughput_warmup))
        if h2load:
            h2_direct.append(_h2load(h2load, server, s.throughput_seconds))
        if ctx.size_name in ("medium", "large"):  # a diagnostic: the hop without JSON
            proxied_runs.append(
                _load(
                    server,
                    "summary",
                    s.throughput_seconds,
                    s.throughput_warmup,
                    target=envoy_target,
                )
            )
        if wrk:
            start_at = time.time() + 0.3
            server_cpu = CpuWindow(server.pids, start_at, seconds - 0.6)
            envoy_cpu = CpuWindow(
                lambda: [gateway.pid] if gateway.pid else [], start_at, seconds - 0.6
            )
            result = run_wrk(wrk, url, 2, 16, seconds)
            rest_runs.append((result, server_cpu.cores(), envoy_cpu.cores()))
    rss = server.rss()
    processes = server.serving_processes()
    g = statistics.mean(r.requests_per_second for r, _ in grpc_runs)
    ctx.table.add(
        _load_row(
            f"GetSummary(50) gRPC, default server ({processes} process(es)), @{at}",
            grpc_runs,
            rss,
        )
    )
    direct_label, g_ours = "direct gRPC", g
    if h2_direct:
        # REST comes from wrk, a client in C: the direct figure it is held to comes from
        # one in C too, not from our Python client, which costs the server cores.
        ctx.table.add(
            _h2load_row(
                f"GetSummary(50) gRPC (h2load), default server ({processes} process(es)), @{at}",
                h2_direct,
            )
        )
        g = statistics.mean(r.requests_per_second for r, _, _ in h2_direct)
        direct_label = "direct gRPC (h2load)"
    if proxied_runs:
        proxied = _load_row(f"GetSummary(50) gRPC through Envoy, @{at}", proxied_runs, rss)
        p = statistics.mean(r.requests_per_second for r, _ in proxied_runs)
        proxied.floor = f"direct gRPC: {g_ours:,.0f} req/s"
        proxied.ratio = fmt_ratio(p / g_ours)
        proxied.note += "; native gRPC through the same Envoy: the proxy hop without transcoding"
        ctx.table.add(proxied)
    if not rest_runs:
        ctx.table.add(
            Row(
                workload=f"GetSummary(50) REST through Envoy, @{at}",
                project="n/a",
                floor=f"direct gRPC: {g:,.0f} req/s",
                target=">= 0.70x direct gRPC; >= 800 req/s",
                verdict="n/a",
                note="wrk is not installed (Debian package wrk) and was not installed",
            )
        )
        return
    rest = statistics.mean(r.requests_per_second for r, _, _ in rest_runs)
    errors = sum(r.errors for r, _, _ in rest_runs)
    cores = [c for _, c, _ in rest_runs if c is not None]
    envoy = [c for _, _, c in rest_runs if c is not None]
    wrk_cpu = sum(r.cpu_seconds for r, _, _ in rest_runs) / sum(r.duration for r, _, _ in rest_runs)
    note = (
        f"wrk -t2 -c16, {len(rest_runs)} run(s) of {seconds} s, {errors} errors; Envoy"
        f" upstream: {gateway.upstreams}; server {statistics.mean(cores):.2f} cores"
        f" ({statistics.mean(cores) / rest * 1000:.2f} ms a call), Envoy"
        f" {statistics.mean(envoy):.2f} cores, wrk {wrk_cpu:.2f} cores"
        if cores and envoy
        else f"{errors} errors"
    )
    ctx.table.add(
        Row(
            workload=f"GetSummary(50) REST through Envoy, @{at}",
            project=f"{rest:,.0f} req/s",
            floor=f"{direct_label}: {g:,.0f} req/s",
            ratio=fmt_ratio(rest / g),
            latency=f"{fmt_ms(statistics.median(r.p50_ms for r, _, _ in rest_runs))} /"
            f" {fmt_ms(max(r.p99_ms for r, _, _ in rest_runs))}",
            rss=fmt_mb(rss),
            target=">= 0.70x direct gRPC",
            verdict=verdict(rest / g >= 0.70 and errors == 0),
            note=note,
        )
    )
    target_size = (
        "at 100k orders"
        if stack.orders >= 100_000
        else f"at {at} (size {ctx.size_name}; the issue's is 100k)"
    )
    ctx.table.add(
        Row(
            workload=f"GetSummary(50) through Envoy {target_size}",
            project=f"{rest:,.0f} req/s",
            target=">= 800 req/s",
            verdict=verdict(rest >= 800 and errors == 0),
        )
    )


def _load(
    server: Server,
    workload: str,
    seconds: float,
    warmup: float,
    target: str | None = None,
) -> LoadRun:
    """Our gRPC load on `target` (default: the server itself); the server's CPU beside."""
    start_at = planned_start(warmup)
    cpu = CpuWindow(server.pids, start_at, seconds)
    result = run_load(
        target or server.address,
        workload,
        seconds,
        processes=2,
        concurrency=16,
        channels_per_process=4,
        start_at=start_at,
    )
    return result, cpu.cores()


def _h2load(h2load: str, server: Server, seconds: float) -> H2Run:
    """GetSummary(50) from h2load (16 connections, a call in flight on each), the server's
    CPU beside, and the calls it answered with a status other than OK meanwhile."""
    message = pb.GetSummaryRequest(limit=50).SerializeToString()
    method = "/orders.v1.OrdersService/GetSummary"
    run_h2load(h2load, server.address, method, message, 16, 1)  # warm-up
    failed_before = grpc_failures(metrics_url(server))
    whole = max(1, round(seconds))
    cpu = CpuWindow(server.pids, time.time() + 0.3, whole - 0.6)
    result = run_h2load(h2load, server.address, method, message, 16, whole)
    return result, cpu.cores(), grpc_failures(metrics_url(server)) - failed_before


def _h2load_row(name: str, runs: list[H2Run]) -> Row:
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
    return Row(
        workload=name, project=f"{rps:,.0f} req/s", latency=f"mean {fmt_ms(mean)}", note=note
    )


def _load_row(name: str, runs: list[LoadRun], rss: int | None) -> Row:
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
        workload=name,
        project=f"{rps:,.0f} req/s",
        latency=f"{fmt_ms(statistics.median(r.p50_ms for r, _ in runs))} /"
        f" {fmt_ms(max(r.p99_ms for r, _ in runs))}",
        rss=fmt_mb(rss),
        note=note,
    )
