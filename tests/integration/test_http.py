"""The worker's HTTP API: post clicks, pull the latest recommendations, health, metrics;
a slow request head is cut, ids holding a slash are served, lookalike tenants refused."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, consume, produce
from stream.events import ClickEvent
from tests.integration.helpers import http_call, make_config, wait_for_ok, wait_until


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


HEADER_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def bench(
    stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory, trained_model_dir: Path
) -> Iterator[tuple[str, WorkerConfig, Path]]:
    """A worker as the test bench runs it (a click creates its tenant) with a short
    header deadline, on a registry of its own (new tenants are written there)."""
    home = tmp_path_factory.mktemp("http-bench")
    models = home / "models"
    shutil.copytree(trained_model_dir, models)
    run = uuid.uuid4().hex[:6]
    cfg = make_config(stack, lambda prefix: f"{prefix}-{run}", home, models)
    port = free_port()
    cfg.extra_env.update(
        STREAMREC_WEB_PORT=str(port), STREAMREC_WEB_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S)
    )
    base = f"http://127.0.0.1:{port}"
    with WorkerProcess(cfg) as worker:
        assert wait_for_ok(f"{base}/health/ready")[0] == 200, worker.log()[-3000:]
        yield base, cfg, models
        assert "Traceback" not in worker.log(), worker.log()[-3000:]


def test_a_slow_request_head_is_cut_at_the_header_deadline(
    bench: tuple[str, WorkerConfig, Path],
) -> None:
    base = bench[0]
    port = int(base.rsplit(":", 1)[1])
    held = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.send(b"GET /heal")  # half a request line ...
        held.append(sock)
    started = time.monotonic()
    for byte in b"th/li":  # ... and a little more, slowly, on the last one
        held[-1].send(bytes([byte]))
        time.sleep(0.2)
    for sock in held:
        sock.settimeout(HEADER_TIMEOUT_S + 5)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except TimeoutError:
            raise AssertionError(f"still open after {time.monotonic() - started:.1f} s") from None
        finally:
            sock.close()
        assert data.startswith(b"HTTP/1.1 408"), data
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 1.5
    assert http_call(f"{base}/health/live")[0] == 200  # and the server still serves


def test_ids_holding_a_slash_are_served_and_lookalike_tenants_are_not_created(
    stack: EmbeddedStack, bench: tuple[str, WorkerConfig, Path]
) -> None:
    base, cfg, models = bench
    before = {p.name for p in models.iterdir()}
    session = f"user/{uuid.uuid4().hex[:6]}/tab%1"  # a slash, and a percent sign
    status, _ = http_call(f"{base}/v1/default/events", [{"session_id": session, "item_id": "A13"}])
    assert status == 202
    path = urllib.parse.quote(session, safe="")
    url = f"{base}/v1/default/sessions/{path}/recommendations"
    status, body = wait_for_ok(url, 30)  # written by the worker to Redis, read from there
    assert status == 200, body
    assert json.loads(body)["session_id"] == session
    # Items too: the catalogue (PUT, GET, DELETE) and similar items.
    item = f"{base}/v1/default/items/{urllib.parse.quote('shoes/red 42', safe='')}"
    status, body = http_call(item, {"available": False}, method="PUT")
    assert status == 200 and json.loads(body)["item_id"] == "shoes/red 42", body
    status, body = http_call(item)
    assert status == 200 and json.loads(body)["item_id"] == "shoes/red 42", body
    status, body = http_call(f"{item}/similar")
    assert status == 404 and "does not know 'shoes/red 42'" in json.loads(body)["error"], body
    assert http_call(item, method="DELETE")[0] == 200

    # A click creates its tenant here, but never a lookalike or a device name.
    fresh = f"fresh-{uuid.uuid4().hex[:6]}"
    refused = ["Default", "default.", "de.fault", "default-", "CON", "nul.txt", "a..b"]
    clicks = [ClickEvent(t, "s1", "A13", time.time(), event_id=f"{t}-1") for t in [*refused, fresh]]
    produce(stack.broker, cfg.clicks, [(e.session_id.encode(), e.to_json()) for e in clicks])
    dead = consume(stack.broker, cfg.dlq, len(refused), timeout=60)
    reasons = [dict(d.headers())["streamrec-reason"].decode() for d in dead]
    assert len(dead) == len(refused) and all("unknown tenant" in r for r in reasons), reasons
    assert wait_until(lambda: (models / fresh).is_dir(), 30)
    assert {p.name for p in models.iterdir() if not p.name.startswith(".")} - before == {fresh}
    # Over HTTP, the same refusal, with the reason.
    status, body = http_call(f"{base}/v1/Default/events", {"session_id": "s", "item_id": "A1"})
    assert status == 409 and "too like the existing tenant 'default'" in json.loads(body)["error"]
    status, body = http_call(f"{base}/v1/CON/items/x")
    assert status == 400 and "reserved" in json.loads(body)["error"], body
