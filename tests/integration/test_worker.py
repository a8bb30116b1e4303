"""The whole path on the real embedded broker and Redis: click in, recommendation out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from models.ranking import STRATEGIES
from stream.dev.stack import EmbeddedStack
from stream.dev.testing import WorkerProcess, consume, produce
from tests.integration.helpers import ITEMS, clicks, make_config

MALFORMED = [
    b"{not json",
    orjson.dumps({"session_id": "s1", "ts": 1.0}),  # no item_id
    orjson.dumps({"session_id": 5, "item_id": "A13", "ts": 1.0}),  # wrong type
    orjson.dumps({"session_id": "s1", "item_id": "A" * 100_000, "ts": 1.0}),  # oversized
    b'{"session_id": "s1", "item_id": "\xff\xfe", "ts": 1.0}',  # invalid UTF-8
]


def test_every_click_is_answered_and_bad_input_is_dead_lettered(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    n_first, n_second = 200, 50
    first = clicks(n_first)
    # Malformed payloads in the middle of valid traffic.
    produce(stack.broker, cfg.clicks, first[:100] + [(b"bad", m) for m in MALFORMED] + first[100:])

    with WorkerProcess(cfg) as worker:
        recs = consume(stack.broker, cfg.recs, n_first)
        assert len(recs) == n_first, worker.log()[-3000:]
        dead = consume(stack.broker, cfg.dlq, len(MALFORMED))
        # Still consuming after the bad input:
        produce(stack.broker, cfg.clicks, clicks(n_second, start=n_first))
        recs = consume(stack.broker, cfg.recs, n_first + n_second)
        assert worker.alive()

    payloads = [orjson.loads(m.value()) for m in recs]
    assert len(payloads) == n_first + n_second
    assert sorted(p["event_id"] for p in payloads) == sorted(
        f"e{i}" for i in range(n_first + n_second)
    )
    for msg, p in zip(recs, payloads, strict=True):
        assert msg.key().decode() == p["session_id"]
        assert p["model_version"]
        assert p["strategy"] in STRATEGIES
        assert 0 < len(p["items"]) <= 10
        assert p["trigger_item"] in ITEMS
    # Per session, keys kept order: the same partition for every event of a session.
    partitions = {}
    for msg in recs:
        partitions.setdefault(msg.key(), set()).add(msg.partition())
    assert all(len(p) == 1 for p in partitions.values())

    assert sorted(bytes(m.value()) for m in dead) == sorted(MALFORMED)
    by_value = {bytes(m.value()): dict(m.headers())["streamrec-reason"].decode() for m in dead}
    assert "not valid JSON" in by_value[MALFORMED[0]]
    assert "missing field 'item_id'" in by_value[MALFORMED[1]]
    assert "must be a string" in by_value[MALFORMED[2]]
    assert "larger than" in by_value[MALFORMED[3]]
    assert "UTF-8" in by_value[MALFORMED[4]]
