"""What the benchmark runs against: orders servers in subprocesses and Envoy in front of
one. The databases (bench/databases.py), the processes' RSS and CPU (bench/procs.py) and the
load tools in C (bench/tools.py) live beside it; the phases import all of them from here.

Everything listens on 127.0.0.1. Every wait is bounded in time.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .databases import DEFAULT_ADMIN_URL, BackendCpu, BenchDatabases, libpq, migrate
from .procs import (
    ROOT,
    CpuWindow,
    RssSampler,
    cpu_seconds,
    die_with_parent,
    free_port,
    pid_cpu,
    process_tree,
    say,
    server_env,
    tree_rss,
)
from .tools import (
    H2loadResult,
    WrkResult,
    ensure_h2load,
    ensure_tool,
    ensure_wrk,
    grpc_failures,
    metric_sum,
    run_h2load,
    run_wrk,
)

__all__ = [
    "DEFAULT_ADMIN_URL",
    "ROOT",
    "BackendCpu",
    "BenchDatabases",
    "CpuWindow",
    "Gateway",
    "H2loadResult",
    "RssSampler",
    "Server",
    "WrkResult",
    "die_with_parent",
    "ensure_h2load",
    "ensure_tool",
    "ensure_wrk",
    "free_port",
    "grpc_failures",
    "libpq",
    "metric_sum",
    "migrate",
    "pid_cpu",
    "process_tree",
    "run_h2load",
    "run_wrk",
    "say",
    "seed_through_rpc",
    "server_env",
    "stop_all",
    "tree_rss",
]


@dataclass
class Server:
    """`python -m server serve` over one database, on a free port of 127.0.0.1."""

    database_url: str
    name: str
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return server_env(self.database_url, self.port, self.extra_env)

    def launch(self) -> None:
        """Starts the process on a free port without waiting (from the main thread: the
        parent-death signal follows the thread that forks)."""
        self.port = free_port()
        with self.log_path.open("a") as log:
            log.write(f"--- {self.name}: serve on {self.address} {self.extra_env}\n")
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", "serve"],
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def start(self, timeout: float = 30.0, launched: bool = False) -> None:
        """Waits until SERVING; a process that exited (most likely a port taken between the
        probe and the bind) is started again on another port, three times at most."""
        for attempt in range(3):
            if attempt or not launched:
                self.launch()
            if self._wait_serving(timeout):
                return
            assert self.process is not None
            if self.process.poll() is None:
                break
        self.stop()
        raise RuntimeError(f"{self.name} did not start; see {self.log_path}")

    def _wait_serving(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address, options=[("grpc.enable_http_proxy", 0)]) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    # grpc_health ships stubs for its messages only: the generated HealthStub
                    # sets Check in __init__, which mypy cannot see.
                    reply = health.Check(  # type: ignore[attr-defined]
                        health_pb2.HealthCheckRequest(service=""), timeout=0.5
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        return False

    def pids(self) -> list[int]:
        if self.process is None or self.process.poll() is not None:
            return []
        return process_tree(self.process.pid)

    def serving_processes(self) -> int:
        """How many processes of the tree are Python (the server and any workers it started)."""
        n = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if cmd and b"python" in Path(cmd[0].decode(errors="replace")).name.encode():
                n += 1
        return n

    def rss(self) -> int:
        return tree_rss(self.pids())

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            say(f"{self.name} ignored SIGTERM for 20 s; killing its process group")
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)


def seed_through_rpc(address: str, customers: int, orders: int, items: int) -> None:
    """The Seed RPC to its end; RuntimeError unless its last message says it is done."""
    from orders.v1 import orders_pb2 as pb
    from orders.v1 import orders_pb2_grpc as pb_grpc

    request = pb.SeedRequest(customers=customers, orders_per_customer=orders, items_per_order=items)
    last = None
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        for message in pb_grpc.OrdersServiceStub(channel).Seed(request, timeout=1800):
            last = message
    if last is None or not last.done or last.phase != pb.SeedResponse.PHASE_DONE:
        raise RuntimeError(f"the seed did not finish: {last}")


# --------------------------------------------------------------------------------------------
# Envoy


def stop_all(channels: list[grpc.Channel], servers: list[Server]) -> None:
    """Closes the channels, stops the servers and forgets both: safe to call again."""
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop()
    channels.clear()
    servers.clear()


class Gateway:
    """The project's own Envoy configuration on free ports, in front of one server and
    balancing over its processes the way scripts/run does, or in front of `sockets`."""

    def __init__(
        self, server: Server | None, log_path: Path, sockets: tuple[str, ...] = ()
    ) -> None:
        self.server = server
        self.sockets = sockets
        self.log_path = log_path
        self.envoy: Any = None

    def start(self) -> None:
        from gateway import Envoy, GatewayConfig

        last: Exception | None = None
        for _ in range(3):
            config = GatewayConfig(http_port=free_port(), admin_port=free_port())
            if self.server is not None:
                config = dataclasses.replace(
                    config, upstream_port=self.server.port
                ).with_server_processes(self.server.env())
            else:
                config = dataclasses.replace(config, upstream_sockets=self.sockets)
            envoy = Envoy(
                config, log_path=self.log_path, log_level="warning", preexec_fn=die_with_parent
            )
            envoy.start()
            try:
                envoy.wait_ready(timeout=20)
                self.envoy = envoy
                return
            except Exception as exc:  # a port taken between the probe and the bind
                envoy.stop()
                last = exc
        raise RuntimeError(f"envoy did not start: {last}")

    @property
    def http_port(self) -> int:
        return int(self.envoy.config.http_port)

    @property
    def upstreams(self) -> str:
        sockets = self.envoy.config.upstream_sockets if self.envoy is not None else ()
        return f"{len(sockets)} Unix sockets" if sockets else "host:port"

    @property
    def pid(self) -> int | None:
        return None if self.envoy is None else self.envoy.pid

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
            self.envoy = None
