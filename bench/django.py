"""The service beside the Django service it replaces (`scripts/bench --django PATH`, PATH the
Django peer: bench/peer.py). Without it every row of this phase says n/a and nothing runs.

Both get the same data, 2,000 customers x 10 orders x 5 items: ours in a throwaway database
of its own, seeded through the Seed RPC, then VACUUM ANALYZE, served by our server behind the
project's Envoy as scripts/run does; Django's through its seed.py. Then, through REST:
- latencies with a new TCP connection for each request, for both (gunicorn's sync workers
  close every connection), from one light client (bench/rest.py), the cases of both services
  interleaved in rounds (bench/stats.py), every answer checked after the clock stops;
- `wrk -t2 -c16` on the summary and the paid list, both services alternated;
- beside both, the floor of this architecture: the same requests through the same Envoy
  configuration in front of bench/bare.py, a grpcio server that sends our server's answers,
  captured once, and does nothing else. Django's figure over the floor's is the largest ratio
  any Python gRPC server behind Envoy could reach here.
django-down.sh runs at the end whatever happens.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from . import stack
from .bare import BareServer, capture
from .django_rows import DJANGO_BROAD, LATENCY, OUR_BROAD, WRK, Measured, add_rows
from .peer import DjangoPeer
from .report import Table
from .rest import Fresh
from .stack import BenchDatabases, Gateway, Server, libpq, say
from .stats import Case, run_interleaved

__all__ = ["DjangoPhase"]

SEED = (2000, 10, 5)


@dataclass(frozen=True)
class Budget:
    seconds_per_case: float  # over all rounds
    rounds: int
    wrk_seconds: int
    wrk_rounds: int


BUDGETS = {
    "tiny": Budget(0.6, 2, 1, 1),
    "small": Budget(2.0, 3, 3, 1),
    "medium": Budget(4.0, 4, 5, 2),
    "large": Budget(4.0, 4, 5, 2),
}


def _orders_of(body: Any) -> list[Any]:
    """The orders of a list answer: ours {"orders": [...]}, Django's a JSON array."""
    return list(body if isinstance(body, list) else body.get("orders", []))


