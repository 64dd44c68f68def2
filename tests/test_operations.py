"""What operators rely on: health, reflection, grpcurl, graceful shutdown, and errors that never
crash the server or leak its internals."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from harness import (
    LONG_SEED_ITEMS,
    LONG_SEED_ORDERS,
    SERVICE_NAME,
    OrdersServer,
    Phase,
    SeedRun,
    details_of,
    item,
    long_seed,
    new_customer,
    new_order,
    run_seed,
    seed_request,
    table_counts,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orders.v1 import orders_pb2 as pb

from orders_client.methods import METHODS

GRPCURL = Path(sys.executable).parent / "grpcurl"
SERVICES = {SERVICE_NAME, "grpc.health.v1.Health"}
REFLECTION = {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
RPCS = set(METHODS)
INTERNALS = re.compile(
    r"Traceback|File \"|sqlalchemy|psycopg|sqlite|OperationalError|IntegrityError|"
    r"\bSELECT\b|\bINSERT\b|\bUPDATE\b|/work/|site-packages|\.py\b",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------------
# Health and reflection.


def test_health_reports_serving_overall_and_for_the_orders_service(shared_server) -> None:
    health = health_pb2_grpc.HealthStub(shared_server.channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_health_of_an_unknown_service_is_not_found(shared_server) -> None:
    health = health_pb2_grpc.HealthStub(shared_server.channel)
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services_and_describes_every_rpc(shared_server) -> None:
    database = ProtoReflectionDescriptorDatabase(shared_server.channel)
    services = set(database.get_services())
    assert SERVICES <= services and services & REFLECTION, services
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName(SERVICE_NAME)
    assert {m.name for m in service.methods} == RPCS
    seed = service.methods_by_name["Seed"]
    assert seed.server_streaming and seed.output_type.full_name == "orders.v1.SeedResponse"


def _grpcurl(*args: str) -> str:
    done = subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "20", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"grpcurl {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done.stdout


def test_grpcurl_lists_the_services_through_reflection(shared_server) -> None:
    listed = set(_grpcurl(shared_server.address, "list").split())
    assert SERVICES <= listed and listed & REFLECTION, listed
    methods = set(_grpcurl(shared_server.address, "list", SERVICE_NAME).split())
    assert methods == {f"{SERVICE_NAME}.{rpc}" for rpc in RPCS}


def test_grpcurl_calls_list_orders_without_proto_files(shared_server) -> None:
    customer = new_customer(shared_server.stub)
    order = new_order(shared_server.stub, customer.id, [item("GRPCURL", 2, 250)])
    body = json.dumps({"customer_id": customer.id})
    out = _grpcurl("-d", body, shared_server.address, f"{SERVICE_NAME}/ListOrders")
    reply = json.loads(out)
    assert [o["id"] for o in reply["orders"]] == [str(order.id)]
    listed = reply["orders"][0]
    assert listed["status"] == "DRAFT" and listed["total_cents"] == "500"
    assert listed["customer"]["email"] == customer.email


# --------------------------------------------------------------------------------------------
# Shutdown.


def test_sigterm_lets_an_in_flight_seed_finish_then_exits_cleanly(start_server, backend) -> None:
    server = start_server(ORDERS_SHUTDOWN_GRACE="60")
    request = long_seed(server, backend, seconds=2.5)
    before = table_counts(server.database_url)
    signalled: list[float] = []

    def terminate_once_running(run: SeedRun, call: object) -> None:
        if not signalled and not run.messages[-1].done:
            server.signal(signal.SIGTERM)
            signalled.append(time.monotonic())

    run = run_seed(server.stub, request, on_message=terminate_once_running)
    assert signalled, "SIGTERM was never sent"
    assert run.arrivals[-1] > signalled[0], "the seed ended before SIGTERM; nothing was in flight"
    run.expect_done()
    assert server.wait(timeout=10) == 0, f"exit code after SIGTERM\n{server.log_text()}"
    after = table_counts(server.database_url)
    assert after["customers"] == before["customers"] + request.customers


def test_sigint_stops_an_idle_server_cleanly(start_server) -> None:
    server = start_server()
    server.signal(signal.SIGINT)
    assert server.wait(timeout=15) == 0, server.log_text()


_SYS_TGKILL = {"x86_64": 234, "aarch64": 131}


def _threads_taking(pid: int, signum: int) -> list[int]:
    """The server's threads other than the main one that do not block `signum`."""
    tids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        blocked = int(
            next(ln for ln in status.splitlines() if ln.startswith("SigBlk:")).split()[1], 16
        )
        if int(task.name) != pid and not blocked & (1 << (signum - 1)):
            tids.append(int(task.name))
    return tids


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_taken_by_any_thread_still_stops_the_server(start_server, signum) -> None:
    # The kernel may hand a process-directed signal to any thread that does not block it (it
    # does so for a busy server now and then): the server must notice it wherever it lands.
    number = _SYS_TGKILL.get(platform.machine())
    if number is None or not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux tgkill on x86_64 or aarch64")
    server = start_server()
    assert server.process is not None
    pid = server.process.pid
    tids = _threads_taking(pid, signum)
    if not tids:
        pytest.skip("every thread but the main one blocks the signal: only main can take it")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, pid, tids[-1], signum) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    assert server.wait(timeout=8) == 0, server.log_text()


