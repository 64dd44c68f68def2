"""Several server processes behind one address (ORDERS_GRPC_PROCESSES): every process serves,
Envoy balances over all of them, a dead worker comes back, and a stop leaves nothing."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import ROOT, free_port

from gateway.config import GatewayConfig
from gateway.envoy import Envoy
from server.config import worker_sockets

PROCESSES = 2


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _wait(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _workers(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class Group:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "group.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ORDERS_")},
            "DATABASE_URL": f"sqlite:///{tmp_path / 'group.sqlite3'}",
            "ORDERS_GRPC_PORT": str(self.port),
            "ORDERS_GRPC_PROCESSES": str(PROCESSES),
            "ORDERS_SOCKET_DIR": str(tmp_path / "s"),
            "ORDERS_METRICS_PORT": str(free_port()),
            "ORDERS_DRAIN_SECONDS": "0",  # no balancer to wait for
            "ORDERS_LOG_LEVEL": "DEBUG",  # a line for every call, OK ones included: who served it
        }
        self.sockets = worker_sockets(tmp_path / "s", self.port, PROCESSES)
        subprocess.run(
            [sys.executable, "-m", "server", "migrate"],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        for path in self.sockets:
            _wait(lambda p=path: _serving(f"unix:{p}"), f"worker socket {path}")

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self.log.close()
        return code


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    started = Group(tmp_path)
    yield started
    started.stop()


def test_every_process_serves_the_shared_port_and_its_own_socket(group: Group) -> None:
    assert len(_workers(group.process.pid)) == PROCESSES
    assert _serving(f"127.0.0.1:{group.port}")
    for path in group.sockets:
        assert _serving(f"unix:{path}")


def test_a_second_group_on_a_taken_port_refuses_to_start(group: Group, tmp_path: Path) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        cwd=ROOT,
        env={**group.env, "ORDERS_SOCKET_DIR": str(tmp_path / "other")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0
    assert "in use" in second.stderr


def test_envoy_balances_rest_calls_over_every_process(group: Group, tmp_path: Path) -> None:
    config = GatewayConfig(
        http_port=free_port(),
        admin_port=free_port(),
        upstream_port=group.port,
        upstream_sockets=tuple(str(p) for p in group.sockets),
    )
    with Envoy(config, log_path=tmp_path / "envoy.log"):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for _ in range(20):
            with opener.open(f"{config.rest_url}/api/orders/summary/", timeout=10) as reply:
                assert reply.status == 200
    served = collections.Counter(
        line["pid"]
        for line in _json_lines(group.text())
        if line.get("method") == "/orders.v1.OrdersService/GetSummary"
    )
    assert len(served) == PROCESSES, served
    assert min(served.values()) >= 5, served  # round robin, not one process doing the work
    # The supervisor's metrics are the sum over its processes.
    metrics_url = f"http://127.0.0.1:{group.env['ORDERS_METRICS_PORT']}/metrics"
    with opener.open(metrics_url, timeout=10) as reply:
        page = reply.read().decode()
    counted = re.search(
        r'orders_grpc_calls_total\{code="OK",method="/orders.v1.OrdersService/GetSummary"\} (\S+)',
        page,
    )
    assert counted is not None and float(counted.group(1)) == 20, page[-2000:]


def test_a_killed_worker_is_replaced(group: Group) -> None:
    victim = _workers(group.process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    _wait(
        lambda: (
            victim not in _workers(group.process.pid)
            and len(_workers(group.process.pid)) == PROCESSES
        ),
        "a replacement worker",
    )
    for path in group.sockets:
        _wait(lambda p=path: _serving(f"unix:{p}"), f"worker socket {path} again")


def test_sigterm_stops_every_process(group: Group) -> None:
    workers = _workers(group.process.pid)
    assert group.stop() == 0
    time.sleep(0.2)
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []
    assert not any(path.exists() for path in group.sockets)
