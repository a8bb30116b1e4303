"""/metrics: bounded labels, and every series the Grafana dashboard queries exists."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from stream.pipeline.metrics import OTHER, LabelBudget, LiveWindow, WorkerMetrics
from stream.pipeline.processor import BatchResult, DeadLetter

ROOT = Path(__file__).resolve().parents[4]


def _metrics(max_tenants: int = 50) -> WorkerMetrics:
    stats = SimpleNamespace(
        events_in=3, recommendations=2, dead_letters=1, duplicates=0, suppressed=0, batches=1
    )
    models = SimpleNamespace(
        swaps=1,
        loads=2,
        evictions=4,
        max_bytes=1 << 30,
        loaded=lambda: {"t": "v1"},
        resident_bytes=lambda: 12345,
    )
    return WorkerMetrics(
        stats=stats,
        models=models,
        progress=lambda: {"lag": 5, "since_commit_s": 0.5},
        modes=lambda: {"a": "on", "b": "off"},
        max_tenants=max_tenants,
    )


def _batch(tenant: str) -> BatchResult:
    return BatchResult(
        dead_letters=[DeadLetter(None, b"x", "value is not valid JSON: oops", "c:0:1")],
        by_variant={(tenant, "v1", "embedding"): 3, (tenant, "forged", "made-up"): 1},
        hits={(tenant, "v1"): 1},
        lags=[0.01] * 1000,
    )


def test_labels_are_bounded() -> None:
    budget = LabelBudget(2)
    assert [budget(t) for t in ("a", "b", "c", "a")] == ["a", "b", OTHER, "a"]
    m = _metrics(max_tenants=1)
    m.batch(_batch("shop1"), 0.01)
    m.batch(_batch("shop2"), 0.02)
    text = m.render().decode()
    series = 'by_variant_total{strategy="embedding",tenant="shop1",variant="v1"} 3.0'
    assert f"streamrec_recommendations_{series}" in text
    assert 'tenant="_other"' in text and "shop2" not in text
    assert 'variant="_other"' in text and "forged" not in text and "made-up" not in text
    assert 'streamrec_dead_letters_by_reason_total{reason="value is not valid JSON"} 2.0' in text
    # Lags are sampled: at most 100 observations a batch.
    assert "streamrec_event_lag_seconds_count 200.0" in text
    assert 'streamrec_tenants{mode="off"} 1.0' in text and "streamrec_consumer_lag 5.0" in text


def test_model_memory_is_exported() -> None:
    text = _metrics().render().decode()
    assert "streamrec_model_loads_total 2.0" in text
    assert "streamrec_model_evictions_total 4.0" in text
    assert "streamrec_models_loaded 1.0" in text
    assert "streamrec_models_bytes 12345.0" in text
    (budget,) = re.findall(r"^streamrec_models_budget_bytes (\S+)$", text, re.M)
    assert float(budget) == 1 << 30


def test_every_series_of_the_grafana_dashboard_is_exported() -> None:
    m = _metrics()
    m.batch(_batch("shop"), 0.01)
    exported = set(re.findall(r"^(streamrec_\w+)", m.render().decode(), re.M))
    dashboard = json.loads(
        (ROOT / "scripts/monitoring/grafana/dashboards/streamrec.json").read_text()
    )
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"streamrec_\w+", target["expr"])
    }
    assert queried and queried <= exported, queried - exported


def test_live_window_gives_rates_latency_lag_and_dead_letters() -> None:
    clock = [1000.0]
    partitions = {"clicks:1": 0, "clicks:0": 3, "feedback:0": 1}
    live = LiveWindow(lambda: {"partitions": partitions}, clock=lambda: clock[0])
    for second in range(30):  # 100 events/s in, 90 recommendations/s out
        clock[0] = 1000.5 + second
        live.observe(100, 90, [0.010] * 98 + [0.200] * 2, Counter())
    live.observe(0, 0, [], Counter({"value is not valid JSON": 2}))
    clock[0] = 1030.0
    view = live.view(3600)
    now = view["last_minute"]
    assert now["events_per_s"] == pytest.approx(100) and now["recs_per_s"] == pytest.approx(90)
    assert now["dead_per_s"] == pytest.approx(2 / 30, abs=1e-3)
    assert now["p50_ms"] == pytest.approx(10) and now["p99_ms"] == pytest.approx(200)
    points = view["points"]
    assert [p["t"] for p in points] == [1002.5, 1007.5, 1012.5, 1017.5, 1022.5, 1027.5, 1030]
    assert all(p["events_per_s"] == pytest.approx(100) for p in points[:-1])
    assert points[-1]["events_per_s"] == 0.0 and points[-1]["p50_ms"] is None
    assert view["partitions"] == [
        {"topic": "clicks", "partition": 0, "lag": 3},
        {"topic": "clicks", "partition": 1, "lag": 0},
        {"topic": "feedback", "partition": 0, "lag": 1},
    ]
    assert view["dead_letters"] == {"value is not valid JSON": 2}
    # Later, idle: a point per slice at 0/s, without latency; a narrower window.
    clock[0] += 120
    later = live.view(60)
    assert len(later["points"]) in (12, 13)
    assert {p["events_per_s"] for p in later["points"]} == {0.0}
    assert later["last_minute"]["events_per_s"] == 0.0 and later["last_minute"]["p50_ms"] is None


def test_live_window_keeps_an_hour_and_a_bounded_sample() -> None:
    clock = [0.0]
    live = LiveWindow(clock=lambda: clock[0])
    for second in range(0, 7200, 5):
        clock[0] = float(second)
        live.observe(10, 10, [0.001] * 100, Counter())
    for _ in range(30):  # more samples in one slice than it keeps
        live.observe(10, 10, [0.001] * 100, Counter())
    view = live.view(86400)
    assert view["points"][0]["t"] >= 7195 - LiveWindow.SPAN_S
    assert len(view["points"]) <= LiveWindow.SPAN_S / LiveWindow.STEP_S + 1
    assert len(live._slices) <= LiveWindow.SPAN_S / LiveWindow.STEP_S + 1
    assert all(len(s.lags) <= LiveWindow.MAX_LAGS for s in live._slices)
    assert view["partitions"] is None  # no consumer reported its partitions


def test_worker_metrics_feed_the_live_window() -> None:
    m = _metrics()
    m.batch(_batch("shop"), 0.01, events=5)
    m.batch(_batch("shop"), 0.01, events=5)
    view = m.live.view(3600)
    assert view["dead_letters"] == {"value is not valid JSON": 2}
    assert sum(p["events_per_s"] for p in view["points"]) > 0
    assert view["last_minute"]["p50_ms"] == pytest.approx(10)
    assert view["partitions"] is None  # the progress given has no per-partition lag
