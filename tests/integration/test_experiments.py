"""Online experiments on the real broker and Redis: one tenant, a good version
(trained on real sessions) and a bad one (trained on the same sessions with their items
shuffled). A bandit moves the traffic to the good one; an A/B test at 50/50 decides to
promote it; `stats` shows the good one's hit rate above the bad one's."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from models.datasets import read_clicks, sessionize
from models.policy_file import read_policy, rollout_history
from models.registry import Registry
from models.train import TrainParams, train_model
from stream.dev.stack import EmbeddedStack
from stream.dev.testing import WorkerProcess, consume, produce
from stream.kafka.topics import ensure_topics
from tests.integration.helpers import make_config

pytestmark = [pytest.mark.broker_agnostic, pytest.mark.cluster]

RATE = 5000  # clicks a second: the replay lasts long enough for the shares to move


@pytest.fixture(scope="module")
def eshop_sessions(eshop_csv: Path) -> list[list[str]]:
    return sessionize(read_clicks(eshop_csv, fmt="eshop"))


def shuffled(sessions: list[list[str]], seed: int = 3) -> list[list[str]]:
    """The same sessions (lengths, item popularity) with the items shuffled among them:
    nothing left of what follows what."""
    rng = random.Random(seed)
    items = [i for s in sessions for i in s]
    rng.shuffle(items)
    out, at = [], 0
    for s in sessions:
        out.append(items[at : at + len(s)])
        at += len(s)
    return out


def replay(
    tenant: str, sessions: list[list[str]], n: int, prefix: str, seed: int = 1
) -> Iterator[tuple[bytes, bytes]]:
    """``n`` clicks of real sessions, 200 sessions open at a time, interleaved."""
    rng = random.Random(seed)
    order = list(range(len(sessions)))
    rng.shuffle(order)
    queue = iter(order)
    open_: list[tuple[str, list[str], int]] = []
    sent = 0
    k = 0
    while sent < n:
        while len(open_) < 200:
            j = next(queue, None)
            if j is None:
                queue = iter(order)
                k += 1
                continue
            open_.append((f"{prefix}-{k}-{j}", sessions[j], 0))
        slot = rng.randrange(len(open_))
        sid, items, pos = open_[slot]
        event = {
            "tenant": tenant,
            "session_id": sid,
            "item_id": items[pos],
            "ts": time.time(),
            "event_id": f"{sid}-{pos}",
        }
        yield sid.encode(), orjson.dumps(event)
        sent += 1
        if pos + 1 < len(items):
            open_[slot] = (sid, items, pos + 1)
        else:
            open_.pop(slot)


def paced(broker: str, topic: str, records: Iterator[tuple[bytes, bytes]]) -> int:
    chunk: list[tuple[bytes, bytes]] = []
    started, sent = time.monotonic(), 0
    for record in records:
        chunk.append(record)
        if len(chunk) == RATE // 10:
            sent += produce(broker, topic, chunk)
            chunk = []
            time.sleep(max(0.0, started + sent / RATE - time.monotonic()))
    return sent + (produce(broker, topic, chunk) if chunk else 0)


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stream", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(900)
def test_bandit_and_ab_find_the_good_version(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    trained_model_dir: Path,
    eshop_sessions: list[list[str]],
) -> None:
    tenant = unique_name("abshop")
    registry = Registry(tmp_path / "models")
    bad = train_model(shuffled(eshop_sessions), TrainParams(seed=7))
    registry.promote(tenant, registry.register(tenant, bad, {}))  # v1, in service
    good = registry.register(tenant, Registry(trained_model_dir).load("default"), {})  # v2
    assert (registry.current_version(tenant), good) == ("v1", "v2")

    cfg = make_config(stack, unique_name, tmp_path, tmp_path / "models")
    feedback_topic = unique_name("feedback")
    ensure_topics(stack.broker, [feedback_topic], partitions=4)
    cfg.extra_env.update(
        {
            "STREAMREC_FEEDBACK_TOPIC": feedback_topic,
            # One-second buckets: each phase counts only its own traffic.
            "STREAMREC_FEEDBACK_BUCKET_S": "1",
            "STREAMREC_BANDIT_INTERVAL_S": "1",
        }
    )
    env = cfg.env()
    with WorkerProcess(cfg) as worker:
        # Bandit: 50,000 clicks.
        cli(env, "bandit", "start", tenant, "v1", "v2", "--discount", "0.999")
        n = paced(stack.broker, cfg.clicks, replay(tenant, eshop_sessions, 50_000, "bandit"))
        recs = consume(stack.broker, cfg.recs, n, timeout=180)
        assert len(recs) >= n, worker.log()[-3000:]
        records = sorted((orjson.loads(m.value()) for m in recs), key=lambda r: r["emitted_ts"])
        last = records[-10_000:]
        from_good = sum(r["variant"] == "v2" for r in last) / len(last)
        assert from_good >= 0.8, (from_good, worker.log()[-2000:])
        time.sleep(2.5)  # the last batch's counts go out
        report = json.loads(cli(env, "stats", tenant, "--since", "1h", "--json"))
        v1, v2 = report["variants"]["v1"], report["variants"]["v2"]
        assert v2["hit_rate"] > v1["hit_rate"], report
        assert v2["ci"][0] > v1["ci"][1], report  # apart beyond doubt
        print(f"\nbandit: {from_good:.1%} of the last 10,000 from v2; hit rate v1 "
              f"{v1['hit_rate']:.3f} {v1['ci']}, v2 {v2['hit_rate']:.3f} {v2['ci']}")  # fmt: skip
        status = json.loads(cli(env, "experiment", "status", tenant, "--json"))
        assert status["policy"] == "bandit" and status["arms"]["v2"]["share"] > 0.8, status
        cli(env, "experiment", "stop", tenant, "--keep")

        # A/B at 50/50: the decision becomes "promote" for the good version.
        cli(env, "experiment", "start", tenant, "--variant", "v2", "--share", "0.5",
            "--min-recommendations", "1000")  # fmt: skip
        status = json.loads(cli(env, "experiment", "status", tenant, "--json"))
        assert status["policy"] == "ab" and status["decision"] == "running", status
        paced(stack.broker, cfg.clicks, replay(tenant, eshop_sessions, 15_000, "ab", seed=2))
        deadline = time.monotonic() + 60
        while True:
            status = json.loads(cli(env, "experiment", "status", tenant, "--json"))
            if status["decision"] != "running" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert status["decision"] == "promote" and status["p_value"] < 0.05, status
        arms = status["arms"]
        print(f"A/B: {status['decision']} p={status['p_value']:.2g} {arms}")
        assert set(arms) == {"v1", "v2"} and arms["v1"]["share"] == arms["v2"]["share"] == 0.5
        assert abs(arms["v1"]["recommendations"] / arms["v2"]["recommendations"] - 1) < 0.2
        cli(env, "experiment", "stop", tenant, "--promote")
        assert registry.current_version(tenant) == "v2"
        assert json.loads(cli(env, "experiment", "status", tenant, "--json"))["policy"] == "fixed"


@pytest.mark.timeout(600)
def test_staged_rollout_of_a_bad_candidate_ends_in_rollback(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    trained_model_dir: Path,
    eshop_sessions: list[list[str]],
) -> None:
    """The trainer trains a candidate on a click log of shuffled sessions; a gate margin
    of -1 lets it through; online, at its first stage (10 %), it is worse than the good
    version in service and is rolled back."""
    tenant = unique_name("rollout")
    registry = Registry(tmp_path / "models")
    registry.promote(
        tenant, registry.register(tenant, Registry(trained_model_dir).load("default"), {})
    )
    cfg = make_config(stack, unique_name, tmp_path, tmp_path / "models")
    feedback_topic = unique_name("feedback")
    ensure_topics(stack.broker, [feedback_topic], partitions=4)
    cfg.extra_env.update(
        {"STREAMREC_FEEDBACK_TOPIC": feedback_topic, "STREAMREC_FEEDBACK_BUCKET_S": "1"}
    )
    env = cfg.env()
    start = time.time() - 1800
    log = [
        (f"log-{n}".encode(), orjson.dumps(
            {"tenant": tenant, "session_id": f"log-{n}", "item_id": item,
             "ts": start + n * 0.1 + j * 0.01, "event_id": f"log-{n}-{j}"}))
        for n, s in enumerate(shuffled(eshop_sessions)[:2000])
        for j, item in enumerate(s)
    ]  # fmt: skip
    trainer = None
    try:
        with WorkerProcess(cfg) as worker:
            # The log's (shuffled) traffic is answered before the rollout begins, so
            # the rollout's counters see only the live traffic below.
            produce(stack.broker, cfg.clicks, log)
            assert len(consume(stack.broker, cfg.recs, len(log), timeout=120)) >= len(log)
            trainer = subprocess.Popen(
                [sys.executable, "-m", "stream", "trainer", "--tenant", tenant,
                 "--rollout", "staged", "--gate-margin", "-1", "--every", "1h",
                 "--rollout-check", "1s", "--rollout-min-recommendations", "300",
                 "--epochs", "2", "--jobs", "1"],
                env=env, stdout=open(tmp_path / "trainer.log", "wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + 180
            while read_policy(registry, tenant) is None:
                assert time.monotonic() < deadline and trainer.poll() is None, (
                    tmp_path / "trainer.log"
                ).read_text()[-3000:]
                time.sleep(0.5)
            policy = read_policy(registry, tenant)
            assert policy["candidate"] == "v2" and policy["arms"]["v2"] == 0.1, policy
            assert registry.current_version(tenant) == "v1"

            traffic = replay(tenant, eshop_sessions, 40_000, "live", seed=4)
            deadline = time.monotonic() + 120
            while read_policy(registry, tenant) is not None:
                assert time.monotonic() < deadline, worker.log()[-2000:]
                chunk = [next(traffic) for _ in range(RATE // 2)]
                produce(stack.broker, cfg.clicks, chunk)
                time.sleep(0.5)
    finally:
        if trainer is not None:
            trainer.terminate()
            trainer.wait(15)
    steps = [e["action"] for e in rollout_history(registry, tenant)]
    assert steps == ["rollout-start", "rollout-rollback"], steps
    back = rollout_history(registry, tenant)[-1]
    assert back["candidate_hit_rate"] < back["control_hit_rate"], back
    print(f"\nrollout: {back}")
    assert registry.current_version(tenant) == "v1"
    assert "v2" not in registry.promoted_versions(tenant)
    text = (tmp_path / "trainer.log").read_text()
    assert "rollout-start v2" in text and "rollout-rollback v2" in text, text[-3000:]
