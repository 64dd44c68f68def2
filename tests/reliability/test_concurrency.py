"""Concurrency, on SQLite and PostgreSQL.

- 50 pay/ship/cancel/archive calls at once on the same few orders: every call ends in success
  or FAILED_PRECONDITION, every end state is legal, and the outcomes are LINEARIZABLE: there is
  one order of the calls, consistent with their real-time order (a call that ended before
  another began comes first), in which the contract's state machine gives exactly the answer
  each call got and exactly the final state. A lost update (two payments both applied, a
  cancel overwriting a ship) has no such order. The summary rollup equals a recomputation.
- CreateCustomer with one email in different cases, all at once: exactly one wins, the others
  are ALREADY_EXISTS, one row exists.
- Seeds at once with customers being created meanwhile: no email collides; with
  ORDERS_MAX_CONCURRENT_SEEDS=2 (the default) a third seed at the same time is
  RESOURCE_EXHAUSTED (reason SEED_LIMIT) and writes nothing, and a seed after them works.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import figures
import grpc
import pytest
import sqlalchemy as sa
from harness import (
    OrdersServer,
    details_of,
    item,
    long_seed,
    new_customer,
    new_order,
    run_seed,
    seed_request,
    table_counts,
)
from invariants import assert_invariants
from orders.v1 import orders_pb2 as pb
from sqlalchemy.pool import NullPool

Status = pb.Order.Status
Code = grpc.StatusCode
# action -> (statuses it moves from, status it leads to); archive is allowed from any status.
RULES = {
    "pay": ({Status.DRAFT}, Status.PAID),
    "ship": ({Status.PAID}, Status.SHIPPED),
    "cancel": ({Status.DRAFT, Status.PAID}, Status.CANCELLED),
}
State = tuple[int, bool]  # (status, is_archived)


def apply(action: str, state: State) -> State | None:
    """The state after `action`, or None when the contract refuses it (FAILED_PRECONDITION)."""
    status, archived = state
    if action == "archive":
        return (status, True)
    sources, target = RULES[action]
    if status == target:
        return state  # a repeat succeeds unchanged
    if archived or status not in sources:
        return None
    return (target, archived)


@dataclass(frozen=True)
class Op:
    started: float
    ended: float
    action: str
    result: State | None  # None: FAILED_PRECONDITION


def linearizable(ops: list[Op], initial: State, final: State) -> bool:
    """Whether some order of `ops` respecting real time explains every result and the final
    state (a search over subsets; ops per order stay small)."""
    n = len(ops)
    # must_follow[i]: ops that ended before op i started
    before = [{j for j in range(n) if ops[j].ended < ops[i].started} for i in range(n)]

    @cache
    def search(done: frozenset[int], state: State) -> bool:
        if len(done) == n:
            return state == final
        for i in range(n):
            if i in done or not before[i] <= done:
                continue
            after = apply(ops[i].action, state)
            if ops[i].result is None and after is None:
                if search(done | {i}, state):
                    return True
            elif ops[i].result is not None and after == ops[i].result:
                if search(done | {i}, after):
                    return True
        return False

    return search(frozenset(), initial)


def _stubs(server: OrdersServer, count: int) -> list:
    return [server.new_stub() for _ in range(count)]


def _run_at_once(
    stubs: list, plan: list[tuple[str, int]]
) -> tuple[list[tuple[int, Op]], list[str]]:
    """Every (action, order id) of `plan` in a thread of its own, released together."""
    barrier = threading.Barrier(len(plan))
    results: list[tuple[int, Op]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def call(index: int, action: str, order_id: int) -> None:
        stub = stubs[index % len(stubs)]
        method, request = {
            "pay": (stub.PayOrder, pb.PayOrderRequest),
            "ship": (stub.ShipOrder, pb.ShipOrderRequest),
            "cancel": (stub.CancelOrder, pb.CancelOrderRequest),
            "archive": (stub.ArchiveOrder, pb.ArchiveOrderRequest),
        }[action]
        barrier.wait(timeout=30)
        started = time.monotonic()
        try:
            order = method(request(id=order_id), timeout=60)
            result: State | None = (order.status, order.is_archived)
        except grpc.RpcError as err:
            got = details_of(err)
            if got.code != Code.FAILED_PRECONDITION:
                with lock:
                    errors.append(f"{action} {order_id}: {got.code.name} {got.message}")
                return
            result = None
        ended = time.monotonic()
        with lock:
            results.append((order_id, Op(started, ended, action, result)))

    threads = [
        threading.Thread(target=call, args=(i, action, order_id))
        for i, (action, order_id) in enumerate(plan)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    return results, errors


def _create_at_once(stubs: list, emails: list[str]) -> list[str]:
    """CreateCustomer for every email at once; the outcome of each (OK or a code name)."""
    barrier = threading.Barrier(len(emails))
    outcomes: list[str] = []
    lock = threading.Lock()

    def create(index: int, email: str) -> None:
        barrier.wait(timeout=30)
        try:
            stubs[index % len(stubs)].CreateCustomer(
                pb.CreateCustomerRequest(email=email, name="Racer"), timeout=60
            )
            outcome = "OK"
        except grpc.RpcError as err:
            outcome = err.code().name
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=create, args=v) for v in enumerate(emails)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    return outcomes


def test_fifty_concurrent_transitions_are_linearizable_and_lose_no_update(
    start_server: Callable[..., OrdersServer], backend: str, request: pytest.FixtureRequest
) -> None:
    server = start_server()
    stubs = _stubs(server, 10)
    rng = random.Random(5)
    rounds = figures.scaled(3, 40)
    customers = [new_customer(server.stub) for _ in range(2)]
    calls_made = 0
    refused = 0
    for round_number in range(rounds):
        orders = [
            new_order(server.stub, customers[i % 2].id, [item(f"C{i}", i + 1, 100 * (i + 1))])
            for i in range(5)
        ]
        plan = [
            (rng.choice(["pay", "pay", "ship", "cancel", "archive"]), rng.choice(orders).id)
            for _ in range(50)
        ]
        results, errors = _run_at_once(stubs, plan)
        assert not errors, f"round {round_number}: calls failed otherwise: {errors[:5]}"
        assert len(results) == len(plan)
        calls_made += len(results)
        refused += sum(op.result is None for _, op in results)
        for order in orders:
            final = server.stub.GetOrder(pb.GetOrderRequest(id=order.id))
            state = (final.status, final.is_archived)
            assert final.status in (Status.DRAFT, Status.PAID, Status.SHIPPED, Status.CANCELLED)
            ops = sorted((op for oid, op in results if oid == order.id), key=lambda o: o.started)
            assert linearizable(ops, (Status.DRAFT, False), state), (
                f"round {round_number}, order {order.id} ends {state}: no serial order explains"
                f" {[(o.action, o.result) for o in ops]}"
            )
    figures.record(
        f"concurrent-transitions ({backend})",
        rounds=rounds,
        calls=calls_made,
        refused_failed_precondition=refused,
    )
    assert_invariants(server, customers_seen=[c.id for c in customers])


def test_one_email_in_different_cases_at_once_exactly_one_wins(
    shared_server: OrdersServer, backend: str
) -> None:
    stubs = _stubs(shared_server, 8)
    rounds = figures.scaled(3, 30)
    for _ in range(rounds):
        base = f"race-{secrets.token_hex(4)}@example.com"
        flips = random.Random(base)
        variants = [
            "".join(c.upper() if flips.random() < 0.5 else c for c in base) for _ in range(20)
        ]
        outcomes = _create_at_once(stubs, variants)
        assert sorted(outcomes) == ["ALREADY_EXISTS"] * (len(variants) - 1) + ["OK"], outcomes
        engine = sa.create_engine(shared_server.database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT count(*) FROM customers WHERE email_key = :e"),
                    {"e": base.lower()},
                ).scalar_one()
        finally:
            engine.dispose()
        assert rows == 1
    figures.record(f"concurrent-same-email ({backend})", rounds=rounds, callers_per_round=20)


def test_an_email_differing_only_in_the_case_of_non_ascii_letters_is_already_exists(
    shared_server: OrdersServer, backend: str, request: pytest.FixtureRequest
) -> None:
    token = secrets.token_hex(4)
    first = new_customer(shared_server.stub, email=f"Élodie-{token}@example.com")
    with pytest.raises(grpc.RpcError) as err:
        new_customer(shared_server.stub, email=f"éLODIE-{token}@example.com")
    assert err.value.code() == Code.ALREADY_EXISTS, err.value.details()
    assert first.id > 0


def test_concurrent_seeds_never_collide_and_a_third_is_refused(
    start_server: Callable[..., OrdersServer], backend: str
) -> None:
    # One process: ORDERS_MAX_CONCURRENT_SEEDS is counted per server process.
    server = start_server(ORDERS_GRPC_PROCESSES="1", ORDERS_MAX_CONCURRENT_SEEDS="2")
    # Long enough to be running when the third arrives: all three start at one barrier.
    request = long_seed(server, backend, seconds=0.5)
    before = table_counts(server.database_url)
    stubs = _stubs(server, 4)
    barrier = threading.Barrier(4)
    seeds: list = []
    created: list[int] = []
    creating = threading.Event()
    lock = threading.Lock()

    def seed(stub) -> None:  # type: ignore[no-untyped-def]
        barrier.wait(timeout=30)
        run = run_seed(stub, request, timeout=120)
        with lock:
            seeds.append(run)

    def create_customers(stub) -> None:  # type: ignore[no-untyped-def]
        barrier.wait(timeout=30)
        while not creating.is_set():
            created.append(new_customer(stub).id)
            time.sleep(0.01)

    threads = [threading.Thread(target=seed, args=(s,)) for s in stubs[:3]]
    threads.append(threading.Thread(target=create_customers, args=(stubs[3],)))
    for t in threads:
        t.start()
    for t in threads[:3]:
        t.join(timeout=150)
    creating.set()
    threads[3].join(timeout=30)

    done = [r for r in seeds if r.error is None]
    refused = [r for r in seeds if r.error is not None]
    assert len(seeds) == 3
    for run in done:
        run.expect_done()
    assert len(refused) == 1 and len(done) == 2, [
        (r.error.code().name if r.error else r.last.phase) for r in seeds
    ]
    got = details_of(refused[0].error)
    assert got.code == Code.RESOURCE_EXHAUSTED and got.reason == "SEED_LIMIT", got
    a, b = done
    assert a.started < b.ended and b.started < a.ended, "the two seeds did not overlap"
    after = table_counts(server.database_url)
    per_seed = request.customers
    assert after["customers"] == before["customers"] + 2 * per_seed + len(created)
    engine = sa.create_engine(server.database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            distinct = conn.execute(
                sa.text("SELECT count(DISTINCT email_key) FROM customers")
            ).scalar_one()
    finally:
        engine.dispose()
    assert distinct == after["customers"], "two customers share an email"
    # The slots are free again.
    run_seed(server.stub, seed_request(2, 1, 1)).expect_done()
    figures.record(
        f"concurrent-seeds ({backend})",
        seeds_at_once=3,
        finished=len(done),
        refused=len(refused),
        customers_created_meanwhile=len(created),
    )
    assert_invariants(server, customers_seen=created)
