"""Acceptance: fuzzed messages through Kafka, each answered (or counted) or dead-lettered:
10,000 of hand-made kinds, and the hypothesis payloads of the parsers' fuzzing."""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, settings

from models.names import canonical_tenant, tenant_refusal
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerProcess, consume
from stream.events import InvalidEvent, parse_event, parse_feedback
from stream.kafka.topics import ensure_topics
from stream.pipeline.processor import DLQ_MAX_ORIGINAL_BYTES, STAND_IN_HEAD_BYTES
from tests.integration.helpers import call, make_config, wait_until

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


def _drawn(strategy: Any, n: int) -> list[bytes]:
    """``n`` payloads generated by hypothesis (derandomized: the same ones every run)."""
    out: list[bytes] = []

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: bytes) -> None:
        out.append(value)

    collect()
    return out


def _accepted(parse: Callable[[bytes], object], value: bytes) -> bool:
    try:
        parse(value)
    except InvalidEvent:
        return False
    return True


def test_hypothesis_payloads_through_kafka_none_lost(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    """10,000 clicks and 2,000 feedback messages generated by hypothesis (half the
    parsers' fuzzing payloads, tests/unit/stream/test_events_fuzz.py, half near-valid objects),
    as Kafka messages: every click the parser accepts is answered, every feedback it
    accepts counted, every message it refuses dead-lettered with its original bytes and
    a reason. None lost."""
    from hypothesis import strategies as st

    from tests.unit.stream.test_events_fuzz import json_value, raw_bytes

    models = tmp_path / "models"
    shutil.copytree(trained_model_dir, models)  # random tenants get created: a copy
    cfg = make_config(stack, unique_name, tmp_path, models)
    feedback_topic = unique_name("feedback")
    ensure_topics(stack.broker, [feedback_topic], partitions=4)
    port = free_port()
    cfg.extra_env.update(STREAMREC_FEEDBACK_TOPIC=feedback_topic, STREAMREC_WEB_PORT=str(port))

    # The parsers' payloads are mostly refused; valid-looking ones (any printable text as
    # ids, generated tenant names, odd extra fields) make the accepted half.
    ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30)
    names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,8}", fullmatch=True)
    common = {
        "session_id": ids,
        "item_id": ids,
        "ts": st.floats(0, 2e9),
        "tenant": st.one_of(st.just("default"), names),
    }
    near_click = st.fixed_dictionaries(
        common, optional={"event_id": ids, "event_type": ids, "extra": json_value}
    )
    # Feedback names a tenant that exists (the model's): feedback for one that does not is
    # dead-lettered whatever its shape (tests/integration/test_feedback_worker.py).
    near_feedback = st.fixed_dictionaries(
        {
            **common,
            "tenant": st.just("default"),
            "type": st.sampled_from(["click", "add_to_cart", "purchase"]),
        },
        optional={"rec_id": ids, "extra": json_value},
    )

    def dumped(strategy: Any) -> Any:
        return strategy.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS))

    clicks = _drawn(raw_bytes, N // 2) + _drawn(dumped(near_click), N // 2)
    feedback = _drawn(raw_bytes.map(lambda v: v + b" "), N // 10) + _drawn(
        dumped(near_feedback), N // 10
    )
    assert len(clicks) == N and len(feedback) == N // 5
    # Without ts a message takes its Kafka timestamp: about now, when it is produced.
    now = time.time()
    good_clicks = sum(_accepted(lambda v: parse_event(v, default_ts=now), v) for v in clicks)
    bad_clicks = [v for v in clicks if not _accepted(lambda v: parse_event(v, default_ts=now), v)]
    good_feedback = sum(_accepted(lambda v: parse_feedback(v, default_ts=now), v) for v in feedback)
    bad_feedback = [
        v for v in feedback if not _accepted(lambda v: parse_feedback(v, default_ts=now), v)
    ]
    print(f"clicks {good_clicks} accepted / {len(bad_clicks)} refused; feedback "
          f"{good_feedback} / {len(bad_feedback)}")  # fmt: skip
    # Both outcomes are well represented, or the test proves little.
    assert good_clicks > 500 and len(bad_clicks) > 500, (good_clicks, len(bad_clicks))
    assert good_feedback > 200 and len(bad_feedback) > 500, (good_feedback, len(bad_feedback))

    # A click the parser accepts is answered unless its tenant may not be created: a
    # reserved name, or one too like an existing tenant's (of two generated lookalikes,
    # whichever arrives first is created). Those are dead-lettered as unknown tenants.
    accepted = [v for v in clicks if _accepted(lambda v: parse_event(v, default_ts=now), v)]
    tenants = {parse_event(v, default_ts=now).tenant for v in accepted} | {"default"}
    forms = Counter(canonical_tenant(t) for t in tenants)

    def surely_served(tenant: str) -> bool:
        if tenant == "default":
            return True
        return tenant_refusal(tenant, []) is None and forms[canonical_tenant(tenant)] == 1

    sure = [v for v in accepted if surely_served(parse_event(v, default_ts=now).tenant)]
    producer = Producer({"bootstrap.servers": stack.broker, "linger.ms": 5})
    for i, value in enumerate(clicks):
        producer.produce(cfg.clicks, key=str(i % 97).encode(), value=value)
    for i, value in enumerate(feedback):
        producer.produce(feedback_topic, key=str(i % 97).encode(), value=value)
    assert producer.flush(60) == 0

    with WorkerProcess(cfg) as worker:
        # Every click ends answered or dead-lettered; of the accepted ones, how many are
        # refused for their tenant's name is only known at the end.
        unsure = good_clicks - len(sure)
        dead_max = len(bad_clicks) + len(bad_feedback) + unsure
        out: dict[str, list[Any]] = {}

        def settled() -> bool:
            out["dead"] = consume(stack.broker, cfg.dlq, dead_max, timeout=3)
            out["recs"] = consume(stack.broker, cfg.recs, good_clicks, timeout=3)
            return len(out["dead"]) + len(out["recs"]) >= len(clicks) + len(bad_feedback)

        assert wait_until(settled, 150), (len(out["dead"]), len(out["recs"]))
        dead, recs = out["dead"], out["recs"]

        def counted() -> float:
            status, body = call(f"http://127.0.0.1:{port}/metrics")
            if status != 200:
                return -1
            for line in body.decode().splitlines():
                if line.startswith("streamrec_feedback_total "):
                    return float(line.split()[1])
            return -1

        assert wait_until(lambda: counted() >= good_feedback, 30), (counted(), good_feedback)
        assert counted() == good_feedback
        assert worker.alive(), worker.log()[-3000:]
        assert "Traceback" not in worker.log(), worker.log()[-3000:]

    by_source = {fb: [] for fb in (False, True)}  # type: dict[bool, list[bytes]]
    refused: list[bytes] = []
    for m in dead:
        reason = dict(m.headers() or [])["streamrec-reason"].decode()
        assert reason, m.value()
        if reason.startswith("unknown tenant: "):
            refused.append(m.value() or b"")
        else:
            by_source[reason.startswith("feedback: ")].append(m.value() or b"")
    assert len(recs) + len(refused) == good_clicks, (len(recs), len(refused), good_clicks)
    assert len(recs) >= len(sure), f"{len(sure) - len(recs)} accepted clicks not answered"
    assert not set(refused) & set(sure), "a click of a tenant that could be created refused"
    assert sorted(by_source[False]) == sorted(bad_clicks)
    assert sorted(by_source[True]) == sorted(bad_feedback)
