"""scripts/run: the server and Envoy together in the foreground, on the ports the environment
names (so two copies run side by side), both stopped by SIGTERM or Ctrl-C with nothing left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateway_stack import grpcurl
from harness import ROOT, free_port
from rest_client import RestClient

READY_LINE = "orders service is up"


@dataclass
class LocalRun:
    process: subprocess.Popen[bytes]
    log: Path
    http_port: int
    admin_port: int
    grpc_port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def descendants(self) -> set[int]:
        found: set[int] = set()
        pending = [self.process.pid]
        while pending:
            pid = pending.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.add(child)
                pending.append(child)
        return found


def start_run(tmp_path: Path, name: str) -> LocalRun:
    ports = {"http_port": free_port(), "admin_port": free_port(), "grpc_port": free_port()}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ORDERS_") and k != "DATABASE_URL"
    }
    env.update(
        ORDERS_HTTP_PORT=str(ports["http_port"]),
        ORDERS_ENVOY_ADMIN_PORT=str(ports["admin_port"]),
        ORDERS_GRPC_PORT=str(ports["grpc_port"]),
        ORDERS_DATA_DIR=str(tmp_path / name),  # the default SQLite file goes there
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ROOT / "scripts" / "run")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    return LocalRun(process, log, **ports)


def wait_ready(run: LocalRun, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while READY_LINE not in run.output():
        if run.process.poll() is not None:
            pytest.fail(f"scripts/run exited with {run.process.returncode}:\n{run.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"scripts/run was not ready after {timeout:.0f} s:\n{run.output()}")
        time.sleep(0.1)


def is_listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def check_serving(run: LocalRun) -> None:
    output = run.output()
    for url in (
        f"http://127.0.0.1:{run.http_port}/api/orders/",
        f"127.0.0.1:{run.grpc_port}",
        f"http://127.0.0.1:{run.admin_port}/",
    ):
        assert url in output, f"scripts/run does not print {url}:\n{output}"
    reply = RestClient("127.0.0.1", run.http_port).get("/api/orders/?status=paid")
    assert reply.status == 200 and reply.json()["orders"] == [], reply
    listed = grpcurl(f"127.0.0.1:{run.http_port}", "list")
    assert listed.returncode == 0 and "orders.v1.OrdersService" in listed.stdout, listed.stderr


def stop_and_check_nothing_is_left(run: LocalRun, children: set[int]) -> None:
    try:
        code = run.process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(run.process.pid, signal.SIGKILL)
        pytest.fail(f"scripts/run did not stop:\n{run.output()}")
    assert code == 0, run.output()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)], f"left running: {children}\n{run.output()}"
    for port in (run.http_port, run.admin_port, run.grpc_port):
        assert not is_listening(port), f"port {port} still answers"


@pytest.fixture
def runs() -> Iterator[list[LocalRun]]:
    started: list[LocalRun] = []
    yield started
    for run in started:  # a failed test must not leave a stack behind
        if run.process.poll() is None:
            os.killpg(run.process.pid, signal.SIGTERM)
            try:
                run.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(run.process.pid, signal.SIGKILL)


def test_scripts_run_serves_and_sigterm_stops_everything(
    tmp_path: Path, runs: list[LocalRun]
) -> None:
    run = start_run(tmp_path, "one")
    runs.append(run)
    wait_ready(run)
    check_serving(run)
    children = run.descendants()
    assert len(children) >= 2, f"expected the server and Envoy under scripts/run: {children}"
    run.process.send_signal(signal.SIGTERM)
    stop_and_check_nothing_is_left(run, children)


def test_two_copies_side_by_side_and_ctrl_c_stops_both(
    tmp_path: Path, runs: list[LocalRun]
) -> None:
    first, second = start_run(tmp_path, "first"), start_run(tmp_path, "second")
    runs.extend((first, second))
    for run in (first, second):
        wait_ready(run)
        check_serving(run)
    for run in (first, second):
        children = run.descendants()
        os.killpg(run.process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        stop_and_check_nothing_is_left(run, children)


def test_a_killed_scripts_run_leaves_nothing_either(tmp_path: Path, runs: list[LocalRun]) -> None:
    """SIGKILL gives no chance to clean up: the children are told to stop when it dies."""
    run = start_run(tmp_path, "killed")
    runs.append(run)
    wait_ready(run)
    children = run.descendants()
    run.process.kill()
    assert run.process.wait(timeout=10) == -signal.SIGKILL
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if alive(pid)], f"left running: {children}"
