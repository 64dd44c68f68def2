"""What the service adds around its work, as cases of the latency phase (interleaved with every
other case there) and their rows:

- GetCustomer against the server's own grpc.health.v1.Health/Check: the same server, the same
  channel; what one primary-key read costs above an RPC that does nothing;
- ListOrders(status=PAID, page_size=50), 50 orders of 5 items, against the floor of any Python
  gRPC server for that page: the same two statements on a plain psycopg connection, the
  ListOrdersResponse built from the rows and serialized (bench/floor.py ListOrdersFloor);
- the Envoy hop: GetCustomer through the project's Envoy as native gRPC, and as REST over one
  kept-alive HTTP/1.1 connection, against the same call direct.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc

from .floor import ListOrdersFloor
from .report import Row, Table, fmt_mb, fmt_ms, fmt_ratio, verdict
from .rest import KeptAlive
from .stack import libpq
from .stats import Case

__all__ = ["Overhead"]

PAID = pb.Order.Status.Value("PAID")
PAGE = 50
ITEMS = 5
STATEMENTS = "orders-sql-statements"


def _statements(call: Any) -> int | None:
    for key, value in call.trailing_metadata() or ():
        if key == STATEMENTS:
            return int(value)
    return None


def _lat(case: Case) -> str:
    return f"{fmt_ms(case.p50_ms)} / {fmt_ms(case.p99_ms)}" if case.n else "n/a"


def _errors(*cases: Case) -> str:
    return "".join(f"; {c.name}: {c.errors} errors ({c.last_error})" for c in cases if c.errors)


class Overhead:
    """The cases above on one server (`address`, its database `url`) and on Envoy in front
    of it (`envoy_port`); `pages` are (label, url, address) of the databases where the
    ListOrders case may run, the first whose newest 50 PAID orders hold 5 items each."""

    def __init__(
        self,
        address: str,
        url: str,
        envoy_port: int,
        pages: list[tuple[str, str, str]],
        seed: int = 7,
    ) -> None:
        self.rng = random.Random(seed)
        options = [("grpc.enable_http_proxy", 0)]
        self.channels = [
            grpc.insecure_channel(address, options=options),
            grpc.insecure_channel(f"127.0.0.1:{envoy_port}", options=options),
        ]
        direct, proxied = self.channels
        self.stub = pb_grpc.OrdersServiceStub(direct)
        self.health = health_pb2_grpc.HealthStub(direct)
        self.proxied = pb_grpc.OrdersServiceStub(proxied)
        self.rest = KeptAlive("127.0.0.1", envoy_port)
        with psycopg.connect(libpq(url), autocommit=True, connect_timeout=5) as conn:
            self.customer_ids = [
                int(r[0])
                for r in conn.execute("SELECT id FROM customers ORDER BY random() LIMIT 500")
            ]
        self.floor: ListOrdersFloor | None = None
        self.page_where = self.page_address = self.page_note = ""
        self.page_same = False
        self._pick_page(pages)
        self.cases: dict[str, Case] = {}

    def _pick_page(self, pages: list[tuple[str, str, str]]) -> None:
        """The first database whose page is 50 PAID orders of 5 items each; the floor's page
        compared with the service's (the same orders, items and customers)."""
        seen = []
        for label, url, address in pages:
            with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as ch:
                reply = pb_grpc.OrdersServiceStub(ch).ListOrders(
                    pb.ListOrdersRequest(status=PAID, page_size=PAGE), timeout=30
                )
            shape = [len(o.items) for o in reply.orders]
            seen.append(f"{label}: {len(shape)} orders, items {sorted(set(shape))}")
            if len(shape) != PAGE or set(shape) != {ITEMS}:
                continue
            floor = ListOrdersFloor(url)
            mine = pb.ListOrdersResponse.FromString(floor.page("PAID", PAGE))
            same = list(mine.orders) == list(reply.orders) and bool(mine.next_page_token) == bool(
                reply.next_page_token
            )
            self.floor, self.page_where, self.page_address = floor, label, address
            self.page_note = (
                f"measured on the {label} database: its newest {PAGE} PAID orders hold"
                f" {ITEMS} items each; the floor's page "
                + (
                    "is the service's, message for message"
                    if same
                    else "DIFFERS from the service's"
                )
            )
            self.page_same = same
            return
        self.page_note = "no database has 50 PAID orders of 5 items first: " + "; ".join(seen)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.rest.close()
        if self.floor is not None:
            self.floor.close()

    # ----------------------------------------------------------------------------------------
    def build(self) -> dict[str, Case]:
        ids = self.customer_ids
        pick = self.rng.choice

        def grpc_case(name: str, method: Any, request: Callable[[], Any], orders: int = -1) -> Case:
            def call() -> int | None:
                reply, c = method.with_call(request(), timeout=30)
                if orders >= 0 and len(reply.orders) != orders:  # a cheap shape check
                    raise AssertionError(f"{len(reply.orders)} orders, not {orders}")
                return _statements(c)

            return Case(name, call)

        health_stub: Any = self.health

        def health() -> int | None:
            health_stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            return None

        wanted = [0]

        def rest() -> int | None:
            wanted[0] = pick(ids)
            self.rest.get(f"/api/customers/{wanted[0]}")
            return None

        def floor_page() -> int | None:
            assert self.floor is not None
            self.floor.page("PAID", PAGE)
            return 2

        def rest_check() -> None:
            assert self.rest.last is not None
            body = self.rest.last.json()
            assert str(body.get("id")) == str(wanted[0]), body

        cases = self.cases
        cases["getcustomer"] = grpc_case(
            "GetCustomer direct", self.stub.GetCustomer, lambda: pb.GetCustomerRequest(id=pick(ids))
        )
        cases["health"] = Case("Health/Check", health)
        cases["getcustomer envoy grpc"] = grpc_case(
            "GetCustomer through Envoy (gRPC)",
            self.proxied.GetCustomer,
            lambda: pb.GetCustomerRequest(id=pick(ids)),
        )
        cases["getcustomer envoy rest"] = Case(
            "GetCustomer through Envoy (REST)", rest, check=rest_check
        )
        if self.floor is not None:
            with_page = grpc.insecure_channel(
                self.page_address, options=[("grpc.enable_http_proxy", 0)]
            )
            self.channels.append(with_page)
            cases["paid page"] = grpc_case(
                "ListOrders PAID 50",
                pb_grpc.OrdersServiceStub(with_page).ListOrders,
                lambda: pb.ListOrdersRequest(status=PAID, page_size=PAGE),
                orders=PAGE,
            )
            cases["paid page floor"] = Case("floor", floor_page)
        return cases

    # ----------------------------------------------------------------------------------------
    def rows(self, table: Table, at: str, rss: int | None) -> None:
        c = self.cases
        get, health = c["getcustomer"], c["health"]
        ratio = get.p50_ms / health.p50_ms if get.n and health.n else float("nan")
        table.add(
            Row(
                f"GetCustomer vs Health/Check p50 {at}",
                fmt_ms(get.p50_ms),
                f"Health/Check: {fmt_ms(health.p50_ms)}",
                fmt_ratio(ratio),
                _stmts(get.statements),
                _lat(get),
                fmt_mb(rss),
                f"<= 2x Health/Check: {fmt_ratio(ratio)}",
                verdict(ratio <= 2 and not (get.errors or health.errors))
                if ratio == ratio
                else "n/a",
                note="the same server and channel, interleaved; random existing customers;"
                f" Health/Check p99 {fmt_ms(health.p99_ms)}" + _errors(get, health),
            )
        )
        page, floor = c.get("paid page"), c.get("paid page floor")
        title = f"ListOrders status=PAID page_size={PAGE} ({PAGE} orders x {ITEMS} items) p50"
        if page is not None and floor is not None and page.n and floor.n:
            ratio = page.p50_ms / floor.p50_ms
            ok = ratio <= 1.5 and self.page_same and not (page.errors or floor.errors)
            table.add(
                Row(
                    f"{title} @{self.page_where}",
                    fmt_ms(page.p50_ms),
                    f"psycopg fetch + build + serialize {fmt_ms(floor.p50_ms)}",
                    fmt_ratio(ratio),
                    _stmts(page.statements),
                    _lat(page),
                    "",
                    f"<= 1.5x the floor: {fmt_ratio(ratio)}",
                    verdict(ok),
                    note=f"{self.page_note}; floor p99 {fmt_ms(floor.p99_ms)}: the service's two"
                    " statements on a plain psycopg connection (prepared, autocommit), the"
                    " ListOrdersResponse built from the rows and serialized" + _errors(page, floor),
                )
            )
        else:
            table.add(
                Row(
                    title,
                    "n/a",
                    target="<= 1.5x the floor",
                    verdict="FAIL",
                    note=self.page_note + _errors(*(x for x in (page, floor) if x)),
                )
            )
        for key, how, allowed in (
            ("getcustomer envoy grpc", "native gRPC", 0.4),
            ("getcustomer envoy rest", "REST, one kept-alive HTTP/1.1 connection", 0.8),
        ):
            hop = c[key]
            extra = hop.p50_ms - get.p50_ms if hop.n and get.n else float("nan")
            measured = extra == extra
            table.add(
                Row(
                    f"GetCustomer through Envoy ({how}) p50 {at}",
                    fmt_ms(hop.p50_ms),
                    f"direct: {fmt_ms(get.p50_ms)}",
                    f"{extra:+.2f} ms" if measured else "n/a",
                    "",
                    _lat(hop),
                    "",
                    f"<= direct + {allowed} ms",
                    verdict(extra <= allowed and not (hop.errors or get.errors))
                    if measured
                    else "n/a",
                    note="the same server behind both, interleaved with the direct calls"
                    + (f"; {self.rest.reconnects} reconnects" if "rest" in key else "")
                    + _errors(hop),
                )
            )


def _stmts(values: set[int]) -> str:
    known = sorted(values)
    if not known:
        return "?"
    return str(known[0]) if len(known) == 1 else f"{known[0]}-{known[-1]}"
