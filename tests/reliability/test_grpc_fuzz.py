"""hypothesis drives every RPC over direct gRPC, in random sequences, with arbitrary field
values: huge, negative, unicode, empty, NUL, unknown enum numbers, ids that exist and ids that
do not.

No call may end in INTERNAL or UNKNOWN, and none may leak the server's insides. Where the
contract and docs/architecture.md say what must happen, the test predicts it from the rows it
reads itself and holds the server to it: a transition succeeds, repeats or is refused exactly as
the state machine says, an order is created with exactly its total or refused for exactly the
documented reasons. After every sequence the invariants hold (invariants.py), and at the end
`python -m server check` reports the database consistent.

tests/test_operations.py already fuzzes single CreateCustomer, CreateOrder and ListOrders
calls; this covers every RPC, in sequences, against a model. It also sends requests that are
not valid protobuf at all (a string field with invalid UTF-8, as a non-Python client can).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import figures
import grpc
import pytest
import sqlalchemy as sa
from harness import OrdersServer, details_of
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from invariants import assert_invariants
from orders.v1 import orders_pb2 as pb
from sqlalchemy.pool import NullPool

Code = grpc.StatusCode
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
SEED_CAP = 300  # ORDERS_SEED_MAX_ROWS of the fuzzed server: seeds stay small
INTERNALS = re.compile(
    r"Traceback|File \"|sqlalchemy|psycopg|sqlite|OperationalError|IntegrityError|"
    r"\bSELECT\b|\bINSERT\b|\bUPDATE\b|/work/|site-packages|\.py\b",
    re.IGNORECASE,
)
STATUS_NAMES = {1: "DRAFT", 2: "PAID", 3: "SHIPPED", 4: "CANCELLED"}
STATUS_NUMBERS = {v: k for k, v in STATUS_NAMES.items()}
# action -> (statuses it moves from, status it leads to): the contract's state machine.
TRANSITIONS = {
    "pay": ({"DRAFT"}, "PAID"),
    "ship": ({"PAID"}, "SHIPPED"),
    "cancel": ({"DRAFT", "PAID"}, "CANCELLED"),
}

WEIRD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "%",
        "_",
        "\\",
        "'; DROP TABLE orders; --",
        "é",
        "ß",
        "İ",
        "😀",
        "\u202e",
        "\ufeff",
        "x" * 65,
        "x" * 255,
        "é" * 300,
        "y" * 100_000,
    ]
)
TEXT = st.one_of(st.text(max_size=80), WEIRD_TEXT)
SKU = st.one_of(st.sampled_from(["SKU-1", "BOOK", "ñ-ü", "x" * 64]), TEXT)
QUANTITY = st.one_of(st.integers(1, 5), st.sampled_from([0, -1, 1_000_000, 1_000_001]), INT32)
PRICE = st.one_of(
    st.integers(0, 10_000),
    st.sampled_from([-1, 10_000_000_000, 10_000_000_001, 2**62]),
    INT64,
)
ITEMS = st.lists(st.tuples(SKU, QUANTITY, PRICE), max_size=6)
EMAIL = st.one_of(
    st.builds(lambda local, tld: f"{local}@example.{tld}", st.text(min_size=1, max_size=20), TEXT),
    st.sampled_from(["a@b.co", "A@B.CO", "x@y.invalid", "seed-1@seed.invalid", "no-at-sign"]),
    TEXT,
)
# A reference: ("known", n) is the n-th row of that kind the test has seen (modulo their
# number), ("raw", v) the value v itself, whatever it is.
REFERENCE = st.one_of(
    st.tuples(st.just("known"), st.integers(0, 10**6)),
    st.tuples(st.just("raw"), st.one_of(INT64, st.sampled_from([0, -1, 1, 2**63 - 1]))),
)


class Outcome:
    """Counts what the server answered, per RPC and code."""

    def __init__(self) -> None:
        self.calls = 0
        self.codes: dict[str, int] = {}

    def add(self, code: Code) -> None:
        self.calls += 1
        self.codes[code.name] = self.codes.get(code.name, 0) + 1


class Fuzz(RuleBasedStateMachine):
    server: OrdersServer
    outcome: Outcome
    seen_customers: set[int]

    @initialize()
    def open_database(self) -> None:
        self.engine = sa.create_engine(self.server.database_url, poolclass=NullPool)
        self.stub = self.server.stub

    def teardown(self) -> None:
        """After every sequence: the invariants, read from the database."""
        if hasattr(self, "engine"):
            self.engine.dispose()
            assert_invariants(self.server, self.seen_customers, use_api=False, check_command=False)

    # ---------------------------------------------------------------------------------------
    # Reading the truth straight from the database.

    def _scalar(self, query: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(query), params).first()

    def _ids(self, table: str) -> list[int]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(f"SELECT id FROM {table} ORDER BY id"))]

    def _resolve(self, table: str, reference: tuple[str, int]) -> int:
        kind, value = reference
        if kind == "raw":
            return value
        ids = self._ids(table)
        return ids[value % len(ids)] if ids else value + 1

    def _call(self, method: Callable[..., Any], request: Any, allowed: set[Code]) -> Any:
        """The response, or the error's code; fails on a code outside `allowed` (never
        INTERNAL or UNKNOWN) and on a message that shows the server's insides."""
        if request.ByteSize() > 65_536:  # a message size limit may refuse it
            allowed = allowed | {Code.RESOURCE_EXHAUSTED}
        try:
            response = method(request, timeout=30)
        except grpc.RpcError as err:
            got = details_of(err)
            self.outcome.add(got.code)
            assert got.code not in (Code.INTERNAL, Code.UNKNOWN), (
                f"{got.code.name} for {type(request).__name__}: {got.message}"
            )
            assert got.code in allowed, (
                f"{got.code.name} for {type(request).__name__} {str(request)[:300]!r}:"
                f" {got.message} (allowed: {sorted(c.name for c in allowed)})"
            )
            assert not INTERNALS.search(got.message), f"internals leaked: {got.message}"
            if got.code == Code.INVALID_ARGUMENT:
                assert got.has_status and got.fields, "INVALID_ARGUMENT must name the fields"
            return got.code
        self.outcome.add(Code.OK)
        return response

    # ---------------------------------------------------------------------------------------
    # Customers.

    @rule(email=EMAIL, name=TEXT)
    def create_customer(self, email: str, name: str) -> None:
        taken = None  # (PostgreSQL cannot even be asked about a NUL)
        if "\x00" not in email:
            # The server's key: Python's lower(), the same on both databases.
            taken = self._scalar("SELECT id FROM customers WHERE email_key = :e", e=email.lower())
        result = self._call(
            self.stub.CreateCustomer,
            pb.CreateCustomerRequest(email=email, name=name),
            {Code.INVALID_ARGUMENT, Code.ALREADY_EXISTS},
        )
        obviously_bad = (
            "@" not in email
            or "\x00" in email + name
            or any(c.isspace() for c in email)
            or len(email) > 254
            or not name.strip()
            or len(name) > 200
            or email.lower().rstrip(".").endswith(".invalid")
        )
        if isinstance(result, pb.Customer):
            assert not obviously_bad, f"accepted a customer the rules refuse: {email!r} {name!r}"
            assert taken is None, f"{email!r} was created twice (case-insensitively)"
            assert (result.email, result.name) == (email, name)
            assert result.id > 0 and result.created_at.seconds > 0
            self.seen_customers.add(result.id)
        elif result == Code.ALREADY_EXISTS:
            assert taken is not None, f"ALREADY_EXISTS for a new email {email!r}"
        elif not obviously_bad:
            assert result == Code.INVALID_ARGUMENT

    @rule(reference=REFERENCE)
    def get_customer(self, reference: tuple[str, int]) -> None:
        customer_id = self._resolve("customers", reference)
        row = self._scalar("SELECT email, name FROM customers WHERE id = :i", i=customer_id)
        result = self._call(
            self.stub.GetCustomer,
            pb.GetCustomerRequest(id=customer_id),
            {Code.INVALID_ARGUMENT, Code.NOT_FOUND},
        )
        if customer_id <= 0:
            assert result == Code.INVALID_ARGUMENT
        elif row is None:
            assert result == Code.NOT_FOUND
        else:
            assert isinstance(result, pb.Customer) and (result.email, result.name) == tuple(row)

    @rule(page_size=st.one_of(st.integers(-2, 600), INT32), token=st.one_of(st.just(""), TEXT))
    def list_customers(self, page_size: int, token: str) -> None:
        result = self._call(
            self.stub.ListCustomers,
            pb.ListCustomersRequest(page_size=page_size, page_token=token),
            {Code.INVALID_ARGUMENT},
        )
        if page_size < 0:
            assert result == Code.INVALID_ARGUMENT
        if isinstance(result, pb.ListCustomersResponse):
            ids = [c.id for c in result.customers]
            assert ids == sorted(ids, reverse=True), "newest first"
            assert len(ids) <= min(page_size or 50, 500)

    # ---------------------------------------------------------------------------------------
    # Orders.

    @rule(reference=REFERENCE, items=ITEMS)
    def create_order(self, reference: tuple[str, int], items: list[tuple[str, int, int]]) -> None:
        customer_id = self._resolve("customers", reference)
        exists = customer_id > 0 and self._scalar(
            "SELECT 1 FROM customers WHERE id = :i", i=customer_id
        )
        lines = [pb.OrderItem(sku=s, quantity=q, unit_price_cents=p) for s, q, p in items]
        invalid = (
            customer_id <= 0
            or not items
            or any(
                not s.strip() or "\x00" in s or len(s) > 64 or not 1 <= q <= 1_000_000
                for s, q, _ in items
            )
        )
        invalid = invalid or any(not 0 <= p <= 10_000_000_000 for _, _, p in items)
        total = sum(q * p for _, q, p in items)
        invalid = invalid or total > 10**12
        orders_before = self._scalar("SELECT count(*) FROM orders")[0]
        result = self._call(
            self.stub.CreateOrder,
            pb.CreateOrderRequest(customer_id=customer_id, items=lines),
            {Code.INVALID_ARGUMENT, Code.NOT_FOUND},
        )
        if invalid:
            assert result == Code.INVALID_ARGUMENT, f"expected INVALID_ARGUMENT, got {result}"
        elif not exists:
            assert result == Code.NOT_FOUND, f"expected NOT_FOUND, got {result}"
        else:
            assert isinstance(result, pb.Order), result
            assert result.status == pb.Order.DRAFT and not result.is_archived
            assert result.total_cents == total and result.customer.id == customer_id
            assert [(i.sku, i.quantity, i.unit_price_cents) for i in result.items] == items
            return
        assert self._scalar("SELECT count(*) FROM orders")[0] == orders_before, (
            "a refused order left a row"
        )

    @rule(reference=REFERENCE)
    def get_order(self, reference: tuple[str, int]) -> None:
        order_id = self._resolve("orders", reference)
        row = self._scalar("SELECT total_cents, status FROM orders WHERE id = :i", i=order_id)
        result = self._call(
            self.stub.GetOrder,
            pb.GetOrderRequest(id=order_id),
            {Code.INVALID_ARGUMENT, Code.NOT_FOUND},
        )
        if order_id <= 0:
            assert result == Code.INVALID_ARGUMENT
        elif row is None:
            assert result == Code.NOT_FOUND
        else:
            assert isinstance(result, pb.Order)
            assert (result.total_cents, STATUS_NAMES[result.status]) == tuple(row)
            assert result.total_cents == sum(i.quantity * i.unit_price_cents for i in result.items)

    @rule(
        action=st.sampled_from(["pay", "ship", "cancel", "archive"]),
        reference=REFERENCE,
    )
    def transition(self, action: str, reference: tuple[str, int]) -> None:
        order_id = self._resolve("orders", reference)
        before = self._scalar(
            "SELECT status, is_archived, updated_at FROM orders WHERE id = :i", i=order_id
        )
        method, request = {
            "pay": (self.stub.PayOrder, pb.PayOrderRequest),
            "ship": (self.stub.ShipOrder, pb.ShipOrderRequest),
            "cancel": (self.stub.CancelOrder, pb.CancelOrderRequest),
            "archive": (self.stub.ArchiveOrder, pb.ArchiveOrderRequest),
        }[action]
        result = self._call(
            method,
            request(id=order_id),
            {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION},
        )
        if order_id <= 0:
            assert result == Code.INVALID_ARGUMENT
            return
        if before is None:
            assert result == Code.NOT_FOUND
            return
        status, archived = before[0], bool(before[1])
        if action == "archive":
            expected: tuple[str, bool] | None = (status, True)
        else:
            sources, target = TRANSITIONS[action]
            if status == target:
                expected = (status, archived)  # a repeat: unchanged
            elif archived or status not in sources:
                expected = None
            else:
                expected = (target, False)
        after = self._scalar("SELECT status, is_archived FROM orders WHERE id = :i", i=order_id)
        if expected is None:
            assert result == Code.FAILED_PRECONDITION, f"{action} on {before}: got {result}"
            assert (after[0], bool(after[1])) == (status, archived), "a refused move changed it"
        else:
            assert isinstance(result, pb.Order), f"{action} on {before}: got {result}"
            assert (STATUS_NAMES[result.status], result.is_archived) == expected
            assert (after[0], bool(after[1])) == expected

    @rule(
        status=st.one_of(st.integers(0, 4), st.sampled_from([5, -1, 99, 2**31 - 1]), INT32),
        email=st.one_of(st.just(""), TEXT),
        customer=st.one_of(st.just(("raw", 0)), REFERENCE),
        page_size=st.one_of(st.integers(-1, 600), INT32),
        token=st.one_of(st.just(""), TEXT),
        include_archived=st.booleans(),
    )
    def list_orders(
        self,
        status: int,
        email: str,
        customer: tuple[str, int],
        page_size: int,
        token: str,
        include_archived: bool,
    ) -> None:
        customer_id = self._resolve("customers", customer)
        result = self._call(
            self.stub.ListOrders,
            pb.ListOrdersRequest(
                status=status,
                email=email,
                customer_id=customer_id,
                page_size=page_size,
                page_token=token,
                include_archived=include_archived,
            ),
            {Code.INVALID_ARGUMENT},
        )
        if status not in range(5) or page_size < 0 or customer_id < 0 or len(email) > 254:
            assert result == Code.INVALID_ARGUMENT, "an invalid filter must be refused"
            return
        if not isinstance(result, pb.ListOrdersResponse):
            return
        for order in result.orders:
            assert include_archived or not order.is_archived
            assert status == 0 or order.status == status
            assert customer_id == 0 or order.customer_id == customer_id
            assert email.lower() in order.customer.email.lower() or not email.isascii()
        ids = [o.id for o in result.orders]
        assert ids == sorted(ids, reverse=True)

    @rule(limit=st.one_of(st.integers(-1, 1100), INT32))
    def get_summary(self, limit: int) -> None:
        result = self._call(
            self.stub.GetSummary, pb.GetSummaryRequest(limit=limit), {Code.INVALID_ARGUMENT}
        )
        if limit < 0:
            assert result == Code.INVALID_ARGUMENT
            return
        assert isinstance(result, pb.GetSummaryResponse), result
        rows = [(-r.total_cents, r.customer_id) for r in result.customers]
        assert rows == sorted(rows) and len(rows) <= min(limit or 10, 1000)

    @rule(
        customers=st.one_of(st.integers(-1, 12), INT32),
        orders=st.one_of(st.integers(-1, 4), INT32),
        items=st.one_of(st.integers(-1, 3), INT32),
    )
    def seed(self, customers: int, orders: int, items: int) -> None:
        valid = 1 <= customers <= 100_000 and 0 <= orders <= 1_000 and 0 <= items <= 100
        rows = customers * (1 + orders * (1 + items))
        before = self._scalar("SELECT count(*) FROM customers")[0]
        request = pb.SeedRequest(
            customers=customers, orders_per_customer=orders, items_per_order=items
        )
        try:
            messages = list(self.stub.Seed(request, timeout=60))
        except grpc.RpcError as err:
            got = details_of(err)
            self.outcome.add(got.code)
            assert got.code == Code.INVALID_ARGUMENT, f"{got.code.name}: {got.message}"
            assert not valid or rows > SEED_CAP, f"a valid seed of {rows} rows was refused"
            assert self._scalar("SELECT count(*) FROM customers")[0] == before
            return
        self.outcome.add(Code.OK)
        assert valid and rows <= SEED_CAP, f"seed {request} was accepted"
        assert messages[-1].done and messages[-1].phase == pb.SeedResponse.PHASE_DONE
        assert self._scalar("SELECT count(*) FROM customers")[0] == before + customers
        with self.engine.connect() as conn:
            newest = conn.execute(
                sa.text("SELECT id FROM customers ORDER BY id DESC LIMIT :n"), {"n": customers}
            )
            self.seen_customers.update(r[0] for r in newest)

    # ---------------------------------------------------------------------------------------

    @precondition(lambda self: hasattr(self, "engine"))
    @invariant()
    def server_alive(self) -> None:
        assert self.server.process is not None and self.server.process.poll() is None


