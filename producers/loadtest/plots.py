"""The load test's pictures: one run's latency over time, a sweep's latency against load.

matplotlib is the ``plots`` extra: it is imported only when a picture is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.plots import pyplot
from producers.loadtest.report import format_number

if TYPE_CHECKING:
    from producers.loadtest.run import RunData

# A plot with more points than this is unreadable and slow; latency over time is
# subsampled evenly (percentile lines use every event).
_MAX_SCATTER_POINTS = 50_000


def _plain_log_axis(axis: Any) -> None:
    """Log scale labelled 20, 50, 100 rather than 2x10^1: latencies are read, not admired."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_run(data: RunData, path: str | Path) -> Path:
    """Latency over the run (every event, with per-second p50/p99) and its histogram."""
    plt = pyplot()
    path = Path(path)
    mask = ~np.isnan(data.recv_at)
    t0 = float(np.nanmin(data.sent_at)) if len(data.sent_at) else 0.0
    when = data.sent_at[mask] - t0
    due = data.sent_at if data.intended_at is None else data.intended_at
    latency = (data.recv_at[mask] - due[mask]) * 1000.0  # from the intended send time
    report = data.report
    fig, (ax_time, ax_hist) = plt.subplots(
        1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]}
    )
    if len(latency):
        step = max(1, len(latency) // _MAX_SCATTER_POINTS)
        ax_time.scatter(
            when[::step],
            latency[::step],
            s=2,
            alpha=0.25,
            color="tab:blue",
            label="event",
            rasterized=True,
        )
        # One-second buckets, or finer for short (--max) runs, so the lines have shape.
        bucket_s = min(1.0, max(float(when.max()) / 20, 0.01))
        starts, p50, p99 = bucket_percentiles(when, latency, bucket_s)
        middle = starts + bucket_s / 2
        ax_time.plot(middle, p50, color="tab:green", lw=1.5, label=f"p50 per {bucket_s:.2g} s")
        ax_time.plot(middle, p99, color="tab:red", lw=1.5, label=f"p99 per {bucket_s:.2g} s")
        ax_time.set_yscale("log")
        _plain_log_axis(ax_time.yaxis)
        bins = np.logspace(np.log10(max(latency.min(), 0.1)), np.log10(latency.max() * 1.05), 60)
        ax_hist.hist(latency, bins=bins, color="tab:blue", alpha=0.8)
        ax_hist.set_xscale("log")
        _plain_log_axis(ax_hist.xaxis)
        for key, colour in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
            value = report["latency_ms"][key]
            ax_hist.axvline(value, color=colour, ls="--", label=f"{key} {value:,.1f} ms")
        ax_hist.legend(loc="upper right", fontsize=8)
        ax_time.legend(loc="upper right", fontsize=8, markerscale=4)
    else:
        ax_time.text(
            0.5, 0.5, "no recommendations received", ha="center", transform=ax_time.transAxes
        )
    ax_time.set_xlabel("time since first event sent (s)")
    ax_time.set_ylabel("event -> recommendation latency (ms)")
    ax_time.grid(True, which="both", alpha=0.3)
    ax_hist.set_xlabel("latency (ms)")
    ax_hist.set_ylabel("events")
    ax_hist.grid(True, which="both", alpha=0.3)
    offered = report["offered_rate"]
    fig.suptitle(
        f"streamrec load test: offered {format_number(offered)} ev/s, sent {report['sent']:,}, "
        f"answered {report['answered']:,}, missing {report['missing']:,}, "
        f"throughput {format_number(report['throughput'])} ev/s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bucket_percentiles(
    when: np.ndarray, latency: np.ndarray, bucket_s: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bucket start, p50, p99) for every ``bucket_s`` of send time that has events."""
    buckets = np.floor(when / bucket_s).astype(np.int64)
    order = np.argsort(buckets, kind="stable")
    buckets, latency = buckets[order], latency[order]
    seconds, starts = np.unique(buckets, return_index=True)
    groups = np.split(latency, starts[1:])
    p50 = np.array([np.percentile(g, 50) for g in groups])
    p99 = np.array([np.percentile(g, 99) for g in groups])
    return seconds.astype(np.float64) * bucket_s, p50, p99


def plot_sweep(reports: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Latency percentiles and achieved throughput against offered load: find the knee."""
    plt = pyplot()
    path = Path(path)
    offered = np.array([r["offered_rate"] or 0.0 for r in reports], dtype=float)
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, colour in (
        ("p50", "tab:green"),
        ("p95", "tab:orange"),
        ("p99", "tab:red"),
        ("max", "tab:gray"),
    ):
        values = np.array([_nan(r["latency_ms"][key]) for r in reports])
        ax_lat.plot(offered, values, marker="o", color=colour, label=key)
    ax_lat.set_yscale("log")
    _plain_log_axis(ax_lat.yaxis)
    ax_lat.set_xlabel("offered load (events/s)")
    ax_lat.set_ylabel("event -> recommendation latency (ms)")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend()
    achieved = np.array([_nan(r["throughput"]) for r in reports])
    ax_tp.plot(offered, achieved, marker="o", label="answered per second")
    top = float(np.nanmax(np.r_[offered, achieved])) * 1.05 if len(offered) else 1.0
    ax_tp.plot([0, top], [0, top], ls="--", color="gray", label="= offered")
    ax_tp.set_xlabel("offered load (events/s)")
    ax_tp.set_ylabel("achieved throughput (events/s)")
    ax_tp.grid(True, alpha=0.3)
    ax_tp.legend()
    missing = sum(r["missing"] for r in reports)
    fig.suptitle(f"streamrec load sweep: {len(reports)} runs, {missing:,} events missing in all")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
