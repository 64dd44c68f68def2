"""A concurrent gRPC load client: several processes (`python -m bench.load`), each one asyncio
loop with grpc.aio over several channels of its own (separate HTTP/2 connections, so that a
server of several processes behind one port sees several connections), each channel carrying
several calls at a time. Every process warms up until a common start time, measures for the
same window, and reports its calls, latencies and the CPU it used in that window, so that the
client's own share of the 2 cores is stated next to the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    calls: int
    errors: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    client_cpu_seconds: float
    processes: int
    concurrency: int
    first_error: str
    started_at: float

    @property
    def client_cores(self) -> float:
        """Cores the client kept busy on average over the window."""
        return self.client_cpu_seconds / self.seconds if self.seconds else 0.0


def run_load(
    target: str,
    workload: str,
    seconds: float,
    warmup: float = 1.0,
    processes: int = 2,
    concurrency: int = 16,
    channels_per_process: int = 4,
    order_ids: tuple[int, int] = (1, 1),
    customer_ids: tuple[int, int] = (1, 1),
    start_at: float | None = None,
) -> LoadResult:
    """`concurrency` calls in flight in all, spread over `processes` processes, measured from
    `start_at` (wall clock; default: after the processes' start-up and `warmup`) for
    `seconds`."""
    from .stats import percentile

    per_process = max(1, concurrency // processes)
    if start_at is None:
        start_at = planned_start(warmup)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.load",
                "--target",
                target,
                "--workload",
                workload,
                "--start-at",
                repr(start_at),
                "--seconds",
                repr(seconds),
                "--concurrency",
                str(per_process),
                "--channels",
                str(min(channels_per_process, per_process)),
                "--order-ids",
                f"{order_ids[0]}:{order_ids[1]}",
                "--customer-ids",
                f"{customer_ids[0]}:{customer_ids[1]}",
                "--seed",
                str(n),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        for n in range(processes)
    ]
    reports = []
    timeout = start_at - time.time() + seconds + 60
    for worker in workers:
        try:
            out, err = worker.communicate(timeout=max(timeout, 5))
        except subprocess.TimeoutExpired:
            worker.kill()
            out, err = worker.communicate()
        if worker.returncode != 0 or not out.strip():
            raise RuntimeError(f"load worker failed ({worker.returncode}): {err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    latencies = [x for r in reports for x in r["latencies"]]
    calls = sum(r["calls"] for r in reports)
    window = max(r["seconds"] for r in reports)
    return LoadResult(
        calls=calls,
        errors=sum(r["errors"] for r in reports),
        seconds=window,
        requests_per_second=calls / window if window else 0.0,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        client_cpu_seconds=sum(r["cpu"] for r in reports),
        processes=processes,
        concurrency=per_process * processes,
        first_error=next((r["first_error"] for r in reports if r["first_error"]), ""),
        started_at=start_at,
    )


def planned_start(warmup: float) -> float:
    """When a load started now begins to count: after its processes' start-up (imports, about
    a second on a busy machine) and `warmup` seconds of calls."""
    return time.time() + 2.0 + warmup


# --------------------------------------------------------------------------------------------
# The worker process


async def _worker(args: argparse.Namespace) -> dict[str, object]:
    import grpc
    from orders.v1 import orders_pb2 as pb
    from orders.v1 import orders_pb2_grpc as pb_grpc

    rng = random.Random(args.seed)
    o_lo, o_hi = (int(x) for x in args.order_ids.split(":"))
    c_lo, c_hi = (int(x) for x in args.customer_ids.split(":"))
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_http_proxy", 0)]
    channels = [
        grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.channels)
    ]
    stubs = [pb_grpc.OrdersServiceStub(ch) for ch in channels]
    summary = pb.GetSummaryRequest(limit=50)
    paid = pb.Order.Status.Value("PAID")

    async def summary_call(stub: pb_grpc.OrdersServiceAsyncStub) -> None:
        await stub.GetSummary(summary, timeout=10)

    first_page = pb.ListOrdersRequest(page_size=50)

    async def list_call(stub: pb_grpc.OrdersServiceAsyncStub) -> None:
        """ListOrders' first page of 50, newest first, with their items."""
        await stub.ListOrders(first_page, timeout=10)

    async def mixed_call(stub: pb_grpc.OrdersServiceAsyncStub) -> None:
        """Reads of every kind, and one write in ten (an order created, then paid)."""
        r = rng.random()
        if r < 0.3:
            await stub.GetSummary(summary, timeout=10)
        elif r < 0.55:
            await stub.GetOrder(pb.GetOrderRequest(id=rng.randint(o_lo, o_hi)), timeout=10)
        elif r < 0.7:
            await stub.ListOrders(pb.ListOrdersRequest(), timeout=10)
        elif r < 0.8:
            await stub.ListOrders(pb.ListOrdersRequest(status=paid, page_size=20), timeout=10)
        elif r < 0.9:
            email = f"seed-{rng.randint(c_lo, c_hi)}@"
            await stub.ListOrders(pb.ListOrdersRequest(email=email), timeout=10)
        else:
            order = await stub.CreateOrder(
                pb.CreateOrderRequest(
                    customer_id=rng.randint(c_lo, c_hi),
                    items=[pb.OrderItem(sku="BENCH-1", quantity=2, unit_price_cents=150)],
                ),
                timeout=10,
            )
            await stub.PayOrder(pb.PayOrderRequest(id=order.id), timeout=10)

    health = [
        ch.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda m: m,
            response_deserializer=lambda b: b,
        )
        for ch in channels
    ]

    async def health_call(stub: pb_grpc.OrdersServiceAsyncStub) -> None:
        """The transport alone: grpc.health.v1 Check with an empty request."""
        await health[stubs.index(stub)](b"", timeout=10)

    calls = {"summary": summary_call, "list": list_call, "mixed": mixed_call, "health": health_call}
    call = calls[args.workload]
    latencies: list[float] = []
    counts = {"calls": 0, "errors": 0}
    first_error = ""
    measuring = False
    end = args.start_at + args.seconds
    hard_stop = time.time() + (args.start_at - time.time()) + args.seconds + 30

    async def caller(stub: pb_grpc.OrdersServiceAsyncStub) -> None:
        nonlocal first_error
        while True:
            now = time.time()
            if now >= end or now >= hard_stop:
                return
            started = time.perf_counter()
            try:
                await call(stub)
            except grpc.aio.AioRpcError as exc:
                if measuring:
                    counts["errors"] += 1
                    if not first_error:
                        first_error = f"{exc.code().name}: {exc.details()}"
                continue
            if measuring and time.time() <= end:
                latencies.append(time.perf_counter() - started)
                counts["calls"] += 1

    tasks = [asyncio.create_task(caller(stubs[i % len(stubs)])) for i in range(args.concurrency)]
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    measuring = True
    cpu0, t0 = time.process_time(), time.time()
    await asyncio.sleep(max(0.0, end - time.time()))
    cpu1, t1 = time.process_time(), time.time()
    measuring = False
    await asyncio.wait(tasks, timeout=15)
    for ch in channels:
        await ch.close()
    if len(latencies) > 50_000:  # enough for percentiles; keeps the report small
        latencies = rng.sample(latencies, 50_000)
    return {
        "calls": counts["calls"],
        "errors": counts["errors"],
        "first_error": first_error,
        "seconds": t1 - t0,
        "cpu": cpu1 - cpu0,
        "latencies": latencies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--target", required=True)
    parser.add_argument(
        "--workload", choices=("summary", "list", "mixed", "health"), default="summary"
    )
    parser.add_argument("--start-at", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--order-ids", default="1:1")
    parser.add_argument("--customer-ids", default="1:1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_worker(args))))


if __name__ == "__main__":
    main()
