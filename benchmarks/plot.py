"""benchmarks.png: latency distributions at the highest load (left), throughput against load (right)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .results import MODES, Results

COLOURS = {
    "raw": "#4c72b0",
    "sidecar": "#dd8452",
    "stream": "#55a868",
    "aiohttp": "#8c8c8c",
    "grpc": "#c44e52",
}


def draw(results: Results, path: Path, info: dict[str, str]) -> None:
    # Imported here: matplotlib is slow to import and only the plot needs it; Agg needs no display.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.6), dpi=110)
    _latency(left, results)
    _throughput(right, results)
    fig.suptitle(
        f"trengo-sidecar vs raw httpx on the Trengo simulator - {info['cores (nproc)']} cores, "
        f"{info['CPU']}, Python {info['Python']}, {info['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _latency(ax: Any, results: Results) -> None:
    """One cumulative distribution per mode at the highest load."""
    top = results.top
    for mode, label in MODES.items():
        p = results.point(mode, top)
        if p is None or not p.latencies:
            continue
        ordered = sorted(x * 1000 for x in p.latencies)
        n = len(ordered)
        fractions = [(i + 1) / n for i in range(n)]
        ax.plot(ordered, fractions, label=f"{label} (p50 {p.p50:.1f} ms)", color=COLOURS[mode], lw=2)
    ax.set_xscale("log")
    ax.set_xlabel("latency per Track (ms, log scale)")
    ax.set_ylabel("fraction of calls at or below")
    ax.set_title(f"Latency distribution at {top} calls in flight")
    for quantile in (0.5, 0.99):
        ax.axhline(quantile, color="grey", lw=0.6, ls=":")
    ax.grid(True, which="both", alpha=0.3)
    _legend_below(ax)


def _throughput(ax: Any, results: Results) -> None:
    """Events per second against calls in flight, one line per mode measured at every load."""
    for mode, label in MODES.items():
        if mode == "grpc":  # measured at the ends only
            continue
        points = [p for lv in results.levels if (p := results.point(mode, lv)) is not None]
        if not points:
            continue
        rates = [p.rate for p in points]
        if mode == "aiohttp":  # an order of magnitude above the rest: named, not drawn
            label = f"{label}: {min(rates):,.0f}-{max(rates):,.0f}/s, off the scale"
            ax.plot([], [], ls="--", color=COLOURS[mode], label=label)
            continue
        ax.plot([p.in_flight for p in points], rates, marker="o", label=label, color=COLOURS[mode], lw=2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(results.levels)
    ax.set_xticklabels([str(lv) for lv in results.levels])
    drawn = [p.rate for p in results.points if p.mode not in ("aiohttp", "grpc")]
    ax.set_ylim(bottom=0, top=max(drawn, default=1) * 1.25)
    ax.set_xlabel("calls in flight")
    ax.set_ylabel("Track events per second")
    ax.set_title("Throughput against calls in flight")
    ax.grid(True, alpha=0.3)
    _legend_below(ax)


def _legend_below(ax: Any) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=9, frameon=False)
