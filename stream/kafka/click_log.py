"""Kafka's click log, read back as columnar clicks per tenant.

Kafka is the log of record: the reader takes the ``clicks`` topic from the first offset
inside a time window up to the end offsets seen when it started, with no consumer group
(it commits nothing, so it never competes with the workers). With ``jobs`` > 1 it reads
the partitions in that many processes. Each click keeps its place in the log
(partition, offset) so that a later pass can tell whether anything new arrived.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from multiprocessing import get_context

import numpy as np
from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, TopicPartition

from models.datasets import Clicks
from models.errors import StreamrecError
from stream.events import ClickEvent, parse_event, record_time
from stream.kafka.config import KafkaClientConfig, kafka_config
from stream.kafka.topics import partition_ends

log = logging.getLogger(f"streamrec.{__name__}")

# A click's place in the log, as one sortable number: partition << 40 | offset.
_OFFSET_BITS = 40

_Columns = tuple[list[str], list[str], list[float], list[int]]


def read_click_log(
    broker: str | KafkaClientConfig,
    topic: str,
    since_ts: float,
    tenants: Iterable[str] | None = None,
    *,
    jobs: int = 1,
) -> dict[str, Clicks]:
    """Valid clicks per tenant from ``since_ts`` up to the end offsets at call time.

    ``jobs`` processes read disjoint sets of the topic's partitions in parallel (one
    reads in this process). Rows keep each partition's log order, partitions
    interleaved; a click's ``order`` is its place in the log (partition, offset), so
    ``build_sessions`` orders clicks with the same timestamp as the log does. A session
    stays in one partition (messages are keyed by session id), so the result does not
    depend on how the partitions were split among the readers.
    """
    wanted = frozenset(tenants) if tenants else None
    groups = _split_partitions(_offset_ranges(broker, topic, since_ts), jobs)
    if len(groups) <= 1:
        parts = [_read_partitions(broker, topic, g, since_ts, wanted) for g in groups]
    else:
        # fork: the readers need nothing but their arguments; each opens its own
        # consumer (the parent's was closed above, so no librdkafka thread is forked).
        with ProcessPoolExecutor(max_workers=len(groups), mp_context=get_context("fork")) as pool:
            parts = list(
                pool.map(
                    _read_partitions,
                    repeat(broker),
                    repeat(topic),
                    groups,
                    repeat(since_ts),
                    repeat(wanted),
                )
            )
    return _merge(parts)


def _consumer(broker: str | KafkaClientConfig) -> Consumer:
    return Consumer(
        kafka_config(broker).consumer(
            "streamrec-trainer",  # required by librdkafka; nothing is committed
            {
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
                # When its local queue is full, librdkafka waits this long (default 1 s)
                # before fetching that partition again; the reader empties it much sooner.
                "fetch.queue.backoff.ms": 20,
            },
        )
    )


def _offset_ranges(
    broker: str | KafkaClientConfig, topic: str, since_ts: float
) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset at or after since_ts, end offset now)}`` for the
    partitions with anything to read."""
    consumer = _consumer(broker)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise StreamrecError(f"topic {topic!r} not found on {broker}")
        parts = [TopicPartition(topic, p, int(since_ts * 1000)) for p in meta.partitions]
        starts = consumer.offsets_for_times(parts, timeout=10)
        ends = partition_ends(consumer, topic, meta.partitions, timeout=10)
    finally:
        consumer.close()
    return {
        tp.partition: (tp.offset, ends[tp.partition])
        for tp in starts
        if tp.offset != OFFSET_END and 0 <= tp.offset < ends[tp.partition]
    }


def _split_partitions(
    ranges: dict[int, tuple[int, int]], jobs: int
) -> list[dict[int, tuple[int, int]]]:
    """At most ``jobs`` groups of partitions with about as many messages each (the
    biggest partition first, each to the group with the fewest messages so far)."""
    groups: list[dict[int, tuple[int, int]]] = [{} for _ in range(max(1, min(jobs, len(ranges))))]
    load = [0] * len(groups)
    for p, (start, end) in sorted(ranges.items(), key=lambda kv: kv[1][0] - kv[1][1]):
        i = load.index(min(load))
        groups[i][p] = (start, end)
        load[i] += end - start
    return [g for g in groups if g]


