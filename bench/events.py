"""The order events' phase: delivery to many watchers under a steady write load, and what the
outbox costs the write path.

- delivery: one server (its default processes) over a fresh PostgreSQL database, WATCHERS
  streams of WatchOrders (a channel each, all events), and a steady RATE transitions a second
  (CreateOrder, PayOrder, ShipOrder, in turn over a few writer threads) for `seconds`. Every
  watcher must receive every event exactly once, in the same order; the lag of an event is
  when a watcher got it minus the event's time, the server's clock inside the writing
  transaction (the same machine's clock): commit to delivery, the commit itself included.
- write cost: the same transitions, as fast as WRITERS threads go, against two servers over
  two databases, one where the event insert is turned into nothing by a rule (its statement
  still runs, so the "without" figure keeps one round trip the outbox would not need: the
  ratio errs on the outbox's side by that much), alternated over rounds: p50 of a transition.
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

from .report import Row, Table, fmt_ms, fmt_ratio, verdict
from .stack import BenchDatabases, Server, libpq, migrate, say, stop_all

__all__ = ["EventsPhase"]

WATCHERS = 50
RATE = 200.0  # transitions a second
WRITERS = 4  # the write-cost comparison's threads
# Enough threads for the steady schedule to hold even when calls slow down under the watchers.
SCHEDULED_WRITERS = 16
_ENV = {"ORDERS_EVENT_HEARTBEAT_SECONDS": "1", "ORDERS_MAX_WATCHERS": str(WATCHERS + 10)}
_STEPS = (pb.OrderEvent.CREATED, pb.OrderEvent.PAID, pb.OrderEvent.SHIPPED)
_ITEM = pb.OrderItem(sku="BENCH", quantity=1, unit_price_cents=100)
_NO_OUTBOX = "CREATE RULE bench_no_outbox AS ON INSERT TO order_events DO INSTEAD NOTHING"


@dataclass
class _Watch:
    received: list[tuple[int, int]] = field(default_factory=list)  # (type, order id)
    lags: list[float] = field(default_factory=list)  # receipt minus the event's time
    arrivals: list[float] = field(default_factory=list)  # time.time() of each receipt
    error: str = ""


def _timed_transitions(stub: Any, customer: int) -> list[float]:
    """Creates, pays and ships one order: each call's seconds."""
    t0 = time.perf_counter()
    order = stub.CreateOrder(pb.CreateOrderRequest(customer_id=customer, items=[_ITEM]))
    t1 = time.perf_counter()
    stub.PayOrder(pb.PayOrderRequest(id=order.id))
    t2 = time.perf_counter()
    stub.ShipOrder(pb.ShipOrderRequest(id=order.id))
    return [t1 - t0, t2 - t1, time.perf_counter() - t2]


