"""What every phase of the benchmark is given: the run's size, where its logs go, whether it
may install tools, its databases, and what it has started so far (stopped by `close()`).
Also the measured stack the first phases build (a large database and a 1k-order one, each
with its server) and the formatting the phases share."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from orders.v1 import orders_pb2_grpc as pb_grpc

from .report import Table
from .stack import BenchDatabases, Gateway, Server, free_port, migrate, say, stop_all

__all__ = ["SIZES", "Context", "Measured", "Size", "Stack", "count_label", "setup", "statements"]

STATEMENTS = "orders-sql-statements"
Seed = tuple[int, int, int]  # customers, orders per customer, items per order


@dataclass(frozen=True)
class Size:
    big: Seed  # the measured big seed (the 10,000 x 10 x 5)
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


@dataclass
class Context:
    size_name: str
    log_dir: Path
    install: bool  # apt-get may install wrk and h2load when they are missing
    dbs: BenchDatabases
    table: Table = field(default_factory=Table)
    facts: dict[str, Any] = field(default_factory=dict)  # the --json file's "facts"
    servers: list[Server] = field(default_factory=list)
    channels: list[grpc.Channel] = field(default_factory=list)
    gateway: Gateway | None = None

    @property
    def size(self) -> Size:
        return SIZES[self.size_name]

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

    def gateway_for(self, server: Server) -> Gateway:
        """The project's Envoy in front of `server`, started once and kept up until close()."""
        if self.gateway is None:
            gateway = Gateway(server, self.log_dir / "envoy.log")
            gateway.start()
            self.gateway = gateway
        return self.gateway

    def close(self) -> None:
        """Channels, Envoy and servers; the databases are dropped by the caller, last."""
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        stop_all(self.channels, self.servers)


@dataclass
class Measured:
    """A database, its server (the service's defaults unless said) and a channel to it."""

    url: str
    server: Server
    stub: pb_grpc.OrdersServiceStub


@dataclass
class Stack:
    large: Measured  # the big seeds land here: the size measured against the 1k reference
    one_k: Measured  # the reference: 1k orders
    # Only the seeds phase uses these, and drops them when it is done.
    floor_a: str
    floor_b: str
    seed2: Server
    orders: int = 0  # in the large database, as the seeds phases leave it


def setup(ctx: Context) -> Stack:
    """The databases, migrated, and their servers: the large one's with a metrics port."""
    say(f"size {ctx.size_name}: creating databases {ctx.dbs.prefix}_*")
    url_large = ctx.dbs.create("large")
    url_1k = ctx.dbs.create("1k")
    url_floor_a = ctx.dbs.create("floor_a")
    url_floor_b = ctx.dbs.create("floor_b")
    url_seed2 = ctx.dbs.create("seed2")
    urls = (url_large, url_1k, url_floor_a, url_floor_b, url_seed2)
    with ThreadPoolExecutor(len(urls)) as pool:
        list(
            pool.map(
                lambda u: migrate(u, ctx.log_dir / f"migrate-{u.rsplit('/', 1)[-1]}.log"), urls
            )
        )
    srv_large, srv_1k, srv_seed2 = ctx.start_servers(
        (url_large, "server-large", metrics_env()),
        (url_1k, "server-1k", {}),
        (url_seed2, "server-seed2", {}),
    )
    stack = Stack(
        large=Measured(url_large, srv_large, ctx.stub(srv_large)),
        one_k=Measured(url_1k, srv_1k, ctx.stub(srv_1k)),
        floor_a=url_floor_a,
        floor_b=url_floor_b,
        seed2=srv_seed2,
    )
    ctx.facts["server_processes_default"] = srv_large.serving_processes()
    return stack


def metrics_env() -> dict[str, str]:
    """A Prometheus port of its own for a server whose calls the benchmark counts."""
    return {"ORDERS_METRICS_PORT": str(free_port())}


def metrics_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.extra_env['ORDERS_METRICS_PORT']}/metrics"


def trailer_statements(call: Any) -> int | None:
    """The server's count of SQL statements for one call, from its trailer."""
    for key, value in call.trailing_metadata() or ():
        if key == STATEMENTS:
            return int(value)
    return None


def statements(values: Iterable[int | None]) -> str:
    """A set of statement counts as one cell: "2", "1-2", or "?" when none is known."""
    known = sorted({v for v in values if v is not None})
    if not known:
        return "?"
    return str(known[0]) if len(known) == 1 else f"{known[0]}-{known[-1]}"


def count_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 < 50_000:
        return f"{n // 1_000_000}M"
    if n >= 1000:
        return f"{round(n / 1000)}k"
    return str(n)
