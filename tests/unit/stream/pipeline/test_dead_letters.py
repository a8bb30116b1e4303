"""Dead letters that can always be published: stand-ins for records too large to send."""

from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError

from stream.config import Settings
from stream.kafka.delivery import DeliveryError
from stream.pipeline.loop import (
    PUBLISH_ATTEMPTS,
    BatchLoop,
    Delivery,
    RecordPublisher,
    _dead_letter,
    is_permanent,
)
from stream.pipeline.processor import DLQ_MAX_ORIGINAL_BYTES, BatchResult, DeadLetter, Outgoing


def _msg(value: bytes, offset: int = 7) -> SimpleNamespace:
    return SimpleNamespace(key=b"k", value=value, topic="clicks", partition=2, offset=offset)


def test_a_small_dead_letter_keeps_the_original_bytes() -> None:
    dead = DeadLetter.of(_msg(b"{bad"), "value is not valid JSON")
    assert dead.value == b"{bad" and dead.original_size is None
    headers = dict(dead.headers)
    assert headers["streamrec-topic"] == b"clicks"
    assert headers["streamrec-partition"] == b"2" and headers["streamrec-offset"] == b"7"
    assert "streamrec-stand-in" not in headers


def test_a_huge_message_becomes_a_stand_in() -> None:
    big = b"x" * (DLQ_MAX_ORIGINAL_BYTES + 1)
    dead = DeadLetter.of(_msg(big), "message larger than 16384 bytes")
    assert len(dead.value or b"") == 1024 and big.startswith(dead.value or b"")
    headers = dict(dead.headers)
    assert headers["streamrec-stand-in"] == b"1"
    assert headers["streamrec-original-size"] == str(len(big)).encode()
    assert headers["streamrec-sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert headers["streamrec-reason"] == b"message larger than 16384 bytes"


def test_a_record_the_producer_refuses_is_a_permanent_failure_with_its_data() -> None:
    publisher = RecordPublisher(Settings(broker="127.0.0.1:1"))
    delivery = publisher.send_records([("recs", b"y" * 2_000_000, "s-1", None)])
    (failure,) = delivery.failures
    assert is_permanent(failure.error) and failure.key == b"s-1"
    assert not is_permanent(KafkaError(KafkaError._MSG_TIMED_OUT))


def test_an_undeliverable_recommendation_is_dead_lettered_at_the_click_it_answered() -> None:
    payload = b"z" * 2_000_000
    batch = [_msg(b"{}", offset=40), _msg(b"{}", offset=41)]
    record = ("recs", payload, b"s-1", None)
    failure = DeliveryError(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), record)
    dead = _dead_letter(
        failure,
        "undeliverable",
        batch,
        {payload: Outgoing("s-1", payload, 1)},  # type: ignore[arg-type]
    )
    headers = dict(dead.headers)
    assert dead.source == "clicks:2:41" and headers["streamrec-undeliverable"] == b"1"
    assert headers["streamrec-original-size"] == b"2000000" and len(dead.value or b"") == 1024


class _Broker:
    """A publisher whose broker never takes a record for ``recs`` (a transient error each
    time) and takes everything else."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def wait(self) -> None:
        return None

    def send_records(self, records: list) -> Delivery:
        delivery = Delivery()
        for record in records:
            self.sent.append(record[0])
            if record[0] == "recs":
                failure = DeliveryError(KafkaError(KafkaError._MSG_TIMED_OUT), record)
                delivery.failures.append(failure)
        return delivery


def test_a_transient_failure_is_retried_a_bounded_number_of_times_then_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_wait(_: float) -> None:
        return None

    monkeypatch.setattr("stream.pipeline.loop.asyncio.sleep", no_wait)
    loop = BatchLoop(Settings(broker="127.0.0.1:1"), process=None, done=None)  # type: ignore[arg-type]
    broker = _Broker()
    loop._publisher = broker  # type: ignore[assignment]
    payload = b'{"items": []}'
    result = BatchResult(recommendations=[Outgoing("s-1", payload, 0)])
    delivery = broker.send_records([("recs", payload, b"s-1", None)])

    asyncio.run(loop._deliver([_msg(b"{}", offset=9)], result, delivery))

    assert broker.sent.count("recs") == PUBLISH_ATTEMPTS
    (dead,) = result.dead_letters
    assert f"after {PUBLISH_ATTEMPTS} attempts" in dead.reason and dead.source == "clicks:2:9"
    assert broker.sent[-1] == Settings().dlq_topic  # then the partition moves on
