"""The live view of a running seed: a rich progress bar fed by the Seed stream, rows a second
and an ETA from the server's own counts and clock, then a summary table."""

from __future__ import annotations

from collections.abc import Iterable

from orders.v1 import orders_pb2 as pb
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

__all__ = ["SeedProgress", "rows_done", "rows_total", "seed_summary_table"]

Phase = pb.SeedResponse.Phase

_PHASE_LABELS = {
    Phase.PHASE_UNSPECIFIED: "waiting",
    Phase.PHASE_STARTED: "starting",
    Phase.PHASE_CUSTOMERS: "customers",
    Phase.PHASE_ORDERS: "orders",
    Phase.PHASE_ITEMS: "items",
    Phase.PHASE_COMMITTING: "committing",
    Phase.PHASE_DONE: "done",
    Phase.PHASE_FAILED: "failed",
}


def rows_done(message: pb.SeedResponse) -> int:
    return message.customers_done + message.orders_done + message.items_done


def rows_total(message: pb.SeedResponse) -> int:
    return message.customers_total + message.orders_total + message.items_total


def _seconds(message: pb.SeedResponse) -> float:
    return message.elapsed.ToNanoseconds() / 1e9


def _rate(message: pb.SeedResponse) -> float | None:
    seconds = _seconds(message)
    return rows_done(message) / seconds if seconds > 0 and rows_done(message) else None


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class _RowsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = int(task.total or 0)
        return Text(f"{int(task.completed):,}/{total:,}", style="progress.download")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate: float | None = task.fields.get("rate")
        shown = f"{rate:,.0f}" if rate is not None else "?"
        return Text(f"{shown} rows/s", style="progress.data.speed")


class _EtaColumn(ProgressColumn):
    """Remaining rows at the average rate so far; the server's clock, not the terminal's."""

    def render(self, task: Task) -> Text:
        rate: float | None = task.fields.get("rate")
        if task.finished:
            return Text(f"in {_clock(task.fields.get('seconds', 0.0))}", style="progress.elapsed")
        if not rate:
            return Text("ETA -:--:--", style="progress.remaining")
        remaining = max(0.0, (task.total or 0) - task.completed) / rate
        return Text(f"ETA {_clock(remaining)}", style="progress.remaining")


class SeedProgress:
    """`with SeedProgress(console) as view: for m in stream: view.update(m)`."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(bar_width=16),
            TaskProgressColumn(),
            _RowsColumn(),
            _RateColumn(),
            _EtaColumn(),
            console=console,
            refresh_per_second=8,
        )
        self._task: TaskID | None = None
        self.last: pb.SeedResponse | None = None

    def __enter__(self) -> SeedProgress:
        self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._progress.stop()

    def update(self, message: pb.SeedResponse) -> None:
        self.last = message
        label = _PHASE_LABELS.get(message.phase, "?")
        total, done = rows_total(message), rows_done(message)
        rate, seconds = _rate(message), _seconds(message)
        if self._task is None:
            self._task = self._progress.add_task(
                label, total=total, completed=done, rate=rate, seconds=seconds
            )
        else:
            self._progress.update(
                self._task,
                description=label,
                total=total,
                completed=done,
                rate=rate,
                seconds=seconds,
            )
        self._progress.refresh()


def seed_summary_table(last: pb.SeedResponse) -> Table:
    table = Table(title="Seed done", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("rows")
    table.add_column("written", justify="right")
    rows: Iterable[tuple[str, int]] = (
        ("customers", last.customers_done),
        ("orders", last.orders_done),
        ("items", last.items_done),
    )
    for name, count in rows:
        table.add_row(name, f"{count:,}")
    table.add_section()
    table.add_row("total", f"{rows_done(last):,}", style="bold")
    table.add_row("elapsed", f"{_seconds(last):.2f} s")
    rate = _rate(last)
    table.add_row("rows/s", f"{rate:,.0f}" if rate is not None else "-")
    return table
