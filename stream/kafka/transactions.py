"""Exactly-once output: a batch's records and its consumed offsets in one Kafka transaction.

The offsets go with the consumer's group metadata (``consumer_group_metadata()``: group,
generation, member id), so the broker fences a worker that lost its partitions (KIP-447).

Apache Kafka only: Tansu has no transactions, and :meth:`TransactionalPublisher.start`
says so in one line.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as RdTopicPartition

from models.errors import StreamrecError
from stream.config import Settings
from stream.kafka.delivery import DeliveryError, Record

log = logging.getLogger(f"streamrec.{__name__}")

DELIVERY_MODES = ("at_least_once", "exactly_once")
# A producer with the same transactional id started elsewhere (librdkafka's fatal errors
# for it): unlike a group fence, no new generation makes this producer usable again.
_PRODUCER_FENCED = (
    KafkaError._FENCED,  # type: ignore[attr-defined]
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
)
# How long an open transaction of a killed worker holds back read_committed readers of
# its partitions before the broker aborts it.
TRANSACTION_TIMEOUT_MS = 10_000


class FencedError(StreamrecError):
    """Another worker owns this worker's partitions now (or its transactional id)."""


class ProducerFencedError(FencedError):
    """Another producer took over this worker's transactional id: this producer can never
    publish again, and the worker stops."""


def check_delivery_mode(mode: str) -> str:
    if mode not in DELIVERY_MODES:
        raise StreamrecError(f"STREAMREC_DELIVERY={mode!r}: choose at_least_once or exactly_once")
    return mode


def probe_transactions(settings: Settings, timeout: float = 10.0) -> None:
    """Fail in one line, before the worker starts, when the broker has no transactions.

    Tansu answers the transactional handshake but does not keep a transaction's records
    from ``read_committed`` readers, so it is recognised by its cluster id."""
    from confluent_kafka.admin import AdminClient

    try:
        cluster = AdminClient(settings.kafka.admin()).list_topics(timeout=timeout).cluster_id
    except KafkaException as exc:
        raise StreamrecError(
            f"Kafka broker at {settings.broker} does not answer: {exc.args[0].str()}"
        ) from None
    if str(cluster or "").startswith("tansu"):
        raise StreamrecError(
            f"STREAMREC_DELIVERY=exactly_once needs Apache Kafka's transactions; the broker "
            f"at {settings.broker} is Tansu, which has none: run Apache Kafka (streamrec dev "
            "up --broker kafka) or use STREAMREC_DELIVERY=at_least_once"
        )
    publisher = TransactionalPublisher(settings, suffix="probe")
    try:
        publisher.start(timeout)
    finally:
        publisher.close(1.0)


