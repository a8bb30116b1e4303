"""Exactly-once output on Apache Kafka: kill -9 the worker three times mid-stream and a
read_committed reader still sees one recommendation per valid click and one dead letter
per bad one; on Tansu the worker refuses the mode in one line."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Message, Producer

from stream.dev.stack import EmbeddedStack
from stream.dev.testing import WorkerProcess, produce
from stream.kafka.config import kafka_config
from tests.integration.helpers import (
    TopicWatcher,
    expected_sessions,
    make_config,
    make_events,
    records,
    redis_sessions,
)

BAD = [b"{not json", orjson.dumps({"session_id": "x", "ts": 1.0}), b"\xff\xfe"]


class CommittedReader(TopicWatcher):
    """Counts every record a read_committed consumer sees on some topics, by event id
    (recommendations) or by value (dead letters)."""

    def __init__(self, broker: str, topics: list[str]) -> None:
        super().__init__(broker, topics, {"isolation.level": "read_committed"})
        self.seen: Counter[str] = Counter()
        self.dead: Counter[bytes] = Counter()

    def record(self, msg: Message) -> None:
        if msg.topic() == self.topics[0]:
            self.seen[orjson.loads(msg.value())["event_id"]] += 1
        else:
            self.dead[msg.value()] += 1

    def count(self) -> int:
        return len(self.seen)


def test_exactly_once_survives_three_kill9s_without_duplicates(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    if stack.broker_kind != "kafka":
        pytest.skip("exactly-once needs Apache Kafka's transactions")
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    cfg.extra_env["STREAMREC_DELIVERY"] = "exactly_once"
    events = make_events(100_000, sessions=3_000, seed=11)
    stream_records = records(events)
    step = len(stream_records) // (len(BAD) + 1)
    for i, bad in enumerate(BAD):  # spread through the stream, so kills can land near them
        stream_records.insert((i + 1) * step, (b"bad", bad))
    produce(stack.broker, cfg.clicks, stream_records)
    reader = CommittedReader(stack.broker, [cfg.recs, cfg.dlq])
    reader.start()
    rng = random.Random(5)
    # Kill points spread over the stream, fixed in advance: a worker that runs on past
    # the next point before its kill lands is killed again soon after it restarts, and
    # the last one is always well before the end, so every kill hits a busy worker.
    kill_at = [rng.randrange(lo, lo + 15_000) for lo in (10_000, 35_000, 60_000)]
    try:
        for round_, target in enumerate(kill_at):
            worker = WorkerProcess(cfg, name=f"worker-{round_}").start()
            # A killed worker's open transaction holds the reader back until it times
            # out (~10 s), so the timeout allows for that.
            assert reader.wait_for(target, timeout=150), worker.log()[-3000:]
            time.sleep(rng.random())
            worker.stop(signal.SIGKILL)
        with WorkerProcess(cfg, name="worker-final") as worker:
            assert reader.wait_for(len(events), timeout=180), worker.log()[-3000:]
            time.sleep(3)  # room for a duplicate to show up, if there were one
    finally:
        reader.stop_flag.set()
        reader.join(10)

    assert set(reader.seen) >= {e.event_id for e in events}
    duplicated = {k: n for k, n in reader.seen.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} recommendations seen twice: {list(duplicated)[:5]}"
    assert sorted(reader.dead) == sorted(BAD) and set(reader.dead.values()) == {1}
    want = expected_sessions(events)
    assert asyncio.run(redis_sessions(stack, "default", sorted(want))) == want


def test_exactly_once_on_tansu_is_a_one_line_error(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    if stack.broker_kind != "tansu":
        pytest.skip("Tansu only")
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    cfg.extra_env["STREAMREC_DELIVERY"] = "exactly_once"
    result = subprocess.run(
        [sys.executable, "-m", "stream", "worker"],
        env=cfg.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Tansu" in lines[0] and "at_least_once" in lines[0], result.stderr


def test_a_fenced_worker_stops_cleanly_with_exit_code_3(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    """Another producer takes over the worker's transactional id: the worker says so in
    one line and exits with code 3, and a worker started after it answers every click
    once."""
    if stack.broker_kind != "kafka":
        pytest.skip("exactly-once needs Apache Kafka's transactions")
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    cfg.extra_env["STREAMREC_DELIVERY"] = "exactly_once"
    events = make_events(2_000, sessions=100, seed=12)
    first, second = records(events[:1_000]), records(events[1_000:])
    reader = CommittedReader(stack.broker, [cfg.recs, cfg.dlq])
    reader.start()
    try:
        worker = WorkerProcess(cfg).start()
        produce(stack.broker, cfg.clicks, first)
        assert reader.wait_for(len(first), timeout=90), worker.log()[-3000:]
        (txn_id,) = re.findall(r"exactly-once: transactional id (\S+)", worker.log())
        usurper = Producer(kafka_config(stack.broker).producer({"transactional.id": txn_id}))
        usurper.init_transactions(30)
        fenced_at = time.monotonic()
        produce(stack.broker, cfg.clicks, second)
        try:
            rc = worker.proc.wait(30) if worker.proc is not None else None
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - fenced_at
        log = worker.log()
        worker.stop(signal.SIGKILL)
        assert rc == 3, f"exit code {rc} after {took:.0f} s\n{log[-3000:]}"
        line = f"fenced: another worker took over transactional id {txn_id}; stopping"
        assert log.count(line) == 1, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        with WorkerProcess(cfg, name="worker-2") as worker:
            assert reader.wait_for(len(events), timeout=120), worker.log()[-3000:]
            time.sleep(2)  # room for a duplicate to show up, if there were one
    finally:
        reader.stop_flag.set()
        reader.join(10)
    assert set(reader.seen) == {e.event_id for e in events}
    assert set(reader.seen.values()) == {1}