def _read_partitions(
    broker: str | KafkaClientConfig,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    since_ts: float,
    wanted: frozenset[str] | None,
) -> dict[str, Clicks]:
    """Valid clicks per tenant in ``ranges`` (``{partition: (start, end)}`` offsets)."""
    columns: dict[str, _Columns] = {}
    now = time.time()
    skipped = 0

    def take(msg: Message) -> None:
        nonlocal skipped
        event = click_of(msg.value(), msg.timestamp()[1], now)
        if event is None:
            skipped += 1  # the worker dead-lettered it already
            return
        if event.ts < since_ts or (wanted is not None and event.tenant not in wanted):
            return
        entry = columns.get(event.tenant)
        if entry is None:
            entry = columns[event.tenant] = ([], [], [], [])
        entry[0].append(event.session_id)
        entry[1].append(event.item_id)
        entry[2].append(event.ts)
        entry[3].append(msg.partition() << _OFFSET_BITS | msg.offset())

    consumer = _consumer(broker)
    try:
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in ranges.items()])
        todo = set(ranges)
        while todo:
            # consume() waits for a full batch or the timeout: keep the wait short for
            # the last, partial batches.
            for msg in consumer.consume(10_000, timeout=0.1):
                if msg.error() is None:
                    take(msg)
                    if msg.offset() >= ranges[msg.partition()][1] - 1:
                        todo.discard(msg.partition())
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    todo.discard(msg.partition())
    finally:
        consumer.close()
    if skipped:
        log.warning(
            "%s: skipped %d invalid record(s) in partition(s) %s (dead-lettered by the worker)",
            topic,
            skipped,
            ",".join(map(str, sorted(ranges))),
        )
    # numpy columns: cheap to send back from a reader process and to a training one
    out = {}
    while columns:
        tenant, (sids, items, ts, order) = columns.popitem()  # lists freed as they go
        out[tenant] = Clicks(
            np.asarray(sids, dtype=str),
            np.asarray(items, dtype=str),
            np.asarray(ts, dtype=np.float64),
            np.asarray(order, dtype=np.int64),
        )
    return out


def click_of(
    value: bytes | None, timestamp_ms: int | None = None, now: float | None = None
) -> ClickEvent | None:
    """One record of the log as the worker reads it: its click (without ``ts``, at the
    record's timestamp), or None for a record the worker dead-letters. Never raises."""
    try:
        return parse_event(value, default_ts=record_time(timestamp_ms), now=now)
    except Exception:  # InvalidEvent, or anything a hostile record might still cause
        return None


def _merge(parts: list[dict[str, Clicks]]) -> dict[str, Clicks]:
    """One ``Clicks`` per tenant from the readers' results."""
    by_tenant: dict[str, list[Clicks]] = defaultdict(list)
    for part in parts:
        while part:
            tenant, clicks = part.popitem()
            by_tenant[tenant].append(clicks)
    out = {}
    for tenant in sorted(by_tenant):
        chunks = by_tenant.pop(tenant)  # each reader's arrays freed once joined
        out[tenant] = (
            chunks[0]
            if len(chunks) == 1
            else Clicks(
                np.concatenate([c.session_ids for c in chunks]),
                np.concatenate([c.item_ids for c in chunks]),
                np.concatenate([c.ts for c in chunks]),
                np.concatenate([c.order for c in chunks]),
            )
        )
    return out


def log_positions(clicks: Clicks) -> dict[int, int]:
    """The newest offset read per partition, from each click's place in the log."""
    if not len(clicks):
        return {}
    order = np.asarray(clicks.order, dtype=np.int64)
    partitions = order >> _OFFSET_BITS
    offsets = order & ((1 << _OFFSET_BITS) - 1)
    return {int(p): int(offsets[partitions == p].max()) for p in np.unique(partitions)}


def has_new_clicks(now: dict[int, int], trained: dict[int, int]) -> bool:
    """Does the window hold a click the last trained version did not see?"""
    return any(o > trained.get(p, -1) for p, o in now.items())
