"""The chart of the Django comparison: ours beside the Django peer for each workload, p50 in
one panel and requests/s in the other, as an SVG (matplotlib, Agg backend; a dev dependency,
imported only when a chart is asked for)."""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["write_chart"]

OURS = "#1f77b4"
DJANGO = "#9a9a9a"


def write_chart(
    path: Path,
    latencies: list[tuple[str, float, float]],
    throughput: list[tuple[str, float, float]],
    title: str,
) -> None:
    """`latencies`: (workload, our p50 ms, Django's p50 ms); `throughput`: (workload, our
    req/s, Django's req/s). NaN figures are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    figure, (left, right) = plt.subplots(
        1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [max(len(latencies), 1), 2.4]}
    )
    for axis, rows, unit, lower_is_better in (
        (left, latencies, "p50 latency, ms (lower is better)", True),
        (right, throughput, "requests/s (higher is better)", False),
    ):
        width = 0.38
        labels = []
        for n, (label, ours, django) in enumerate(rows):
            for offset, value, colour in ((-width / 2, ours, OURS), (width / 2, django, DJANGO)):
                if math.isnan(value):
                    continue
                axis.bar(n + offset, value, width, color=colour)
                axis.annotate(
                    f"{value:,.0f}" if value >= 10 else f"{value:.1f}",
                    (n + offset, value),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
            ratio = django / ours if lower_is_better else ours / django
            labels.append(label + ("" if math.isnan(ratio) else f"\nours {ratio:.1f}x faster"))
        axis.set_xticks(range(len(rows)), labels, fontsize=8)
        axis.set_title(unit, fontsize=10)
        axis.margins(y=0.12)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    left.legend(
        handles=[
            Patch(color=OURS, label="this project (Envoy + gRPC server)"),
            Patch(color=DJANGO, label="Django + DRF (gunicorn)"),
        ],
        fontsize=8,
        loc="upper left",
    )
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)
