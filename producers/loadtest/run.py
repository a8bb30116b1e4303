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

The report (:func:`producers.loadtest.report.summarize`) is a plain dict.
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
from producers.loadtest.report import summarize
from producers.replay import ReplayTable, iter_events, new_run_id, send_events
from producers.timing import Pacer
from stream.kafka.config import KafkaClientConfig, kafka_config

# Reader fetch wait: a recommendation is picked up at most this late (a bound on the
# measurement error). Shorter is not free: Tansu's cost per fetch grows with the
# partition's length, so a reader fetching every 10 ms measurably slows the system under
# test after some 10^4 messages (benchmarks/producers.md); 25 ms keeps the floor low with
# little of that effect.
_FETCH_WAIT_MS = 25


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
    linger_ms: float = 1.0
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
    # The recommendation's record timestamp: when the worker handed it to its producer.
    published_at: np.ndarray | None = None
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
            kind, ts = msg.timestamp()
            self.match_recommendation(value, received, prefix, ts / 1000.0 if kind else None)

    def match_recommendation(
        self, value: bytes, received: float, prefix: str, published: float | None = None
    ) -> None:
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
            if self.published_at is not None and published is not None:
                self.published_at[seq] = published
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
    published_at: np.ndarray | None = None


def run_loadtest(
    table: ReplayTable, config: LoadTestConfig, echo: Callable[[str], None] = print
) -> RunData:
    if len(table) == 0:
        raise StreamrecError("the load-test source has no clicks")
    run_id = new_run_id("lt")
    sent_at = np.full(config.events, np.nan)
    intended_at = np.full(config.events, np.nan)
    recv_at = np.full(config.events, np.nan)
    published_at = np.full(config.events, np.nan)
    matcher = Matcher(run_id, config.recs_topic, config.dlq_topic, recv_at, published_at)
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
        published_at=published_at[:sent],
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
    return RunData(report, sent_at[:sent], recv_at[:sent], intended_at[:sent], published_at[:sent])


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
