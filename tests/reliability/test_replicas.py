"""Two server replicas behind one Envoy, over one PostgreSQL database.

Envoy's configuration is envoy.yaml exactly as the gateway renders it for several upstreams
(GatewayConfig.upstream_sockets: the replicas' Unix sockets), and each replica runs with the
server's default drain (ORDERS_DRAIN_SECONDS). What makes a lost replica cost no request is in
them (docs/operations.md, "Several replicas"):

- a replica that is stopped (SIGTERM) reports NOT_SERVING at once and serves on for its drain,
  long enough for Envoy's 1 s health check to take it out, then refuses calls as UNAVAILABLE;
- a retry goes to ANOTHER replica (retry_host_predicate previous_hosts), and a replica that
  refuses connections is ejected at its first failure (outlier detection on local-origin
  failures);
- reads (GET), and writes that carry an Idempotency-Key, are also retried when the connection
  is reset or the call cancelled or refused mid-way: a read changes nothing, and a create sent
  again with its key answers with what the first one made (the transitions repeat as no-ops).

Under a steady REST load of reads and writes (each write with a key of its own), one replica is
stopped (SIGTERM: it drains) or killed (SIGKILL: it vanishes mid-call), then started again on
the same socket. No request may fail, and no retried create may make a second order. The
replica must take traffic again once it is back.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import figures
import pytest
from harness import (
    OrdersServer,
    ServerFactory,
    free_port,
    list_all_orders,
    new_customer,
    order_in_status,
)
from invariants import assert_invariants
from load import Load
from orders.v1 import orders_pb2 as pb
from processes import kill_tree
from rest_client import RestClient

from gateway import Envoy, EnvoyError, GatewayConfig
from server.config import socket_dir, worker_sockets

REJOIN_LIMIT = 15.0  # seconds: a few health-check intervals and then some
# The harness stops its servers at once (drain 0); an empty value is the server's default.
# Every call logged (DEBUG), the OK ones included: the log says which replica took traffic.
DEFAULT_DRAIN = {
    "ORDERS_GRPC_PROCESSES": "1",
    "ORDERS_DRAIN_SECONDS": "",
    "ORDERS_LOG_LEVEL": "DEBUG",
}


class Replicas:
    def __init__(self, servers: list[OrdersServer], envoy: Envoy) -> None:
        self.servers = servers
        self.envoy = envoy
        self.rest = RestClient("127.0.0.1", envoy.config.http_port, timeout=30)

    def envoy_stat(self, name: str) -> int:
        """One counter from Envoy's admin interface (0 when Envoy has not created it)."""
        url = f"{self.envoy.config.admin_url}/stats?filter=^{name}$"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=5) as response:
            for line in response.read().decode().splitlines():
                stat, _, value = line.partition(": ")
                if stat == name:
                    return int(value)
        return 0

    def endpoint_health(self) -> dict[str, str]:
        """Envoy's view of each upstream endpoint: its health flags."""
        url = f"{self.envoy.config.admin_url}/clusters?format=json"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=5) as response:
            data = json.load(response)
        out = {}
        for cluster in data["cluster_statuses"]:
            if cluster["name"] != "orders_grpc":
                continue
            for host in cluster["host_statuses"]:
                address = host["address"].get("pipe", {}).get("path") or str(host["address"])
                status = host.get("health_status", {})
                out[address] = (
                    "unhealthy"
                    if status.get("failed_active_health_check")
                    else (status.get("eds_health_status", "HEALTHY"))
                )
        return out


def _socket_of(server: OrdersServer) -> str:
    env = server.env()
    return str(worker_sockets(socket_dir(env), server.port, 1)[0])


@contextmanager
def _replica_set(factory: ServerFactory, logs: Path, name: str) -> Iterator[Replicas]:
    """Two one-process servers over one database, one Envoy over their sockets."""
    first = factory.start(f"{name}-a", DEFAULT_DRAIN)
    second = OrdersServer(
        first.database_url, DEFAULT_DRAIN, logs / f"{name}-b.log", f"{name}-b", migrate=False
    )
    second.start()
    envoy: Envoy | None = None
    try:
        for _ in range(3):
            config = GatewayConfig(
                http_port=free_port(),
                admin_port=free_port(),
                upstream_sockets=(_socket_of(first), _socket_of(second)),
            )
            envoy = Envoy(config, log_path=logs / f"envoy-{name}.log")
            envoy.start()
            try:
                envoy.wait_ready(timeout=20)
                break
            except EnvoyError:
                envoy.stop()
                envoy = None
        assert envoy is not None, "envoy did not start"
        yield Replicas([first, second], envoy)
    finally:
        if envoy is not None:
            envoy.stop()
        # The test has proved what it proves: no need to wait for two drains.
        for server in (second, first):
            server.kill()
            server.stop()
            Path(_socket_of(server)).unlink(missing_ok=True)


@pytest.fixture
def replicas(postgres_servers: ServerFactory, reliability_logs: Path) -> Iterator[Replicas]:
    with _replica_set(postgres_servers, reliability_logs, "replica") as replicas:
        yield replicas


