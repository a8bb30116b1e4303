"""The click producer helper that apps use: validate, key by session, send, count deliveries.

    from producers import ClickProducer

    with ClickProducer("127.0.0.1:19092") as producer:
        producer.send({"session_id": "s-42", "item_id": "A13"})
    print(producer.stats)

Validation happens here, before anything leaves the process, with the same rules the
worker applies: a bad event raises :class:`InvalidEvent` in the app instead of turning
into a dead letter later. Deliveries are asynchronous (librdkafka batches them); the
callbacks count delivered and failed events, and ``close()`` (or leaving the ``with``
block) waits for the outstanding ones.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from models.errors import StreamrecError
from stream.events import MAX_EVENT_BYTES, ClickEvent, InvalidEvent, event_from_dict
from stream.kafka.config import KafkaClientConfig, kafka_config
from stream.kafka.delivery import DeliveryError

log = logging.getLogger(f"streamrec.{__name__}")
# librdkafka's own log lines (connection refused, ...) go through Python logging under
# this name instead of straight to stderr, so an app (or the CLI) decides what to show.
RDKAFKA_LOG = logging.getLogger(f"streamrec.{__name__}.rdkafka")

DeliveryHook = Callable[[KafkaError | None, Message], None]

# librdkafka polls delivery reports only when asked; serving them every so many sends
# keeps the callbacks (and the counts) current without a poll per event.
_POLL_EVERY = 1000
# How often librdkafka reports statistics (for the idempotence state); a small JSON
# document, parsed in microseconds.
_STATS_INTERVAL_MS = 100


@dataclass(frozen=True)
class DeliveryStats:
    """Counts since the producer was created; ``pending`` are still in flight."""

    sent: int
    delivered: int
    failed: int
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None

    @property
    def pending(self) -> int:
        return self.sent - self.delivered - self.failed

    def since(self, earlier: DeliveryStats) -> DeliveryStats:
        """What happened between ``earlier`` and these counts."""
        errors = Counter(self.errors)
        errors.subtract(earlier.errors)
        return DeliveryStats(
            sent=self.sent - earlier.sent,
            delivered=self.delivered - earlier.delivered,
            failed=self.failed - earlier.failed,
            errors={k: v for k, v in errors.items() if v},
            first_error=self.first_error if self.failed > earlier.failed else None,
        )

    def __str__(self) -> str:
        text = f"sent {self.sent:,}, delivered {self.delivered:,}, failed {self.failed:,}"
        if self.pending:
            text += f", pending {self.pending:,}"
        if self.first_error:
            text += f" (first error: {self.first_error})"
        return text


def producer_config(
    bootstrap_servers: str | KafkaClientConfig,
    *,
    linger_ms: float = 5.0,
    batch_size: int = 1_000_000,
    compression: str = "none",
    idempotent: bool = True,
    message_timeout_ms: int = 30_000,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """librdkafka settings tuned for many small JSON events, on top of the common ones
    (security, acks, the Java-compatible partitioner) from :mod:`stream.kafka.config`."""
    return kafka_config(bootstrap_servers).producer(
        {
            # A few ms of linger fills batches at high rates and costs little at low ones.
            "linger.ms": linger_ms,
            "batch.size": batch_size,
            "compression.type": compression,
            # Idempotence: librdkafka's retries never duplicate or reorder a session's events.
            "enable.idempotence": idempotent,
            "message.timeout.ms": message_timeout_ms,
            "logger": RDKAFKA_LOG,
            **(extra or {}),
        }
    )


class ClickProducer:
    """Send click events to the clicks topic, keyed by session id.

    ``send`` accepts a :class:`ClickEvent` or a mapping with the contract's fields;
    ``ts`` defaults to now and ``event_id`` to a fresh UUID (the worker uses it to
    ignore re-deliveries). ``on_delivery`` is called after the counts are updated,
    with librdkafka's error (or ``None``) and message, from inside ``send``/``flush``.
    """

    def __init__(
        self,
        bootstrap_servers: str | KafkaClientConfig,
        topic: str = "clicks",
        *,
        linger_ms: float = 5.0,
        batch_size: int = 1_000_000,
        compression: str = "none",
        idempotent: bool = True,
        message_timeout_ms: int = 30_000,
        assign_event_ids: bool = True,
        config: Mapping[str, Any] | None = None,
        on_delivery: DeliveryHook | None = None,
        producer_factory: Callable[[dict[str, Any]], Any] = Producer,
    ) -> None:
        self.topic = topic
        # A plain address, or the settings of a secured cluster (KafkaClientConfig).
        self.bootstrap_servers = kafka_config(bootstrap_servers).bootstrap_servers
        self._assign_event_ids = assign_event_ids
        self._hook = on_delivery
        self._sent = 0
        self._delivered = 0
        self._failed = 0
        self._errors: Counter[str] = Counter()
        self._first_error: KafkaError | None = None
        self._since_poll = 0
        self._closed = False
        conf = producer_config(
            bootstrap_servers,
            linger_ms=linger_ms,
            batch_size=batch_size,
            compression=compression,
            idempotent=idempotent,
            message_timeout_ms=message_timeout_ms,
            extra=config,
        )
        conf["on_delivery"] = self._on_delivery
        self._idempotent = idempotent
        self._idempotence_state = ""
        if idempotent and "stats_cb" not in conf:
            # The statistics are the only place librdkafka says when the producer id is
            # assigned, which is what wait_ready() waits for.
            conf["statistics.interval.ms"] = _STATS_INTERVAL_MS
            conf["stats_cb"] = self._on_stats
        try:
            self._producer = producer_factory(conf)
        except KafkaException as exc:
            raise StreamrecError(f"cannot create a Kafka producer: {exc}") from None

    # -- starting ------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once the broker answers and events would go out at once.

        An idempotent producer holds its first events until the broker has assigned it a
        producer id (about 0.5 s); a replay or load test that stamps ``ts`` at send time
        calls this first so those events do not carry the handshake.
        """
        deadline = time.monotonic() + timeout
        try:
            self._producer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise StreamrecError(
                f"Kafka broker at {self.bootstrap_servers} does not answer: {exc}"
            ) from None
        while self._idempotent and self._idempotence_state != "Assigned":
            if time.monotonic() > deadline:
                raise StreamrecError(
                    f"the broker at {self.bootstrap_servers} assigned no producer id within "
                    f"{timeout:g} s (state {self._idempotence_state or 'unknown'}); "
                    "try idempotent=False"
                )
            self._producer.poll(0.02)

    def _on_stats(self, stats_json: str) -> None:
        try:
            state = orjson.loads(stats_json).get("eos", {}).get("idemp_state", "")
        except orjson.JSONDecodeError:
            return
        self._idempotence_state = str(state)

    # -- sending -------------------------------------------------------------------------

    def send(self, event: ClickEvent | Mapping[str, Any]) -> ClickEvent:
        """Validate and enqueue one event; returns the event as sent (with ts/event_id)."""
        checked = self.validate(event)
        value = checked.to_json()
        if len(value) > MAX_EVENT_BYTES:
            raise InvalidEvent(f"event is larger than {MAX_EVENT_BYTES} bytes as JSON")
        self._produce(checked.session_id, value)
        return checked

    def validate(self, event: ClickEvent | Mapping[str, Any]) -> ClickEvent:
        """The worker's validation, applied here; raises :class:`InvalidEvent`."""
        if self._closed:
            raise StreamrecError("ClickProducer is closed")
        # A ClickEvent can be built with any values, so it is checked like a mapping.
        data = event.to_dict() if isinstance(event, ClickEvent) else dict(event)
        if self._assign_event_ids and data.get("event_id") is None:
            data["event_id"] = uuid.uuid4().hex
        return event_from_dict(data, default_ts=time.time())

    def _produce(self, key: str, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value, key)
                break
            except BufferError:
                # The local queue is full: serve delivery reports to make room rather
                # than fail the app; this is the producer's back-pressure.
                self._producer.poll(0.05)
        self._sent += 1
        self._since_poll += 1
        if self._since_poll >= _POLL_EVERY:
            self._since_poll = 0
            self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._delivered += 1
        else:
            self._failed += 1
            self._errors[err.name()] += 1
            if self._first_error is None:
                self._first_error = err
        if self._hook is not None:
            self._hook(err, msg)

    # -- finishing -----------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many were served."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> int:
        """Wait up to ``timeout`` s for outstanding deliveries; returns how many remain."""
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> DeliveryStats:
        """Flush, then count whatever could not be delivered in time as failed."""
        if self._closed:
            return self.stats
        remaining = self.flush(timeout)
        if remaining:
            # Purging fires the delivery callbacks with _PURGE_* errors, so the counts
            # add up: sent == delivered + failed.
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.flush(1.0)
        self._closed = True
        stats = self.stats
        if stats.failed:
            log.warning("click producer to %s/%s: %s", self.bootstrap_servers, self.topic, stats)
        return stats

    def raise_for_failures(self) -> None:
        """Raise :class:`DeliveryError` if any event failed to be delivered."""
        stats = self.stats
        if stats.failed and self._first_error is not None:
            raise DeliveryError(
                self._first_error,
                message=f"{stats.failed:,} of {stats.sent:,} events were not delivered to "
                f"{self.topic} at {self.bootstrap_servers} (first error: {stats.first_error})",
            )

    @property
    def stats(self) -> DeliveryStats:
        return DeliveryStats(
            sent=self._sent,
            delivered=self._delivered,
            failed=self._failed,
            errors=dict(self._errors),
            first_error=(
                None
                if self._first_error is None
                else f"{self._first_error.name()}: {self._first_error.str()}"
            ),
        )

    def __enter__(self) -> ClickProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
