"""The worker's consumer: confluent-kafka's (librdkafka), driven from asyncio.

Each fetch runs in a thread, so the rebalance callbacks librdkafka calls from inside it
may block that thread while the event loop finishes the batches in hand: a partition is
given up only after its last batch was committed by this worker. Offsets are committed
through the same consumer, and its group metadata is what an exactly-once producer hands
to ``send_offsets_to_transaction``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, TopicPartition

from stream.config import Settings

log = logging.getLogger(f"streamrec.{__name__}")

Partition = tuple[str, int]  # (topic, partition)

# Larger fetches than librdkafka's defaults (1 MiB a partition): a backlog drains in
# fewer round trips. The prefetched queue stays bounded by queued.max.messages.kbytes.
FETCH_SETTINGS = {
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
    "fetch.max.bytes": 64 * 1024 * 1024,
    "queued.max.messages.kbytes": 64 * 1024,
}
# How long a rebalance waits for the batches in hand before giving the partitions up.
REVOKE_WAIT_S = 10.0


class Consumed(NamedTuple):
    """A consumed record, read once from librdkafka's message (the fields
    :class:`stream.pipeline.processor.Message` names)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None  # ms; None when the record has none


def consumed(messages: Iterable[Any]) -> tuple[list[Consumed], list[KafkaError]]:
    """The records of a fetch, and the errors librdkafka reported in it."""
    records: list[Consumed] = []
    errors: list[KafkaError] = []
    new = tuple.__new__  # skips NamedTuple's Python-level __new__: one call a record fewer
    for m in messages:
        error = m.error()
        if error is not None:
            errors.append(error)
            continue
        kind, ts = m.timestamp()
        fields = (m.topic(), m.partition(), m.offset(), m.key(), m.value(), ts if kind else None)
        records.append(new(Consumed, fields))
    return records, errors


def spans(batch: Sequence[Consumed]) -> dict[Partition, tuple[int, int]]:
    """Per partition, the first offset of the batch and the offset to commit after it."""
    out: dict[Partition, tuple[int, int]] = {}
    for r in batch:
        tp = (r.topic, r.partition)
        first = out[tp][0] if tp in out else r.offset
        out[tp] = (first, r.offset + 1)
    return out


def consumer_settings(settings: Settings) -> dict[str, Any]:
    """librdkafka's settings for the worker's consumer of ``clicks`` (and feedback)."""
    return settings.kafka.consumer(
        settings.app_id,
        {
            "client.id": f"{settings.app_id}-clicks",
            "session.timeout.ms": int(settings.broker_session_timeout_s * 1000),
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": max(1, int(settings.batch_within_s * 1000)),
            **FETCH_SETTINGS,
        },
    )


class ClickConsumer:
    """A group member fetching batches in a thread.

    ``revoked`` (a coroutine function) runs on the event loop when the group takes the
    partitions away; the fetch waits for it (up to :data:`REVOKE_WAIT_S`). ``assigned``
    is called on the event loop with the partitions held after each assignment.
    """

    def __init__(
        self,
        conf: Mapping[str, Any],
        loop: asyncio.AbstractEventLoop,
        *,
        revoked: Callable[[], Awaitable[None]],
        assigned: Callable[[list[Partition]], None],
    ) -> None:
        self._consumer = Consumer(dict(conf))
        self._loop = loop
        self._revoked = revoked
        self._assigned = assigned
        # One thread at a time in the client's fetch and close: closing a consumer while
        # another thread fetches from it is not safe.
        self._lock = threading.Lock()
        self._closing = False
        self.assignment: set[Partition] = set()

    def subscribe(self, topics: list[str]) -> None:
        self._consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    async def fetch(self, max_records: int, within_s: float) -> list[Any]:
        """What is there, up to ``max_records`` messages; when nothing is, the first
        messages to arrive within ``within_s``."""
        return await asyncio.to_thread(self._fetch, max_records, within_s)

    def _fetch(self, max_records: int, within_s: float) -> list[Any]:
        with self._lock:
            if self._closing:
                return []
            messages = self._consumer.consume(max_records, 0)
            if messages:
                return messages
            first = self._consumer.poll(within_s)
            if first is None:
                return []
            return [first, *self._consumer.consume(max_records - 1, 0)]

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) and wait for the
        broker's answer; raises ``KafkaException`` when it refuses (after a rebalance)."""
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        await asyncio.to_thread(self._consumer.commit, offsets=partitions, asynchronous=False)

    def group_metadata(self) -> object:
        """The group membership (generation, member id) an exactly-once producer sends
        with the offsets, so that the broker fences a member the group replaced."""
        return self._consumer.consumer_group_metadata()

    def highwater(self, tp: Partition) -> int | None:
        """The partition's end, as of the last fetch (no request)."""
        if self._closing:
            return None
        _, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
        return high if high >= 0 else None

    async def close(self, timeout: float) -> None:
        """Leave the group (within ``timeout``; a stuck fetch is left behind)."""
        self._closing = True
        try:
            await asyncio.wait_for(asyncio.to_thread(self._close), timeout)
        except TimeoutError:
            log.warning("the consumer did not leave its group in time")

    def _close(self) -> None:
        with self._lock:
            self._consumer.close()

    # -- rebalance callbacks: librdkafka calls them in the fetching thread --------------

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        held = [(tp.topic, tp.partition) for tp in partitions]
        self.assignment = set(held)
        self._loop.call_soon_threadsafe(self._assigned, held)

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        if partitions and not self._loop.is_closed():
            waiting = asyncio.run_coroutine_threadsafe(self._revoked(), self._loop)
            try:
                waiting.result(REVOKE_WAIT_S + 1)
            except (TimeoutError, concurrent.futures.CancelledError, RuntimeError) as exc:
                log.warning("partitions given up without waiting for the batches (%r)", exc)
        self.assignment = set()

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # The group moved on without us (a session timeout): no commit can succeed now;
        # the batches in hand are processed again by the partitions' new owners.
        log.warning("partitions lost to the group: %s", sorted(tp.partition for tp in partitions))
        self.assignment = set()
