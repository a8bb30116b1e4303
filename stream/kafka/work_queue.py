"""The ``retrain`` topic as a work queue shared by a consumer group: records keyed by
tenant, so Kafka assigns each tenant to one member, and moves it to another member when
its owner dies or leaves (offsets are committed by hand, once the work is done)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from models.errors import StreamrecError
from stream.kafka.config import KafkaClientConfig
from stream.kafka.topics import partition_ends

log = logging.getLogger(f"streamrec.{__name__}")

Offsets = dict[int, int]


def publish(kafka: KafkaClientConfig, topic: str, records: Iterable[tuple[str, bytes]]) -> Offsets:
    """Produce ``(key, value)`` records and wait for every one: the end offset (last
    offset + 1) of each partition written to. A ``StreamrecError`` if any was refused."""
    producer = Producer(kafka.producer({"linger.ms": 20}))
    ends: Offsets = {}
    failed: list[str] = []
    lock = threading.Lock()

    def delivered(err: KafkaError | None, msg: Message) -> None:
        with lock:
            if err is not None:
                failed.append(f"{err.name()}: {err.str()}")
            else:
                p = msg.partition()
                ends[p] = max(ends.get(p, 0), msg.offset() + 1)

    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60) > 0:
        raise StreamrecError(f"{topic}: records not delivered to {kafka} within 60 s")
    if failed:
        raise StreamrecError(f"{topic}: {len(failed)} record(s) refused by {kafka}: {failed[0]}")
    return ends


def end_offsets(kafka: KafkaClientConfig, topic: str, timeout: float = 30.0) -> Offsets:
    """Each partition's end offset now (where the next record will be written, one past
    its last record: ``stream.kafka.topics.partition_ends``)."""
    consumer = Consumer(
        kafka.consumer("streamrec-offsets", {"enable.partition.eof": True, "fetch.wait.max.ms": 50})
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if meta is None or meta.error is not None:
                    raise StreamrecError(f"topic {topic!r} not found on {kafka}")
                return partition_ends(consumer, topic, sorted(meta.partitions), timeout=10)
            except KafkaException as exc:
                # A topic just created has no leaders for a moment.
                if time.monotonic() > deadline:
                    raise StreamrecError(
                        f"Kafka broker at {kafka} does not answer: {exc}"
                    ) from None
                time.sleep(0.5)
    finally:
        consumer.close()


class GroupQueue:
    """One member of the group consuming ``topic``.

    ``start_at()`` gives, on each assignment, the first offset worth reading in a
    partition (the group's committed offset is used when it is further on).
    ``on_revoke(partitions)`` runs inside :meth:`take` before partitions go to another
    member: commit what is finished there, it is the last chance.
    """

    def __init__(
        self,
        kafka: KafkaClientConfig,
        topic: str,
        group: str,
        *,
        session_timeout_s: float,
        max_work_s: float,
        start_at: Callable[[], Mapping[int, int]],
        on_revoke: Callable[[list[int]], None],
    ) -> None:
        self.topic = topic
        self._start_at = start_at
        self._on_revoke = on_revoke
        self.assigned: set[int] = set()
        self.changed = time.monotonic()  # when the assignment last changed
        self._at_end: set[int] = set()  # assigned partitions read to their end
        self._consumer = Consumer(
            kafka.consumer(
                group,
                {
                    "enable.partition.eof": True,
                    "session.timeout.ms": int(session_timeout_s * 1000),
                    "heartbeat.interval.ms": max(100, int(session_timeout_s * 1000 / 4)),
                    # A member that does not come back for this long is presumed stuck
                    # and its tenants are given to others (heartbeats, sent by a
                    # background thread, tell a dead one much sooner).
                    "max.poll.interval.ms": int(max_work_s * 1000),
                    "fetch.wait.max.ms": 100,
                },
            )
        )
        self._consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        starts = self._start_at()
        try:
            got = consumer.committed(partitions, timeout=10)
        except Exception:  # noqa: BLE001 - librdkafka's error as it closes, or a slow broker
            got = []  # closing, or the broker slow: the committed offsets apply as they are
        committed = {tp.partition: tp.offset for tp in got}
        for tp in partitions:
            begin = starts.get(tp.partition)
            have = committed.get(tp.partition, OFFSET_INVALID)
            if begin is not None and (have < 0 or have < begin):
                tp.offset = begin  # records before it belong to passes already over
        consumer.assign(partitions)
        self.assigned |= {tp.partition for tp in partitions}
        self.changed = time.monotonic()
        log.info(
            "%s: assigned partition(s) %s", self.topic, _names(tp.partition for tp in partitions)
        )

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = sorted(tp.partition for tp in partitions)
        try:
            self._on_revoke(gone)
        finally:
            self.assigned -= set(gone)
            self._at_end -= set(gone)
            consumer.unassign()
            self.changed = time.monotonic()
            if gone:
                log.info("%s: partition(s) %s given up", self.topic, _names(gone))

    def take(self, timeout: float) -> list[Message]:
        """The records fetched within ``timeout`` (rebalances are handled in here)."""
        try:
            messages = self._consumer.consume(1000, timeout=timeout)
        except KafkaException as exc:
            raise StreamrecError(f"{self.topic}: {exc}") from None
        out = []
        for m in messages:
            error = m.error()
            if error is None:
                self._at_end.discard(m.partition())
                out.append(m)
            elif error.code() == KafkaError._PARTITION_EOF:
                self._at_end.add(m.partition())
            else:
                log.warning("%s: %s", self.topic, error.str())
        return out

    def at_end(self) -> bool:
        """Every assigned partition read to its end (True with none assigned)."""
        return self.assigned <= self._at_end

    def commit(self, offsets: Mapping[int, int], *, wait: bool = False) -> None:
        if not offsets:
            return
        parts = [TopicPartition(self.topic, p, o) for p, o in offsets.items()]
        try:
            self._consumer.commit(offsets=parts, asynchronous=not wait)
        except KafkaException as exc:
            # Not a member any more (a rebalance in between): the next owner trains
            # those tenants again, and finds them done in this pass.
            log.warning("%s: offsets not committed: %s", self.topic, exc)

    def committed(self, partitions: Iterable[int]) -> Offsets:
        """The group's committed offsets (every member's), -1 where none."""
        parts = [TopicPartition(self.topic, p) for p in partitions]
        if not parts:
            return {}
        try:
            got = self._consumer.committed(parts, timeout=10)
        except KafkaException as exc:
            raise StreamrecError(f"{self.topic}: committed offsets unknown: {exc}") from None
        return {tp.partition: tp.offset for tp in got}

    def close(self) -> None:
        try:
            self._consumer.close()
        except Exception as exc:  # noqa: BLE001 - a rebalance as it leaves: work is committed
            log.warning("%s: %s", self.topic, exc)

    def __enter__(self) -> GroupQueue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _names(partitions: Iterable[int]) -> str:
    return ",".join(map(str, sorted(partitions))) or "none"
