"""What the benchmark runs against: throwaway PostgreSQL databases, orders servers in
subprocesses (their RSS read from /proc), Envoy in front of one, and wrk.

Everything listens on 127.0.0.1. Every wait is bounded in time.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

__all__ = [
    "DEFAULT_ADMIN_URL",
    "BenchDatabases",
    "Gateway",
    "RssSampler",
    "Server",
    "WrkResult",
    "ensure_wrk",
    "free_port",
    "libpq",
    "run_wrk",
    "tree_rss",
]


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def libpq(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as a libpq connection string."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Databases


class BenchDatabases:
    """Databases named orders_bench_<random>_<label>, dropped by close()."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"orders_bench_{secrets.token_hex(4)}"
        self.created: list[str] = []

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(libpq(self.admin_url), autocommit=True, connect_timeout=5)

    def check(self) -> str:
        with self._admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def create(self, label: str) -> str:
        name = f"{self.prefix}_{label}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return sa.make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = sa.make_url(url).database
        if name in self.created:
            self._drop(name)
            self.created.remove(name)

    def _drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    def close(self) -> None:
        for name in list(self.created):
            try:
                self._drop(name)
            except psycopg.Error as exc:
                say(f"could not drop {name}: {exc}")
        self.created.clear()


def migrate(database_url: str, log_path: Path) -> None:
    """`python -m server migrate`: the service's own migrations, for its database and the
    floor's alike."""
    env = server_env(database_url, 0)
    done = subprocess.run(
        [sys.executable, "-m", "server", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    with log_path.open("a") as log:
        log.write(
            f"--- migrate {database_url} (exit {done.returncode})\n{done.stdout}{done.stderr}"
        )
    if done.returncode != 0:
        raise RuntimeError(f"python -m server migrate failed:\n{done.stdout}{done.stderr}")


def server_env(database_url: str, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any ORDERS_* or DATABASE_URL it may carry."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ORDERS_") and k != "DATABASE_URL"
    }
    env.update(
        DATABASE_URL=database_url,
        ORDERS_GRPC_HOST="127.0.0.1",
        ORDERS_GRPC_PORT=str(port),
        ORDERS_LOG_LEVEL="WARNING",
        # Each server is stopped once its phase is over: no balancer to drain away from.
        ORDERS_DRAIN_SECONDS="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------------------------
# Processes and their memory


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    kids = _children()
    found, todo = [], [pid]
    while todo and len(found) < 1000:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, ()))
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pids: list[int]) -> int:
    """Resident bytes of these processes, summed (VmRSS from /proc/<pid>/status)."""
    return sum(_rss(p) for p in pids)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used (and their reaped children)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