def test_every_rpc_with_arbitrary_values_never_internal_and_invariants_hold(
    start_server: Callable[..., OrdersServer], backend: str
) -> None:
    server = start_server(ORDERS_SEED_MAX_ROWS=str(SEED_CAP))
    outcome = Outcome()
    seen: set[int] = set()
    Fuzz.server, Fuzz.outcome, Fuzz.seen_customers = server, outcome, seen
    examples = figures.scaled(12, 200)
    steps = figures.scaled(30, 60)
    started = time.monotonic()
    fuzz_settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=not figures.LONG,
        # Bounded: no shrinking in the short run (a failure is reported as found).
        phases=[p for p in Phase if figures.LONG or p != Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    try:
        run_state_machine_as_test(Fuzz, settings=fuzz_settings)
    finally:
        figures.record(
            f"grpc-fuzz ({backend})",
            sequences=examples,
            calls=outcome.calls,
            seconds=round(time.monotonic() - started, 1),
            codes=dict(sorted(outcome.codes.items())),
        )
    counts = assert_invariants(server, customers_seen=seen)
    assert outcome.calls >= examples * 5, f"only {outcome.calls} calls were made"
    assert counts["customers"] > 0 and outcome.codes.get("OK", 0) > 0


# ------------------------------------------------------------------------------------------
# Requests that are not valid protobuf at all. A Python client cannot build them, a client in
# another language can (a string field holding invalid UTF-8, a truncated message).


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field(number: int, raw: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


MALFORMED = {
    "CreateCustomer, email with invalid UTF-8": (
        "CreateCustomer",
        _string_field(1, b"\xff\xfe@example.com") + _string_field(2, b"Name"),
    ),
    "ListOrders, email filter with invalid UTF-8": ("ListOrders", _string_field(4, b"\xc3\x28")),
    "GetOrder, truncated varint": ("GetOrder", b"\x08\x80"),
    "CreateOrder, truncated item": ("CreateOrder", b"\x08\x01\x12\x05\x0a\x01"),
    "GetSummary, length past the end": ("GetSummary", b"\x0a\x7fabc"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_request_that_is_not_valid_protobuf_is_invalid_argument(
    shared_server: OrdersServer, case: str
) -> None:
    method, payload = MALFORMED[case]
    call = shared_server.channel.unary_unary(f"/orders.v1.OrdersService/{method}")
    with pytest.raises(grpc.RpcError) as err:
        call(payload, timeout=10)
    code = err.value.code()
    assert code == Code.INVALID_ARGUMENT, f"{code.name}: {err.value.details()}"
