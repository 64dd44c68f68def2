"""The load tools in C beside our own client: wrk (HTTP/1.1) and h2load (HTTP/2, gRPC
frames), installed from Debian when missing, and the server's own count of failed calls."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass

from .procs import say

__all__ = [
    "H2loadResult",
    "WrkResult",
    "ensure_h2load",
    "ensure_tool",
    "ensure_wrk",
    "grpc_failures",
    "metric_sum",
    "run_h2load",
    "run_wrk",
]


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


def metric_sum(port: int, name: str, **labels: str) -> float:
    """A Prometheus metric of the server on `port`, summed over the series with `labels`."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


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
