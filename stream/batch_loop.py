"""The fast path: a batch consumer loop run as a service of the Faust app.

Faust's per-event stream machinery (channels, per-event acks, one producer future per
record) costs ~150 us an event; this loop pays per batch instead: ``getmany`` from
aiokafka, one Redis round trip, one vectorised ranking call, every record handed to
librdkafka (confluent-kafka) in C, one delivery wait, one offset commit.

At-least-once: offsets are committed only after the batch's Redis writes succeeded and
every record it produced was acknowledged by the broker. A rebalance waits for the
batch in hand, so a revoked partition's progress is committed by its old owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from confluent_kafka import KafkaException, Producer
from mode import Service

from stream.config import Settings
from stream.processor import BatchResult, Message

log = logging.getLogger("streamrec.worker")

ProcessFn = Callable[[list[Message]], Awaitable[BatchResult]]
DoneFn = Callable[[int, BatchResult], None]


class DeliveryError(Exception):
    pass


class RecordPublisher:
    """Produces a batch's records with librdkafka and waits until all are acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = Producer(
            {
                "bootstrap.servers": settings.broker,
                "linger.ms": 1,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 1_000_000,
                "enable.idempotence": False,
                "acks": "all",
                "message.timeout.ms": 30_000,
            }
        )
        self._failures: list[str] = []

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            self._failures.append(str(err))

    async def publish(self, result: BatchResult) -> None:
        """Send every record of the batch; raise :class:`DeliveryError` if any was lost."""
        self._failures.clear()
        produce = self._producer.produce
        recs, dlq, cb = self._settings.recs_topic, self._settings.dlq_topic, self._on_delivery
        for attempt in range(3):
            try:
                for out in result.recommendations:
                    produce(recs, out.payload, out.session_id, on_delivery=cb)
                for dead in result.dead_letters:
                    produce(dlq, dead.value, dead.key, headers=dead.headers, on_delivery=cb)
                break
            except BufferError:
                # Local queue full: let librdkafka drain, then go on where we are.
                await asyncio.to_thread(self._producer.flush, 1.0)
                if attempt == 2:
                    raise
        remaining = await asyncio.to_thread(self._producer.flush, 30.0)
        if remaining or self._failures:
            raise DeliveryError(
                f"{remaining} records undelivered, {len(self._failures)} failed"
                + (f" ({self._failures[0]})" if self._failures else "")
            )

    def close(self) -> None:
        self._producer.flush(10)


class BatchLoop(Service):
    """Consume ``clicks`` in batches, process, publish, then commit."""

    def __init__(
        self, settings: Settings, process: ProcessFn, done: DoneFn, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._settings = settings
        self._process = process
        self._done = done
        self._consumer: AIOKafkaConsumer | None = None
        self._publisher: RecordPublisher | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    async def on_start(self) -> None:
        s = self._settings
        self._publisher = RecordPublisher(s)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=s.broker,
            group_id=s.app_id,
            client_id=f"{s.app_id}-clicks",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.broker_session_timeout_s * 1000),
            heartbeat_interval_ms=1000,
            max_poll_records=s.batch_size,
            fetch_max_wait_ms=max(1, int(s.batch_within_s * 1000)),
        )
        self._consumer.subscribe([s.clicks_topic], listener=_WaitForBatch(self))
        await self._consumer.start()
        log.info("consuming %s as group %s", s.clicks_topic, s.app_id)
        self.add_future(self._run())

    async def on_stop(self) -> None:
        # Finish the batch in hand (it commits), then leave the group.
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=8.0)
        except TimeoutError:
            log.warning("stopping with a batch still in hand; it will be re-delivered")
        if self._consumer is not None:
            await self._consumer.stop()
        if self._publisher is not None:
            await asyncio.to_thread(self._publisher.close)

    async def _run(self) -> None:
        assert self._consumer is not None and self._publisher is not None
        within_ms = max(1, int(self._settings.batch_within_s * 1000))
        while not self._stopping:
            try:
                fetched = await self._consumer.getmany(
                    timeout_ms=within_ms, max_records=self._settings.batch_size
                )
            except KafkaError as exc:
                log.warning("fetch failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if not any(fetched.values()):
                continue
            self._idle.clear()
            try:
                await self._handle(fetched)
            finally:
                self._idle.set()

    async def _handle(self, fetched: dict[TopicPartition, list]) -> None:
        assert self._consumer is not None and self._publisher is not None
        batch = [r for records in fetched.values() for r in records]
        started = time.perf_counter()
        result = await self._process(batch)
        delay = 0.2
        while True:
            try:
                await self._publisher.publish(result)
                break
            except (DeliveryError, KafkaException, BufferError) as exc:
                # Nothing is committed until delivery succeeds; records already delivered
                # will be sent again, which at-least-once allows.
                log.error("publishing failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items() if records}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The partition moved to another worker; it will re-deliver from the last
            # commit and the session updates are idempotent.
            log.warning("offset commit failed after a rebalance (%s)", exc)
        self._done(len(batch), result)
        log.debug("batch of %d in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)


class _WaitForBatch(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: BatchLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: object) -> None:
        # Let the batch in hand finish and commit before the partitions move.
        try:
            await asyncio.wait_for(self._loop._idle.wait(), timeout=10.0)
        except TimeoutError:
            log.warning("rebalance while a batch was still in hand after 10 s")

    async def on_partitions_assigned(self, assigned: object) -> None:
        log.info("assigned partitions: %s", sorted(tp.partition for tp in assigned))  # type: ignore[attr-defined]
