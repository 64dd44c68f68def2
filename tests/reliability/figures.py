"""The figures a reliability run measures (cases tried, failures, recovery times), printed at
the end of the run and written as JSON where ORDERS_RELIABILITY_REPORT says.

ORDERS_RELIABILITY_LONG=1 (scripts/reliability) asks the tests for their long variants: more
examples, longer loads, more restarts. `scaled(short, long)` picks the figure to use.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["LONG", "RECORDED", "lines", "record", "scaled", "write_report"]

LONG = os.environ.get("ORDERS_RELIABILITY_LONG", "").strip().lower() in ("1", "true", "yes")
RECORDED: dict[str, dict[str, Any]] = {}


def scaled(short: Any, long: Any) -> Any:
    return long if LONG else short


def record(test: str, **values: Any) -> None:
    """Adds figures under a test's name (later values of the same key replace earlier ones)."""
    RECORDED.setdefault(test, {}).update(values)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def lines() -> list[str]:
    out = []
    for test, values in RECORDED.items():
        shown = ", ".join(f"{k}={_show(v)}" for k, v in values.items())
        out.append(f"{test}: {shown}")
    return out


def write_report() -> None:
    target = os.environ.get("ORDERS_RELIABILITY_REPORT")
    if not target:
        return
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "long": LONG,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs,"
        f" Python {platform.python_version()}",
        "figures": RECORDED,
    }
    Path(target).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
