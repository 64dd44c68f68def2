"""`scripts/bench [--size tiny|small|medium|large]`: the side-by-side benchmark.

One run: throwaway PostgreSQL databases (orders_bench_<random>_*, created from
BENCH_DATABASE_URL, the admin connection, and dropped at the end), the service's own servers
and Envoy on 127.0.0.1, the raw-psycopg floor of each workload next to it, and one table with
the issue's targets, PASS or FAIL.

Phases, in order, each a module taking the run's Context (bench/context.py):
1. seeds through the Seed RPC (50x5x3 several times, then the big one), each beside raw COPY
   of the same rows into a database migrated the same way; a 1k-order database for the
   small-size figures (bench/seeds.py);
2. VACUUM ANALYZE of the databases (what autovacuum does shortly after a seed), so the plans
   measured are those of a settled database;
3. throughput at the medium size (100k orders): 1 server process vs 2, direct gRPC (our own
   client) vs REST through Envoy (wrk) (bench/throughput.py);
4. (large only) more seeds to reach 1M orders / 100k customers, then VACUUM ANALYZE;
5. latencies, every case interleaved in rounds: GetSummary and ListOrders at 1k orders and at
   the large size, GetOrder, and the hand-written SQL of each; GetCustomer against
   Health/Check and through Envoy, ListOrders against a psycopg + protobuf floor
   (bench/latencies.py, bench/overhead.py);
6. memory: the server's RSS over a mixed load after a warm-up (bench/memory.py);
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
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TypeVar

from . import latencies, memory, seeds, throughput
from .context import Context, setup
from .django import DjangoPhase
from .events import EventsPhase
from .peer import check_peer
from .replica import ReplicaPhase
from .stack import DEFAULT_ADMIN_URL, BenchDatabases, say
from .stats import Case
from .tracing import TracingPhase

T = TypeVar("T")


class Bench:
    """The run order and the cleanup; the phases themselves are modules of their own."""

    def __init__(
        self,
        size_name: str,
        admin_url: str,
        install: bool,
        log_dir: Path,
        django: Path | None = None,
        chart: Path | None = None,
    ) -> None:
        self.ctx = Context(size_name, log_dir, install, BenchDatabases(admin_url))
        dbs = self.ctx.dbs
        self.cases: dict[str, Case] = {}  # the latencies', for the --json file
        self.django = DjangoPhase(django, size_name, dbs, log_dir, install, chart)
        self.replica = ReplicaPhase(size_name, log_dir)
        self.events = EventsPhase(size_name, dbs, log_dir)
        self.tracing = TracingPhase(size_name, log_dir, dbs)

    def run(self) -> None:
        ctx = self.ctx
        ctx.facts["postgresql"] = ctx.dbs.check()
        timings: dict[str, float] = {}
        ctx.facts["phase_seconds"] = timings

        def timed(name: str, phase: Callable[[], T]) -> T:
            started = time.monotonic()
            result = phase()
            timings[name] = round(time.monotonic() - started, 1)
            say(f"{name}: {timings[name]:.0f} s")
            return result

        stack = timed("setup", lambda: setup(ctx))
        stack.orders = timed("seeds", lambda: seeds.run(ctx, stack))
        timed("settle", lambda: seeds.settle(stack))
        timed("throughput", lambda: throughput.run(ctx, stack))
        if ctx.size.fills:
            stack.orders += timed("fill", lambda: seeds.fill(ctx, stack))
            timed("settle again", lambda: seeds.settle(stack))
        self.cases = timed("latencies", lambda: latencies.run(ctx, stack))
        timed("memory", lambda: memory.run(ctx, stack))
        # The phases below start servers of their own: the first ones' pooled connections,
        # idle from here on, would count against PostgreSQL's max_connections beside theirs.
        ctx.close()
        for name, phase in (
            ("read replica", self.replica),
            ("order events", self.events),
            ("tracing", self.tracing),
        ):
            try:
                timed(name, partial(phase.run, ctx.table))
            finally:
                phase.close()  # as soon as it is done, for the same reason as ctx.close()
        timed("vs Django", lambda: self.django.run(ctx.table))

    def close(self) -> None:
        facts = self.ctx.facts
        facts["django"] = self.django.figures
        facts["read_replica"] = self.replica.figures
        facts["order_events"] = self.events.figures
        try:
            self.events.close()
        except Exception as exc:  # the rest must still be stopped and dropped
            say(f"cleanup of the order events phase: {exc}")
        facts["tracing"] = self.tracing.figures
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
        self.ctx.close()
        self.ctx.dbs.close()


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
    passed, failed, na = bench.ctx.table.verdicts()
    header = (
        f"scripts/bench --size {args.size}: {when:%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s;"
        f" {machine()}; PostgreSQL {bench.ctx.facts.get('postgresql', '?')};"
        f" load average {load_before} at the start, {loadavg()} at the end;"
        " Python processes of a server by default:"
        f" {bench.ctx.facts.get('server_processes_default', '?')}"
    )
    summary = f"targets: {passed} PASS, {failed} FAIL, {na} n/a" + (
        f"; the run stopped early: {failure}" if failure else ""
    )
    text = f"{header}\n\n{bench.ctx.table.markdown()}\n\n{summary}\n"
    print(text)
    say(f"logs in {log_dir}")
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    if args.json:
        figures = {
            "facts": bench.ctx.facts,
            "rows": [r.__dict__ for r in bench.ctx.table.rows],
            "cases": {
                k: {"p50_ms": c.p50_ms, "p99_ms": c.p99_ms, "n": c.n, "errors": c.errors}
                for k, c in bench.cases.items()
            },
        }
        args.json.write_text(json.dumps(figures, indent=2, default=str), encoding="utf-8")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