class RssSampler:
    """Samples the RSS of a process tree every `interval` seconds in a thread, for at most
    `limit` seconds."""

    def __init__(self, server: Server, interval: float = 0.05, limit: float = 3600.0) -> None:
        self.server = server
        self.interval = interval
        self.limit = limit
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self.samples.append((time.monotonic(), self.server.rss()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.samples.append((time.monotonic(), self.server.rss()))

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        pids = self.server.pids()
        n = 0
        while not self._stop.wait(self.interval) and time.monotonic() < deadline:
            n += 1
            if n % 20 == 0:  # a server may start or end worker processes
                pids = self.server.pids()
            self.samples.append((time.monotonic(), tree_rss(pids)))

    @property
    def start(self) -> int:
        return self.samples[0][1]

    @property
    def peak(self) -> int:
        return max(v for _, v in self.samples)

    @property
    def low(self) -> int:
        return min(v for _, v in self.samples)

    @property
    def end(self) -> int:
        return self.samples[-1][1]


# --------------------------------------------------------------------------------------------
# The server


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


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
                    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
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


# --------------------------------------------------------------------------------------------
# wrk


def ensure_tool(tool: str, package: str, install: bool) -> str | None:
    """The path of `tool`, installed from Debian's `package` when missing and `install`."""
    found = shutil.which(tool)
    if found or not install:
        return found
    if not shutil.which("apt-get"):
        say(f"{tool} is missing and there is no apt-get to install it")
        return None
    say(f"{tool} is missing: apt-get install {package}")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        say(f"{tool} is missing and this user cannot run apt-get")
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (
        [*sudo, "apt-get", "install", "-y", "-qq", package],
        [*sudo, "apt-get", "update", "-qq"],
        [*sudo, "apt-get", "install", "-y", "-qq", package],
    ):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            continue
        if command[-1] == package and done.returncode == 0:
            break
    return shutil.which(tool)


def ensure_wrk(install: bool) -> str | None:
    return ensure_tool("wrk", "wrk", install)


def ensure_h2load(install: bool) -> str | None:
    return ensure_tool("h2load", "nghttp2-client", install)


@dataclass
class H2loadResult:
    """One h2load run of a unary gRPC call (HTTP/2 POSTs of one framed message)."""

    requests_per_second: float
    requests: int
    errors: int  # failed requests + non-2xx responses (grpc-status is counted by the server)
    mean_ms: float
    cpu_seconds: float
    duration: float
    connections: int
    output: str


def _run_tool(args: list[str], timeout: float) -> tuple[str, int, float, float]:
    """Runs a load tool to its end: (stdout + stderr, exit code, its CPU seconds, wall
    seconds)."""
    started = time.monotonic()
    before = os.times()
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return done.stdout + done.stderr, done.returncode, cpu, time.monotonic() - started


def run_h2load(
    h2load: str, address: str, method: str, message: bytes, connections: int, seconds: int
) -> H2loadResult:
    """`connections` HTTP/2 connections, one call in flight on each, for `seconds`: a load
    client in C, which leaves the cores to the server (ours in Python costs ~0.3 ms a call)."""
    with tempfile.NamedTemporaryFile(suffix=".grpc") as body:
        body.write(b"\0" + len(message).to_bytes(4, "big") + message)  # one gRPC frame
        body.flush()
        out, returncode, cpu, duration = _run_tool(
            [
                h2load,
                "-D",
                str(seconds),
                "-c",
                str(connections),
                "-m",
                "1",
                "-d",
                body.name,
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://{address}{method}",
            ],
            timeout=seconds + 60,
        )
    rps = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if returncode != 0 or not rps or not counts or not codes:
        raise RuntimeError(f"h2load failed ({returncode}):\n{out}")
    finished = int(counts.group(2))
    errors = (finished - int(counts.group(3))) + sum(int(g) for g in codes.groups()[1:])
    return H2loadResult(
        requests_per_second=float(rps.group(1)),
        requests=finished,
        errors=errors,
        mean_ms=_ms(mean.group(1)) if mean else float("nan"),
        cpu_seconds=cpu,
        duration=duration,
        connections=connections,
        output=out,
    )


def grpc_failures(metrics_url: str) -> int:
    """Calls of the service that ended with any status but OK or CANCELLED, from the
    server's Prometheus counter (orders_grpc_calls_total, summed over its processes). h2load
    cancels the calls in flight when its window ends: up to one per connection, CANCELLED."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(metrics_url, timeout=10) as response:
        text = response.read().decode()
    failed = 0.0
    for line in text.splitlines():
        if line.startswith("orders_grpc_calls_total{") and not (
            'code="OK"' in line or 'code="CANCELLED"' in line
        ):
            failed += float(line.rsplit(" ", 1)[1])
    return int(failed)


@dataclass
class WrkResult:
    requests_per_second: float
    requests: int
    errors: int  # socket errors + non-2xx/3xx responses
    p50_ms: float
    p99_ms: float
    cpu_seconds: float
    duration: float
    output: str


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(wrk: str, url: str, threads: int, connections: int, seconds: int) -> WrkResult:
    out, returncode, cpu, duration = _run_tool(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "5s",
            url,
        ],
        timeout=seconds + 60,
    )
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    if returncode != 0 or not rps:
        raise RuntimeError(f"wrk failed ({returncode}):\n{out}")
    return WrkResult(
        requests_per_second=float(rps.group(1)),
        requests=int(total.group(1)) if total else 0,
        errors=errors,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        cpu_seconds=cpu,
        duration=duration,
        output=out,
    )


class CpuWindow:
    """CPU seconds some processes use between two wall-clock instants, read from /proc by a
    thread (bounded: it gives up `seconds` + 60 s after being started)."""

    def __init__(self, pids: Any, start_at: float, seconds: float) -> None:
        self._pids = pids  # a callable returning the pids to account
        self.start_at = start_at
        self.seconds = seconds
        self.used: float | None = None
        self._thread = threading.Thread(target=self._run, name="cpu", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        time.sleep(max(0.0, self.start_at - time.time()))
        pids = self._pids()
        before = cpu_seconds(pids)
        time.sleep(max(0.0, self.start_at + self.seconds - time.time()))
        self.used = cpu_seconds(pids) - before

    def cores(self) -> float | None:
        self._thread.join(self.seconds + 60)
        return None if self.used is None else self.used / self.seconds


def pid_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each pid (those that can be read)."""
    return {pid: cpu_seconds([pid]) for pid in pids if os.path.exists(f"/proc/{pid}/stat")}


class BackendCpu:
    """CPU seconds that PostgreSQL's backends of one database use over a block, read from
    /proc (PostgreSQL on this machine only; otherwise `used` stays None)."""

    def __init__(self, admin_url: str, database: str) -> None:
        self.admin_url = admin_url
        self.database = database
        self.used: float | None = None
        self._before: dict[int, float] = {}

    def _pids(self) -> list[int]:
        host = sa.make_url(self.admin_url).host or "localhost"
        if host not in ("127.0.0.1", "localhost", "::1"):
            return []
        with psycopg.connect(libpq(self.admin_url), autocommit=True, connect_timeout=5) as c:
            rows = c.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def __enter__(self) -> BackendCpu:
        self._before = pid_cpu(self._pids())
        return self

    def __exit__(self, *exc: object) -> None:
        pids = self._pids()
        if not pids:
            return
        after = pid_cpu(pids)
        self.used = sum(v - self._before.get(p, 0.0) for p, v in after.items())
