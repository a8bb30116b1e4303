"""Acceptance: 10,000 fuzzed messages through Kafka, each answered or dead-lettered."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from confluent_kafka import Producer

from stream.devstack import EmbeddedStack
from stream.processor import DLQ_MAX_ORIGINAL_BYTES, STAND_IN_HEAD_BYTES
from stream.testing import WorkerProcess, consume
from tests.integration.helpers import make_config

N = 10_000


def _bad(i: int, rng: random.Random) -> bytes | None:
    """One malformed message of a category chosen by ``i``; unique (it carries ``i``)."""
    tag = f"f{i}"
    dumps = orjson.dumps
    kinds: list[Callable[[], bytes | None]] = [
        lambda: f"{{not json {tag}".encode(),
        lambda: b'{"session_id": "' + tag.encode() + b'", "item_id": "\xff\xfe", "ts": 1.0}',
        lambda: dumps({"session_id": tag, "ts": 1.0}),  # no item
        lambda: dumps({"item_id": "A13", "ts": 1.0, "n": tag}),  # no session
        lambda: dumps({"session_id": tag + "x" * 300, "item_id": "A13"}),  # oversized id
        lambda: dumps({"session_id": i, "item_id": "A13", "n": tag}),  # wrong type
        lambda: dumps({"session_id": tag, "item_id": ["A13"]}),
        lambda: dumps({"session_id": tag, "item_id": "A13", "ts": "yesterday"}),
        lambda: dumps({"session_id": tag, "item_id": "A13", "ts": -5}),
        lambda: dumps({"tenant": f"bad tenant {tag}", "session_id": "s", "item_id": "A"}),
        lambda: dumps({"tenant": "shop\n", "session_id": tag, "item_id": "A"}),
        lambda: dumps({"tenant": 7, "session_id": tag, "item_id": "A"}),
        lambda: dumps({"session_id": tag, "item_id": "A\x01"}),  # control character
        lambda: dumps({"session_id": tag + "\n", "item_id": "A13"}),
        lambda: dumps({"session_id": "", "item_id": "A13", "n": tag}),
        lambda: dumps({"session_id": tag, "item_id": "A13", "event_type": "v" * 40}),
        lambda: dumps([tag]),
        lambda: dumps(tag),
        lambda: dumps({"session_id": tag, "item_id": "A13", "pad": "x" * 20_000}),  # > 16 KiB
        lambda: dumps({"n": tag, "pad": "y" * rng.randrange(20_000, 200_000)}),
    ]
    return kinds[i % len(kinds)]()


def test_ten_thousand_fuzzed_messages_each_answered_or_dead_lettered(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    started = time.monotonic()
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    rng = random.Random(11)
    valid: set[str] = set()
    bad: list[bytes] = []
    records: list[tuple[bytes | None, bytes | None]] = []
    for i in range(N - 3):
        if rng.random() < 0.5:
            event_id = f"v{i}"
            valid.add(event_id)
            value = orjson.dumps(
                {"session_id": f"s{i % 300}", "item_id": f"A{i % 40}", "ts": 1.0e9 + i,
                 "event_id": event_id}
            )  # fmt: skip
            records.append((f"s{i % 300}".encode(), value))
        else:
            value = _bad(i, rng)
            bad.append(value)
            records.append((rng.choice([None, b"k", b"\xff" * 10]), value))
    # Near the broker's limit, twice; and an empty value (a tombstone).
    for i in range(2):
        huge = f'{{"huge": {i}, "pad": "'.encode() + b"z" * 1_000_000 + b'"}'
        bad.append(huge)
        records.insert(rng.randrange(len(records)), (b"huge", huge))
    records.insert(rng.randrange(len(records)), (b"tomb", None))

    producer = Producer(
        {"bootstrap.servers": stack.broker, "linger.ms": 5, "message.max.bytes": 2_000_000}
    )
    for key, value in records:
        producer.produce(cfg.clicks, key=key, value=value)
    assert producer.flush(30) == 0

    with WorkerProcess(cfg) as worker:
        n_dead = len(bad) + 1
        dead = consume(stack.broker, cfg.dlq, n_dead, timeout=60)
        recs = consume(stack.broker, cfg.recs, len(valid), timeout=60)
        assert worker.alive(), worker.log()[-3000:]
        log = worker.log()

    answered = {orjson.loads(m.value())["event_id"] for m in recs}
    assert answered == valid, f"{len(valid - answered)} valid clicks not answered"
    dead_values = [m.value() for m in dead]
    want = {v if len(v) <= DLQ_MAX_ORIGINAL_BYTES else v[:STAND_IN_HEAD_BYTES] for v in bad}
    assert set(dead_values) - {None} == want
    assert None in dead_values  # the tombstone
    for m in dead:
        headers = dict(m.headers() or [])
        assert headers["streamrec-reason"] and headers["streamrec-topic"] == cfg.clicks.encode()
    # Dead letters are summarised, not logged one line each.
    assert log.count("dead letters:") < 50, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert time.monotonic() - started < 150
