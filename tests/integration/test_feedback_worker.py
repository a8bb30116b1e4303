"""Explicit feedback end to end: HTTP and the feedback topic into the worker, bad ones
dead-lettered with a reason, counted per variant, read back by `streamrec stats`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from state import keys
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerProcess, consume, produce
from stream.kafka.topics import ensure_topics
from tests.integration.helpers import http_call, make_config, wait_for_ok


def stats(cfg_env: dict[str, str], tenant: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", "stats", tenant, *args],
        env=cfg_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_feedback_is_counted_per_variant_and_bad_feedback_dead_lettered(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    tenant = unique_name("fbshop")
    models = tmp_path / "models"
    shutil.copytree(trained_model_dir / "default", models / tenant)
    cfg = make_config(stack, unique_name, tmp_path, models)
    port = free_port()
    feedback_topic = unique_name("feedback")
    ensure_topics(stack.broker, [feedback_topic], partitions=4)
    cfg.extra_env.update(
        {"STREAMREC_WEB_PORT": str(port), "STREAMREC_FEEDBACK_TOPIC": feedback_topic}
    )
    base = f"http://127.0.0.1:{port}"
    env = cfg.env()
    with WorkerProcess(cfg) as worker:
        assert wait_for_ok(f"{base}/health")[0] == 200, worker.log()[-3000:]
        status, body = http_call(
            f"{base}/v1/{tenant}/events", {"session_id": "s1", "item_id": "A13", "event_id": "c1"}
        )
        assert status == 202, body
        deadline = time.monotonic() + 30
        while True:
            status, body = http_call(f"{base}/v1/{tenant}/sessions/s1/recommendations")
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        rec = json.loads(body)
        assert rec["variant"] == "v1" and rec["rec_id"].startswith("v1-"), rec
        shown = [i["item_id"] for i in rec["items"]]

        # A purchase of a recommended item, attributed by rec_id; a click on the second
        # recommended item (an implicit hit at position 2).
        status, body = http_call(
            f"{base}/v1/{tenant}/feedback",
            {"session_id": "s1", "item_id": shown[0], "type": "purchase", "rec_id": rec["rec_id"]},
        )
        assert status == 202 and json.loads(body) == {"accepted": 1}, body
        status, body = http_call(
            f"{base}/v1/{tenant}/events",
            {"session_id": "s1", "item_id": shown[1], "event_id": "c2"},
        )
        assert status == 202, body

        # Bad feedback over HTTP: 400 and a reason; on the topic: dead-lettered.
        status, body = http_call(
            f"{base}/v1/{tenant}/feedback", {"session_id": "s1", "item_id": "A1", "type": "like"}
        )
        assert status == 400 and "type" in json.loads(body)["error"]
        # Valid feedback for a tenant that does not exist is dead-lettered too: it
        # creates neither the tenant nor counters.
        stranger = unique_name("nosuchshop")
        unknown = {"tenant": stranger, "session_id": "s1", "item_id": shown[0], "type": "click",
                   "ts": time.time()}  # fmt: skip
        produce(
            stack.broker,
            feedback_topic,
            [
                (b"s1", b'{"tenant": "x", "session_id": "s1"}'),
                (b"s1", json.dumps(unknown).encode()),
            ],
        )
        dead = consume(stack.broker, cfg.dlq, 2, timeout=30)
        reasons = sorted(dict(d.headers())["streamrec-reason"].decode() for d in dead)
        assert len(reasons) == 2 and all(r.startswith("feedback: ") for r in reasons), reasons
        assert sum(f"unknown tenant: {stranger!r}" in r for r in reasons) == 1, reasons
        assert all(dict(d.headers())["streamrec-topic"].decode() == feedback_topic for d in dead)

        deadline = time.monotonic() + 30
        while True:
            done = stats(env, tenant, "--since", "1h", "--json")
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            v1 = report["variants"].get("v1", {})
            if (v1.get("purchases"), v1.get("hits")) == (1, 1) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert report["tenant"] == tenant
        assert v1["recommendations"] == 2 and v1["hits"] == 1 and v1["purchases"] == 1, report
        assert v1["hit_rate"] == 0.5 and 0 < v1["ci"][0] < 0.5 < v1["ci"][1] < 1
        assert v1["mean_hit_position"] == 2

        # /metrics: labelled by tenant, variant and strategy, hits, dead letters by reason.
        status, body = http_call(f"{base}/metrics")
        text = body.decode()
        assert status == 200 and "# HELP streamrec_hits_total" in text
        assert f'streamrec_hits_total{{tenant="{tenant}",variant="v1"}} 1.0' in text, text
        assert f'tenant="{tenant}",variant="v1"' in text.split("recommendations_by_variant")[-1]
        assert 'streamrec_dead_letters_by_reason_total{reason="feedback"} 2.0' in text
        for name in (
            "batch_seconds_bucket",
            "event_lag_seconds_count",
            "consumer_lag",
            "model_loads_total",
            "model_swaps_total",
            'tenants{mode="on"}',
        ):
            assert f"streamrec_{name}" in text, name  # fmt: skip
    # The stranger's feedback created neither the tenant nor counters under its name.
    nothing = stats(env, stranger, "--json")
    assert nothing.returncode == 1 and "unknown tenant" in nothing.stderr, nothing
    client = redis.Redis.from_url(stack.redis_url)

    def counters(name: str) -> list[bytes]:
        return list(client.scan_iter(keys.counters(name, 0).rpartition(":")[0] + ":*"))

    assert counters(tenant) and not counters(stranger)
    table = stats(env, tenant)
    assert table.returncode == 0 and "v1" in table.stdout and "50.00%" in table.stdout
    bad = stats(env, tenant, "--since", "soon")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert os.environ.get("STREAMREC_FEEDBACK_TOPIC") is None