def _rest_load(replicas: Replicas, customer_id: int, order_ids: list[int]) -> Load:
    rest = replicas.rest
    item = {"sku": "REPLICA", "quantity": 1, "unit_price_cents": "250"}

    def reader(n: int) -> tuple[str, str, object]:
        order_id = order_ids[n % len(order_ids)]
        reply = (
            rest.get(f"/api/orders/{order_id}/") if n % 3 else rest.get("/api/orders/?page_size=20")
        )
        return (
            ("OK" if reply.status == 200 else f"HTTP {reply.status}"),
            reply.body[:200].decode("utf-8", "replace"),
            None,
        )

    def writer(name: str) -> Callable[[int], tuple[str, str, object]]:
        def write(n: int) -> tuple[str, str, object]:
            key = {"Idempotency-Key": f"replica-test-{customer_id}-{name}-{n}"}
            body = {"customer_id": str(customer_id), "items": [item]}
            reply = rest.post("/api/orders/", body, headers=key)
            if reply.status != 201:
                return f"HTTP {reply.status}", reply.body[:200].decode("utf-8", "replace"), None
            order_id = reply.json()["id"]
            paid = rest.post(
                f"/api/orders/{order_id}/pay/", headers={"Idempotency-Key": f"pay-{name}-{n}"}
            )
            if paid.status != 200:
                return f"HTTP {paid.status} (pay)", paid.body[:200].decode("utf-8", "replace"), None
            return "OK", "", int(order_id)

        return write

    # More callers than Envoy's default of 3 retries at once: a lost replica has about half of
    # them in flight, and each must be retried.
    workers = {
        **{f"reader-{i}": reader for i in range(1, 5)},
        **{f"writer-{i}": writer(f"writer-{i}") for i in range(1, 3)},
    }
    return Load(workers, max_seconds=120, pause=0.005)


def _envoy_failures(replicas: Replicas) -> list[str]:
    """Envoy's access log lines of the requests it answered with a 5xx (upstream, attempts)."""
    path = replicas.envoy.log_path
    lines = path.read_text(errors="replace").splitlines() if path else []
    failed = re.compile(r'"status":\s*"?5\d\d')
    return [line for line in lines if failed.search(line)][:10]


def _calls_logged(server: OrdersServer, since: int) -> int:
    return server.log_text(since=since, limit=10**9).count("OrdersService/")


def _lose_and_restart(
    load: Load, victim: OrdersServer, how: str
) -> tuple[float, float, float, float, int]:
    """Stops (SIGTERM) or kills (SIGKILL) `victim` under the load, restarts it on its socket and
    waits until it takes calls again: (lost, gone, restarted, rejoined after, log offset)."""
    since_before = victim.log_size()
    time.sleep(0.5)
    assert _calls_logged(victim, since_before) > 0, f"{victim.name} took no traffic before"
    assert victim.process is not None
    lost = time.monotonic()
    if how == "sigterm":
        victim.signal(signal.SIGTERM)
    else:
        kill_tree(victim.process.pid)
    gone = time.monotonic()
    victim.process.wait(timeout=30)
    time.sleep(1.0)
    restarted = time.monotonic()
    since_restart = victim.log_size()
    victim._serve()  # the same port, so the same socket: Envoy's endpoint comes back
    deadline = time.monotonic() + REJOIN_LIMIT
    while _calls_logged(victim, since_restart) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    return lost, gone, restarted, time.monotonic() - restarted, since_restart


def test_a_replica_lost_under_rest_load_fails_no_request_and_rejoins(replicas: Replicas) -> None:
    first, second = replicas.servers
    customer = new_customer(second.stub)
    orders = [order_in_status(second.stub, customer.id, pb.Order.DRAFT).id for _ in range(5)]
    load = _rest_load(replicas, customer.id, orders).start()
    phases = []
    try:
        load.wait_for_calls(30, timeout=30)
        # One replica drains on SIGTERM, then the other is killed outright.
        for how, victim in (("sigterm", first), ("sigkill", second)):
            phases.append((how, victim, *_lose_and_restart(load, victim, how)))
        time.sleep(0.5)
        calls = load.stop()
    finally:
        load.stop()
    failures = [c for c in calls if not c.ok]
    for how, victim, lost, _gone, restarted, rejoined, since_restart in phases:
        during = [c for c in calls if lost <= c.started <= restarted]
        figures.record(
            f"replica-{how}",
            requests_while_down=len(during),
            # In flight when the replica went, or started before it was back in rotation.
            failed=len(
                [c for c in failures if lost <= c.ended and c.started <= restarted + rejoined]
            ),
            rejoined_s=round(rejoined, 2),
        )
        assert during, f"{how}: no request was made while the replica was down"
        assert _calls_logged(victim, since_restart) >= 5, (
            f"{how}: the restarted replica took no traffic within {REJOIN_LIMIT:.0f}s:"
            f" {replicas.endpoint_health()}"
        )
    figures.record(
        "replicas",
        requests=len(calls),
        failed=len(failures),
        envoy_retries=replicas.envoy_stat("cluster.orders_grpc.upstream_rq_retry"),
        # Retries Envoy refused: more at once than its circuit breaker allows, or a request
        # out of tries. Either is a failed request.
        retry_overflow=replicas.envoy_stat("cluster.orders_grpc.upstream_rq_retry_overflow"),
        retries_exhausted=replicas.envoy_stat(
            "cluster.orders_grpc.upstream_rq_retry_limit_exceeded"
        ),
    )
    assert not failures, (
        f"{len(failures)} failed requests, e.g. {failures[:5]}; phases (how, lost, restarted,"
        f" rejoined after): {[(p[0], p[2], p[4], p[5]) for p in phases]}; Envoy's failed"
        f" requests: {_envoy_failures(replicas)}"
    )
    # Retried creates made no second order: one order per create the writers saw succeed.
    created = [c.value for c in calls if c.ok and c.value]
    made = [o.id for o in list_all_orders(first.stub, customer_id=customer.id)]
    assert sorted(set(made) - set(orders)) == sorted(created), (
        f"{len(made) - len(orders)} orders for {len(created)} creates"
    )
    paid = [c.value for c in calls if c.ok and c.value]
    for order_id in paid[-20:]:
        assert first.stub.GetOrder(pb.GetOrderRequest(id=order_id)).status == pb.Order.PAID
    assert_invariants(first, customers_seen=[customer.id])
