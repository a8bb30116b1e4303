"""What survives what: tenant modes across a Redis restart, honest health, a quick SIGTERM
with a batch stuck, and ids that cannot reach another tenant's data."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import redis

from stream.dev.stack import EmbeddedStack, Service, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, consume, produce
from stream.events import MAX_EVENT_BYTES, ClickEvent
from tests.integration.helpers import http_call, make_config, run_cli, wait_for_ok


def _own_redis(tmp_path: Path) -> Service:
    service = Service("redis", "127.0.0.1", free_port(), tmp_path / "redis")
    service.start()
    return service


def _with_redis(cfg: WorkerConfig, service: Service) -> None:
    cfg.stack = SimpleNamespace(  # type: ignore[assignment]
        broker=cfg.stack.broker, redis_url=f"redis://127.0.0.1:{service.port}/0"
    )


def _restart_redis_empty(own: Service) -> None:
    """SHUTDOWN NOSAVE, its data directory removed, started again: Redis comes back empty."""
    try:
        redis.Redis(port=own.port).shutdown(nosave=True)
    except redis.ConnectionError:
        pass
    own.stop()
    shutil.rmtree(own.run_dir / "redis-data")
    own.start()


def _clicks(tenant: str, n: int, tag: str) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        e = ClickEvent(tenant, f"{tag}-{i % 5}", f"I{i % 7}", time.time(), event_id=f"{tag}-{i}")
        out.append((e.session_id.encode(), e.to_json()))
    return out


def _tenants_answered(broker: str, topic: str, expected: int, timeout: float) -> list[str]:
    return [orjson.loads(m.value())["tenant"] for m in consume(broker, topic, expected, timeout)]


@pytest.mark.broker_agnostic
def test_a_tenant_switched_off_stays_off_after_redis_restarts_empty(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    own = _own_redis(tmp_path)
    cfg = make_config(stack, unique_name, tmp_path, tmp_path / "models")
    _with_redis(cfg, own)
    off, on = unique_name("off"), unique_name("on")
    try:
        # Through the CLI, as an operator would: a tenant must exist before its switch.
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "stream", "tenant", *args],
                env=cfg.env(),
                capture_output=True,
                text=True,
                timeout=60,
            )

        done = cli("mode", off, "off")
        assert done.returncode == 1 and "unknown tenant" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert cli("create", off).returncode == 0
        done = cli("mode", off, "off")
        assert done.returncode == 0, done.stderr
        with WorkerProcess(cfg) as worker:
            produce(stack.broker, cfg.clicks, _clicks(off, 20, "a") + _clicks(on, 20, "b"))
            answered = _tenants_answered(stack.broker, cfg.recs, 20, timeout=60)
            assert answered == [on] * 20, worker.log()[-3000:]

            # Whatever Redis kept on disk is gone too: the registry holds the switch.
            _restart_redis_empty(own)
            produce(stack.broker, cfg.clicks, _clicks(off, 20, "c") + _clicks(on, 20, "d"))
            answered = _tenants_answered(stack.broker, cfg.recs, 40, timeout=60)
            assert len(answered) == 40, worker.log()[-3000:]
            # Nothing more arrives for the tenant switched off.
            answered = _tenants_answered(stack.broker, cfg.recs, 41, timeout=5)
            assert answered == [on] * 40, worker.log()[-3000:]
            assert worker.alive()
    finally:
        own.stop()


@pytest.mark.broker_agnostic
def test_rules_keys_and_experiments_survive_redis_restarting_empty(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    """The rest of the control state: each has its copy in the registry (RULES.json,
    KEYS.json, POLICY.json), so a Redis that lost everything is refilled from there."""
    from models.ranking import recommend
    from models.registry import Registry

    own = _own_redis(tmp_path)
    models = tmp_path / "models"
    shutil.copytree(trained_model_dir, models)
    registry = Registry(models)
    bundle = registry.load("default")
    candidate = registry.register("default", bundle, {})
    # What the model ranks first after A13, blocked: it shows up unless the rules hold.
    blocked = recommend(bundle, ["A13"], 3, exclude="current").ids
    cfg = make_config(stack, unique_name, tmp_path, models)
    _with_redis(cfg, own)
    port = free_port()
    cfg.extra_env["STREAMREC_WEB_PORT"] = str(port)
    base = f"http://127.0.0.1:{port}/v1/default"

    def cli(*args: str) -> str:
        return run_cli(cfg, *args)

    try:
        cli("tenant", "set", "default", *(f"--block={item}" for item in blocked))
        key = cli("tenant", "key", "create", "default")
        cli("experiment", "start", "default", "--variant", candidate, "--share", "0.5")
        _restart_redis_empty(own)
        assert redis.Redis(port=own.port).dbsize() == 0

        with WorkerProcess(cfg) as worker:
            assert wait_for_ok(f"http://127.0.0.1:{port}/health")[0] == 200, worker.log()[-3000:]
            event = {"session_id": "s", "item_id": "A13"}
            status, body = http_call(f"{base}/events", event)
            assert status == 401, body  # the key survived: the tenant is not open
            events = [
                {"session_id": f"{unique_name('s')}", "item_id": "A13", "event_id": f"k{i}"}
                for i in range(40)
            ]
            status, body = http_call(f"{base}/events", events, key=key)
            assert status == 202, body
            recs = [orjson.loads(m.value()) for m in consume(stack.broker, cfg.recs, 40, 60)]
            assert len(recs) == 40, worker.log()[-3000:]
            shown = {i["item_id"] for r in recs for i in r["items"]}
            assert shown and not shown & set(blocked), (blocked, shown)  # the rules held
            variants = {r["variant"] for r in recs}
            assert variants == {"v1", candidate}, variants  # the experiment held
    finally:
        own.stop()


def test_health_says_degraded_without_redis_and_sigterm_exits_with_a_batch_stuck(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    own = _own_redis(tmp_path)
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    _with_redis(cfg, own)
    port = free_port()
    cfg.extra_env["STREAMREC_WEB_PORT"] = str(port)
    health = f"http://127.0.0.1:{port}/health"
    try:
        worker = WorkerProcess(cfg).start()
        try:
            assert wait_for_ok(health)[0] == 200, worker.log()[-3000:]
            produce(stack.broker, cfg.clicks, _clicks("default", 10, "h"))
            assert len(consume(stack.broker, cfg.recs, 10, timeout=60)) == 10
            own.stop()
            produce(stack.broker, cfg.clicks, _clicks("default", 10, "i"))  # stuck
            time.sleep(2)
            status, body = http_call(health)
            report = json.loads(body)
            assert status == 503 and report["status"] == "degraded", report
            assert any("redis unreachable" in r for r in report["reasons"]), report
            started = time.monotonic()
            rc = worker.stop(signal.SIGTERM, timeout=30)
            took = time.monotonic() - started
        finally:
            worker.stop(signal.SIGKILL)
        assert took < 10, f"SIGTERM took {took:.1f}s\n" + worker.log()[-3000:]
        assert rc == 0, worker.log()[-3000:]
    finally:
        own.stop()


@pytest.mark.broker_agnostic
def test_ids_cannot_reach_another_tenants_data_and_bad_paths_get_4xx(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    port = free_port()
    cfg.extra_env["STREAMREC_WEB_PORT"] = str(port)
    base = f"http://127.0.0.1:{port}"
    sid = f"{unique_name('x')}:y"
    with WorkerProcess(cfg) as worker:
        assert wait_for_ok(f"{base}/health")[0] == 200, worker.log()[-3000:]
        status, _ = http_call(f"{base}/v1/default/events", {"session_id": sid, "item_id": "A13"})
        assert status == 202
        quoted = urllib.parse.quote(sid, safe="")
        status, body = wait_for_ok(f"{base}/v1/default/sessions/{quoted}/recommendations")
        assert status == 200 and json.loads(body)["session_id"] == sid
        # The same characters split another way: another tenant, which is not a valid name.
        head, tail = sid.split(":")
        status, body = http_call(f"{base}/v1/default:{head}/sessions/{tail}/recommendations")
        assert status == 400, body
        status, body = http_call(f"{base}/v1/{unique_name('t')}/sessions/{quoted}/recommendations")
        assert status == 404, body
        for bad in ("shop%0A", "shop%0D", "-shop", "a" * 65):
            status, body = http_call(f"{base}/v1/{bad}/events", {"session_id": "s", "item_id": "A"})
            assert status == 400, (bad, body)
            status, body = http_call(f"{base}/v1/{bad}/sessions/s/recommendations")
            assert status == 400, (bad, body)
        status, body = http_call(f"{base}/v1/default/sessions/s%0A/recommendations")
        assert status == 400, body
        newline = {"tenant": "default\n", "session_id": "s", "item_id": "A13"}
        status, body = http_call(f"{base}/v1/default/events", newline)
        assert status == 400, body
        big = {"session_id": "s", "item_id": "A13", "pad": "x" * MAX_EVENT_BYTES}
        assert http_call(f"{base}/v1/default/events", big)[0] == 413
        assert http_call(f"{base}/v1/default/events", [big])[0] == 413
        # A stalled upload is answered 408 and closed, not held open for ever.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(
                b"POST /v1/default/events HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"session'
            )
            started = time.monotonic()
            answer = conn.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert time.monotonic() - started < 15
        assert worker.alive()


@pytest.mark.broker_agnostic
def test_the_embedded_redis_keeps_sessions_across_a_restart(tmp_path: Path) -> None:
    """AOF under the run directory (fsync every second): a session written more than a
    second before a restart without saving is still there."""
    import asyncio

    from redis.asyncio import Redis

    from state.sessions import Click, SessionStore

    own = _own_redis(tmp_path)
    url = f"redis://127.0.0.1:{own.port}/0"

    async def session(write: bool) -> list[str]:
        client = Redis.from_url(url)
        try:
            store = SessionStore(client, cap=50, ttl_s=3600)
            if write:
                clicks = [Click("default", "s-aof", f"I{i}", f"e{i}") for i in range(5)]
                await store.append_clicks(clicks)
            return await store.session_items("default", "s-aof")
        finally:
            await client.aclose()

    try:
        assert asyncio.run(session(write=True)) == [f"I{i}" for i in range(5)]
        time.sleep(1.5)
        try:
            redis.Redis(port=own.port).shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        own.stop()
        assert any((own.run_dir / "redis-data").rglob("*.aof"))
        own.start()
        assert asyncio.run(session(write=False)) == [f"I{i}" for i in range(5)]
    finally:
        own.stop()
