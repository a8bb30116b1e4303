"""``/metrics`` through prometheus_client: the worker's counters with HELP texts, labels
``tenant``, ``variant`` and ``strategy`` where they make sense, histograms of batch time
and event-to-recommendation lag, consumer lag, model loads and swaps, dead letters by
reason, tenants by mode.

Bounded cardinality, whatever the traffic:

- ``tenant``: the first ``max_tenants`` tenants seen by this worker keep their name
  (STREAMREC_METRICS_MAX_TENANTS, default 50); any other is counted as ``_other``.
  Dashboards for more tenants read ``streamrec stats`` / ``/v1/{tenant}/stats`` (Redis).
- ``variant``: a model version (``v3``) or ``popular``: a tenant serves one version, or
  the few arms of an experiment; anything else is ``_other``.
- ``strategy``: one of ``models.ranking.STRATEGIES``.
- ``reason`` (dead letters): the reason's kind (the text before its first ``:``), at
  most 30 distinct kinds, then ``_other``.
- ``mode``: on, freeze, off.

So a worker exports at most ``max_tenants x (versions per tenant) x 3`` recommendation
series. Per-event work is a dict count in the batch; histograms observe at most
``LAG_SAMPLES`` events per batch (evenly spread), not every event.

:class:`LiveWindow` keeps this worker's last hour for ``/dashboard``: rates over time,
latency percentiles (which histogram buckets are too coarse for), lag per partition and
dead letters by reason.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from models.experiments import is_variant
from models.ranking import STRATEGIES

OTHER = "_other"
MAX_REASONS = 30
LAG_SAMPLES = 100


class LabelBudget:
    """Label values kept as they are up to a budget; later new ones become ``_other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._known:
            return value
        if len(self._known) < self.limit:
            self._known.add(value)
            return value
        return OTHER