class DjangoPhase:
    def __init__(
        self,
        folder: Path | None,
        size_name: str,
        dbs: BenchDatabases,
        log_dir: Path,
        install: bool,
        chart: Path | None,
    ) -> None:
        self.peer = DjangoPeer(folder, log_dir / "django-peer.log") if folder else None
        self.budget = BUDGETS[size_name]
        self.dbs = dbs
        self.log_dir = log_dir
        self.install = install
        self.chart = chart
        self.server: Server | None = None
        self.gateway: Gateway | None = None
        self.bare: BareServer | None = None
        self.bare_gateway: Gateway | None = None
        self.url: str | None = None
        self.figures: dict[str, Any] = {}
        self.queries: dict[str, set[str]] = {}  # Django's X-DB-Queries, by case

    def run(self, table: Table) -> None:
        if self.peer is None:
            add_rows(table, self.figures, None, "no --django PATH given")
            return
        try:
            self._ours()
            self._django()
            cases = self._latencies()
            runs = self._wrk()
            assert self.server is not None
            self.figures["server_rss"] = self.server.rss()
        except BaseException as exc:
            add_rows(table, self.figures, None, f"the phase failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            self.close()
        measured = Measured(cases, runs, self.queries, self.our_broad, self.django_broad)
        add_rows(table, self.figures, measured, "")
        if self.chart is not None:
            self._chart()

    def close(self) -> None:
        if self.peer is not None:
            self.peer.down()
        for gateway in (self.gateway, self.bare_gateway):
            if gateway is not None:
                gateway.stop()
        self.gateway = self.bare_gateway = None
        if self.bare is not None:
            self.bare.stop()
            self.bare = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.url is not None:
            self.dbs.drop(self.url)
            self.url = None

    def _ours(self) -> None:
        c, o, i = SEED
        self.url = self.dbs.create("django")
        stack.migrate(self.url, self.log_dir / "migrate-django.log")
        self.server = Server(self.url, "server-vs-django", self.log_dir / "server-vs-django.log")
        self.server.start()
        self.gateway = Gateway(self.server, self.log_dir / "envoy-vs-django.log")
        self.gateway.start()
        say(f"vs Django: seeding ours {c:,}x{o}x{i} through Seed")
        started = time.perf_counter()
        stack.seed_through_rpc(self.server.address, c, o, i)
        with psycopg.connect(libpq(self.url), autocommit=True, connect_timeout=5) as conn:
            conn.execute("VACUUM (ANALYZE)")
            self.our_ids = [int(r[0]) for r in conn.execute("SELECT id FROM customers")]
            row = conn.execute(
                "SELECT count(*) FROM customers WHERE email_key LIKE %s", (f"%{OUR_BROAD}%",)
            ).fetchone()
        self.figures["our_seed_seconds"] = round(time.perf_counter() - started, 1)
        self.our_broad = f"{row[0] if row else '?'} of {len(self.our_ids)}"
        folder = self.log_dir / "bare"
        capture(self.server.address, folder, self.our_ids[0], OUR_BROAD)
        with (self.log_dir / "bare.log").open("ab") as log:
            self.bare = BareServer(folder, log)
        self.bare_gateway = Gateway(None, self.log_dir / "envoy-bare.log", (self.bare.socket,))
        self.bare_gateway.start()

    def _django(self) -> None:
        assert self.peer is not None
        c, o, i = SEED
        say("vs Django: starting the Django peer (pg-up.sh, django-up.sh)")
        self.peer.up()
        say(f"vs Django: seeding the Django peer {c:,}x{o}x{i} (its seed.py, ~40 s)")
        started = time.perf_counter()
        self.peer.seed(c, o, i)
        self.figures["django_seed_seconds"] = round(time.perf_counter() - started, 1)
        try:
            self.django_ids, self.django_broad = self.peer.customers(DJANGO_BROAD)
        except psycopg.Error as exc:
            self.django_ids, self.django_broad = list(range(1, c + 1)), f"? ({exc})"

    def _case(
        self, name: str, port: int, path: str, ids: list[int], orders: int | None, rng: Any
    ) -> Case:
        client = Fresh("127.0.0.1", port)
        wanted = [0]
        queries = self.queries.setdefault(name, set())
        needle = path.partition("email=")[2].lower()

        def call() -> int | None:
            wanted[0] = rng.choice(ids)
            client.get(path.format(id=wanted[0]))
            return None

        def check() -> None:
            assert client.last is not None
            body = client.last.json()
            if "{id}" in path:
                assert str(body.get("id")) == str(wanted[0]), body
            elif orders is None:
                rows = body if isinstance(body, list) else body.get("customers", [])
                assert len(rows) == 50, f"{len(rows)} summary rows, not 50"
            else:
                found = _orders_of(body)
                assert len(found) == orders, f"{len(found)} orders, not {orders}"
                for order in found:
                    assert str(order.get("status")).lower() == "paid", order.get("status")
                    assert len(order.get("items", ())) == 5, f"{len(order['items'])} items"
                    assert needle in order["customer"]["email"].lower(), order["customer"]
            if "x-db-queries" in client.last.headers:
                queries.add(client.last.headers["x-db-queries"])

        return Case(name, call, check=check)

    def _latencies(self) -> dict[str, tuple[Case, Case, Case]]:
        """(ours, Django's, the floor's) case of each workload."""
        assert self.gateway and self.bare_gateway and self.peer
        b = self.budget
        rng = random.Random(11)
        cases: dict[str, tuple[Case, Case, Case]] = {}
        for w in LATENCY:
            ours = self._case(
                f"ours {w.key}", self.gateway.http_port, w.ours, self.our_ids, w.orders, rng
            )
            django = self._case(
                f"django {w.key}", self.peer.port, w.django, self.django_ids, w.orders, rng
            )
            floor = self._case(
                f"floor {w.key}", self.bare_gateway.http_port, w.ours, self.our_ids, w.orders, rng
            )
            cases[w.key] = (ours, django, floor)
        for trio in cases.values():  # one answer of each, checked, before measuring
            for case in trio:
                if case.once() is None:
                    raise RuntimeError(f"{case.name}: {case.last_error}")
        say(
            f"vs Django: REST latencies, {len(cases) * 3} cases interleaved,"
            f" {b.seconds_per_case:.0f} s each"
        )
        run_interleaved(
            [c for trio in cases.values() for c in trio],
            seconds_per_case=b.seconds_per_case,
            rounds=b.rounds,
            max_calls_per_case=3000,
        )
        return cases

    def _wrk(self) -> dict[str, tuple[list[Any], list[Any], list[Any]]]:
        """(ours, Django's, the floor's) wrk runs of each workload, alternated."""
        assert self.gateway and self.bare_gateway and self.peer
        wrk = stack.ensure_wrk(self.install)
        if not wrk:
            return {}
        b = self.budget
        targets = {
            w.key: (
                f"http://127.0.0.1:{self.gateway.http_port}{w.ours}",
                f"http://{self.peer.host}:{self.peer.port}{w.django}",
                f"http://127.0.0.1:{self.bare_gateway.http_port}{w.ours}",
            )
            for w, _ in WRK
        }
        say(
            f"vs Django: wrk -t2 -c16, {len(targets) * 3} x {b.wrk_rounds} runs"
            f" of {b.wrk_seconds} s"
        )
        runs: dict[str, tuple[list[Any], list[Any], list[Any]]] = {k: ([], [], []) for k in targets}
        for urls in targets.values():
            for url in urls:
                stack.run_wrk(wrk, url, 2, 16, 1)  # warm-up
        order = [(k, side) for k in targets for side in (0, 1, 2)]
        for r in range(b.wrk_rounds):
            for key, side in order if r % 2 == 0 else list(reversed(order)):
                runs[key][side].append(stack.run_wrk(wrk, targets[key][side], 2, 16, b.wrk_seconds))
        return runs

    def _chart(self) -> None:
        assert self.chart is not None
        from .chart import write_chart

        try:
            write_chart(
                self.chart,
                [(w.label, *self.figures["latency"][w.key]) for w in LATENCY],
                [
                    (f"{w.label}\n(wrk -t2 -c16)", *self.figures[f"wrk {w.key}"])
                    for w, _ in WRK
                    if f"wrk {w.key}" in self.figures
                ],
                f"This project vs the Django service it replaces, {SEED[0]:,} customers x"
                f" {SEED[1]} orders x {SEED[2]} items, REST, 127.0.0.1",
            )
            say(f"vs Django: chart written to {self.chart}")
        except ImportError as exc:
            say(f"vs Django: no chart ({exc}; matplotlib is in the dev extra)")