def test_shutdown_grace_cuts_a_long_seed_short_and_leaves_none_of_its_rows(start_server) -> None:
    server = start_server(ORDERS_SHUTDOWN_GRACE="1")
    # As large as the row cap allows: SIGTERM comes at the first progress message and the
    # grace period cuts it a second later, so its size costs no time, and no change in the
    # machine's speed since the rate was measured can make it finish within the grace.
    request = seed_request(81_967, LONG_SEED_ORDERS, LONG_SEED_ITEMS)  # 4,999,987 rows
    before = table_counts(server.database_url)
    signalled: list[float] = []

    def terminate_once_running(run: SeedRun, call: object) -> None:
        if (
            not signalled
            and not run.messages[-1].done
            and run.messages[-1].phase != Phase.PHASE_STARTED
        ):
            server.signal(signal.SIGTERM)
            signalled.append(time.monotonic())

    run = run_seed(server.stub, request, on_message=terminate_once_running, timeout=60)
    assert signalled, "SIGTERM was never sent"
    server.wait(timeout=20)
    assert time.monotonic() - signalled[0] < 15, "the grace period was not honoured"
    if run.error is None and run.last.phase == Phase.PHASE_DONE:
        pytest.fail(
            f"the seed of {run.rows()} rows finished within the 1s grace period; enlarge it"
        )
    assert table_counts(server.database_url) == before, "a seed cut short left rows behind"


# --------------------------------------------------------------------------------------------
# No input crashes the server or leaks its internals.


def _assert_clean_error(err: grpc.RpcError, allowed: set[grpc.StatusCode]) -> None:
    got = details_of(err)
    assert got.code in allowed, f"{got.code.name}: {got.message}"
    assert not INTERNALS.search(got.message), f"internals leaked: {got.message}"


FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
ANY_TEXT = st.text(min_size=0, max_size=300) | st.sampled_from(
    [
        "\x00",
        "a\x00b@example.com",
        "%",
        "_",
        "\\",
        "'; DROP TABLE customers; --",
        "é@ü.de",
        "a@b.c" * 100,
        "\ud7ff@x.io",
        "😀@😀.com",
        "x@y.invalid",
        "X@SEED.INVALID",
    ]
)


@FUZZ
@given(email=ANY_TEXT, name=ANY_TEXT)
def test_any_customer_input_is_created_or_refused_never_internal(
    shared_server, email, name
) -> None:
    try:
        customer = shared_server.stub.CreateCustomer(
            pb.CreateCustomerRequest(email=email, name=name)
        )
    except grpc.RpcError as err:
        _assert_clean_error(err, {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS})
        return
    assert customer.email == email and customer.name == name


@FUZZ
@given(
    email=ANY_TEXT,
    token=ANY_TEXT,
    status=st.integers(-(2**31), 2**31 - 1),
    page_size=st.integers(-(2**31), 2**31 - 1),
    customer_id=st.integers(-(2**63), 2**63 - 1),
)
def test_any_list_filter_is_answered_or_refused_never_internal(
    shared_server, email, token, status, page_size, customer_id
) -> None:
    request = pb.ListOrdersRequest(
        email=email, page_token=token, status=status, page_size=page_size, customer_id=customer_id
    )
    try:
        shared_server.stub.ListOrders(request)
    except grpc.RpcError as err:
        _assert_clean_error(err, {grpc.StatusCode.INVALID_ARGUMENT})


@FUZZ
@given(
    customer_id=st.integers(-(2**63), 2**63 - 1),
    items=st.lists(
        st.tuples(ANY_TEXT, st.integers(-(2**31), 2**31 - 1), st.integers(-(2**63), 2**63 - 1)),
        max_size=4,
    ),
)
def test_any_order_input_is_created_or_refused_never_internal(
    shared_server, customer_id, items
) -> None:
    request = pb.CreateOrderRequest(
        customer_id=customer_id, items=[item(s, q, p) for s, q, p in items]
    )
    try:
        order = shared_server.stub.CreateOrder(request)
    except grpc.RpcError as err:
        _assert_clean_error(err, {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})
        return
    assert order.total_cents == sum(q * p for _, q, p in items)


def test_a_lost_database_is_unavailable_without_internals(
    start_server, backend, server_factory
) -> None:
    if backend != "postgresql":
        pytest.skip("only a database server can go away under a running service")
    server: OrdersServer = start_server()
    customer = new_customer(server.stub)
    server_factory.databases.drop(server.database_url)  # type: ignore[union-attr]
    calls = [
        lambda: server.stub.GetCustomer(pb.GetCustomerRequest(id=customer.id)),
        lambda: server.stub.ListOrders(pb.ListOrdersRequest()),
        lambda: server.stub.CreateCustomer(
            pb.CreateCustomerRequest(email="after-drop@example.com", name="N")
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        _assert_clean_error(err.value, {grpc.StatusCode.UNAVAILABLE})
        got = details_of(err.value)
        assert got.reason == "DATABASE_UNAVAILABLE", got.info
        assert server.database_url.rsplit("/", 1)[1] not in got.message
    assert server.process is not None and server.process.poll() is None, "the server died"
