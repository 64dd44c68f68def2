"""Order events through the Python client and the `orders watch` CLI: the client goes on by
itself when its replica stops, the CLI prints the cursor to resume from on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from events_watch import Watcher
from harness import (
    ROOT,
    OrdersServer,
    ServerFactory,
    as_foreground_program,
    new_customer,
    new_order,
)
from orders.v1 import orders_pb2 as pb

from orders_client import OrdersClient

FAST = {"ORDERS_EVENT_HEARTBEAT_SECONDS": "0.2", "ORDERS_EVENT_POLL_SECONDS": "0.05"}


def test_the_client_resumes_on_another_replica_and_misses_nothing(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    first = server_factory.start("client-a", FAST)
    env = {**server_factory.databases.server_env, **FAST}
    second = OrdersServer(first.database_url, env, tmp_path / "b.log", "client-b", migrate=False)
    second.start()
    # One target naming both replicas, as a balancer's address would: gRPC connects to the
    # first, and to the other once the first has gone.
    client = OrdersClient.connect(f"ipv4:{first.address},{second.address}")
    try:
        customer = new_customer(second.stub)
        events = client.watch_orders(customer.id, heartbeats=True)
        assert next(events).type == pb.OrderEvent.HEARTBEAT  # it has begun
        made: list[int] = []
        stop = threading.Event()

        def write() -> None:
            while not stop.is_set() and len(made) < 300:
                made.append(new_order(second.stub, customer.id).id)

        writer = threading.Thread(target=write)
        writer.start()
        got: list[int] = []
        stopped = False
        ends = time.monotonic() + 60
        for event in events:
            assert time.monotonic() < ends, f"{len(got)} events within 60 s"
            if event.type == pb.OrderEvent.HEARTBEAT:
                if stop.is_set() and not writer.is_alive() and len(got) >= len(made):
                    break
                continue
            got.append(event.order.id)
            if len(got) == 5 and not stopped:
                first.request_stop()
                stopped = True
            if len(got) == 40:
                stop.set()
        writer.join(30)
        assert got == made
        assert events.resumes >= 1
        events.cancel()
    finally:
        client.close()
        second.stop()
        first.stop()


def _cli(target: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERS_")}
    env.update(ORDERS_TARGET=target, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.Popen(
        [sys.executable, "-m", "orders_client.cli", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_foreground_program,
    )


def _lines(process: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    assert process.stdout is not None
    found: list[dict[str, Any]] = []
    result: list[list[dict[str, Any]]] = [found]

    def read() -> None:
        assert process.stdout is not None
        while len(found) < count and (line := process.stdout.readline()):
            found.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert len(found) == count, f"{len(found)} of {count} lines: {result}"
    return found


def test_cli_watch_prints_events_and_the_cursor_to_resume_from(
    server_factory: ServerFactory,
) -> None:
    server = server_factory.start("cli-watch", FAST)
    stub = server.stub
    customer = new_customer(stub)
    start = Watcher(stub, customer_id=customer.id)
    cursor = start.heartbeat()
    start.cancel()
    process = _cli(
        server.address, "watch", "--customer-id", str(customer.id), "--after", cursor, "--json"
    )
    try:
        order = new_order(stub, customer.id)
        stub.PayOrder(pb.PayOrderRequest(id=order.id))
        created, paid = _lines(process, 2)
        assert (created["type"], paid["type"]) == ("CREATED", "PAID")
        assert created["order"]["id"] == str(order.id)
        # The heartbeats after the pay move the cursor on; Ctrl-C prints where it stands.
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    hint = err.strip().splitlines()[-1]
    prefix = f"resume with: orders watch --customer-id {customer.id} --after "
    assert hint.startswith(prefix), err
    resume_from = hint[len(prefix) :]

    stub.ShipOrder(pb.ShipOrderRequest(id=order.id))
    again = _cli(
        server.address, "watch", "--customer-id", str(customer.id), "--after", resume_from, "--json"
    )
    try:
        (shipped,) = _lines(again, 1)
        assert shipped["type"] == "SHIPPED" and shipped["order"]["status"] == "SHIPPED"
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=30)


def test_cli_watch_with_a_bad_cursor_is_one_line(shared_server: OrdersServer) -> None:
    process = _cli(shared_server.address, "watch", "--after", "nonsense")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1 and out == ""
    assert err.startswith("error: INVALID_ARGUMENT") and "after" in err, err
    assert grpc.StatusCode.INVALID_ARGUMENT.name in err
