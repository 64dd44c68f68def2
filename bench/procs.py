"""The benchmark's processes as /proc sees them: free ports, a clean environment for a
server, the parent-death signal, and the RSS and CPU of a process tree.

Everything listens on 127.0.0.1. Every wait is bounded in time.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "ROOT",
    "CpuWindow",
    "RssSampler",
    "cpu_seconds",
    "die_with_parent",
    "free_port",
    "pid_cpu",
    "process_tree",
    "say",
    "server_env",
    "tree_rss",
]


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    found: list[int] = []
    todo = [pid]
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


def pid_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each pid (those that can be read)."""
    return {pid: cpu_seconds([pid]) for pid in pids if os.path.exists(f"/proc/{pid}/stat")}


class ProcessTree(Protocol):
    """What RssSampler reads: a server, or anything else with a process tree."""

    def pids(self) -> list[int]: ...

    def rss(self) -> int: ...


class RssSampler:
    """Samples the RSS of a process tree every `interval` seconds in a thread, for at most
    `limit` seconds."""

    def __init__(self, server: ProcessTree, interval: float = 0.05, limit: float = 3600.0) -> None:
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


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the benchmark dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class CpuWindow:
    """CPU seconds some processes use between two wall-clock instants, read from /proc by a
    thread (bounded: it gives up `seconds` + 60 s after being started)."""

    def __init__(self, pids: Callable[[], list[int]], start_at: float, seconds: float) -> None:
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
