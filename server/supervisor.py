"""Several server processes behind one address, so that a Python server uses every core.

Each worker is `python -m server serve` with ORDERS_WORKER_INDEX set: it binds the shared
gRPC port with SO_REUSEPORT (the kernel spreads direct clients' connections) and a Unix
socket of its own (Envoy balances over those). The supervisor restarts a worker that dies,
forwards SIGTERM/SIGINT, and leaves nothing behind: each worker also gets a parent-death
signal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import FrameType

from .config import ROOT, Settings

__all__ = ["supervise"]

log = logging.getLogger("orders.supervisor")
_PR_SET_PDEATHSIG = 1
_RESTARTS_ALLOWED = 5  # within _RESTART_WINDOW seconds; beyond that something is broken
_RESTART_WINDOW = 30.0


def _port_is_free(host: str, port: int) -> bool:
    """Bound without SO_REUSEPORT, a port another group holds (with or without it) is busy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _start_worker(index: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ORDERS_WORKER_INDEX": str(index)}
    return subprocess.Popen(
        [sys.executable, "-m", "server", "serve"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


def supervise(settings: Settings) -> int:
    if not _port_is_free(settings.grpc_host, settings.grpc_port):
        log.error(
            "cannot listen on %s:%d: the port is in use", settings.grpc_host, settings.grpc_port
        )
        return 1
    # Every worker writes its metrics here; the supervisor serves their sum.
    metrics_dir = tempfile.mkdtemp(prefix="orders-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _supervise(settings)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(settings: Settings) -> int:
    # Imported only now: prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it loads.
    from prometheus_client import multiprocess

    from .observability import serve_metrics

    serve_metrics(settings.metrics_host, settings.metrics_port)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping %d workers", signal.Signals(signum).name, len(workers))
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = {i: _start_worker(i) for i in range(settings.grpc_processes)}
    log.info(
        "started %d server processes on %s:%d", len(workers), settings.grpc_host, settings.grpc_port
    )
    restarts: list[float] = []
    code = 0
    while not stopping.wait(0.2):
        for index, worker in list(workers.items()):
            if worker.poll() is None:
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < _RESTART_WINDOW] + [now]
            if len(restarts) > _RESTARTS_ALLOWED:
                log.error(
                    "workers keep dying (%d restarts in %.0f s); giving up",
                    len(restarts),
                    _RESTART_WINDOW,
                )
                stopping.set()
                code = 1
                break
            multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
            log.warning("worker %d exited with code %s; restarting it", index, worker.returncode)
            workers[index] = _start_worker(index)
    for worker in workers.values():
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers.values():
        try:  # each drains, then lets its calls finish: both in parallel over the workers
            worker.wait(settings.drain_seconds + settings.shutdown_grace + 5)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    log.info("stopped")
    return code
