"""The rows of the comparison with the Django service (bench/django.py): its workloads, each
beside Django's figure and the architecture's floor (bench/bare.py), or n/a when the phase
did not run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from .report import Row, Table, fmt_mb, fmt_ms, fmt_ratio, verdict
from .stack import WrkResult
from .stats import Case

__all__ = ["DJANGO_BROAD", "LATENCY", "NOBODY", "OUR_BROAD", "WRK", "Measured", "add_rows"]

NOBODY = "nobody-matches-this"
OUR_BROAD, DJANGO_BROAD = "seed-1", "USER1"  # the same 1,111 of 2,000 customers in each


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    label: str  # on the chart
    ours: str  # the path, {id} for a random existing customer
    django: str
    target: float  # ours faster by at least this (Django p50 / ours, or our req/s / Django's)
    orders: int | None  # orders each answer must hold (None: not a list)


PAID_OURS = "/api/orders/?status=paid&page_size=50"
PAID_DJANGO = "/api/orders/?status=paid&limit=50"
LATENCY = (
    Workload(
        "detail", "customer detail", "customer\ndetail",
        "/api/customers/{id}/", "/api/customers/{id}/", 2.5, None,
    ),
    Workload(
        "summary", "summary(50)", "summary\n(50)",
        "/api/orders/summary/?limit=50", "/api/orders/summary/?limit=50", 8, None,
    ),
    Workload("paid", "paid list of 50", "paid list\nof 50", PAID_OURS, PAID_DJANGO, 5, 50),
    Workload(
        "broad", "paid list of 50 + a broad email substring", "paid list of 50\n+ broad email",
        f"{PAID_OURS}&email={OUR_BROAD}", f"{PAID_DJANGO}&email={DJANGO_BROAD}", 5, 50,
    ),
    Workload(
        "nobody", "paid list + an email matching nobody", "paid list +\nemail matching\nnobody",
        f"{PAID_OURS}&email={NOBODY}", f"{PAID_DJANGO}&email={NOBODY}", 3, 0,
    ),
)  # fmt: skip
WRK = ((LATENCY[1], 8.0), (LATENCY[2], 5.0))  # (workload, target)


@dataclass
class Measured:
    """What the phase measured: by workload, the latency cases (ours, Django, the floor) and
    the wrk runs (the same three); Django's X-DB-Queries by case; how many customers the broad
    email matches on each side."""

    cases: dict[str, tuple[Case, Case, Case]]
    runs: dict[str, tuple[list[WrkResult], list[WrkResult], list[WrkResult]]]
    queries: dict[str, set[str]]
    our_broad: str
    django_broad: str


def add_rows(table: Table, figures: dict[str, Any], measured: Measured | None, why: str) -> None:
    """The rows of the phase: measured, or n/a with `why` in the first one's note. The
    figures the chart draws go into `figures`."""
    rss = figures.get("server_rss")
    said = [why]  # said once, on the first row, when nothing was measured
    for w in LATENCY:
        title = f"REST vs Django: {w.title} p50, a new connection a request"
        target = f">= {w.target:g}x faster (Django p50 / ours)"
        if measured is None:
            table.add(_not_measured(title, target, said.pop() if said else ""))
            continue
        cases = measured.cases
        ours, django, floor = cases[w.key]
        ratio = django.p50_ms / ours.p50_ms if ours.n and django.n else float("nan")
        errors = "".join(
            f"; {c.name}: {c.errors} errors ({c.last_error})" for c in (ours, django) if c.errors
        )
        queries = ",".join(sorted(measured.queries.get(django.name, ())))
        checked = (
            "the customer asked for"
            if "{id}" in w.ours
            else "50 rows"
            if w.orders is None
            else "no order"
            if w.orders == 0
            else f"{w.orders} paid orders of 5 items"
            + (", every customer's email matching" if "email=" in w.ours else "")
        )
        if w.key == "broad" and measured.our_broad != measured.django_broad:
            errors += "; NOT the same share of customers: the comparison does not hold"
        table.add(
            Row(
                workload=title,
                project=fmt_ms(ours.p50_ms),
                floor=f"Django: {fmt_ms(django.p50_ms)}",
                ratio=fmt_ratio(ratio),
                latency=f"{fmt_ms(ours.p50_ms)} / {fmt_ms(ours.p99_ms)}",
                rss=fmt_mb(rss),
                target=target,
                verdict=verdict(ratio >= w.target and not errors) if ratio == ratio else "n/a",
                note=f"ours {w.ours}, Django {w.django}; Django p50 / p99"
                f" {fmt_ms(django.p50_ms)} / {fmt_ms(django.p99_ms)}; {ours.n} and {django.n}"
                f" calls, each answer checked (200, {checked}); Django's SQL statements a"
                f" request: {queries or '?'}"
                + (
                    f"; customers matching: ours {measured.our_broad},"
                    f" Django {measured.django_broad}"
                    if w.key == "broad"
                    else ""
                )
                + errors,
            )
        )
        reach = django.p50_ms / floor.p50_ms if floor.n and django.n else float("nan")
        table.add(
            Row(
                workload=f"REST floor: {w.title}, a grpcio server sending a ready answer behind"
                " this Envoy, a new connection a request",
                project=fmt_ms(floor.p50_ms),
                floor=f"Django: {fmt_ms(django.p50_ms)}",
                ratio=fmt_ratio(reach),
                latency=f"{fmt_ms(floor.p50_ms)} / {fmt_ms(floor.p99_ms)}",
                target=f"{w.target:g}x Django needs <= {fmt_ms(django.p50_ms / w.target)}",
                note=f"the answers of our server, captured once, sent by a grpcio server with"
                f" no interceptor and no database (bench/bare.py), through the same Envoy"
                f" configuration: Django p50 / this p50 ({reach:.2f}x) is the largest ratio"
                f" any Python gRPC server behind Envoy can reach here; ours is"
                f" {ours.p50_ms - floor.p50_ms:+.2f} ms above it; {floor.n} calls, each"
                " answer checked"
                + (f"; {floor.errors} errors ({floor.last_error})" if floor.errors else ""),
            )
        )
    for w, goal in WRK:
        title = f"REST vs Django: {w.title}, wrk -t2 -c16"
        target = f">= {goal:g}x Django's req/s"
        runs = measured.runs.get(w.key) if measured is not None else None
        if not runs:
            if measured is None:
                note = said.pop() if said else ""
            else:
                note = "wrk is not installed (Debian package wrk) and was not installed"
            table.add(_not_measured(title, target, note))
            continue
        ours_runs, django_runs, floor_runs = runs
        ours_rps = sum(r.requests_per_second for r in ours_runs) / len(ours_runs)
        django_rps = sum(r.requests_per_second for r in django_runs) / len(django_runs)
        failed = sum(r.errors for r in ours_runs), sum(r.errors for r in django_runs)
        ratio = ours_rps / django_rps if django_rps else float("nan")
        figures[f"wrk {w.key}"] = (ours_rps, django_rps)
        table.add(
            Row(
                workload=title,
                project=f"{ours_rps:,.0f} req/s",
                floor=f"Django: {django_rps:,.0f} req/s",
                ratio=fmt_ratio(ratio),
                latency=f"{fmt_ms(statistics.median(r.p50_ms for r in ours_runs))} /"
                f" {fmt_ms(max(r.p99_ms for r in ours_runs))}",
                rss=fmt_mb(rss),
                target=target,
                verdict=verdict(ratio >= goal and failed == (0, 0)),
                note=f"{len(ours_runs)} runs of {ours_runs[0].duration:.0f} s each, alternated;"
                f" ours {w.ours} through Envoy (wrk keeps its connections), Django {w.django}"
                " (gunicorn closes each); Django p50 / p99"
                f" {fmt_ms(statistics.median(r.p50_ms for r in django_runs))} /"
                f" {fmt_ms(max(r.p99_ms for r in django_runs))}; errors: ours {failed[0]},"
                f" Django {failed[1]}",
            )
        )
        floor_rps = sum(r.requests_per_second for r in floor_runs) / len(floor_runs)
        reach = floor_rps / django_rps if django_rps else float("nan")
        table.add(
            Row(
                workload=f"REST floor: {w.title}, wrk -t2 -c16, a grpcio server sending a ready"
                " answer behind this Envoy",
                project=f"{floor_rps:,.0f} req/s",
                floor=f"Django: {django_rps:,.0f} req/s",
                ratio=fmt_ratio(reach),
                latency=f"{fmt_ms(statistics.median(r.p50_ms for r in floor_runs))} /"
                f" {fmt_ms(max(r.p99_ms for r in floor_runs))}",
                target=f"{goal:g}x Django needs >= {goal * django_rps:,.0f} req/s",
                note=f"alternated with the two above; floor / Django ({reach:.2f}x) is the"
                " largest ratio any Python gRPC server behind Envoy can reach here; ours is"
                f" {ours_rps / floor_rps:.0%} of it; errors:"
                f" {sum(r.errors for r in floor_runs)}",
            )
        )
    if measured is not None:
        figures["latency"] = {
            w.key: (measured.cases[w.key][0].p50_ms, measured.cases[w.key][1].p50_ms)
            for w in LATENCY
        }


def _not_measured(title: str, target: str, note: str) -> Row:
    return Row(
        workload=title,
        project="n/a",
        floor="Django: n/a",
        ratio="n/a",
        target=target,
        verdict="n/a",
        note=note,
    )
