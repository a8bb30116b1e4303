"""The worker's HTTP API: post clicks, pull the latest recommendations, health, metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from stream.devstack import EmbeddedStack, free_port
from stream.testing import WorkerProcess
from tests.integration.helpers import http_call, make_config, wait_for_ok


def test_post_clicks_and_pull_recommendations(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    port = free_port()
    cfg.extra_env["STREAMREC_WEB_PORT"] = str(port)
    base = f"http://127.0.0.1:{port}"
    with WorkerProcess(cfg) as worker:
        assert wait_for_ok(f"{base}/health")[0] == 200, worker.log()[-3000:]
        status, body = http_call(
            f"{base}/v1/default/events",
            [
                {"session_id": "web-1", "item_id": "A13"},
                {"session_id": "web-1", "item_id": "A16", "event_id": "w2"},
            ],
        )
        answer = json.loads(body)
        assert status == 202 and answer["accepted"] == 2, answer
        assert len(answer["event_ids"]) == 2 and answer["event_ids"][1] == "w2"

        # Bad input: a reason, and nothing sent.
        status, body = http_call(f"{base}/v1/default/events", {"session_id": "web-2", "item_id": 7})
        assert status == 400 and "item_id" in json.loads(body)["error"]
        status, body = http_call(
            f"{base}/v1/default/events", {"tenant": "other", "session_id": "s", "item_id": "A1"}
        )
        assert status == 400 and "differs" in json.loads(body)["error"]

        url = f"{base}/v1/default/sessions/web-1/recommendations"
        deadline = time.monotonic() + 30
        while True:
            status, body = http_call(url)
            rec = json.loads(body) if status == 200 else {}
            if rec.get("event_id") == "w2" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rec.get("event_id") == "w2", (status, body)
        assert rec["trigger_item"] == "A16" and rec["items"] and rec["model_version"]
        # The tenant's default rule (exclude current): never the item being looked at.
        assert all(i["item_id"] != "A16" for i in rec["items"])
        assert http_call(f"{base}/v1/default/sessions/web-2/recommendations")[0] == 404

        # The batch is counted once its records are delivered, just after its session
        # updates can be read: give the counters a moment.
        deadline = time.monotonic() + 10
        while True:
            status, body = http_call(f"{base}/metrics")
            assert status == 200
            metrics = dict(
                line.split(" ")
                for line in body.decode().splitlines()
                if line and not line.startswith("#")
            )
            if float(metrics["streamrec_events_total"]) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert float(metrics["streamrec_events_total"]) >= 2
        assert float(metrics["streamrec_recommendations_total"]) >= 2
