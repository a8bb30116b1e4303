"""Records the broker did not take: one error type for the worker and the producers.

The worker collects a :class:`DeliveryError` per failed record (librdkafka reports
failures through callbacks, not by raising) and decides from it: send again, or
dead-letter; the click producer raises one for all its failed events.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from models.errors import StreamrecError

# (topic, value, key, headers), as handed to librdkafka's produce().
Record = tuple[str, bytes | None, bytes | str | None, list[tuple[str, bytes]] | None]

# Errors a record gets because its transaction was aborted, not because of the record.
_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}  # type: ignore[attr-defined]


class DeliveryError(StreamrecError):
    """librdkafka's ``error`` for a record it refused or could not deliver, with the
    ``record`` when the sender kept it (the worker does, to send it again or
    dead-letter it)."""

    def __init__(
        self, error: KafkaError, record: Record | None = None, message: str | None = None
    ) -> None:
        super().__init__(message or f"{error.name()}: {error.str()}")
        self.error = error
        self.record = record

    @property
    def reason(self) -> str:
        return f"{self.error.name()}: {self.error.str()}"

    @property
    def purged(self) -> bool:
        """Failed only because its transaction was aborted."""
        return self.error.code() in _PURGED

    @property
    def topic(self) -> str:
        return self.record[0] if self.record else ""

    @property
    def value(self) -> bytes | None:
        return self.record[1] if self.record else None

    @property
    def key(self) -> bytes | None:
        key = self.record[2] if self.record else None
        return key.encode() if isinstance(key, str) else key

    @property
    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.record[3] if self.record else None
