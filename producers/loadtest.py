"""Load test: offer clicks at a rate, read the recommendations, measure what came back.

One run: a reader thread tails ``recommendations`` and ``clicks.dlq`` from their current
end; the sender offers ``events`` clicks (open loop, at ``rate`` or as fast as
possible), each with ``event_id = f"{run_id}-{seq}"`` and ``ts`` = send time; every
recommendation whose ``event_id`` belongs to the run is matched to its event by ``seq``.
Latency is receipt time minus the time the event was *due* (intended send time), both on
this machine's clock, so it covers the broker twice, the worker and Redis, and a sender
that falls behind cannot hide its backlog (coordinated omission); latency from the actual
send time and how late the sender was are reported beside it. After the last send the
run waits until every event is answered (or nothing new arrives for ``drain_timeout_s``),
then reads the worker group's lag on the clicks topic.

The report (:func:`summarize`) is a plain dict; :func:`plot_run`, :func:`plot_sweep` and
:func:`markdown_report` turn reports into a PNG and a markdown summary.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from models.errors import StreamrecError
from producers.client import ClickProducer
from producers.replay import ReplayTable, iter_events, new_run_id, send_events
from producers.timing import Pacer
from stream.kafka_config import KafkaClientConfig, kafka_config

# Reader fetch wait: a recommendation is picked up at most this late (a bound on the
# measurement error). Shorter is not free: the embedded broker's cost per fetch grows
# with the partition's length, so a reader fetching every 10 ms measurably slows the
# system under test after some 10^4 messages (benchmarks/producers.md); 25 ms kept the
# floor at ~12 ms p50 with little of that effect.
_FETCH_WAIT_MS = 25
# The report's latency-over-time table: one row per this many seconds of sending.
LATENCY_WINDOW_S = 10.0
# A plot with more points than this is unreadable and slow; latency over time is
# subsampled evenly (percentile lines use every event).
_MAX_SCATTER_POINTS = 50_000


@dataclass(frozen=True)
class LoadTestConfig:
    broker: str | KafkaClientConfig
    clicks_topic: str = "clicks"
    recs_topic: str = "recommendations"
    dlq_topic: str = "clicks.dlq"
    worker_group: str = "streamrec-worker"
    rate: float | None = 1000.0  # None: as fast as possible (--max)
    events: int = 60_000
    tenants: Sequence[str] = ("default",)
    drain_timeout_s: float = 30.0
    warmup_timeout_s: float = 60.0
    lag_settle_s: float = 10.0
    linger_ms: float = 5.0
    progress: bool = True
    source: str = ""  # for the report only

    @property
    def duration_s(self) -> float | None:
        return self.events / self.rate if self.rate else None


def events_for(rate: float, duration_s: float) -> int:
    return max(1, round(rate * duration_s))


# -- the reader ---------------------------------------------------------------------------


class TopicTail:
    """Reads new messages of some topics on a thread, from where they end at ``start()``."""

    def __init__(
        self,
        broker: str | KafkaClientConfig,
        topics: Sequence[str],
        on_batch: Callable[[list[Message], float], None],
    ) -> None:
        self._broker = broker
        self._topics = list(topics)
        self._on_batch = on_batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadtest-reader", daemon=True)
        self._consumer: Consumer | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._consumer = Consumer(
            kafka_config(self._broker).consumer(
                # Assigned, not subscribed: no group join (seconds on the embedded broker),
                # nothing committed; the id is only required by the client.
                f"streamrec-loadtest-{uuid.uuid4().hex[:8]}",
                {"fetch.wait.max.ms": _FETCH_WAIT_MS, "fetch.min.bytes": 1},
            )
        )
        self._consumer.assign(self._end_positions(self._consumer))
        self._thread.start()

    def _end_positions(self, consumer: Consumer) -> list[TopicPartition]:
        try:
            metadata = consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise StreamrecError(f"Kafka broker at {self._broker} does not answer: {exc}") from None
        positions = []
        for topic in self._topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise StreamrecError(
                    f"topic {topic!r} does not exist on {self._broker}; "
                    "is `streamrec worker` (or `streamrec dev up`) running?"
                )
            for partition in meta.partitions:
                # The embedded broker's high watermark can trail the true end by one
                # batch; the few old messages re-read are not this run's and are skipped.
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                positions.append(TopicPartition(topic, partition, max(high, 0)))
        return positions

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                # consume(n, timeout) waits for n messages or the whole timeout, which
                # would add up to `timeout` to every latency: wait for one message, stamp
                # it, then take whatever else is already here without waiting.
                first = consumer.poll(0.1)
                if first is None:
                    continue
                received = time.time()
                self._on_batch([first, *consumer.consume(10_000, timeout=0)], received)
        except BaseException as exc:  # surfaced by stop(): a dead reader must not hang the run
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self.error is not None:
            raise StreamrecError(f"the recommendation reader failed: {self.error}")


@dataclass
class Matcher:
    """Matches recommendations and dead letters to this run's events by ``event_id``."""

    run_id: str
    recs_topic: str
    dlq_topic: str
    recv_at: np.ndarray  # float64 [events], NaN until answered
    answered: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    strategies: Counter[str] = field(default_factory=Counter)
    probes: set[str] = field(default_factory=set)
    probes_answered: threading.Event = field(default_factory=threading.Event)

    def expect_probes(self, event_ids: list[str]) -> None:
        self.probes_answered.clear()
        self.probes = set(event_ids)

    def on_batch(self, batch: list[Message], received: float) -> None:
        prefix = f"{self.run_id}-"
        run_tag = self.run_id.encode()
        for msg in batch:
            if msg.error() is not None:
                continue
            value = msg.value() or b""
            if msg.topic() == self.dlq_topic:
                # The dead letter carries the original bytes, and with them our event id.
                if run_tag in value:
                    self.dead_letters += 1
                continue
            self.match_recommendation(value, received, prefix)

    def match_recommendation(self, value: bytes, received: float, prefix: str) -> None:
        try:
            rec = orjson.loads(value)
            event_id = rec["event_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if not isinstance(event_id, str) or not event_id.startswith(prefix):
            return
        try:
            seq = int(event_id[len(prefix) :])
        except ValueError:
            self._match_probe(event_id)
            return
        if not 0 <= seq < len(self.recv_at):
            return
        if math.isnan(self.recv_at[seq]):
            self.recv_at[seq] = received
            self.answered += 1
            self.strategies[str(rec.get("strategy"))] += 1
        else:
            # At-least-once delivery: a re-processed batch answers twice.
            self.duplicates += 1

    def _match_probe(self, event_id: str) -> None:
        if event_id in self.probes:
            self.probes.discard(event_id)
            if not self.probes:
                self.probes_answered.set()


# -- consumer lag -------------------------------------------------------------------------


def group_lag(
    broker: str | KafkaClientConfig,
    group: str,
    topic: str,
    known_ends: dict[int, int] | None = None,
) -> int:
    """Events of ``topic`` that ``group`` has not committed yet.

    ``known_ends`` (partition -> next offset, from our own delivery reports) corrects
    the embedded broker's high watermark, which can trail the true end by a batch.
    """
    consumer = Consumer(kafka_config(broker).consumer(group))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or not meta.partitions:
            return 0
        partitions = [TopicPartition(topic, p) for p in meta.partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        lag = 0
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            end = max(high, (known_ends or {}).get(tp.partition, 0))
            done = committed.get(tp.partition, OFFSET_BEGINNING)
            lag += max(0, end - (done if done >= 0 else low))
        return lag
    finally:
        consumer.close()


def settled_lag(
    broker: str | KafkaClientConfig,
    group: str,
    topic: str,
    known_ends: dict[int, int],
    settle_s: float,
) -> int:
    """The group's lag once it stops falling (commits are periodic), within ``settle_s``."""
    deadline = time.monotonic() + settle_s
    lag = group_lag(broker, group, topic, known_ends)
    while lag > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        lag = group_lag(broker, group, topic, known_ends)
    return lag


# -- one run ------------------------------------------------------------------------------


@dataclass
class RunData:
    """Raw results of one run, kept for plotting."""

    report: dict[str, Any]
    sent_at: np.ndarray
    recv_at: np.ndarray
    intended_at: np.ndarray | None = None


def run_loadtest(
    table: ReplayTable, config: LoadTestConfig, echo: Callable[[str], None] = print
) -> RunData:
    if len(table) == 0:
        raise StreamrecError("the load-test source has no clicks")
    run_id = new_run_id("lt")
    sent_at = np.full(config.events, np.nan)
    intended_at = np.full(config.events, np.nan)
    recv_at = np.full(config.events, np.nan)
    matcher = Matcher(run_id, config.recs_topic, config.dlq_topic, recv_at)
    ends: dict[int, int] = {}

    def track_end(err: KafkaError | None, msg: Message) -> None:
        if err is None and msg.offset() >= ends.get(msg.partition(), 0):
            ends[msg.partition()] = msg.offset() + 1

    reader = TopicTail(config.broker, [config.recs_topic, config.dlq_topic], matcher.on_batch)
    reader.start()
    producer = ClickProducer(
        config.broker, config.clicks_topic, linger_ms=config.linger_ms, on_delivery=track_end
    )
    try:
        warmup_s = _warm_up(producer, matcher, table, config, run_id)
        echo(f"warm-up: the worker answered in {warmup_s:.2f} s; offering the load")
        events = iter_events(
            table,
            loops=math.ceil(config.events / len(table)),
            tenants=config.tenants,
            session_prefix=f"{run_id}-",
        )
        result = send_events(
            producer,
            events,
            pacer=Pacer(rate=config.rate),
            limit=config.events,
            run_id=run_id,
            progress=config.progress,
            sent_at=sent_at,
            intended_at=intended_at,
        )
        echo(result.summary())
        echo(f"waiting for recommendations (up to {config.drain_timeout_s:g} s without news)...")
        _drain(matcher, result.stats.delivered, config.drain_timeout_s)
    finally:
        producer.close(timeout=1.0)  # already closed unless the warm-up failed
        reader.stop()
    lag = settled_lag(
        config.broker, config.worker_group, config.clicks_topic, ends, config.lag_settle_s
    )
    sent = result.sent
    report = summarize(
        sent_at[:sent],
        recv_at[:sent],
        intended_at=intended_at[:sent],
        offered_rate=config.rate,
        send_failed=result.stats.failed,
        dead_letters=matcher.dead_letters,
        duplicates=matcher.duplicates,
        lag_end=lag,
        strategies=dict(matcher.strategies),
    )
    report.update(
        {
            "run_id": run_id,
            "warmup_s": round(warmup_s, 3),
            "mode": "max" if config.rate is None else "rate",
            "planned_events": config.events,
            "planned_duration_s": config.duration_s,
            "source": config.source,
            "tenants": list(config.tenants),
            "broker": kafka_config(config.broker).bootstrap_servers,
            "topics": {
                "clicks": config.clicks_topic,
                "recommendations": config.recs_topic,
                "dlq": config.dlq_topic,
            },
            "worker_group": config.worker_group,
            "started_at": _iso(float(sent_at[0])) if sent else None,
        }
    )
    return RunData(report, sent_at[:sent], recv_at[:sent], intended_at[:sent])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _warm_up(
    producer: ClickProducer,
    matcher: Matcher,
    table: ReplayTable,
    config: LoadTestConfig,
    run_id: str,
) -> float:
    """One click per tenant, answered, before the clock starts.

    It checks that a worker is there (rather than offering a minute of load into the
    void) and keeps one-off costs out of the numbers: the idempotent producer's
    handshake (~0.5 s on the embedded broker), connections, a tenant's model load.
    """
    started = time.perf_counter()
    producer.wait_ready()
    probe_ids = [f"{run_id}-warmup{i}" for i in range(len(config.tenants))]
    matcher.expect_probes(probe_ids)
    for tenant, event_id in zip(config.tenants, probe_ids, strict=True):
        producer.send(
            {
                "tenant": tenant,
                "session_id": f"{run_id}-warmup",
                "item_id": str(table.item_ids[0]),
                "event_id": event_id,
            }
        )
    producer.flush(config.warmup_timeout_s)
    if not matcher.probes_answered.wait(config.warmup_timeout_s):
        raise StreamrecError(
            f"no recommendation for the warm-up click within {config.warmup_timeout_s:g} s: is "
            f"`streamrec worker` running against {config.broker} (topics {config.clicks_topic} "
            f"-> {config.recs_topic}) with a trained model?"
        )
    return time.perf_counter() - started


def _drain(matcher: Matcher, expected: int, idle_timeout_s: float) -> None:
    last_count, last_change = matcher.answered, time.monotonic()
    while matcher.answered < expected:
        time.sleep(0.05)
        if matcher.answered != last_count:
            last_count, last_change = matcher.answered, time.monotonic()
        elif time.monotonic() - last_change > idle_timeout_s:
            return


# -- the report ---------------------------------------------------------------------------


def summarize(
    sent_at: np.ndarray,
    recv_at: np.ndarray,
    *,
    intended_at: np.ndarray | None = None,
    offered_rate: float | None,
    send_failed: int = 0,
    dead_letters: int = 0,
    duplicates: int = 0,
    lag_end: int | None = None,
    strategies: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The load-test report from per-event send and receipt times (unix seconds, NaN = none).

    ``latency_ms`` counts from the intended send time when given (else the send time);
    ``latency_from_send_ms`` from the actual send; ``sender_late_ms`` is the difference."""
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
        f"| achieved send rate | {_num(report['send_rate'])} events/s |",
        f"| events sent | {report['sent']:,} (send failures {report['send_failed']:,}) |",
        f"| recommendations matched | {report['answered']:,} |",
        f"| missing | {report['missing']:,} |",
        f"| duplicates (re-delivered) | {report['duplicates']:,} |",
        f"| dead letters | {report['dead_letters']:,} |",
        f"| throughput (answered/s) | {_num(report['throughput'])} |",
        f"| first send -> last recommendation | {_num(report['last_answer_s'])} s |",
        f"| latency p50 / p95 / p99 | {_ms(lat['p50'])} / {_ms(lat['p95'])} / {_ms(lat['p99'])} |",
        f"| latency max (mean) | {_ms(lat['max'])} ({_ms(lat['mean'])}) |",
        *_from_send_rows(report),
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
            f"| {w['from_s']:g} | {w['events']:,} | {_num(w['p50'])} | {_num(w['p99'])} |"
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


def markdown_sweep(reports: Sequence[dict[str, Any]], command: str | None = None) -> str:
    lines = [
        "| offered ev/s | sent | answered | missing | throughput ev/s | p50 ms | p95 ms | p99 ms "
        "| max ms | lag end |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in reports:
        lat = r["latency_ms"]
        lines.append(
            f"| {_num(r['offered_rate'])} | {r['sent']:,} | {r['answered']:,} | {r['missing']:,} "
            f"| {_num(r['throughput'])} | {_num(lat['p50'])} | {_num(lat['p95'])} "
            f"| {_num(lat['p99'])} | {_num(lat['max'])} | {r['lag_end']} |"
        )
    if command:
        lines += ["", "```", command, "```"]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


# -- plots --------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(axis: Any) -> None:
    """Log scale labelled 20, 50, 100 rather than 2x10^1: latencies are read, not admired."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot_run(data: RunData, path: str | Path) -> Path:
    """Latency over the run (every event, with per-second p50/p99) and its histogram."""
    plt = _pyplot()
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
        f"streamrec load test: offered {_num(offered)} ev/s, sent {report['sent']:,}, "
        f"answered {report['answered']:,}, missing {report['missing']:,}, "
        f"throughput {_num(report['throughput'])} ev/s"
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
    plt = _pyplot()
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


def write_outputs(json_path: str | Path, payload: dict[str, Any], markdown: str) -> list[Path]:
    """FILE.json plus FILE.md beside it (the PNG is written by the plot functions)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    options = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    json_path.write_bytes(orjson.dumps(payload, option=options))
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown)
    return [json_path, md_path]
