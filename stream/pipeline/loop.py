"""The fast path: a batch consumer loop run as a service of the Faust app.

Faust's per-event stream machinery (channels, per-event acks, one producer future per
record) is paid once an event; this loop pays per batch instead: one fetch, one Redis
round trip, one compiled ranking call, every record handed to librdkafka in C, one
delivery wait (overlapping the next batch). Offsets are committed by time, not per
batch (``STREAMREC_COMMIT_INTERVAL_S``). One Kafka client, confluent-kafka, consumes,
produces and commits (stream/kafka/consumer.py).

At-least-once: offsets are committed only after the batch's Redis writes succeeded and
every record it produced was acknowledged by the broker. A rebalance waits for the
batch in hand and commits what is done, so a revoked partition's progress is committed
by its old owner.

Exactly-once (``STREAMREC_DELIVERY=exactly_once``, Apache Kafka only): each batch's
recommendations, dead letters and consumed offsets go in one Kafka transaction
(stream/kafka/transactions.py); batches do not overlap then, and a ``read_committed`` reader
sees every recommendation once even when a worker is killed. Session updates in Redis
are idempotent either way.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError as RecordError
from confluent_kafka import KafkaException, Producer
from mode import Service

from models.errors import StreamrecError
from stream.config import Settings
from stream.kafka.consumer import (
    REVOKE_WAIT_S,
    ClickConsumer,
    Partition,
    consumed,
    consumer_settings,
    spans,
)
from stream.kafka.delivery import DeliveryError, Record
from stream.kafka.topics import ensure_topics
from stream.kafka.transactions import (
    FencedError,
    ProducerFencedError,
    TransactionalPublisher,
    check_delivery_mode,
)
from stream.pipeline.processor import UNDELIVERABLE, BatchResult, DeadLetter, Message, position
from stream.shutdown import EXIT_FENCED, request_exit
from stream.timing import backoff

log = logging.getLogger(f"streamrec.{__name__}")

ProcessFn = Callable[[list[Message]], Awaitable[BatchResult]]
DoneFn = Callable[[int, BatchResult], None]


# Errors that say a record can never be published as it is: retrying cannot help, so
# it is dead-lettered at once (as a stand-in, see DeadLetter.stand_in).
_PERMANENT = {
    getattr(RecordError, name)
    for name in (
        "MSG_SIZE_TOO_LARGE",
        "_MSG_SIZE_TOO_LARGE",
        "INVALID_MSG",
        "INVALID_MSG_SIZE",
        "CORRUPT_MESSAGE",
        "INVALID_RECORD",
        "RECORD_LIST_TOO_LARGE",
        "INVALID_TIMESTAMP",
        "_INVALID_ARG",
        "_BAD_MSG",
        "_KEY_SERIALIZATION",
        "_VALUE_SERIALIZATION",
        "INVALID_TOPIC_EXCEPTION",
        "TOPIC_AUTHORIZATION_FAILED",
        "POLICY_VIOLATION",
        "UNSUPPORTED_FOR_MESSAGE_FORMAT",
    )
    if hasattr(RecordError, name)
}
# Attempts at publishing a record that fails for a transient reason (broker away, timed
# out) before it is dead-lettered and its partition moves on.
PUBLISH_ATTEMPTS = 5
_FLUSH_SLICE_S = 0.5  # short flushes, so a stop never waits behind a long one
# Batches awaiting their acknowledgements and commit while the next ones are fetched and
# processed: the fetch never waits for a commit's round trip, which at a steady rate
# below capacity would be added to the latency of every event arriving meanwhile.
IN_FLIGHT = 4
# SIGTERM to exit, even with a batch stuck; the rest of the worker's shutdown fits in 10 s.
STOP_BUDGET_S = 6.0


def is_permanent(error: RecordError) -> bool:
    return error.code() in _PERMANENT or error.fatal()


class Delivery:
    """Failures among one batch's records: librdkafka reports only failed deliveries
    (``delivery.report.only.error``), so a healthy batch costs no Python callback."""

    def __init__(self) -> None:
        self.failures: list[DeliveryError] = []

    def __call__(self, err: RecordError | None, msg: Any = None) -> None:
        if err is not None:
            record = (msg.topic(), msg.value(), msg.key(), msg.headers())
            self.failures.append(DeliveryError(err, record))


class RecordPublisher:
    """Hands a batch's records to librdkafka; ``wait`` until all are acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = Producer(
            settings.kafka.output_producer(
                {
                    "linger.ms": 1,
                    "batch.num.messages": 10_000,
                    "enable.idempotence": False,
                    "delivery.report.only.error": True,
                }
            )
        )
        self._flushing = asyncio.Lock()

    def send(self, result: BatchResult) -> Delivery:
        """Queue every record of the batch (in C, no waiting)."""
        recs, dlq = self._settings.recs_topic, self._settings.dlq_topic
        records: list[Record] = [
            (recs, o.payload, o.session_id, None) for o in result.recommendations
        ]
        records += [(dlq, d.value, d.key, d.headers) for d in result.dead_letters]
        return self.send_records(records)

    def send_records(self, records: Sequence[Record]) -> Delivery:
        delivery = Delivery()
        produce = self._producer.produce
        for topic, value, key, headers in records:
            while True:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=delivery)
                    break
                except BufferError:
                    self._producer.poll(0.1)  # local queue full: let librdkafka drain
                except KafkaException as exc:
                    # Refused before queueing (too large, for one): reported like a
                    # failed delivery.
                    record = (topic, value, key, headers)
                    delivery.failures.append(DeliveryError(exc.args[0], record))
                    break
        return delivery

    async def wait(self) -> None:
        """Until every record queued so far is acknowledged or has failed (librdkafka
        gives up on a record after ``message.timeout.ms``); failures land in their
        :class:`Delivery`."""
        # One flush at a time: librdkafka runs a failed record's callback in whichever
        # thread polls, and a flush in another thread could return before it ran.
        async with self._flushing:
            while await asyncio.to_thread(self._producer.flush, _FLUSH_SLICE_S):
                pass

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)


