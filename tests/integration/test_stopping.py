"""A worker whose broker or Redis is gone stays readable and stops on time: a few log
lines per back-off step (not hundreds a second), each traceback in one record, and an
exit within 10 s of SIGTERM. Each case runs on services of its own, which it stops."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.dev.stack import EmbeddedStack, Service, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, produce
from stream.kafka.topics import ensure_topics
from tests.integration.helpers import RecsCollector, make_events, records

OUTAGE_S = 15
# Lines at WARNING or above over the outage: one per back-off step of each thing that
# retries (the batch, the Kafka clients' reconnects), a few dozen at most.
MAX_COMPLAINTS = 60
# A record whose message is a lone token or caret: a traceback written one token a line.
TOKEN_LINE = re.compile(r"\] \[(?:WARNING|ERROR)\] (?:\^+|\.|:|\w+)\s*$")


def _outage(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    model_dir: Path,
    stop: str,
) -> None:
    """A worker in service, then ``stop`` ("broker", "redis" or "both"; "broker-eos": the
    broker, under a worker in exactly-once mode) gone for OUTAGE_S; then SIGTERM."""
    exactly_once = stop.endswith("-eos")
    stop = stop.removesuffix("-eos")
    redis = Service("redis", "127.0.0.1", free_port(), tmp_path / "redis")
    broker = stack.another_broker(tmp_path / "broker") if stop != "redis" else None
    redis.start()
    if broker is not None:
        broker.start()
    address = f"{broker.host}:{broker.port}" if broker is not None else stack.broker
    own = EmbeddedStack(tmp_path / "unused", address, f"redis://127.0.0.1:{redis.port}/0")
    cfg = WorkerConfig(
        own,
        tmp_path / "home",
        model_dir,
        unique_name("clicks"),
        unique_name("recs"),
        unique_name("dlq"),
        unique_name("app"),
    )
    if exactly_once:
        cfg.extra_env["STREAMREC_DELIVERY"] = "exactly_once"
    ensure_topics(address, [cfg.clicks, cfg.recs, cfg.dlq], partitions=4)
    collector = RecsCollector(address, cfg.recs)
    collector.start()
    worker = WorkerProcess(cfg)
    try:
        worker.start()
        first = make_events(500, 50, seed=21)
        produce(address, cfg.clicks, records(first))
        assert collector.wait_for(len(first), timeout=90), worker.log()[-3000:]
        collector.stop_flag.set()
        if stop in ("redis", "both"):
            redis.stop()
        if stop == "redis":
            # Clicks arrive while Redis is away: the worker holds them and retries.
            produce(address, cfg.clicks, records(make_events(500, 50, seed=22)))
        if broker is not None:
            if exactly_once:  # a batch in hand when the broker goes: mid-transaction
                produce(address, cfg.clicks, records(make_events(2_000, 50, seed=23)))
            broker.stop()
        before = len(worker.log().splitlines())
        time.sleep(OUTAGE_S)
        assert worker.alive(), worker.log()[-3000:]
        lines = worker.log().splitlines()[before:]
        started = time.monotonic()
        rc = worker.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - started
    finally:
        collector.stop_flag.set()
        worker.stop(signal.SIGKILL)
        redis.stop()
        if broker is not None:
            broker.stop()
    complaints = [line for line in lines if "[ERROR]" in line or "[WARNING]" in line]
    assert len(complaints) <= MAX_COMPLAINTS, "\n".join(complaints[-80:])
    assert not [line for line in lines if TOKEN_LINE.search(line)], "\n".join(lines[-80:])
    assert "--- Logging error ---" not in lines, "\n".join(lines[-80:])
    assert took < 10, f"SIGTERM took {took:.1f} s\n" + worker.log()[-3000:]
    assert rc == 0, worker.log()[-3000:]
    if stop == "redis":
        held = [line for line in complaints if "Redis unavailable" in line]
        # One line per back-off step, each pause longer than the one before (up to 5 s).
        assert 3 <= len(held) <= 10, "\n".join(complaints)
        pauses = [float(m) for m in re.findall(r"retrying in ([\d.]+) s", "\n".join(held))]
        assert pauses[-1] > pauses[0]


@pytest.mark.parametrize("stop", ["both", "redis", "broker", "broker-eos"])
def test_a_worker_without_its_broker_or_redis_is_quiet_and_stops_in_time(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    trained_model_dir: Path,
    stop: str,
) -> None:
    if stop.endswith("-eos") and stack.broker_kind != "kafka":
        pytest.skip("exactly-once needs Apache Kafka's transactions")
    _outage(stack, unique_name, tmp_path, trained_model_dir, stop)
