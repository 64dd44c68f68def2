"""The one table: a row per workload, the issue's target next to the figure, PASS or FAIL."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Row", "Table", "fmt_mb", "fmt_ms", "fmt_ratio"]

HEADER = (
    "workload",
    "this project",
    "floor / baseline",
    "ratio",
    "SQL stmts",
    "p50 / p99",
    "server RSS",
    "target",
    "verdict",
)


def fmt_ms(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def fmt_mb(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value / 1e6:.0f} MB"


def fmt_ratio(value: float | None) -> str:
    if value is None or math.isnan(value) or math.isinf(value):
        return "n/a"
    return f"{value:.2f}x"


@dataclass
class Row:
    workload: str
    project: str = ""
    floor: str = ""
    ratio: str = ""
    statements: str = ""
    latency: str = ""
    rss: str = ""
    target: str = ""
    verdict: str = ""  # PASS, FAIL, n/a, or "" for a row with no target
    note: str = ""

    def cells(self) -> tuple[str, ...]:
        return (
            self.workload,
            self.project,
            self.floor,
            self.ratio,
            self.statements,
            self.latency,
            self.rss,
            self.target,
            self.verdict,
        )


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "PASS" if ok else "FAIL"


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def markdown(self) -> str:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
        notes: list[str] = []
        for row in self.rows:
            cells = list(row.cells())
            if row.note:
                notes.append(row.note)
                cells[0] = f"{cells[0]} [{len(notes)}]"
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        lines.append("")
        for n, note in enumerate(notes, 1):
            lines.append(f"[{n}] {note}")
        return "\n".join(lines)

    def verdicts(self) -> tuple[int, int, int]:
        """How many targets passed, failed, and could not be measured."""
        found = [r.verdict for r in self.rows]
        return found.count("PASS"), found.count("FAIL"), found.count("n/a")
