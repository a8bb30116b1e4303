"""The load test's report: a plain dict from per-event times, as markdown, and on disk."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# The report's latency-over-time table: one row per this many seconds of sending.
LATENCY_WINDOW_S = 10.0


def summarize(
    sent_at: np.ndarray,
    recv_at: np.ndarray,
    *,
    intended_at: np.ndarray | None = None,
    published_at: np.ndarray | None = None,
    offered_rate: float | None,
    send_failed: int = 0,
    dead_letters: int = 0,
    duplicates: int = 0,
    lag_end: int | None = None,
    strategies: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The load-test report from per-event send and receipt times (unix seconds, NaN = none).

    ``latency_ms`` counts from the intended send time when given (else the send time);
    ``latency_from_send_ms`` from the actual send; ``sender_late_ms`` is the difference.
    ``published_at`` (the recommendations' record timestamps, set by the worker's
    producer) splits the latency in two: up to the worker's publish (the click's trip,
    fetch, batching, ranking, Redis) and from it to receipt (the producer's linger and
    acks, the broker, this reader's fetch)."""
    sent = int(np.count_nonzero(~np.isnan(sent_at)))
    answered_mask = ~np.isnan(recv_at)
    answered = int(np.count_nonzero(answered_mask))
    due_at = (
        sent_at if intended_at is None else np.where(np.isnan(intended_at), sent_at, intended_at)
    )
    latency_ms = (recv_at[answered_mask] - due_at[answered_mask]) * 1000.0
    service_ms = (recv_at[answered_mask] - sent_at[answered_mask]) * 1000.0
    late_ms = (sent_at - due_at)[~np.isnan(sent_at)] * 1000.0
    first_send = float(np.nanmin(sent_at)) if sent else math.nan
    last_send = float(np.nanmax(sent_at)) if sent else math.nan
    send_span = last_send - first_send if sent > 1 else 0.0
    send_rate = (sent - 1) / send_span if send_span > 0 else None
    throughput = last_answer_s = None
    if answered:
        last_answer_s = float(np.max(recv_at[answered_mask])) - first_send
        throughput = answered / last_answer_s if last_answer_s > 0 else None
    return {
        # Offered = what was asked for; --max asks for "as fast as possible", i.e. what
        # the sender achieved.
        "offered_rate": offered_rate if offered_rate is not None else _round(send_rate),
        "send_rate": _round(send_rate),
        "sent": sent,
        "send_failed": send_failed,
        "answered": answered,
        "missing": sent - answered,
        "duplicates": duplicates,
        "dead_letters": dead_letters,
        "throughput": _round(throughput),
        "latency_ms": latency_summary(latency_ms),
        "latency_from_send_ms": latency_summary(service_ms),
        "sender_late_ms": latency_summary(np.maximum(late_ms, 0.0)),
        "lag_end": lag_end,
        "strategies": strategies or {},
        "duration_s": _round(send_span),
        # First send -> last recommendation: with --max, how long the worker took for all.
        "last_answer_s": _round(last_answer_s, 3),
        "latency_by_window": latency_windows(sent_at[answered_mask] - first_send, latency_ms),
        **_stages(sent_at - first_send, due_at, recv_at, published_at),
    }


def _stages(
    when_s: np.ndarray, due_at: np.ndarray, recv_at: np.ndarray, published_at: np.ndarray | None
) -> dict[str, Any]:
    if published_at is None:
        return {}
    known = ~np.isnan(published_at) & ~np.isnan(recv_at)
    if not np.any(known):
        return {}
    to_publish = (published_at[known] - due_at[known]) * 1000.0
    return {
        "to_publish_ms": latency_summary(to_publish),
        "publish_to_receipt_ms": latency_summary((recv_at[known] - published_at[known]) * 1000.0),
        "to_publish_by_window": latency_windows(when_s[known], to_publish),
    }


def latency_windows(
    when_s: np.ndarray, latency_ms: np.ndarray, window_s: float = LATENCY_WINDOW_S
) -> list[dict[str, float]]:
    """p50/p99 per ``window_s`` of send time: shows drift that one percentile hides."""
    if not len(latency_ms):
        return []
    # A last window of a few stragglers (sent a hair after the planned end) joins the one
    # before it rather than standing alone.
    last = max(1, round(float(np.max(when_s)) / window_s)) - 1
    index = np.minimum(np.floor(when_s / window_s).astype(np.int64), last)
    out = []
    for w in np.unique(index).tolist():
        chunk = latency_ms[index == w]
        p50, p99 = np.percentile(chunk, [50, 99])
        out.append(
            {
                "from_s": w * window_s,
                "events": int(len(chunk)),
                "p50": round(float(p50), 2),
                "p99": round(float(p99), 2),
            }
        )
    return out