class TransactionalPublisher:
    """One transaction per batch: records + offsets, committed together or not at all."""

    def __init__(self, settings: Settings, suffix: str = "") -> None:
        self._settings = settings
        # A fresh id per process: a restarted worker does not need to fence its dead
        # predecessor (the group generation fences it, KIP-447), and the broker aborts
        # the predecessor's open transaction after TRANSACTION_TIMEOUT_MS.
        self.transactional_id = f"{settings.app_id}-{suffix or uuid.uuid4().hex[:12]}"
        self._producer = Producer(
            settings.kafka.output_producer(
                {
                    "transactional.id": self.transactional_id,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 1,
                    "batch.num.messages": 10_000,
                    "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                    "message.timeout.ms": TRANSACTION_TIMEOUT_MS,
                    # The broker answers CONCURRENT_TRANSACTIONS to the next batch's offsets
                    # while it still writes the last commit's markers; librdkafka retries
                    # after this backoff (with the default, 100 ms, each batch waits that long).
                    "retry.backoff.ms": 5,
                    "delivery.report.only.error": True,
                }
            )
        )

    def start(self, timeout: float = 15.0) -> None:
        try:
            self._producer.init_transactions(timeout)
        except KafkaException as exc:
            raise StreamrecError(
                f"STREAMREC_DELIVERY=exactly_once needs Kafka transactions, and the broker at "
                f"{self._settings.broker} refused them ({exc.args[0].str()}); Tansu has none: "
                "run Apache Kafka (streamrec dev up --broker kafka) or use at_least_once"
            ) from None

    def transact(
        self,
        records: Sequence[Record],
        offsets: Mapping[tuple[str, int], int],
        metadata: object,
        stand_in: Callable[[DeliveryError], Record],
        timeout: float = 30.0,
    ) -> tuple[list[DeliveryError], list[Record]]:
        """Publish ``records`` and commit ``offsets`` (the next offset to read, per
        partition) as the consumer group member ``metadata`` describes, in one
        transaction (blocking: run it in a thread). A record librdkafka refuses at once
        (too large) is replaced by ``stand_in(failure)`` in the same transaction.
        Returns ``([], stand-ins)`` once committed, or the failures of an aborted
        transaction (nothing of it is visible) and the stand-ins it had made; raises
        :class:`FencedError` when another worker took over."""
        failures: list[DeliveryError] = []
        stand_ins: list[Record] = []
        producer = self._producer
        try:
            producer.begin_transaction()
            pending = list(records)
            while pending:
                refused = self._produce(pending, failures)
                pending = []
                for failure in refused:
                    replacement = stand_in(failure)
                    stand_ins.append(replacement)
                    pending.append(replacement)
            producer.send_offsets_to_transaction(
                [RdTopicPartition(t, p, o) for (t, p), o in offsets.items()], metadata, timeout
            )
            # Serves the delivery reports: a failed record aborts the whole transaction.
            producer.flush(timeout)
            if failures:
                log.error(
                    "%d record(s) of the transaction failed (%s); aborting it",
                    len(failures), failures[0].reason,
                )  # fmt: skip
                self._abort(timeout)
                return failures, stand_ins
            self._commit(timeout)
            return [], stand_ins
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() and error.code() in _PRODUCER_FENCED:
                self._abort(timeout)
                raise ProducerFencedError(f"producer fenced: {error.str()}") from None
            if error.fatal() or error.code() in (
                KafkaError._FENCED,  # type: ignore[attr-defined]
                KafkaError.PRODUCER_FENCED,
                KafkaError.INVALID_PRODUCER_EPOCH,
                KafkaError.ILLEGAL_GENERATION,
                KafkaError.UNKNOWN_MEMBER_ID,
                KafkaError.FENCED_INSTANCE_ID,
            ):
                self._abort(timeout)
                raise FencedError(f"transaction fenced: {error.str()}") from None
            log.error("transaction failed (%s); aborting it", error.str())
            self._abort(timeout)
            if not failures:
                failures.append(DeliveryError(error, records[0] if records else None))
            return failures, stand_ins

    def _produce(
        self, records: Sequence[Record], failures: list[DeliveryError]
    ) -> list[DeliveryError]:
        """Queue the records; a failed delivery lands in ``failures`` (via the callback);
        returns the records refused before queueing."""
        refused: list[DeliveryError] = []
        produce = self._producer.produce
        for record in records:
            topic, value, key, headers = record

            def report(err: KafkaError | None, _msg: object, record: Record = record) -> None:
                if err is not None:
                    failures.append(DeliveryError(err, record))

            while True:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=report)
                    break
                except BufferError:
                    self._producer.poll(0.1)
                except KafkaException as exc:
                    refused.append(DeliveryError(exc.args[0], record))
                    break
        return refused

    def _commit(self, timeout: float) -> None:
        while True:
            try:
                self._producer.commit_transaction(timeout)
                return
            except KafkaException as exc:
                if exc.args[0].retriable():
                    continue
                raise

    def _abort(self, timeout: float) -> None:
        try:
            self._producer.abort_transaction(timeout)
        except KafkaException as exc:
            error = exc.args[0]
            # A fenced producer cannot abort: the broker aborts its transaction itself.
            if not error.fatal():
                log.error("aborting the transaction failed: %s", error.str())
        try:
            self._producer.poll(0)  # reports of the purged records, while their list is ours
        except KafkaException:
            pass  # a fatal producer raises its error from every call; reported by the caller

    def close(self, timeout: float) -> None:
        """Deliver what is queued within ``timeout``; a fenced producer has nothing to."""
        try:
            self._producer.flush(timeout)
        except KafkaException as exc:
            log.debug("closing the transactional producer: %s", exc.args[0].str())
