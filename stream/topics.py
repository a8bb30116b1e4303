"""Topic administration with confluent-kafka's AdminClient (idempotent create)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from models.errors import StreamrecError
from stream.kafka_config import KafkaClientConfig, kafka_config

log = logging.getLogger(f"streamrec.{__name__}")


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
