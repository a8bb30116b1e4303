"""No poison pill: a message that can never be published as it is does not stop the worker."""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from models.registry import Registry
from stream.dev.stack import EmbeddedStack
from stream.dev.testing import WorkerProcess, consume, produce
from stream.events import ClickEvent
from stream.kafka.click_log import read_click_log
from stream.kafka.topics import ensure_topics
from tests.integration.helpers import clicks, make_config

# About 1 MB: more than the worker's producer may send (message.max.bytes 1,000,000), so
# it cannot be dead-lettered as it is; the broker takes it.
BIG = orjson.dumps({"session_id": "big", "item_id": "A13", "ts": 1.0, "pad": "x" * 1_000_000})


def _produce_big(broker: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": broker, "message.max.bytes": 2_000_000})
    producer.produce(topic, key=b"big", value=BIG)
    assert producer.flush(15) == 0


def test_a_1mb_message_is_dead_lettered_as_a_stand_in_and_the_stream_goes_on(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    first = clicks(31)
    produce(stack.broker, cfg.clicks, first[:15])
    _produce_big(stack.broker, cfg.clicks)
    produce(stack.broker, cfg.clicks, first[15:])

    with WorkerProcess(cfg) as worker:
        dead = consume(stack.broker, cfg.dlq, 1, timeout=60)
        assert len(dead) == 1, worker.log()[-3000:]
        recs = consume(stack.broker, cfg.recs, 31, timeout=60)
        assert sorted(orjson.loads(m.value())["event_id"] for m in recs) == sorted(
            f"e{i}" for i in range(31)
        )
        # Consumption goes on after it.
        produce(stack.broker, cfg.clicks, clicks(10, start=31))
        recs = consume(stack.broker, cfg.recs, 41, timeout=60)
        assert worker.alive()
        log = worker.log()

    answered = [orjson.loads(m.value())["event_id"] for m in recs]
    assert set(answered) == {f"e{i}" for i in range(41)}
    # At-least-once, not a batch published again and again.
    assert len(answered) <= 2 * 41, f"{len(answered)} records for 41 clicks"
    msg = dead[0]
    headers = {k: v for k, v in msg.headers() or []}
    assert b"larger than" in headers["streamrec-reason"]
    assert headers["streamrec-stand-in"] == b"1"
    assert int(headers["streamrec-original-size"]) == len(BIG)
    assert headers["streamrec-sha256"].decode() == hashlib.sha256(BIG).hexdigest()
    assert headers["streamrec-topic"].decode() == cfg.clicks
    assert int(headers["streamrec-offset"]) >= 0 and headers["streamrec-partition"].isdigit()
    assert BIG.startswith(msg.value()) and 0 < len(msg.value()) <= 1024
    assert "publishing" not in log, log[-3000:]


def test_poisoned_records_in_a_batch_are_dead_lettered_and_their_neighbours_answered(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    """A click nested 3,000 levels deep (the decoder runs out of stack) and clicks of a
    tenant whose model names its items with lone surrogates (no record answering them
    can be written as JSON), amid good clicks in the same batches."""
    registry_dir = tmp_path / "registry"
    shutil.copytree(trained_model_dir, registry_dir)
    registry = Registry(registry_dir)
    bundle = registry.load("default")
    damaged = replace(bundle, items=np.asarray([f"{i}\ud800" for i in bundle.item_list]))
    registry.promote("shop", registry.register("shop", damaged, {}))
    cfg = make_config(stack, unique_name, tmp_path, registry_dir)
    cfg.extra_env["STREAMREC_AUTO_CREATE_TENANTS"] = "1"

    deep = b'{"session_id":"deep","item_id":"A13","x":' + b"[" * 3000 + b"]" * 3000 + b"}"
    shop = [
        (b"shop-s", ClickEvent("shop", "shop-s", "A13", time.time(), event_id=f"s{i}").to_json())
        for i in range(2)
    ]
    good = clicks(20)
    produce(stack.broker, cfg.clicks, good[:10] + [(b"deep", deep), shop[0]] + good[10:] + shop[1:])

    with WorkerProcess(cfg) as worker:
        dead = consume(stack.broker, cfg.dlq, 3, timeout=60)
        recs = consume(stack.broker, cfg.recs, 20, timeout=60)
        assert worker.alive(), worker.log()[-3000:]
        # Consumption goes on after them.
        produce(stack.broker, cfg.clicks, clicks(5, start=20))
        recs = consume(stack.broker, cfg.recs, 25, timeout=60)
        assert worker.alive(), worker.log()[-3000:]
        log = worker.log()

    answered = {orjson.loads(m.value())["event_id"] for m in recs}
    assert answered == {f"e{i}" for i in range(25)}, log[-3000:]
    reasons = {m.value(): dict(m.headers() or [])["streamrec-reason"].decode() for m in dead}
    assert len(dead) == 3, reasons
    assert "not valid JSON" in reasons[deep], reasons
    for _, value in shop:
        assert reasons[value] == "internal: UnicodeEncodeError", reasons
    assert "dead-lettered on an internal error" in log


def test_the_trainers_log_reader_skips_and_counts_what_the_worker_dead_letters(
    stack: EmbeddedStack, unique_name: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique_name("clicks")
    ensure_topics(stack.broker, [topic], partitions=1)
    stamp_ms = int(time.time() * 1000) - 60_000
    deep = b'{"session_id":"deep","item_id":"A13","x":' + b"[" * 3000 + b"]" * 3000 + b"}"
    records = [
        *clicks(3),
        (b"deep", deep),
        (b"old", orjson.dumps({"session_id": "old", "item_id": "A13", "ts": 0})),
        (b"bad", b"\xff\xfe"),
        (b"no-ts", b'{"session_id":"no-ts","item_id":"A13"}'),  # at its Kafka timestamp
    ]
    producer = Producer({"bootstrap.servers": stack.broker})
    for key, value in records:
        producer.produce(topic, key=key, value=value, timestamp=stamp_ms)
    assert producer.flush(15) == 0

    with caplog.at_level(logging.WARNING, logger="streamrec.stream.kafka.click_log"):
        logs = read_click_log(stack.broker, topic, time.time() - 3600)
    clicks_read = logs["default"]
    assert list(clicks_read.session_ids) == ["s0", "s1", "s2", "no-ts"]
    assert clicks_read.ts[-1] == stamp_ms / 1000
    assert "skipped 3 invalid record(s)" in caplog.text
