"""Several workers through a rebalance, exactly once, with a bandit running: three
workers share a 12-partition clicks topic; mid-stream one is stopped (SIGTERM) and
another added. A read_committed reader sees one recommendation per click, and every
session keeps its arm when its partition moves to another worker."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Message

from models.registry import Registry
from stream.dev.stack import EmbeddedStack
from stream.dev.testing import WorkerConfig, WorkerProcess, produce
from stream.kafka.topics import ensure_topics
from tests.integration.helpers import ITEMS, TopicWatcher, run_cli, wait_until

SESSIONS = 600
CLICKS = 24  # a session's clicks, spread over the whole stream


class Answers(TopicWatcher):
    """read_committed: each event id's count, and the arms that served each session."""

    def __init__(self, broker: str, topic: str) -> None:
        super().__init__(broker, [topic], {"isolation.level": "read_committed"})
        self.seen: Counter[str] = Counter()
        self.arms: dict[str, list[str]] = defaultdict(list)

    def record(self, msg: Message) -> None:
        rec = orjson.loads(msg.value())
        self.seen[rec["event_id"]] += 1
        self.arms[rec["session_id"]].append(rec["variant"])

    def count(self) -> int:
        return len(self.seen)


def _tenant_with_two_versions(
    prefix: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    trained_model_dir: Path,
    stack: EmbeddedStack,
    env: dict[str, str],
) -> tuple[str, str, WorkerConfig]:
    """A tenant whose registry holds the trained model twice (v1 in service, v2 to test)
    and a worker configuration of its own topics; returns the tenant, v2 and the config."""
    tenant = unique_name(prefix)
    models = tmp_path / "models"
    shutil.copytree(trained_model_dir / "default", models / tenant)
    registry = Registry(models)
    v2 = registry.register(tenant, registry.load(tenant), {})
    cfg = WorkerConfig(
        stack,
        tmp_path,
        models,
        unique_name("clicks"),
        unique_name("recs"),
        unique_name("dlq"),
        unique_name("app"),
        env,
    )
    return tenant, v2, cfg


def _stream(tenant: str) -> list[tuple[bytes, bytes]]:
    """Every session's clicks interleaved (one click of each session per round), keyed
    by session: each phase of the test has clicks of every session."""
    rng = random.Random(4)
    out = []
    for k in range(CLICKS):
        for s in rng.sample(range(SESSIONS), SESSIONS):
            sid = f"s{s}"
            event = {"tenant": tenant, "session_id": sid, "item_id": rng.choice(ITEMS),
                     "ts": time.time(), "event_id": f"{sid}-{k}"}  # fmt: skip
            out.append((sid.encode(), orjson.dumps(event)))
    return out


