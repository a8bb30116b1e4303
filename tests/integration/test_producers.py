"""Producers on the real embedded broker: replay delivers exactly once, loops remap sessions,
the helper reports failures when its broker goes away, and a small load test runs end to end."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Message

from models.datasets import read_clicks
from models.ranking import STRATEGIES
from producers import ClickProducer, DeliveryError
from producers.replay import prepare_replay
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, consume
from stream.kafka.topics import ensure_topics

# How long to keep reading after the expected count, to catch duplicates.
EXTRA_WAIT_S = 3.0


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 sessions of the shipped e-shop file (its own format, 377 clicks)."""
    import gzip

    from models.datasets import eshop_path

    path = tmp_path_factory.mktemp("replay") / "small.csv"
    with gzip.open(eshop_path(), "rt", newline="") as src, open(path, "w", newline="") as dst:
        dst.write(src.readline())
        for line in src:
            if int(line.split(";")[5]) > 60:
                break
            dst.write(line)
    return path


def streamrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args], capture_output=True, text=True, timeout=120
    )


def replay(broker: str, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = streamrec("replay", *args, "--broker", broker, "--topic", topic, "--no-progress")
    assert result.returncode == 0, result.stderr
    return result


def read_all(broker: str, topic: str, expected: int) -> list[Message]:
    messages = consume(broker, topic, expected)
    assert len(messages) == expected, f"{len(messages)} of {expected} arrived"
    return messages + consume_more(broker, topic, messages)


def consume_more(broker: str, topic: str, seen: list[Message]) -> list[Message]:
    everything = consume(broker, topic, len(seen) + 1, timeout=EXTRA_WAIT_S)
    return everything[len(seen) :]


def decoded(messages: list[Message]) -> list[dict]:
    return [
        orjson.loads(m.value()) | {"_key": m.key().decode(), "_partition": m.partition()}
        for m in messages
    ]


def test_replay_delivers_every_event_exactly_once_with_session_keys(
    stack: EmbeddedStack, unique_name: Callable[[str], str], small_file: Path
) -> None:
    topic = unique_name("clicks")
    source = prepare_replay(read_clicks(small_file, "eshop"))
    result = replay(stack.broker, topic, str(small_file))
    assert f"sent {len(source):,} events" in result.stdout and "failed 0" in result.stdout

    events = decoded(read_all(stack.broker, topic, len(source)))
    assert len(events) == len(source)  # nothing lost, nothing twice
    assert len({e["event_id"] for e in events}) == len(source)
    assert all(e["_key"] == e["session_id"] for e in events)
    # Each session on one partition, in its click order (the file's `order` column).
    by_session: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_session[e["session_id"]].append(e)
    expected: dict[str, list[str]] = defaultdict(list)
    for sid, item in zip(source.session_ids.tolist(), source.item_ids.tolist(), strict=True):
        expected[sid].append(item)
    assert {s: [e["item_id"] for e in evs] for s, evs in by_session.items()} == expected
    assert all(len({e["_partition"] for e in evs}) == 1 for evs in by_session.values())


def test_loop_2_doubles_the_events_with_distinct_session_ids(
    stack: EmbeddedStack, unique_name: Callable[[str], str], small_file: Path
) -> None:
    topic = unique_name("clicks")
    source = prepare_replay(read_clicks(small_file, "eshop"))
    replay(stack.broker, topic, str(small_file), "--loop", "2", "--rate", "2000")

    events = decoded(read_all(stack.broker, topic, 2 * len(source)))
    assert len(events) == 2 * len(source)
    sessions = {e["session_id"] for e in events}
    assert len(sessions) == 2 * source.n_sessions
    originals = set(source.session_ids.tolist())
    assert sessions == originals | {f"{s}-r1" for s in originals}
    items: dict[str, list[str]] = defaultdict(list)
    for e in events:
        items[e["session_id"]].append(e["item_id"])
    assert all(items[s] == items[f"{s}-r1"] for s in originals)


def test_synth_straight_to_kafka(stack: EmbeddedStack, unique_name: Callable[[str], str]) -> None:
    from producers.synth import SynthParams, generate_clicks

    topic = unique_name("clicks")
    expected = generate_clicks(SynthParams(items=300, sessions=120, seed=4))
    result = streamrec(
        "synth",
        "--kafka",
        "--items",
        "300",
        "--sessions",
        "120",
        "--seed",
        "4",
        "--tenants",
        "2",
        "--broker",
        stack.broker,
        "--topic",
        topic,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    events = decoded(read_all(stack.broker, topic, len(expected)))
    assert sorted(e["item_id"] for e in events) == sorted(expected.item_ids.tolist())
    assert {e["tenant"] for e in events} == {"default-0", "default-1"}
    assert all(e["_key"] == e["session_id"] for e in events)


def test_the_helper_reports_delivery_failures_when_the_broker_stops(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    # A broker of its own: stopping the shared one would break the other tests.
    broker = stack.another_broker(tmp_path)
    broker.start()
    address = f"127.0.0.1:{broker.port}"
    try:
        ensure_topics(address, ["clicks"], partitions=2)
        producer = ClickProducer(address, "clicks", message_timeout_ms=3000)
        for i in range(20):
            producer.send({"session_id": f"s{i % 3}", "item_id": "A13"})
        assert producer.flush(10) == 0
        assert producer.stats.delivered == 20
    finally:
        broker.stop()
    for i in range(10):
        producer.send({"session_id": f"s{i % 3}", "item_id": "B4"})
    stats = producer.close(timeout=15)
    assert (stats.sent, stats.delivered, stats.failed) == (30, 20, 10)
    assert stats.first_error
    with pytest.raises(DeliveryError, match="10 of 30 events were not delivered"):
        producer.raise_for_failures()


def test_replay_to_a_broker_that_is_not_there_is_a_one_line_error(small_file: Path) -> None:
    result = streamrec(
        "replay", str(small_file), "--broker", f"127.0.0.1:{free_port()}", "--no-progress"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("streamrec: error:") and "does not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_small_load_test_against_a_real_worker(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    trained_model_dir: Path,
) -> None:
    cfg = WorkerConfig(
        stack,
        tmp_path,
        trained_model_dir,
        unique_name("clicks"),
        unique_name("recs"),
        unique_name("dlq"),
        unique_name("app"),
    )
    ensure_topics(stack.broker, [cfg.clicks, cfg.recs, cfg.dlq], partitions=4)
    report_path = tmp_path / "lt.json"
    with WorkerProcess(cfg) as worker:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "stream",
                "loadtest",
                "--rate",
                "200",
                "--duration",
                "3",
                "--json",
                str(report_path),
                "--drain-timeout",
                "40",
                "--no-progress",
                "--check",
            ],
            env=cfg.env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr + worker.log()[-3000:]
    report = orjson.loads(report_path.read_bytes())
    assert report["sent"] == 600 and report["answered"] == 600 and report["missing"] == 0
    assert report["dead_letters"] == 0 and report["offered_rate"] == 200
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["lag_end"] == 0
    assert set(report["strategies"]) <= {*STRATEGIES, "no_model"}
    for suffix in (".png", ".md"):
        assert report_path.with_suffix(suffix).stat().st_size > 0