def latency_summary(latency_ms: np.ndarray) -> dict[str, float | None]:
    keys = ("p50", "p95", "p99", "max", "mean")
    if not len(latency_ms):
        return dict.fromkeys(keys)
    p50, p95, p99 = np.percentile(latency_ms, [50, 95, 99])
    values = (p50, p95, p99, np.max(latency_ms), np.mean(latency_ms))
    return {k: round(float(v), 2) for k, v in zip(keys, values, strict=True)}


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), digits)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} ms"


def markdown_report(report: dict[str, Any], command: str | None = None) -> str:
    lat = report["latency_ms"]
    offered = report["offered_rate"]
    mode = "as fast as possible" if report.get("mode") == "max" else f"{offered:,.0f} events/s"
    lines = [
        f"### Load test {report.get('run_id', '')}: {mode}",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| offered rate | {offered if offered is None else f'{offered:,.0f}'} events/s |",
        f"| achieved send rate | {format_number(report['send_rate'])} events/s |",
        f"| events sent | {report['sent']:,} (send failures {report['send_failed']:,}) |",
        f"| recommendations matched | {report['answered']:,} |",
        f"| missing | {report['missing']:,} |",
        f"| duplicates (re-delivered) | {report['duplicates']:,} |",
        f"| dead letters | {report['dead_letters']:,} |",
        f"| throughput (answered/s) | {format_number(report['throughput'])} |",
        f"| first send -> last recommendation | {format_number(report['last_answer_s'])} s |",
        f"| latency p50 / p95 / p99 | {_ms(lat['p50'])} / {_ms(lat['p95'])} / {_ms(lat['p99'])} |",
        f"| latency max (mean) | {_ms(lat['max'])} ({_ms(lat['mean'])}) |",
        *_from_send_rows(report),
        *_stage_rows(report),
        f"| worker lag at end | {report['lag_end'] if report['lag_end'] is not None else 'n/a'} |",
        f"| strategies | {', '.join(f'{k}: {v:,}' for k, v in report['strategies'].items())} |",
    ]
    windows = report.get("latency_by_window") or []
    if len(windows) > 1:
        lines += [
            "",
            "Latency by window of send time (ms):",
            "",
            "| from s | events | p50 | p99 |",
            "| ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {w['from_s']:g} | {w['events']:,} "
            f"| {format_number(w['p50'])} | {format_number(w['p99'])} |"
            for w in windows
        ]
    if command:
        lines += ["", "```", command, "```"]
    return "\n".join(lines) + "\n"


def _from_send_rows(report: dict[str, Any]) -> list[str]:
    svc, late = report.get("latency_from_send_ms"), report.get("sender_late_ms")
    if not svc or not late:
        return []
    return [
        f"| from actual send p50 / p99 | {_ms(svc['p50'])} / {_ms(svc['p99'])} |",
        f"| sender late p99 / max | {_ms(late['p99'])} / {_ms(late['max'])} |",
    ]


def _stage_rows(report: dict[str, Any]) -> list[str]:
    to, fro = report.get("to_publish_ms"), report.get("publish_to_receipt_ms")
    if not to or not fro:
        return []
    return [
        f"| due -> worker's publish p50 / p99 | {_ms(to['p50'])} / {_ms(to['p99'])} |",
        f"| worker's publish -> received p50 / p99 | {_ms(fro['p50'])} / {_ms(fro['p99'])} |",
    ]


def markdown_sweep(reports: Sequence[dict[str, Any]], command: str | None = None) -> str:
    lines = [
        "| offered ev/s | sent | answered | missing | throughput ev/s | p50 ms | p95 ms | p99 ms "
        "| max ms | lag end |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in reports:
        lat = r["latency_ms"]
        lines.append(
            f"| {format_number(r['offered_rate'])} | {r['sent']:,} | {r['answered']:,} "
            f"| {r['missing']:,} | {format_number(r['throughput'])} "
            f"| {format_number(lat['p50'])} | {format_number(lat['p95'])} "
            f"| {format_number(lat['p99'])} | {format_number(lat['max'])} | {r['lag_end']} |"
        )
    if command:
        lines += ["", "```", command, "```"]
    return "\n".join(lines) + "\n"


def format_number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def write_outputs(json_path: str | Path, payload: dict[str, Any], markdown: str) -> list[Path]:
    """FILE.json plus FILE.md beside it (the PNG is written by the plot functions)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    options = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    json_path.write_bytes(orjson.dumps(payload, option=options))
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown)
    return [json_path, md_path]
