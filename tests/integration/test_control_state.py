"""Control state on the real worker, Redis and CLI: concurrent key changes over HTTP and
the CLI lose nothing and a revoked key stays revoked when Redis loses its data; one
tenant's damaged control file disables that tenant only, until it is repaired."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
import redis

from models.registry import Registry
from state import keys
from stream.config import Settings
from stream.control.tenants import TenantControl
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, consume, produce
from stream.events import ClickEvent
from tests.integration.helpers import ADMIN, call, make_config, wait_until

pytestmark = pytest.mark.broker_agnostic

CONTROL_CACHES = (keys.API_KEYS, keys.TENANT_RULES, keys.TENANT_MODES, keys.POLICIES)


def _lose_redis_control_state(url: str) -> None:
    """What a Redis restart without persistence does to the control caches."""
    redis.Redis.from_url(url).delete(*CONTROL_CACHES)


def _worker(
    stack: EmbeddedStack, unique_name: Callable[[str], str], home: Path, models: Path
) -> tuple[WorkerConfig, str]:
    cfg = make_config(stack, unique_name, home, models)
    port = free_port()
    cfg.extra_env.update(
        STREAMREC_WEB_PORT=str(port),
        STREAMREC_ADMIN_TOKEN=ADMIN,
        STREAMREC_AUTO_CREATE_TENANTS="0",
    )
    return cfg, f"http://127.0.0.1:{port}"


def _cli(cfg: WorkerConfig, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stream", "tenant", "key", *args],
        env=cfg.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_fifty_concurrent_key_changes_over_http_and_the_cli_survive_redis_losing_its_data(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shop = unique_name("shop")
    cfg, base = _worker(stack, unique_name, tmp_path, models)
    control = TenantControl(
        Settings.from_env(cfg.env())  # the same registry and Redis as the worker
    )
    control.create(shop)
    doomed = [control.create_key(shop) for _ in range(25)]  # (key id, key)
    route = f"{base}/v1/{shop}/sessions/nobody/recommendations"

    def http_create(_: int) -> tuple[str, str]:
        status, body = call(f"{base}/v1/admin/tenants/{shop}/keys", {}, key=ADMIN)
        assert status == 201, body
        return body["key_id"], body["key"]

    def cli_create(_: int) -> tuple[str, str]:
        key = _cli(cfg, "create", shop)
        return key[len("srk_") :].split("_", 1)[0], key

    def http_revoke(key_id: str) -> None:
        status, body = call(
            f"{base}/v1/admin/tenants/{shop}/keys/{key_id}", method="DELETE", key=ADMIN
        )
        assert status == 200, body

    def cli_revoke(key_id: str) -> None:
        _cli(cfg, "revoke", shop, key_id)

    with WorkerProcess(cfg) as worker:
        assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 60), worker.log()[-3000:]
        with ThreadPoolExecutor(12) as pool:
            jobs = [pool.submit(http_create, n) for n in range(19)]
            jobs += [pool.submit(cli_create, n) for n in range(6)]
            jobs += [pool.submit(http_revoke, key_id) for key_id, _ in doomed[:19]]
            jobs += [pool.submit(cli_revoke, key_id) for key_id, _ in doomed[19:]]
            results = [job.result() for job in jobs]
        created = [r for r in results if r is not None]
        assert len(created) == 25

        stored = json.loads((models / shop / "KEYS.json").read_text())
        assert sorted(k for k, _ in created) == sorted(
            k for k in stored if not stored[k].get("revoked")
        )
        assert all(stored[k].get("revoked") for k, _ in doomed)

        def verdicts() -> tuple[list[int], list[int]]:
            return (
                [call(route, key=key)[0] for _, key in created],
                [call(route, key=key)[0] for _, key in doomed],
            )

        for attempt in ("before", "after Redis lost its data"):
            if attempt != "before":
                _lose_redis_control_state(stack.redis_url)
                time.sleep(1.5)  # the worker's own cache of the keys expires
            accepted, refused = verdicts()
            assert all(s == 404 for s in accepted), (attempt, accepted)  # unknown session
            assert all(s == 401 for s in refused), (attempt, refused)
        assert "Traceback" not in worker.log()


def _clicks(tenant: str, n: int, tag: str) -> list[ClickEvent]:
    return [
        ClickEvent(
            tenant, f"{tag}-{i % 5}", f"I{i % 7}", time.time(), event_id=f"{tenant}-{tag}-{i}"
        )
        for i in range(n)
    ]


def test_one_tenants_damaged_files_disable_it_alone_until_repaired(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    registry = Registry(models)
    good, bad_keys, bad_rules = unique_name("good"), unique_name("keys"), unique_name("rules")
    for tenant in (good, bad_keys, bad_rules):
        registry.create_tenant(tenant)
    (models / bad_keys / "KEYS.json").write_text("{broken")
    (models / bad_rules / "RULES.json").write_text("[1,2")
    _lose_redis_control_state(stack.redis_url)  # so the worker reads every tenant's files
    cfg, base = _worker(stack, unique_name, tmp_path, models)
    client = redis.Redis.from_url(stack.redis_url)

    with WorkerProcess(cfg) as worker:
        assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 60), worker.log()[-3000:]
        first = _clicks(good, 20, "a") + _clicks(bad_keys, 20, "a") + _clicks(bad_rules, 20, "a")
        produce(stack.broker, cfg.clicks, [(e.session_id.encode(), e.to_json()) for e in first])
        # HTTP: the good tenant's routes answer, the damaged ones say why.
        status, body = call(f"{base}/v1/{good}/events", {"session_id": "h-1", "item_id": "I1"})
        assert status == 202, body
        events = f"{base}/v1/{bad_keys}/events"
        status, body = call(events, {"session_id": "h-1", "item_id": "I1"})
        # Anyone learns that the tenant is disabled; only the admin which file and why.
        assert status == 503 and body["error"] == "tenant disabled: a control file is damaged"
        status, body = call(events, {"session_id": "h-1", "item_id": "I1"}, key=ADMIN)
        assert status == 503 and body["error"].startswith("tenant disabled: KEYS.json:"), body
        status, body = call(f"{base}/v1/{bad_rules}/sessions/a-0/recommendations", key=ADMIN)
        assert status == 503 and "RULES.json" in body["error"], body

        # The stream: only the good tenant's clicks are answered; the others are recorded.
        recs = consume(stack.broker, cfg.recs, 22, timeout=20)  # one more than there is
        answered = {orjson.loads(m.value())["tenant"] for m in recs}
        assert len(recs) == 21 and answered == {good}, worker.log()[-3000:]  # 20 + HTTP's
        assert client.hget(keys.session(bad_rules, "a-0"), "i")

        status, health = call(f"{base}/health")
        assert status == 200 and health["status"] == "ok", health
        tenants = health["tenants"]
        assert set(tenants) == {bad_keys, bad_rules}, tenants
        assert tenants[bad_keys]["status"] == "disabled"
        assert tenants[bad_keys]["file"] == str(models / bad_keys / "KEYS.json")
        assert "JSON" in tenants[bad_rules]["reason"], tenants

        # Repaired: served again, no restart.
        (models / bad_keys / "KEYS.json").write_text("{}")
        (models / bad_rules / "RULES.json").write_text("{}")
        assert wait_until(lambda: call(f"{base}/health")[1]["tenants"] == {}, 20), worker.log()[
            -3000:
        ]
        second = _clicks(bad_keys, 10, "b") + _clicks(bad_rules, 10, "b")
        produce(
            stack.broker,
            cfg.clicks,
            [(e.session_id.encode(), e.to_json()) for e in second],
        )
        recs = consume(stack.broker, cfg.recs, 41, timeout=30)
        assert len(recs) == 41, worker.log()[-3000:]
        log = worker.log()
    # Logged once each, not per batch.
    assert log.count(f"tenant {bad_rules} disabled") == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
