"""Topic administration with confluent-kafka's AdminClient (idempotent create), a reader of
whole topics, and the partitions' end offsets."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from models.errors import StreamrecError
from stream.kafka.config import KafkaClientConfig, kafka_config

log = logging.getLogger(f"streamrec.{__name__}")

# The retrain topic's partitions: the most trainers of a group that get work at once.
RETRAIN_PARTITIONS = 12


def ensure_topics(
    broker: str | KafkaClientConfig, names: list[str], partitions: int, timeout: float = 20.0
) -> None:
    """Create the topics that do not exist yet, with the configured replication factor and
    retention; waits for the broker to answer metadata."""
    kafka = kafka_config(broker)
    admin = AdminClient(kafka.admin())
    deadline = time.monotonic() + timeout
    while True:
        try:
            existing = set(admin.list_topics(timeout=2).topics)
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise StreamrecError(f"Kafka broker at {kafka} does not answer: {exc}") from None
            time.sleep(0.2)
    missing = [n for n in names if n not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                n,
                num_partitions=partitions,
                replication_factor=kafka.replication_factor,
                config=kafka.topic_config(),
            )
            for n in missing
        ]
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            log.info(
                "created topic %s (%d partitions, replication %d)",
                name, partitions, kafka.replication_factor,
            )  # fmt: skip
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StreamrecError(f"cannot create topic {name} on {kafka}: {exc}") from None


def topic_reader(
    broker: str | KafkaClientConfig,
    topics: list[str],
    extra: dict[str, str | int] | None = None,
    timeout: float = 30,
    start: int = OFFSET_BEGINNING,
) -> Consumer:
    """A consumer of every partition of ``topics`` from ``start`` (``OFFSET_BEGINNING``
    or ``OFFSET_END``). It joins no consumer group: a group's first join holds a reader
    for seconds on Tansu, and a reader that only looks needs no offsets. A topic with no
    partitions after ``timeout`` is a StreamrecError naming it."""
    kafka = kafka_config(broker)
    consumer = Consumer(kafka.consumer(f"streamrec-reader-{uuid.uuid4().hex[:8]}", extra))
    deadline = time.monotonic() + timeout
    assignment: list[TopicPartition] = []
    try:
        for topic in topics:
            while True:
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if meta is not None and meta.error is None and meta.partitions:
                    break
                if time.monotonic() > deadline:
                    raise StreamrecError(
                        f"topic {topic!r} has no partitions on {kafka} after {timeout:.0f} s"
                    )
                time.sleep(0.2)
            assignment += [TopicPartition(topic, p, start) for p in sorted(meta.partitions)]
    except KafkaException as exc:
        consumer.close()
        raise StreamrecError(f"Kafka broker at {kafka} does not answer: {exc}") from None
    except StreamrecError:
        consumer.close()
        raise
    consumer.assign(assignment)
    return consumer


def partition_ends(
    consumer: Consumer, topic: str, partitions: Iterable[int], timeout: float = 30.0
) -> dict[int, int]:
    """Each partition's end offset now: one past its last record.

    The broker's offsets query (the high watermark) is checked by a fetch from the offset
    before it: some brokers (the Tansu fallback) answer the query with one past the first
    offset of the partition's last record batch, and that fetch returns the whole batch
    and the true high watermark. On Apache Kafka the fetch finds the last record itself
    (or a transaction marker): the end is the query's. ``consumer`` has
    ``enable.partition.eof`` set and no assignment, and is left with none. A broker
    that does not answer within ``timeout`` is a KafkaException."""
    deadline = time.monotonic() + timeout
    ends, todo = {}, set()
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        ends[p] = high
        if high > low:
            todo.add(p)
    if not todo:
        return ends
    consumer.assign([TopicPartition(topic, p, ends[p] - 1) for p in todo])
    try:
        while todo:
            if time.monotonic() > deadline:
                raise KafkaException(
                    KafkaError(KafkaError._TIMED_OUT, f"no fetch answered for {topic}")
                )
            for m in consumer.consume(len(todo), timeout=0.2):
                p, error = m.partition(), m.error()
                if p not in todo:
                    continue
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                # The high watermark of the fetch response that held the record (or EOF).
                _, fetched = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                last = m.offset() + 1 if error is None else 0
                ends[p] = max(ends[p], fetched, last)
                todo.discard(p)
    finally:
        consumer.unassign()
    return ends