class WorkerMetrics:
    def __init__(
        self,
        *,
        stats: Any,
        models: Any,
        progress: Callable[[], dict[str, Any]] | None = None,
        modes: Callable[[], dict[str, str]] | None = None,
        max_tenants: int = 50,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tenant = LabelBudget(max_tenants)
        self.reason = LabelBudget(MAX_REASONS)
        r = self.registry
        self.recs = PCounter(
            "streamrec_recommendations_by_variant",
            "Recommendations published, by tenant, variant (model version or popular) and "
            "strategy (the source that filled the top of the list).",
            ["tenant", "variant", "strategy"],
            registry=r,
        )
        self.hits = PCounter(
            "streamrec_hits",
            "Implicit hits: clicks on an item of the session's previous list, by the "
            "variant that served that list.",
            ["tenant", "variant"],
            registry=r,
        )
        self.dead = PCounter(
            "streamrec_dead_letters_by_reason",
            "Messages dead-lettered, by the kind of reason.",
            ["reason"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "streamrec_batch_seconds",
            "Time to process one batch (validate, Redis round trip, rank, serialise).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.lag_seconds = Histogram(
            "streamrec_event_lag_seconds",
            "Event time to recommendation emitted (sampled, at most 100 events a batch); "
            "includes the app's clock skew.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        r.register(_Pulled(stats, models, progress, modes))
        self.live = LiveWindow(progress)

    def batch(self, result: Any, seconds: float, events: int = 0) -> None:
        """Record one processed batch (``stream.pipeline.processor.BatchResult``) of ``events``
        messages."""
        self.batch_seconds.observe(seconds)
        for (tenant, variant, strategy), n in result.by_variant.items():
            self.recs.labels(
                self.tenant(tenant),
                variant if is_variant(variant) else OTHER,
                strategy if strategy in STRATEGIES else OTHER,
            ).inc(n)
        for (tenant, variant), n in result.hits.items():
            self.hits.labels(self.tenant(tenant), variant if is_variant(variant) else OTHER).inc(n)
        labelled: Counter[str] = Counter()
        if result.dead_letters:
            kinds = Counter(d.reason.split(":", 1)[0][:60] for d in result.dead_letters)
            for kind, n in kinds.items():
                labelled[self.reason(kind)] += n
            for kind, n in labelled.items():
                self.dead.labels(kind).inc(n)
        lags = result.lags
        sampled = [max(0.0, lag) for lag in lags[:: max(1, len(lags) // LAG_SAMPLES)]]
        for lag in sampled:
            self.lag_seconds.observe(lag)
        self.live.observe(events, len(result.recommendations), sampled, labelled)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Pulled:
    """Values read when Prometheus scrapes: totals kept by the worker, consumer lag,
    models, tenants by mode."""

    def __init__(
        self,
        stats: Any,
        models: Any,
        progress: Callable[[], dict[str, Any]] | None,
        modes: Callable[[], dict[str, str]] | None,
    ) -> None:
        self._stats = stats
        self._models = models
        self._progress = progress
        self._modes = modes
        self._modes_cache: tuple[float, dict[str, str]] = (float("-inf"), {})

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        s = self._stats
        for name, value, text in (
            ("events", s.events_in, "Click messages consumed (valid or not)."),
            ("recommendations", s.recommendations, "Recommendations published."),
            ("dead_letters", s.dead_letters, "Messages dead-lettered."),
            ("redelivered", s.duplicates, "Re-delivered events (applied before)."),
            ("switched_off", s.suppressed, "Events of tenants switched off (not answered)."),
            ("batches", s.batches, "Batches processed."),
            ("feedback", getattr(s, "feedback", 0), "Explicit feedback messages counted."),
            ("model_swaps", self._models.swaps, "Hot swaps to a newly promoted version."),
            ("model_loads", self._models.loads, "Model versions loaded."),
            (
                "model_evictions",
                self._models.evictions,
                "Models dropped from memory to stay within the budget (least recently used).",
            ),
        ):
            yield CounterMetricFamily(f"streamrec_{name}", text, value=value)
        yield GaugeMetricFamily(
            "streamrec_models_loaded", "Tenants with a model in memory.", len(self._models.loaded())
        )
        yield GaugeMetricFamily(
            "streamrec_models_bytes",
            "Bytes of the models' arrays in memory (experiment arms included).",
            self._models.resident_bytes(),
        )
        yield GaugeMetricFamily(
            "streamrec_models_budget_bytes",
            "The models' memory budget (STREAMREC_MODELS_MAX_BYTES).",
            self._models.max_bytes,
        )
        if self._progress is not None:
            progress = self._progress()
            lag = progress.get("lag")
            if lag is not None:
                yield GaugeMetricFamily(
                    "streamrec_consumer_lag",
                    "Events waiting on the partitions this worker holds.",
                    lag,
                )
            yield GaugeMetricFamily(
                "streamrec_seconds_since_commit",
                "Seconds since this worker last committed offsets.",
                progress.get("since_commit_s") or 0.0,
            )
        if self._modes is not None:
            at, modes = self._modes_cache
            if time.monotonic() - at > 10:
                modes = self._modes()
                self._modes_cache = (time.monotonic(), modes)
            by_mode = GaugeMetricFamily(
                "streamrec_tenants", "Tenants by mode (on, freeze, off).", labels=["mode"]
            )
            counted = Counter(modes.values())
            for mode in ("on", "freeze", "off"):
                by_mode.add_metric([mode], counted.get(mode, 0))
            yield by_mode


@dataclass
class _Slice:
    """One step of the live window: what the batches that started in it counted."""

    start: float
    events: int = 0
    recommendations: int = 0
    dead_letters: int = 0
    lags: list[float] = field(default_factory=list)  # a uniform sample of its lags
    seen: int = 0  # lags offered
    latency: dict[str, float | None] | None = None  # its percentiles, once it is over

    def percentiles(self, now: float, step: float) -> dict[str, float | None]:
        # A slice that is over never changes: each read does not sort it again.
        if self.latency is not None:
            return self.latency
        latency = _percentiles(self.lags)
        if now >= self.start + step:
            self.latency = latency
        return latency


class LiveWindow:
    """This worker's last ``SPAN_S`` in ``STEP_S`` slices, for ``/dashboard``: events in
    and recommendations out per second, latency p50/p99 (event time to recommendation,
    a bounded sample per slice), consumer lag per partition and dead letters by reason
    since start."""

    STEP_S = 5.0
    SPAN_S = 3600.0
    MAX_LAGS = 2000  # lag samples kept per slice
    RECENT_S = 60.0  # the headline numbers: the last minute

    def __init__(
        self,
        progress: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._progress = progress
        self._clock = clock
        self.started = clock()
        self._slices: deque[_Slice] = deque(maxlen=int(self.SPAN_S / self.STEP_S) + 1)
        self._dead: Counter[str] = Counter()
        self._random = random.Random()

    def observe(
        self, events: int, recommendations: int, lags: Sequence[float], dead: Counter[str]
    ) -> None:
        """One batch: its events, recommendations, (already sampled) lags in seconds
        and dead letters by reason."""
        now = self._clock()
        start = now - now % self.STEP_S
        if not self._slices or start > self._slices[-1].start:
            if self._slices:  # over: summed up once, here, not on the dashboard's reads
                self._slices[-1].percentiles(now, self.STEP_S)
            self._slices.append(_Slice(start))
        current = self._slices[-1]
        current.events += events
        current.recommendations += recommendations
        current.dead_letters += sum(dead.values())
        for lag in lags:
            current.seen += 1
            if len(current.lags) < self.MAX_LAGS:
                current.lags.append(lag)
            else:
                j = self._random.randrange(current.seen)
                if j < self.MAX_LAGS:
                    current.lags[j] = lag
        self._dead.update(dead)

    def view(self, since_s: float) -> dict[str, Any]:
        """``points`` (one per slice since ``since_s`` ago, idle ones too: ``t``, rates
        per second, p50 and p99 in ms or None), ``last_minute`` (the same over the last
        minute), ``partitions`` (lag per partition held; None when not measured) and
        ``dead_letters`` (count per reason since the worker started)."""
        now = self._clock()
        step = self.STEP_S
        kept = {s.start: s for s in self._slices}
        first = max(self.started, now - min(since_s, self.SPAN_S))
        start = first - first % step
        points = []
        while start <= now:
            # A slice's rate is over the part of it the worker was up.
            seconds = min(start + step, now) - max(start, self.started)
            s = kept.get(start) or _Slice(start)
            points.append(
                {
                    "t": round(min(start + step / 2, now), 3),
                    **_rates([s], seconds),
                    **s.percentiles(now, step),
                }
            )
            start += step
        recent = [s for s in self._slices if s.start + step > now - self.RECENT_S]
        seconds = now - max(self.started, now - self.RECENT_S)
        progress = self._progress() if self._progress is not None else {}
        partitions = progress.get("partitions")
        return {
            "step_s": step,
            "started": round(self.started, 3),
            "points": points,
            "last_minute": {
                **_rates(recent, seconds),
                **_percentiles([lag for s in recent for lag in s.lags]),
            },
            "partitions": None if partitions is None else _partition_rows(partitions),
            "dead_letters": dict(self._dead.most_common()),
        }


def _rates(slices: list[_Slice], seconds: float) -> dict[str, float]:
    seconds = max(seconds, 1e-3)
    return {
        "events_per_s": round(sum(s.events for s in slices) / seconds, 3),
        "recs_per_s": round(sum(s.recommendations for s in slices) / seconds, 3),
        "dead_per_s": round(sum(s.dead_letters for s in slices) / seconds, 3),
    }


def _percentiles(lags: Sequence[float]) -> dict[str, float | None]:
    if not lags:
        return {"p50_ms": None, "p99_ms": None}
    p50, p99 = np.percentile(np.asarray(lags, dtype=np.float64), [50, 99]) * 1000
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def _partition_rows(partitions: dict[str, int]) -> list[dict[str, Any]]:
    """``{"topic:partition": lag}`` as rows ordered by topic and partition."""
    rows = []
    for name, lag in partitions.items():
        topic, _, number = name.rpartition(":")
        rows.append({"topic": topic, "partition": int(number), "lag": int(lag)})
    return sorted(rows, key=lambda r: (r["topic"], r["partition"]))