@pytest.mark.timeout(1200)
def test_three_workers_through_a_rebalance_lose_nothing_duplicate_nothing_keep_arms(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    if stack.broker_kind != "kafka":
        pytest.skip("exactly-once needs Apache Kafka's transactions")
    tenant, v2, cfg = _tenant_with_two_versions(
        "bandit",
        unique_name,
        tmp_path,
        trained_model_dir,
        stack,
        {"STREAMREC_DELIVERY": "exactly_once", "STREAMREC_BANDIT_INTERVAL_S": "1"},
    )
    ensure_topics(stack.broker, [cfg.clicks], partitions=12)
    ensure_topics(stack.broker, [cfg.recs, cfg.dlq, f"{cfg.clicks}.feedback"], partitions=4)
    started = subprocess.run(
        [sys.executable, "-m", "stream", "bandit", "start", tenant, "v1", v2],
        env=cfg.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    stream = _stream(tenant)
    third = len(stream) // 3
    answers = Answers(stack.broker, cfg.recs)
    answers.start()
    workers = [WorkerProcess(cfg, name=f"w{i}").start() for i in range(3)]
    logs = lambda: "\n".join(w.log()[-1500:] for w in workers)  # noqa: E731
    try:
        # Three workers compiling their kernels at once (a session's first) take a while.
        ready = wait_until(lambda: all("assigned partitions" in w.log() for w in workers), 420)
        assert ready, logs()
        produce(stack.broker, cfg.clicks, stream[:third])
        assert answers.wait_for(third // 2, timeout=180), logs()
        # Mid-stream: one worker stopped while the others work, its partitions move.
        assert workers[0].stop(signal.SIGTERM, timeout=30) == 0, workers[0].log()[-3000:]
        produce(stack.broker, cfg.clicks, stream[third : 2 * third])
        assert answers.wait_for(third + third // 2, timeout=180), logs()
        # And one added: partitions move again, to a worker that has seen none.
        workers.append(WorkerProcess(cfg, name="w3").start())
        joined = wait_until(lambda: "assigned partitions" in workers[3].log(), 240)
        assert joined, workers[3].log()[-3000:]
        produce(stack.broker, cfg.clicks, stream[2 * third :])
        assert answers.wait_for(len(stream), timeout=240), logs()
        time.sleep(3)  # room for a duplicate to show up, if there were one
        moved = [w for w in workers[1:] if w.log().count("assigned partitions") > 1]
    finally:
        for w in workers:
            w.stop()
        answers.stop_flag.set()
        answers.join(10)

    sent = {orjson.loads(v)["event_id"] for _, v in stream}
    assert set(answers.seen) == sent, f"{len(sent - set(answers.seen))} clicks not answered"
    duplicated = {k: n for k, n in answers.seen.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} answered twice: {list(duplicated)[:5]}"
    assert moved, "no partition moved between the remaining workers"
    # The bandit serves both arms, and each session stays on its first one.
    assert {a for arms in answers.arms.values() for a in arms} == {"v1", v2}
    switched = {s: arms for s, arms in answers.arms.items() if len(set(arms)) > 1}
    assert not switched, f"{len(switched)} sessions changed arms: {list(switched.items())[:2]}"


def _kill_when(worker: WorkerProcess, check: Callable[[], bool], timeout: float) -> bool:
    """SIGKILL ``worker`` as soon as ``check()`` holds (asked every few ms): it gets no
    time to write what it still holds (its timer writes that once a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            worker.stop(signal.SIGKILL)
            return True
        time.sleep(0.002)
    return False


@pytest.mark.timeout(900)
def test_a_session_keeps_its_arm_when_the_worker_that_placed_it_is_killed_at_once(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    """A session's first clicks answered, then its worker killed at once, before it wrote
    the session's latest list (its timer does that within a second) and before it
    committed the offsets: the next worker, under other shares by then, serves the
    session's clicks delivered again and its next ones from the same arm."""
    if stack.broker_kind != "kafka":
        pytest.skip("checked on Apache Kafka only")
    tenant, v2, cfg = _tenant_with_two_versions(
        "ab", unique_name, tmp_path, trained_model_dir, stack, {}
    )
    ensure_topics(stack.broker, [cfg.clicks], partitions=1)
    ensure_topics(stack.broker, [cfg.recs, cfg.dlq, f"{cfg.clicks}.feedback"], partitions=1)

    def streamrec(*args: str) -> None:
        run_cli(cfg, *args)

    def experiment(share: float) -> None:
        streamrec("experiment", "start", tenant, "--variant", v2, "--share", str(share))

    def clicks(k: int) -> list[tuple[bytes, bytes]]:
        return [
            (f"s{s}".encode(), orjson.dumps({"tenant": tenant, "session_id": f"s{s}",
             "item_id": ITEMS[(s + k) % len(ITEMS)], "event_id": f"s{s}-{k}"}))
            for s in range(200)
        ]  # fmt: skip

    experiment(0.5)
    answers = Answers(stack.broker, cfg.recs)
    answers.start()
    # Two clicks of every session, most in the first batch: none consumes a written list.
    produce(stack.broker, cfg.clicks, clicks(0) + clicks(1))
    first = WorkerProcess(cfg, name="first").start()
    second: WorkerProcess | None = None
    try:
        # Killed as soon as its first answers can be read: delivered at least once, they
        # can be read before its timer writes the lists (an exactly-once commit can take
        # longer than that).
        killed = _kill_when(first, lambda: answers.count() > 0, 300)
        assert killed, first.log()[-3000:]
        # Shares that would place many of these sessions on the other arm now.
        streamrec("experiment", "stop", tenant, "--keep")
        experiment(0.9)
        second = WorkerProcess(cfg, name="second").start()
        produce(stack.broker, cfg.clicks, clicks(2))
        assert answers.wait_for(600, timeout=300), second.log()[-3000:]
    finally:
        for w in (first, second):
            if w is not None:
                w.stop()
        answers.stop_flag.set()
        answers.join(10)

    assert len(answers.seen) == 600  # some more than once: delivered again after the kill
    before = {s: arms[0] for s, arms in answers.arms.items()}
    assert set(before.values()) == {"v1", v2}
    switched = {s: arms for s, arms in answers.arms.items() if len(set(arms)) > 1}
    assert not switched, f"{len(switched)} sessions changed arms: {list(switched.items())[:2]}"