class BatchLoop(Service):
    """Consume ``clicks`` in batches, process, publish, then commit.

    Batches overlap: while up to :data:`IN_FLIGHT` batches' records wait for the
    broker's acknowledgements (in a thread), the next batch is fetched and processed.
    A batch is done once its records are acknowledged and the batch before it is done;
    the offsets of the batches done go in one commit at most every
    ``commit_interval_s`` (and at once when partitions are given up or the worker
    stops). A commit is a request and a write to the group's log on the broker: one per
    batch made it a large share of the broker's work per event at steady rates, where
    batches hold a few events each.
    """

    def __init__(
        self,
        settings: Settings,
        process: ProcessFn,
        done: DoneFn,
        *,
        warm: Callable[[], Awaitable[object]] | None = None,
        handover: Callable[[], Awaitable[object]] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._settings = settings
        self._process = process
        self._done = done
        # Awaited before joining the group: partitions come to a worker ready to serve.
        self._warm = warm
        # Awaited once the batches in hand are done, before partitions go to another
        # worker (a rebalance, a stop): what this worker kept for its sessions is written
        # before their next click reaches the new owner.
        self._handover = handover
        self.assigned = asyncio.Event()  # set at the first assignment of partitions
        self._consumer: ClickConsumer | None = None
        self._publisher: RecordPublisher | None = None
        self._txn: TransactionalPublisher | None = None  # exactly-once mode
        self._in_hand = 0  # batches fetched and not yet committed
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._tasks: set[asyncio.Future[None]] = set()
        self._runner: asyncio.Future[None] | None = None
        self._committed: dict[Partition, int] = {}
        self._uncommitted: dict[Partition, int] = {}  # done, to go in the next commit
        self._committer: asyncio.Future[None] | None = None
        self._committing = asyncio.Lock()
        self._commit_sent = 0.0  # monotonic time the last commit was sent
        self._first_seen: dict[Partition, int] = {}  # where this worker started
        self._last_commit = time.monotonic()
        self._oldest = time.monotonic()  # when the oldest batch in hand was fetched

    async def on_start(self) -> None:
        s = self._settings
        self._publisher = RecordPublisher(s)
        if check_delivery_mode(s.delivery) == "exactly_once":
            self._txn = TransactionalPublisher(s)
            await asyncio.to_thread(self._txn.start)
            log.info("exactly-once: transactional id %s", self._txn.transactional_id)
        self._runner = self.add_future(self._join_and_run())

    async def _join_and_run(self) -> None:
        if self._warm is not None:
            await self._warm()
        if self._stopping:
            return
        await self._join()
        await self._run()

    async def _join(self) -> None:
        s = self._settings
        self._consumer = ClickConsumer(
            consumer_settings(s),
            asyncio.get_running_loop(),
            revoked=self._wait_for_batches,
            assigned=self._on_assigned,
        )
        topics = [s.clicks_topic]
        if s.feedback:
            # Explicit feedback rides the same batches (stream.pipeline.processor tells it apart by
            # topic); created here so that apps can send it before anyone else made it.
            topics.append(s.feedback_topic)
            try:
                await asyncio.to_thread(
                    ensure_topics, s.kafka, [s.feedback_topic], s.partitions, 10.0
                )
            except StreamrecError as exc:
                log.warning("cannot create the feedback topic (%s); subscribing anyway", exc)
        self._consumer.subscribe(topics)
        # Everything built so far (Faust, numba, clients) lives as long as the process:
        # keep the garbage collector from walking it again every few batches (full
        # collections over it take a large share of the loop's time at high rates).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        log.info("consuming %s as group %s", s.clicks_topic, s.app_id)

    async def on_stop(self) -> None:
        # Finish the batches in hand (they commit), then leave the group; all within
        # STOP_BUDGET_S, even with a batch stuck (Redis away, broker away).
        self._stopping = True
        deadline = time.monotonic() + STOP_BUDGET_S
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=STOP_BUDGET_S * 0.6)
        except TimeoutError:
            log.warning("stopping with a batch still in hand; it will be re-delivered")
            for task in [*self._tasks, self._runner]:
                if task is not None:
                    task.cancel()
        else:
            await self._commit_within(max(0.1, deadline - time.monotonic() - 3))
            await self._hand_over(max(0.1, deadline - time.monotonic() - 2))
        if self._consumer is not None:
            await self._consumer.close(max(0.5, deadline - time.monotonic() - 1))
        if self._publisher is not None:
            await asyncio.to_thread(self._publisher.close, max(0.1, deadline - time.monotonic()))
        if self._txn is not None:
            await asyncio.to_thread(self._txn.close, max(0.1, deadline - time.monotonic()))

    def progress(self) -> dict[str, float | int | None]:
        """For health: seconds since the last commit, events waiting on the partitions
        this worker holds (from the last fetch's high watermarks; in all and per
        ``topic:partition``), the oldest batch's age."""
        lag, partitions = None, {}
        held = self._consumer.assignment if self._consumer is not None else set()
        if self._consumer is not None:
            for tp in sorted(held):
                high = self._consumer.highwater(tp)
                done = self._committed.get(tp, self._first_seen.get(tp))
                if high is not None and done is not None:
                    partitions[f"{tp[0]}:{tp[1]}"] = max(0, high - done)
            lag = sum(partitions.values())
        now = time.monotonic()
        return {
            "assigned": len(held),
            "since_commit_s": round(now - self._last_commit, 1),
            "lag": lag,
            "partitions": partitions,
            "batch_age_s": round(now - self._oldest, 1) if self._in_hand else 0.0,
        }

    async def _run(self) -> None:
        assert self._consumer is not None and self._publisher is not None
        within_s = self._settings.batch_within_s
        previous: asyncio.Future[None] | None = None
        pending: deque[asyncio.Future[None]] = deque()  # batches not yet committed
        fetch_failures = 0
        while not self._stopping:
            try:
                batch, errors = consumed(
                    await self._consumer.fetch(self._settings.batch_size, within_s)
                )
            except KafkaException as exc:
                fetch_failures += 1
                delay = backoff(fetch_failures, 0.5, 5.0)
                log.warning(
                    "fetch failed (%s); retrying in %.1f s (attempt %d)", exc, delay, fetch_failures
                )
                await asyncio.sleep(delay)
                continue
            fetch_failures = 0
            for error in errors:  # a topic not there (yet), say: the repeat filter quiets it
                log.warning("consumer: %s", error.str())
            if not batch:
                continue
            fetched = spans(batch)
            for tp, (first, _) in fetched.items():
                self._first_seen.setdefault(tp, first)
            self._hold()
            started = time.perf_counter()
            if self._txn is not None:
                try:
                    result = await self._process(batch)
                    await self._transact(fetched, batch, result, started)
                finally:
                    self._release()
                continue
            try:
                result = await self._process(batch)
                delivery = self._publisher.send(result)
            except BaseException:
                self._release()
                raise
            while pending and pending[0].done():
                pending.popleft()
            if len(pending) >= IN_FLIGHT:
                await asyncio.shield(pending.popleft())
            previous = asyncio.ensure_future(
                self._complete(fetched, batch, result, delivery, previous, started)
            )
            pending.append(previous)
            self._tasks.add(previous)
            previous.add_done_callback(self._tasks.discard)

    async def _complete(
        self,
        fetched: dict[Partition, tuple[int, int]],
        batch: list[Message],
        result: BatchResult,
        delivery: Delivery,
        previous: asyncio.Future[None] | None,
        started: float,
    ) -> None:
        """Wait for the batch's acknowledgements (dead-lettering what cannot be
        published) and for the batch before it; then its offsets go in the next commit."""
        assert self._consumer is not None and self._publisher is not None
        try:
            await self._deliver(batch, result, delivery)
            if previous is not None:
                await previous
            self._uncommitted.update({tp: end for tp, (_, end) in fetched.items()})
            self._done(len(batch), result)
            log.debug(
                "batch of %d done in %.1f ms", len(batch), (time.perf_counter() - started) * 1000
            )
        finally:
            self._release()
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_in_time())
            self._tasks.add(self._committer)
            self._committer.add_done_callback(self._tasks.discard)

    async def _commit_in_time(self) -> None:
        """Commit what is done, at most once per ``commit_interval_s``, until nothing is
        left (batches done while a commit waits go in that commit or the next)."""
        while self._uncommitted:
            due = self._commit_sent + self._settings.commit_interval_s - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
            await self._commit_done()

    async def _commit_done(self) -> None:
        """Commit the offsets of the batches done so far, now, and wait for the answer."""
        async with self._committing:  # one at a time, so commits go in order
            offsets, self._uncommitted = self._uncommitted, {}
            if not offsets or self._consumer is None:
                return
            self._commit_sent = time.monotonic()
            try:
                await self._consumer.commit(offsets)
            except KafkaException as exc:
                # The partition moved to another worker; it will re-deliver from the last
                # commit and the session updates are idempotent.
                log.warning("offset commit failed after a rebalance (%s)", exc.args[0].str())
            else:
                self._committed.update(offsets)
            self._last_commit = time.monotonic()

    async def _deliver(self, batch: list[Message], result: BatchResult, delivery: Delivery) -> None:
        """Until every record of the batch is acknowledged, or stands in ``clicks.dlq``.

        Only failed records are sent again (never the whole batch). A record that can
        never be published (too large, or another permanent error) is dead-lettered at
        once, as a stand-in; one failing for a transient reason is retried with backoff,
        PUBLISH_ATTEMPTS times in all, then dead-lettered the same way, so the partition
        moves on. Stand-ins themselves are small and retried until the broker takes
        them: committing without them would lose the click."""
        assert self._publisher is not None
        await self._publisher.wait()
        attempt, by_payload = 1, None
        while delivery.failures:
            failures, resend, dead = delivery.failures, [], []
            for f in failures:
                final = f.topic == self._settings.dlq_topic and _header(f, UNDELIVERABLE)
                if final or (not is_permanent(f.error) and attempt < PUBLISH_ATTEMPTS):
                    resend.append((f.topic, f.value, f.key, f.headers))
                    continue
                if by_payload is None:
                    by_payload = {o.payload: o for o in result.recommendations}
                why = (
                    f"undeliverable to {f.topic}: {f.reason}"
                    if is_permanent(f.error)
                    else f"undeliverable to {f.topic} after {attempt} attempts: {f.reason}"
                )
                dead.append(_dead_letter(f, why, batch, by_payload))
            if resend:
                delay = backoff(attempt, 0.2, 5.0)
                log.error(
                    "publishing %d record(s) failed (%s); attempt %d, retrying in %.1fs",
                    len(resend), failures[0].reason, attempt, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                attempt += 1
            result.dead_letters.extend(dead)
            records = resend + [(self._settings.dlq_topic, d.value, d.key, d.headers) for d in dead]
            delivery = self._publisher.send_records(records)
            await self._publisher.wait()

    async def _transact(
        self,
        fetched: dict[Partition, tuple[int, int]],
        batch: list[Message],
        result: BatchResult,
        started: float,
    ) -> None:
        """Publish the batch's records and commit its offsets in one transaction.

        A record refused at once (too large) is replaced by its dead-letter stand-in in
        the same transaction. When the transaction fails it is aborted (nothing of it is
        visible) and tried again: records that failed for good, or PUBLISH_ATTEMPTS
        times, stand in ``clicks.dlq`` instead, as in at-least-once mode."""
        assert self._consumer is not None and self._txn is not None
        s = self._settings
        ends = {tp: end for tp, (_, end) in fetched.items()}
        records: list[Record] = [
            (s.recs_topic, o.payload, o.session_id, None) for o in result.recommendations
        ]
        records += [(s.dlq_topic, d.value, d.key, d.headers) for d in result.dead_letters]
        by_payload = {o.payload: o for o in result.recommendations}
        made: list[DeadLetter] = []

        def dead_letter(f: DeliveryError, why: str) -> DeadLetter:
            return _dead_letter(f, why, batch, by_payload)

        def stand_in(f: DeliveryError) -> Record:
            dead = dead_letter(f, f"undeliverable to {f.topic}: {f.reason}")
            made.append(dead)
            return (s.dlq_topic, dead.value, dead.key, dead.headers)

        attempt = 1
        while True:
            made.clear()
            metadata = self._consumer.group_metadata()
            try:
                failures, _ = await asyncio.to_thread(
                    self._txn.transact, records, ends, metadata, stand_in
                )
            except ProducerFencedError:
                # Nothing this process sends can be committed any more: stop, and leave
                # the batch (uncommitted) to whoever owns its partitions next.
                log.error(
                    "fenced: another worker took over transactional id %s; stopping",
                    self._txn.transactional_id,
                )
                self._stopping = True
                request_exit(EXIT_FENCED)
                return
            except FencedError as exc:
                # The partitions moved on: the new owner processes the batch again (its
                # session updates are idempotent); this producer is spent.
                log.warning("%s; the batch is left to the partitions' new owner", exc)
                self._txn = TransactionalPublisher(s)
                await asyncio.to_thread(self._txn.start)
                return
            if not failures:
                break
            index = {id(r): i for i, r in enumerate(records)}
            for f in failures:
                i = index.get(id(f.record))
                if i is None or f.purged:
                    continue
                if is_permanent(f.error) or attempt >= PUBLISH_ATTEMPTS:
                    why = f"undeliverable to {f.topic} after {attempt} attempts: {f.reason}"
                    dead = dead_letter(f, why)
                    result.dead_letters.append(dead)
                    records[i] = (s.dlq_topic, dead.value, dead.key, dead.headers)
            delay = backoff(attempt, 0.2, 5.0)
            log.error("transaction attempt %d failed; retrying in %.1fs", attempt, delay)
            await asyncio.sleep(delay)
            attempt += 1
        result.dead_letters.extend(made)
        self._committed.update(ends)
        self._last_commit = time.monotonic()
        self._done(len(batch), result)
        log.debug(
            "batch of %d committed in a transaction in %.1f ms",
            len(batch), (time.perf_counter() - started) * 1000,
        )  # fmt: skip

    async def _wait_for_batches(self) -> None:
        """Before the group takes partitions away: the batches in hand finish and commit
        (the fetch that runs the rebalance takes no more meanwhile)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=REVOKE_WAIT_S)
        except TimeoutError:
            log.warning("rebalance while a batch was still in hand after %.0f s", REVOKE_WAIT_S)
        else:
            await self._commit_within(REVOKE_WAIT_S / 2)
            await self._hand_over(REVOKE_WAIT_S / 2)

    async def _commit_within(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._commit_done(), timeout=timeout)
        except TimeoutError:
            log.warning(
                "the last commit took over %.1f s; its batches will be re-delivered", timeout
            )

    async def _hand_over(self, timeout: float) -> None:
        if self._handover is None:
            return
        try:
            await asyncio.wait_for(self._handover(), timeout=timeout)
        except TimeoutError:
            log.warning("handing over the sessions' state took over %.1f s; left", timeout)

    def _on_assigned(self, held: list[Partition]) -> None:
        self.assigned.set()
        log.info("assigned partitions: %s", sorted(p for _, p in held))

    def _hold(self) -> None:
        if self._in_hand == 0:
            self._oldest = time.monotonic()
        self._in_hand += 1
        self._idle.clear()

    def _release(self) -> None:
        self._in_hand -= 1
        if self._in_hand == 0:
            self._idle.set()


def _header(failure: DeliveryError, name: str) -> bytes | None:
    for key, value in failure.headers or ():
        if key == name:
            return value
    return None


def _dead_letter(
    failure: DeliveryError, reason: str, batch: list[Message], by_payload: dict[bytes, Any]
) -> DeadLetter:
    """The dead letter standing for a record that could not be published: a dead letter
    keeps its origin; a recommendation takes the position of the click it answered."""
    source = _header(failure, "streamrec-source")
    if source is not None:
        first = _header(failure, "streamrec-reason")
        if first is not None:
            reason = f"{first.decode(errors='replace')}; {reason}"
        where = source.decode(errors="replace")
    else:
        answered = by_payload.get(failure.value or b"")
        where = f"{failure.topic}:-1:-1" if answered is None else position(batch[answered.index])
    size = _header(failure, "streamrec-original-size")
    if size is not None:  # already a stand-in: keep what it says of the original
        sha = (_header(failure, "streamrec-sha256") or b"").decode()
        return DeadLetter(failure.key, failure.value, reason, where, int(size), sha, True)
    dead = DeadLetter(failure.key, failure.value, reason, where, undeliverable=True)
    return dead.stand_in(reason) if is_permanent(failure.error) else dead
