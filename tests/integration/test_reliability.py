"""The worker loses nothing: kill -9, SIGTERM, a Redis outage, a second worker."""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
from confluent_kafka import Consumer
from redis.asyncio import Redis

from state.sessions import SessionStore
from stream.devstack import EmbeddedStack, Service, free_port
from stream.events import ClickEvent
from tests.integration.helpers import WorkerProcess, produce
from tests.integration.test_worker import make_config

ITEMS = ["A13", "A16", "B4", "C17", "P1", "A2", "B10", "C5", "A1", "B1", "C1", "P2"]
CAP = 50  # the worker's default session cap


def make_events(n: int, sessions: int, seed: int = 1) -> list[ClickEvent]:
    """Clicks over `sessions` sessions whose ids are unique to this call (Redis is shared)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    last: dict[str, str] = {}
    out = []
    for i in range(n):
        sid = f"{run}-s{rng.randrange(sessions)}"
        # Some consecutive repeats, which the session list must collapse.
        item = last[sid] if sid in last and rng.random() < 0.2 else rng.choice(ITEMS)
        last[sid] = item
        out.append(ClickEvent("default", sid, item, time.time(), event_id=f"e{i}"))
    return out


def expected_sessions(events: list[ClickEvent], cap: int = CAP) -> dict[str, list[str]]:
    """The session lists computed offline by the worker's rules."""
    lists: dict[str, list[str]] = {}
    for e in events:
        items = lists.setdefault(e.session_id, [])
        if not items or items[-1] != e.item_id:
            items.append(e.item_id)
            del items[:-cap]
    return lists


class RecsCollector(threading.Thread):
    """Reads the recommendations topic in the background, remembering answered event ids."""

    def __init__(self, broker: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.answered: set[str] = set()
        self.versions: list[tuple[float, str | None]] = []  # (emitted_ts, model_version)
        self.stop_flag = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": broker,
                "group.id": f"collector-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.subscribe([topic])

    def run(self) -> None:
        try:
            while not self.stop_flag.is_set():
                for msg in self._consumer.consume(2000, timeout=0.1):
                    if msg.error() is None:
                        rec = orjson.loads(msg.value())
                        self.answered.add(rec["event_id"])
                        self.versions.append((rec["emitted_ts"], rec["model_version"]))
        finally:
            self._consumer.close()

    def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.answered) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.answered) >= n


async def _redis_sessions(url: str, tenant: str, sessions: list[str]) -> dict[str, list[str]]:
    client = Redis.from_url(url, decode_responses=True)
    try:
        store = SessionStore(client, cap=1, ttl_s=1)
        return {s: await store.session_items(tenant, s) for s in sessions}
    finally:
        await client.aclose()


def _records(events: list[ClickEvent]) -> list[tuple[bytes, bytes]]:
    return [(e.session_id.encode(), e.to_json()) for e in events]


def test_chaos_kill9_three_times_loses_nothing_and_duplicates_nothing(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    events = make_events(100_000, sessions=3_000)
    produce(stack.broker, cfg.clicks, _records(events))
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
    got = asyncio.run(_redis_sessions(stack.redis_url, "default", sorted(want)))
    assert got == want


def test_sigterm_finishes_the_batch_and_exits_quickly(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    events = make_events(30_000, sessions=500, seed=2)
    produce(stack.broker, cfg.clicks, _records(events))
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
    assert asyncio.run(_redis_sessions(stack.redis_url, "default", sorted(want))) == want


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
            produce(stack.broker, cfg.clicks, _records(first))
            assert collector.wait_for(len(first), timeout=90), worker.log()[-3000:]
            redis.stop()
            produce(stack.broker, cfg.clicks, _records(second))
            time.sleep(3)
            assert worker.alive()
            assert len(collector.answered) == len(first)  # nothing answered without Redis
            redis.start()
            assert collector.wait_for(len(first) + len(second), timeout=60), worker.log()[-3000:]
            log = worker.log()
        assert log.count("Redis unavailable") == 1, "logged once per state change"
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
    events = make_events(40_000, sessions=2_000, seed=5)
    collector = RecsCollector(stack.broker, cfg.recs)
    collector.start()
    workers = [WorkerProcess(cfg, name=f"w{i}").start() for i in range(2)]
    try:
        produce(stack.broker, cfg.clicks, _records(events[:10_000]))
        assert collector.wait_for(10_000, timeout=120), workers[0].log()[-3000:]
        assert all("assigned partitions" in w.log() for w in workers)
        workers[0].stop(signal.SIGKILL)
        produce(stack.broker, cfg.clicks, _records(events[10_000:]))
        assert collector.wait_for(len(events), timeout=120), workers[1].log()[-3000:]
    finally:
        for w in workers:
            w.stop()
        collector.stop_flag.set()
        collector.join(5)
    assert collector.answered >= {e.event_id for e in events}
