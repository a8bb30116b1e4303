"""The worker's consumer without a broker: what a fetch becomes, what a batch commits."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message

from stream.config import Settings
from stream.kafka.consumer import Consumed, consumed, consumer_settings, spans

CREATE_TIME, NO_TIMESTAMP = 1, 0


def _message(partition: int, offset: int, **kwargs: object) -> Message:
    fields = {"topic": "clicks", "key": b"s-1", "value": b"{}", "timestamp": (CREATE_TIME, 5)}
    return Message(partition=partition, offset=offset, **{**fields, **kwargs})


def test_a_fetch_becomes_records_with_the_fields_processing_reads() -> None:
    error = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)
    messages = [
        _message(1, 7),
        _message(0, 3, key=None, timestamp=(NO_TIMESTAMP, -1)),
        Message(topic="feedback", partition=0, offset=-1, error=error),
    ]
    records, errors = consumed(messages)
    assert records == [
        Consumed("clicks", 1, 7, b"s-1", b"{}", 5),
        Consumed("clicks", 0, 3, None, b"{}", None),  # no timestamp: None, not -1
    ]
    assert records[0].value == b"{}" and records[1].timestamp is None
    assert [e.code() for e in errors] == [KafkaError.UNKNOWN_TOPIC_OR_PART]


def test_a_batch_commits_the_offset_after_its_last_record_of_each_partition() -> None:
    batch, _ = consumed(
        [_message(1, 7), _message(0, 3), _message(1, 8), _message(1, 9), _message(0, 4)]
    )
    batch.append(Consumed("feedback", 1, 0, None, b"{}", None))
    assert spans(batch) == {
        ("clicks", 1): (7, 10),
        ("clicks", 0): (3, 5),
        ("feedback", 1): (0, 1),
    }
    assert spans([]) == {}


def test_the_consumer_settings_follow_the_worker_settings() -> None:
    settings = Settings(
        broker="b:1", app_id="shop", batch_within_s=0.05, broker_session_timeout_s=8.0
    )
    conf = consumer_settings(settings)
    assert conf["group.id"] == "shop" and conf["bootstrap.servers"] == "b:1"
    assert conf["enable.auto.commit"] is False and conf["auto.offset.reset"] == "earliest"
    assert conf["fetch.wait.max.ms"] == 50 and conf["session.timeout.ms"] == 8000
