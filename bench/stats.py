"""Latency samples: cases measured in interleaved rounds, so that whatever else the machine does
(other test suites, autovacuum) lands on every case alike, and percentiles of the pooled rounds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Case", "percentile", "run_interleaved"]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Case:
    """One repeated call. `call` returns the SQL statements it ran (or None if unknown);
    `check`, when given, runs after the clock stops (checking the answer is not timed): an
    exception from either counts as an error and the sample is dropped."""

    name: str
    call: Callable[[], int | None]
    check: Callable[[], None] | None = None
    seconds: list[float] = field(default_factory=list)
    statements: set[int] = field(default_factory=set)
    errors: int = 0
    last_error: str = ""

    @property
    def p50_ms(self) -> float:
        return percentile(self.seconds, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.seconds, 99) * 1000

    @property
    def n(self) -> int:
        return len(self.seconds)

    def once(self) -> float | None:
        started = time.perf_counter()
        try:
            statements = self.call()
            elapsed = time.perf_counter() - started
            if self.check is not None:
                self.check()
        except Exception as exc:  # counted and shown; a failing case must not stop the run
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {(str(exc) or '?').splitlines()[0][:200]}"
            return None
        if statements is not None:
            self.statements.add(statements)
        return elapsed


def run_interleaved(
    cases: list[Case],
    seconds_per_case: float,
    rounds: int = 5,
    max_calls_per_case: int = 2000,
    warmup_calls: int = 5,
    warmup_seconds: float = 0.5,
) -> None:
    """Warms every case up (`warmup_calls`, at most `warmup_seconds` each), then runs
    `rounds` rounds; in each, every case in turn for its share of `seconds_per_case` and of
    `max_calls_per_case` (at least one call). Bounded in time and count."""
    for case in cases:
        deadline = time.perf_counter() + warmup_seconds
        for _ in range(warmup_calls):
            case.once()
            if time.perf_counter() > deadline:
                break
    share = seconds_per_case / rounds
    calls = max(1, max_calls_per_case // rounds)
    for r in range(rounds):
        order = cases if r % 2 == 0 else list(reversed(cases))
        for case in order:
            deadline = time.perf_counter() + share
            for _ in range(calls):
                elapsed = case.once()
                if elapsed is not None:
                    case.seconds.append(elapsed)
                if time.perf_counter() > deadline:
                    break
