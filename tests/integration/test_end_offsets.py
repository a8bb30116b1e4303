"""A partition's end offset, as a trainer group's pass records it and the click-log reader
reads up to: one past the partition's last record, however the producer batched them."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Producer

from stream.dev.stack import EmbeddedStack
from stream.events import ClickEvent
from stream.kafka.click_log import read_click_log
from stream.kafka.config import kafka_config
from stream.kafka.topics import ensure_topics
from stream.kafka.work_queue import end_offsets


def test_the_end_offset_is_past_the_last_record_of_the_last_batch(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    topic, tenant = unique_name("clicks"), unique_name("shop")
    ensure_topics(stack.broker, [topic], 3)
    kafka = kafka_config(stack.broker)
    assert end_offsets(kafka, topic) == {0: 0, 1: 0, 2: 0}  # nothing written yet
    # A linger long enough that each round is one record batch per partition.
    producer = Producer(kafka.producer({"linger.ms": 100}))
    written = {0: 0, 1: 0, 2: 0}
    now = time.time()
    for size in (10, 1, 5, 3):
        for p in (0, 1):  # partition 2 stays empty
            for _ in range(size):
                sid = f"s-{p}-{written[p]}"
                event = ClickEvent(tenant, sid, f"i{written[p]}", now - 60)
                producer.produce(topic, event.to_json(), sid.encode(), partition=p)
                written[p] += 1
        assert producer.flush(30) == 0
        assert end_offsets(kafka, topic) == written, size
    # The click-log reader reads up to those ends: every record.
    clicks = read_click_log(stack.broker, topic, now - 3600)[tenant]
    assert len(clicks) == sum(written.values())
    assert sorted(clicks.session_ids.tolist()) == sorted(
        f"s-{p}-{n}" for p in (0, 1) for n in range(written[p])
    )
