"""The worker loses nothing: kill -9, SIGTERM, a Redis outage, a second worker."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

from stream.dev.stack import EmbeddedStack, Service, free_port
from stream.dev.testing import WorkerProcess, produce
from stream.events import ClickEvent
from tests.integration.helpers import (
    RecsCollector,
    expected_sessions,
    make_config,
    make_events,
    records,
    redis_sessions,
    wait_until,
)


def test_chaos_kill9_three_times_loses_nothing_and_duplicates_nothing(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    events = make_events(100_000, sessions=3_000)
    produce(stack.broker, cfg.clicks, records(events))
    collector = RecsCollector(stack.broker, cfg.recs)
    collector.start()
    rng = random.Random(7)
    try:
        for round_ in range(3):
            worker = WorkerProcess(cfg, name=f"worker-{round_}").start()
            # Kill at a random moment once it is doing real work.
            target = len(collector.answered) + rng.randrange(5_000, 20_000)
            assert collector.wait_for(target, timeout=120), worker.log()[-3000:]
            time.sleep(rng.random())
            worker.stop(signal.SIGKILL)
        with WorkerProcess(cfg, name="worker-final") as worker:
            assert collector.wait_for(len(events), timeout=180), worker.log()[-3000:]
    finally:
        collector.stop_flag.set()
        collector.join(5)

    assert collector.answered >= {e.event_id for e in events}
    want = expected_sessions(events)
    got = asyncio.run(redis_sessions(stack, "default", sorted(want)))
    assert got == want


def test_sigterm_finishes_the_batch_and_exits_quickly(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    events = make_events(30_000, sessions=500, seed=2)
    produce(stack.broker, cfg.clicks, records(events))
    collector = RecsCollector(stack.broker, cfg.recs)
    collector.start()
    try:
        worker = WorkerProcess(cfg).start()
        assert collector.wait_for(3_000, timeout=90), worker.log()[-3000:]
        started = time.monotonic()
        rc = worker.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - started
        assert took < 10, f"SIGTERM took {took:.1f}s"
        assert rc == 0, worker.log()[-3000:]
        with WorkerProcess(cfg, name="worker-2") as worker:
            assert collector.wait_for(len(events), timeout=120), worker.log()[-3000:]
    finally:
        collector.stop_flag.set()
        collector.join(5)
    want = expected_sessions(events)
    assert asyncio.run(redis_sessions(stack, "default", sorted(want))) == want


def test_redis_outage_pauses_and_resumes_without_skipping(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    redis = Service("redis", "127.0.0.1", free_port(), tmp_path / "redis")
    redis.start()
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    own_stack = EmbeddedStack(
        tmp_path / "unused", stack.broker, f"redis://127.0.0.1:{redis.port}/0"
    )
    cfg.stack = own_stack
    collector = RecsCollector(stack.broker, cfg.recs)
    collector.start()
    first, second = make_events(2_000, 100, seed=3), make_events(2_000, 100, seed=4)
    second = [
        ClickEvent(e.tenant, e.session_id, e.item_id, e.ts, event_id=f"x{e.event_id}")
        for e in second
    ]
    try:
        with WorkerProcess(cfg) as worker:
            produce(stack.broker, cfg.clicks, records(first))
            assert collector.wait_for(len(first), timeout=90), worker.log()[-3000:]
            redis.stop()
            produce(stack.broker, cfg.clicks, records(second))
            time.sleep(3)
            assert worker.alive()
            assert len(collector.answered) == len(first)  # nothing answered without Redis
            redis.start()
            assert collector.wait_for(len(first) + len(second), timeout=60), worker.log()[-3000:]
            log = worker.log()
        held = [line for line in log.splitlines() if "Redis unavailable" in line]
        # One line per back-off step (its pause doubling), not one per retry.
        assert 1 <= len(held) <= 8, "\n".join(held)
        assert "Redis is back" in log
    finally:
        collector.stop_flag.set()
        collector.join(5)
        redis.stop()
    assert collector.answered == {e.event_id for e in first + second}


def test_two_workers_share_partitions_and_survive_a_kill(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    events = make_events(20_000, sessions=2_000, seed=5)
    collector = RecsCollector(stack.broker, cfg.recs)
    collector.start()
    workers = [WorkerProcess(cfg, name=f"w{i}").start() for i in range(2)]
    try:
        # A worker joins the group once warm: both hold partitions before the clicks come.
        shared = wait_until(lambda: all("assigned partitions" in w.log() for w in workers), 180)
        assert shared, "\n".join(w.log()[-2000:] for w in workers)
        produce(stack.broker, cfg.clicks, records(events[:10_000]))
        assert collector.wait_for(10_000, timeout=120), workers[0].log()[-3000:]
        workers[0].stop(signal.SIGKILL)
        produce(stack.broker, cfg.clicks, records(events[10_000:]))
        assert collector.wait_for(len(events), timeout=120), workers[1].log()[-3000:]
    finally:
        for w in workers:
            w.stop()
        collector.stop_flag.set()
        collector.join(5)
    assert collector.answered >= {e.event_id for e in events}
