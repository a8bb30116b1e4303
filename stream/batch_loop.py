"""The fast path: a batch consumer loop run as a service of the Faust app.

Faust's per-event stream machinery (channels, per-event acks, one producer future per
record) costs ~150 us an event; this loop pays per batch instead: ``getmany`` from
aiokafka, one Redis round trip, one compiled ranking call, every record handed to
librdkafka (confluent-kafka) in C, one delivery wait (overlapping the next batch), one
offset commit.

At-least-once: offsets are committed only after the batch's Redis writes succeeded and
every record it produced was acknowledged by the broker. A rebalance waits for the
batch in hand, so a revoked partition's progress is committed by its old owner.
"""

from __future__ import annotations

import asyncio
import gc
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


class Delivery:
    """Failures among one batch's records: librdkafka reports only failed deliveries
    (``delivery.report.only.error``), so a healthy batch costs no Python callback."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, err: object, _msg: object = None) -> None:
        if err is not None:
            self.failures.append(str(err))


class RecordPublisher:
    """Hands a batch's records to librdkafka; ``wait`` until all are acknowledged."""

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
                "delivery.report.only.error": True,
            }
        )

    def send(self, result: BatchResult) -> Delivery:
        """Queue every record of the batch (in C, no waiting)."""
        delivery = Delivery()
        recs, dlq = self._settings.recs_topic, self._settings.dlq_topic
        records = [(recs, o.payload, o.session_id, None) for o in result.recommendations]
        records += [(dlq, d.value, d.key, d.headers) for d in result.dead_letters]
        produce = self._producer.produce
        for topic, value, key, headers in records:
            while True:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=delivery)
                    break
                except BufferError:
                    self._producer.poll(0.1)  # local queue full: let librdkafka drain
                except KafkaException as exc:
                    delivery(exc)  # counted as failed; the batch is sent again
                    break
        return delivery

    async def wait(self, delivery: Delivery, timeout: float = 30.0) -> None:
        """Until every record queued so far (so every record of ``delivery``) is
        acknowledged; :class:`DeliveryError` if any of its records failed or the timeout
        passed."""
        remaining = await asyncio.to_thread(self._producer.flush, timeout)
        if remaining or delivery.failures:
            raise DeliveryError(
                f"{remaining} records unacknowledged, {len(delivery.failures)} failed"
                + (f" ({delivery.failures[0]})" if delivery.failures else "")
            )

    def close(self) -> None:
        self._producer.flush(10)


class BatchLoop(Service):
    """Consume ``clicks`` in batches, process, publish, then commit.

    Batches overlap by one: while batch N's records wait for the broker's
    acknowledgements (in a thread), batch N+1 is fetched and processed. Commits still
    go in order, each after its own batch's delivery and its predecessor's commit.
    """

    def __init__(
        self, settings: Settings, process: ProcessFn, done: DoneFn, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._settings = settings
        self._process = process
        self._done = done
        self._consumer: AIOKafkaConsumer | None = None
        self._publisher: RecordPublisher | None = None
        self._in_hand = 0  # batches fetched and not yet committed
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._draining = False  # a rebalance waits for the batches in hand: take no more

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
        # Everything built so far (Faust, numba, clients) lives as long as the process:
        # keep the garbage collector from walking it again every few batches (full
        # collections over it were ~20 % of the loop's time at 10,000 events/s).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        log.info("consuming %s as group %s", s.clicks_topic, s.app_id)
        self.add_future(self._run())

    async def on_stop(self) -> None:
        # Finish the batches in hand (they commit), then leave the group.
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
        previous: asyncio.Future[None] | None = None
        while not self._stopping:
            if self._draining:
                await asyncio.sleep(0.01)
                continue
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
            self._hold()
            batch = [r for records in fetched.values() for r in records]
            started = time.perf_counter()
            try:
                result = await self._process(batch)
                delivery = self._publisher.send(result)
            except BaseException:
                self._release()
                raise
            # At most one older batch still waiting: wait for it before going on.
            if previous is not None and not previous.done():
                await asyncio.shield(previous)
            previous = asyncio.ensure_future(
                self._complete(fetched, batch, result, delivery, previous, started)
            )

    async def _complete(
        self,
        fetched: dict[TopicPartition, list],
        batch: list[Message],
        result: BatchResult,
        delivery: Delivery,
        previous: asyncio.Future[None] | None,
        started: float,
    ) -> None:
        """Wait for the batch's acknowledgements (sending again on failure), then commit
        after the batch before it."""
        assert self._consumer is not None and self._publisher is not None
        try:
            delay = 0.2
            while True:
                try:
                    await self._publisher.wait(delivery)
                    break
                except DeliveryError as exc:
                    # Nothing is committed until delivery succeeds; records already
                    # delivered will be sent again, which at-least-once allows.
                    log.error("publishing failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    delivery = self._publisher.send(result)
            if previous is not None:
                await previous
            offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items() if records}
            try:
                await self._consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # The partition moved to another worker; it will re-deliver from the last
                # commit and the session updates are idempotent.
                log.warning("offset commit failed after a rebalance (%s)", exc)
            self._done(len(batch), result)
            log.debug(
                "batch of %d done in %.1f ms", len(batch), (time.perf_counter() - started) * 1000
            )
        finally:
            self._release()

    def _hold(self) -> None:
        self._in_hand += 1
        self._idle.clear()

    def _release(self) -> None:
        self._in_hand -= 1
        if self._in_hand == 0:
            self._idle.set()


class _WaitForBatch(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: BatchLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: object) -> None:
        # Let the batches in hand finish and commit before the partitions move.
        self._loop._draining = True
        try:
            await asyncio.wait_for(self._loop._idle.wait(), timeout=10.0)
        except TimeoutError:
            log.warning("rebalance while a batch was still in hand after 10 s")

    async def on_partitions_assigned(self, assigned: object) -> None:
        self._loop._draining = False
        log.info("assigned partitions: %s", sorted(tp.partition for tp in assigned))  # type: ignore[attr-defined]
