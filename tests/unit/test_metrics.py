"""/metrics: bounded labels, and every series the Grafana dashboard queries exists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from stream.metrics import OTHER, LabelBudget, WorkerMetrics
from stream.processor import BatchResult, DeadLetter

ROOT = Path(__file__).resolve().parents[2]


def _metrics(max_tenants: int = 50) -> WorkerMetrics:
    stats = SimpleNamespace(
        events_in=3, recommendations=2, dead_letters=1, duplicates=0, suppressed=0, batches=1
    )
    models = SimpleNamespace(swaps=1, loads=2, loaded=lambda: {"t": "v1"})
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