def _outbox(database_url: str) -> list[tuple[int, int]]:
    """(type, order id) of every event, by position, from the table itself."""
    with psycopg.connect(libpq(database_url)) as connection:
        rows = connection.execute(
            "SELECT type, order_id FROM order_events ORDER BY position"
        ).fetchall()
    return [(pb.OrderEvent.Type.Value(kind), order_id) for kind, order_id in rows]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class EventsPhase:
    def __init__(self, size_name: str, dbs: BenchDatabases, log_dir: Path) -> None:
        self.seconds = {"tiny": 2.0, "small": 5.0}.get(size_name, 30.0)
        self.rounds = 2 if size_name in ("tiny", "small") else 4
        self.dbs = dbs
        self.log_dir = log_dir
        self.servers: list[Server] = []
        self.channels: list[grpc.Channel] = []
        self.figures: dict[str, Any] = {}

    def close(self) -> None:
        stop_all(self.channels, self.servers)

    def _server(self, label: str, no_outbox: bool = False) -> Server:
        url = self.dbs.create(f"events_{label}")
        migrate(url, self.log_dir / "bench.log")
        if no_outbox:
            with psycopg.connect(libpq(url), autocommit=True) as connection:
                connection.execute(_NO_OUTBOX)
        server = Server(url, f"events-{label}", self.log_dir / f"events-{label}.log", dict(_ENV))
        self.servers.append(server)
        server.start()
        return server

    def _stub(self, server: Server) -> pb_grpc.OrdersServiceStub:
        channel = grpc.insecure_channel(server.address, options=[("grpc.enable_http_proxy", 0)])
        self.channels.append(channel)
        return pb_grpc.OrdersServiceStub(channel)

    def run(self, table: Table) -> None:
        server = self._server("delivery")
        self._delivery(table, server)
        with_outbox, without = server, self._server("no_outbox", no_outbox=True)
        self._write_cost(table, with_outbox, without)

    # Delivery ----------------------------------------------------------------------------

    def _delivery(self, table: Table, server: Server) -> None:
        stub = self._stub(server)
        customers = [
            stub.CreateCustomer(
                pb.CreateCustomerRequest(email=f"events-{i}@bench.example", name="Bench")
            ).id
            for i in range(SCHEDULED_WRITERS)
        ]
        # The watchers read in processes of their own: in the writers' process, parsing
        # every event 50 times would hold the GIL the steady schedule needs.
        context = multiprocessing.get_context("spawn")
        began = context.Barrier(WATCHERS + 1)
        done = context.Event()
        target = context.Value("q", 0)  # how many events each watcher is to get, once known
        groups = [
            (server.address, WATCHERS // _WATCH_PROCESSES + (i < WATCHERS % _WATCH_PROCESSES))
            for i in range(_WATCH_PROCESSES)
        ]
        results = context.Queue()
        processes = [
            context.Process(
                target=_watch_group, args=(address, n, began, done, target, results), daemon=True
            )
            for address, n in groups
        ]
        for process in processes:
            process.start()
        try:
            began.wait(60)  # every watcher has had its first heartbeat: it has begun
        except threading.BrokenBarrierError:
            say("events: not every watcher began within 60 s")
        total = int(RATE * self.seconds) // 3 * 3
        made: list[tuple[int, int]] = []
        failed: list[str] = []
        answered: dict[tuple[int, int], float] = {}  # when each write's answer came back
        made_lock = threading.Lock()
        begin = time.monotonic() + 0.2

        def write(k: int) -> None:
            writer_stub = self._stub(server)
            # Order j (this writer's when j % SCHEDULED_WRITERS == k) takes slots 3j, 3j+1
            # and 3j+2 of the steady schedule, one slot every 1 / RATE s.
            for j in range(k, total // 3, SCHEDULED_WRITERS):
                order_id = 0
                for step, kind in enumerate(_STEPS):
                    pause = begin + (3 * j + step) / RATE - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    try:
                        if kind == pb.OrderEvent.CREATED:
                            order_id = writer_stub.CreateOrder(
                                pb.CreateOrderRequest(customer_id=customers[k], items=[_ITEM])
                            ).id
                        elif kind == pb.OrderEvent.PAID:
                            writer_stub.PayOrder(pb.PayOrderRequest(id=order_id))
                        else:
                            writer_stub.ShipOrder(pb.ShipOrderRequest(id=order_id))
                    except grpc.RpcError as error:
                        # Counted; the order's next steps are skipped. What the watchers must
                        # get is read from the outbox itself afterwards.
                        with made_lock:
                            failed.append(f"{error.code().name}: {error.details()}")
                        break
                    with made_lock:
                        made.append((kind, order_id))
                        answered[kind, order_id] = time.time()

        say(f"events: {WATCHERS} watchers, {RATE:.0f} transitions/s for {self.seconds:.0f} s")
        writers = [threading.Thread(target=write, args=(k,)) for k in range(SCHEDULED_WRITERS)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        elapsed = time.monotonic() - begin
        # Bounded: whatever has not come 10 s after the last write counts as missed.
        target.value = len(_outbox(server.database_url))
        watches: list[_Watch] = []
        try:
            for _ in processes:
                watches += results.get(timeout=10 if not watches else 60)
        except queue.Empty:
            done.set()
            while len(watches) < WATCHERS:
                watches += results.get(timeout=60)
        done.set()
        for process in processes:
            process.join(10)
        expected = _outbox(server.database_url)
        complete = [w for w in watches if w.received == expected]  # all, once, in order
        lags = [lag for w in watches for lag in w.lags]
        p50, p99 = _quantile(lags, 0.5) * 1000, _quantile(lags, 0.99) * 1000
        # The commit lies between the event's time and the write's answer: the lag from the
        # answer is the other bound (0 when the event arrived first).
        after_answer = [
            max(0.0, arrival - answered[event])
            for w in watches
            for event, arrival in zip(w.received, w.arrivals, strict=True)
            if event in answered
        ]
        low99 = _quantile(after_answer, 0.99) * 1000
        rate = len(made) / elapsed if elapsed > 0 else float("nan")
        self.figures["delivery"] = {
            "watchers": WATCHERS,
            "transitions": len(made),
            "rate": round(rate, 1),
            "events": len(expected),
            "complete_watchers": len(complete),
            "failed_writes": failed[:3],
            "failed_write_count": len(failed),
            "lag_p50_ms": round(p50, 2),
            "lag_p99_ms": round(p99, 2),
            "lag_after_answer_p50_ms": round(_quantile(after_answer, 0.5) * 1000, 2),
            "lag_after_answer_p99_ms": round(low99, 2),
            "errors": [w.error for w in watches if w.error][:3],
        }
        everyone = len(complete) == WATCHERS and not failed
        table.add(
            Row(
                f"events: {WATCHERS} watchers x {len(made):,} transitions ({rate:.0f}/s)",
                project=f"{len(complete)}/{WATCHERS} got every event"
                + (f", {len(failed)} writes failed" if failed else ""),
                target="every watcher, every event, in the outbox's order",
                verdict=verdict(everyone),
            )
        )
        table.add(
            Row(
                "events: commit -> delivery lag p99",
                project=fmt_ms(p99),
                latency=f"p50 {fmt_ms(p50)}; from the write's answer p99 {fmt_ms(low99)}",
                target="<= 200 ms",
                verdict=verdict(p99 <= 200),
                note="lag: a watcher's receipt minus the event's time, taken in the writing"
                " transaction before its commit (the commit, and its wait for the ordering lock,"
                " included): an upper bound; the lag from when the write's answer came back is"
                " the lower one. Every event of every watcher",
            )
        )

    # Write cost --------------------------------------------------------------------------

    def _write_cost(self, table: Table, with_outbox: Server, without: Server) -> None:
        window = max(1.0, self.seconds / 6)
        timings: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(self.rounds):
            for label, server in (("without", without), ("with", with_outbox)):
                timings[label] += self._transitions(server, window)
        p50 = {label: statistics.median(values) * 1000 for label, values in timings.items()}
        ratio = p50["with"] / p50["without"] if p50["without"] else float("nan")
        self.figures["write_cost"] = {
            "p50_ms_with": round(p50["with"], 3),
            "p50_ms_without": round(p50["without"], 3),
            "ratio": round(ratio, 3),
            "transitions": {label: len(values) for label, values in timings.items()},
        }
        table.add(
            Row(
                f"events: a transition's p50, outbox vs none ({WRITERS} writers)",
                project=fmt_ms(p50["with"]),
                floor=fmt_ms(p50["without"]),
                ratio=fmt_ratio(ratio),
                target="<= 1.2x",
                verdict=verdict(ratio <= 1.2),
                note="none: the event insert turned into nothing by a rule, its statement"
                " still sent; rounds alternated between the two servers",
            )
        )

    def _transitions(self, server: Server, seconds: float) -> list[float]:
        """Create, pay and ship orders from WRITERS threads for `seconds`: each call's time."""
        stub = self._stub(server)
        customer = stub.CreateCustomer(
            pb.CreateCustomerRequest(
                email=f"cost-{time.monotonic_ns()}@bench.example", name="Bench"
            )
        ).id
        found: list[float] = []
        lock = threading.Lock()
        ends = time.monotonic() + seconds

        def run() -> None:
            own = self._stub(server)
            mine: list[float] = []
            while time.monotonic() < ends:
                try:
                    mine += _timed_transitions(own, customer)
                except grpc.RpcError:
                    continue  # a failed call is left out of the timings
            with lock:
                found.extend(mine)

        threads = [threading.Thread(target=run) for _ in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return found


_WATCH_PROCESSES = 2


def _watch_group(
    address: str, count: int, began: Any, done: Any, target: Any, results: Any
) -> None:
    """`count` watchers of every event in this process, until each has `target` events or
    `done` is set."""
    watches = [_Watch() for _ in range(count)]
    channels = [
        grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) for _ in watches
    ]
    calls = [
        pb_grpc.OrdersServiceStub(channel).WatchOrders(pb.WatchOrdersRequest())
        for channel in channels
    ]
    threads = [
        threading.Thread(target=_follow, args=(call, watch, began))
        for call, watch in zip(calls, watches, strict=True)
    ]
    for thread in threads:
        thread.start()
    while not done.wait(0.05):
        if target.value and all(len(w.received) >= target.value for w in watches):
            break
    for call in calls:
        call.cancel()
    for thread in threads:
        thread.join(10)
    for channel in channels:
        channel.close()
    results.put(watches)


def _follow(call: Any, watch: _Watch, began: Any) -> None:
    first = True
    try:
        for event in call:
            if event.type == pb.OrderEvent.HEARTBEAT:
                if first:
                    first = False
                    began.wait(60)
                continue
            now = time.time()
            watch.lags.append(now - (event.time.seconds + event.time.nanos / 1e9))
            watch.arrivals.append(now)
            watch.received.append((event.type, event.order.id))
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            watch.error = f"{error.code().name}: {error.details()}"
    except threading.BrokenBarrierError:
        watch.error = "no heartbeat within 60 s"
