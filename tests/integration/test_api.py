"""The production HTTP API on a real worker: spec and docs, keys and the admin token,
tenants that must exist, the catalogue and serving rules at serving time, readiness."""

from __future__ import annotations

import hashlib
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis

from models.ranking import STRATEGIES
from models.registry import Registry
from state.keys import API_KEYS, TENANT_MODES
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerProcess, consume, produce
from stream.events import ClickEvent
from tests.integration.helpers import (
    ADMIN,
    call,
    http_call,
    make_config,
    sync_redis,
    wait_until,
)

pytestmark = [pytest.mark.broker_agnostic, pytest.mark.cluster]


def test_keys_tenants_catalogue_and_rules(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    shop, other, ghost = unique_name("shop"), unique_name("other"), unique_name("ghost")
    models = tmp_path / "models"
    # The trained tenant under a name of its own: keys and rules are written there.
    shutil.copytree(trained_model_dir / "default", models / shop)
    cfg = make_config(stack, unique_name, tmp_path, models)
    port = free_port()
    cfg.extra_env.update(
        STREAMREC_WEB_PORT=str(port),
        STREAMREC_ADMIN_TOKEN=ADMIN,
        STREAMREC_AUTO_CREATE_TENANTS="",  # the default: off
        STREAMREC_PUBLIC_DASHBOARD="",  # the default: off
        STREAMREC_REQUIRE_KEYS="1",  # as in docker-compose
    )
    base = f"http://127.0.0.1:{port}"
    with WorkerProcess(cfg) as worker:
        assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 60), worker.log()[-3000:]
        assert call(f"{base}/health/live") == (200, {"status": "live"})
        # Ready means the version in service is in memory already: no click waits for it.
        assert call(f"{base}/health", key=ADMIN)[1]["models"].get(shop) == "v1"

        # The published spec and the interactive docs.
        status, spec = call(f"{base}/openapi.json")
        assert status == 200 and "/v1/{tenant}/events" in spec["paths"]
        for path in ("/v1/{tenant}/items/{item_id}", "/v1/admin/tenants/{tenant}/keys"):
            assert path in spec["paths"], sorted(spec["paths"])
        assert call(f"{base}/docs")[0] == 200

        # Admin: the token only.
        assert call(f"{base}/v1/admin/tenants")[0] == 401
        assert call(f"{base}/v1/admin/tenants", key="wrong")[0] == 401
        status, _ = call(f"{base}/v1/admin/tenants/{other}", {}, key=ADMIN, method="PUT")
        assert status == 201
        # Keys required: a tenant that has none yet is not open either.
        status, body = call(f"{base}/v1/{other}/events", {"session_id": "o", "item_id": "A1"})
        assert status == 401 and "key" in body["error"], body
        status, body = call(
            f"{base}/v1/admin/tenants/{ghost}/mode/off", {}, key=ADMIN, method="PUT"
        )
        assert status == 404 and "unknown tenant" in body["error"], body  # never created
        # A bad name: 400 with the rule, as on the tenant routes (one check, web_auth).
        status, body = call(f"{base}/v1/admin/tenants/-bad", {}, key=ADMIN, method="PUT")
        assert status == 400 and "must match" in body["error"], body
        assert call(f"{base}/v1/-bad/items/x", key=ADMIN)[0] == 400
        status, created = call(f"{base}/v1/admin/tenants/{shop}/keys", {}, key=ADMIN)
        assert status == 201 and created["key"].startswith("srk_"), created
        shop_key = created["key"]
        # Stored as its SHA-256 only: in the registry (durable) and in Redis (the cache).
        sha = hashlib.sha256(shop_key.encode()).hexdigest()
        stored = (models / shop / "KEYS.json").read_text()
        assert sha in stored and shop_key not in stored
        cached = sync_redis(stack).hgetall(API_KEYS)
        assert sha in cached and not any(shop_key in f + v for f, v in cached.items())
        other_key = call(f"{base}/v1/admin/tenants/{other}/keys", {}, key=ADMIN)[1]["key"]
        assert shop_key not in worker.log() and other_key not in worker.log()
        assert call(f"{base}/v1/admin/tenants", key=shop_key)[0] == 403
        # Every tenant's numbers on the dashboard: the admin token only, when keys are required.
        dashboard = f"{base}/dashboard/data.json"
        assert call(dashboard)[0] == 401 and call(dashboard, key=shop_key)[0] == 403
        status, body = call(dashboard, key=ADMIN)
        assert status == 200 and shop in {t["tenant"] for t in body["tenants"]}, body

        # A tenant key reaches its own tenant only.
        events = f"{base}/v1/{shop}/events"
        click = {"session_id": "api-1", "item_id": "A13"}
        assert call(events, click)[0] == 401  # the tenant has a key now
        assert call(events, click, key="srk_nope")[0] == 401
        assert call(events, click, key=other_key)[0] == 403
        status, body = call(events, [click, {**click, "item_id": "A16"}], key=shop_key)
        assert status == 202 and len(body["event_ids"]) == 2, body
        assigned = body["event_ids"][1]  # none was given: the API made one up
        assert assigned and body["event_ids"][0] != assigned, body
        assert call(f"{base}/v1/{other}/sessions/api-1/recommendations", key=other_key)[0] == 404
        assert call(f"{base}/v1/{shop}/sessions/api-1/recommendations", key=other_key)[0] == 403

        # An unknown tenant: 404 over HTTP, dead-lettered on Kafka (auto-creation off).
        status, body = call(f"{base}/v1/{ghost}/events", click, key=ADMIN)
        assert status == 404 and "unknown tenant" in body["error"], body
        event = ClickEvent(ghost, "g-1", "A13", time.time(), event_id="g-1")
        produce(stack.broker, cfg.clicks, [(b"g-1", event.to_json())])
        (dead,) = consume(stack.broker, cfg.dlq, 1, timeout=60)
        assert "unknown tenant" in dict(dead.headers())["streamrec-reason"].decode()

        # Serving: the list, then an item marked unavailable vanishes from the next one.
        recs = f"{base}/v1/{shop}/sessions/api-1/recommendations"

        def latest() -> list[str]:
            status, body = call(f"{recs}?n=10", key=shop_key)
            return [i["item_id"] for i in body["items"]] if status == 200 else []

        assert wait_until(lambda: len(latest()) == 10), worker.log()[-3000:]
        # ... and the list answering the click carries it.
        pulled = call(f"{recs}?n=10", key=shop_key)[1]
        assert pulled["event_id"] == assigned
        # An HTTP answer gives each item's source, the first one's being the list's.
        assert {i["source"] for i in pulled["items"]} <= set(STRATEGIES), pulled
        assert pulled["items"][0]["source"] == pulled["strategy"], pulled
        first = latest()
        assert "A16" not in first  # the tenant's default rule: not the item being viewed
        gone = first[0]
        status, body = call(
            f"{base}/v1/{shop}/items/{gone}", {"available": False}, key=shop_key, method="PUT"
        )
        assert status == 200 and body["available"] is False, body
        started = time.monotonic()
        assert wait_until(lambda: gone not in latest(), 5)
        assert time.monotonic() - started < 1.0  # within a second, as promised
        after = latest()
        assert len(after) == 10 and gone not in after  # refilled
        # Every other item stays, in its order; the one that comes in may land among them
        # (it joins the best candidates the boosted trees reorder).
        assert [i for i in after if i in first] == first[1:10], (first, after)

        # The recommendations topic applies the same rules.
        extra = ClickEvent(shop, "api-1", "A16", time.time(), event_id="api-1-again")
        produce(stack.broker, cfg.clicks, [(b"api-1", extra.to_json())])
        answers = [orjson.loads(m.value()) for m in consume(stack.broker, cfg.recs, 3, timeout=60)]
        mine = [a for a in answers if a["event_id"] == "api-1-again"]
        assert mine and all(i["item_id"] != gone for i in mine[0]["items"]), answers
        # The topic's records stay as they were: no per-item source.
        assert all(set(i) == {"item_id", "score"} for i in mine[0]["items"]), mine

        # Request filters and categories.
        assert gone not in latest()
        status, body = call(
            f"{base}/v1/{shop}/items",
            [
                {"item_id": after[1], "category": "shoes"},
                {"item_id": after[2], "category": "shoes"},
            ],
            key=shop_key,
        )
        assert status == 200 and body["stored"] == 2, body
        status, body = call(f"{recs}?n=5&category=shoes", key=shop_key)
        assert status == 200, body
        assert {i["item_id"] for i in body["items"]} <= {after[1], after[2]}
        status, body = call(f"{recs}?n=5&exclude={after[0]}", key=shop_key)
        assert status == 200 and after[0] not in [i["item_id"] for i in body["items"]]

        # Tenant rules through the admin API: a blocklist.
        rules = {"exclude": "seen", "blocklist": [after[3]]}
        status, body = call(f"{base}/v1/admin/tenants/{shop}/rules", rules, key=ADMIN, method="PUT")
        assert status == 200 and body["blocklist"] == [after[3]], body
        assert wait_until(lambda: after[3] not in latest() and "A13" not in latest(), 5)
        # ... and a category kept out: the shoes go, the list is refilled to n.
        assert {after[1], after[2]} <= set(latest())  # listed until then
        rules = {**rules, "exclude_categories": ["shoes"]}
        status, body = call(f"{base}/v1/admin/tenants/{shop}/rules", rules, key=ADMIN, method="PUT")
        assert status == 200 and body["exclude_categories"] == ["shoes"], body
        assert wait_until(lambda: not {after[1], after[2]} & set(latest()), 5)
        assert len(latest()) == 10
        rules["exclude_categories"] = []
        status, _ = call(f"{base}/v1/admin/tenants/{shop}/rules", rules, key=ADMIN, method="PUT")
        assert status == 200

        # Stateless ranking and similar items.
        status, body = call(
            f"{base}/v1/{shop}/recommendations", {"items": ["A13"], "n": 4}, key=shop_key
        )
        assert status == 200 and len(body["items"]) == 4, body
        assert all(i["item_id"] not in {gone, after[3], "A13"} for i in body["items"])
        # Each item says which source put it there; the first one's is the list's.
        assert all(set(i) == {"item_id", "score", "source"} for i in body["items"]), body
        assert {i["source"] for i in body["items"]} <= set(STRATEGIES), body
        assert body["items"][0]["source"] == body["strategy"], body
        status, body = call(f"{base}/v1/{shop}/items/A13/similar?n=3", key=shop_key)
        assert status == 200 and len(body["items"]) == 3, body
        assert call(f"{base}/v1/{shop}/items/nope/similar", key=shop_key)[0] == 404
        assert call(f"{base}/v1/{shop}/items/A13/similar?n=0", key=shop_key)[0] == 400

        # Deleted from the catalogue: gone, and 404 afterwards.
        assert call(f"{base}/v1/{shop}/items/{gone}", key=shop_key, method="DELETE")[0] == 200
        assert call(f"{base}/v1/{shop}/items/{gone}", key=shop_key)[0] == 404

        # Experiments through the admin API: an A/B test, its status, stopped; a bandit.
        registry = Registry(models)
        v2 = registry.register(shop, registry.load(shop), {})
        experiment = f"{base}/v1/admin/tenants/{shop}/experiment"
        status, body = call(experiment, {"variant": v2, "share": 0.5}, key=ADMIN)
        assert status == 201 and body["arms"] == {"v1": 0.5, v2: 0.5}, body
        status, body = call(experiment, key=ADMIN)
        assert status == 200 and body["policy"] == "ab" and set(body["arms"]) == {"v1", v2}, body
        assert call(experiment, key=shop_key)[0] == 403
        assert call(f"{base}/v1/admin/tenants/{ghost}/experiment", key=ADMIN)[0] == 404
        status, body = call(experiment, {"variant": "v9"}, key=ADMIN)
        assert status == 404 and "no version v9" in body["error"], body
        status, body = call(f"{base}/v1/admin/tenants/{shop}/models/v9/promote", {}, key=ADMIN)
        assert status == 404 and "no version v9" in body["error"], body
        for bad in ({"variant": v2, "share": True}, {"share": 0.5}, []):
            status, body = call(experiment, bad, key=ADMIN)
            assert status == 400 and body["error"], (bad, body)
        status, body = call(f"{experiment}/stop", {"action": "keep"}, key=ADMIN)
        assert status == 200 and body["current"] == "v1", body
        assert call(experiment, key=ADMIN)[1]["policy"] == "fixed"
        status, body = call(
            f"{base}/v1/admin/tenants/{shop}/bandit", {"versions": ["v1", v2]}, key=ADMIN
        )
        assert status == 201 and body["policy"] == "bandit", body
        assert call(f"{experiment}/stop", {"action": "sideways"}, key=ADMIN)[0] == 400
        assert call(f"{experiment}/stop", {"action": "keep"}, key=ADMIN)[0] == 200
        assert call(f"{experiment}/stop", {"action": "keep"}, key=ADMIN)[0] == 400  # none runs

        # A revoked key stops working.
        key_id = created["key_id"]
        assert (
            call(f"{base}/v1/admin/tenants/{shop}/keys/{key_id}", key=ADMIN, method="DELETE")[0]
            == 200
        )
        assert wait_until(lambda: call(f"{recs}", key=shop_key)[0] == 401, 5)
        assert worker.alive()


def test_closed_by_default(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    """Default settings: no tenant without the admin token, every route 4xx for an
    unknown tenant with nothing created, lookalike and reserved names refused, every
    tenant's numbers (dashboard, metrics, health details) behind the admin token."""
    shop, ghost = unique_name("shop"), unique_name("ghost")
    models = tmp_path / "models"
    shutil.copytree(trained_model_dir / "default", models / shop)
    cfg = make_config(stack, unique_name, tmp_path, models)
    port = free_port()
    cfg.extra_env.update(
        STREAMREC_WEB_PORT=str(port),
        STREAMREC_ADMIN_TOKEN=ADMIN,
        STREAMREC_AUTO_CREATE_TENANTS="",  # "": the settings' own defaults
        STREAMREC_PUBLIC_DASHBOARD="",
    )
    base = f"http://127.0.0.1:{port}"
    cache = sync_redis(stack)
    with WorkerProcess(cfg) as worker:
        assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 60), worker.log()[-3000:]

        # Open to all and naming no tenant: liveness, readiness, the health status.
        for path in ("/health", "/health/ready", "/health/live"):
            status, body = call(f"{base}{path}")
            assert status == 200 and shop not in str(body) and "models" not in body, (path, body)
        assert call(f"{base}/health") == (200, {"status": "ok"})

        # Every tenant's numbers: the admin token, never a tenant's key.
        shop_key = call(f"{base}/v1/admin/tenants/{shop}/keys", {}, key=ADMIN)[1]["key"]
        for path in ("/metrics", "/dashboard/data.json", "/dashboard"):
            assert call(f"{base}{path}")[0] == 401, path
            assert call(f"{base}{path}", key="wrong")[0] == 401, path
            assert call(f"{base}{path}", key=shop_key)[0] == 403, path
            status, body = http_call(f"{base}{path}", key=ADMIN)
            assert status == 200, (path, body)
            if path == "/dashboard/data.json":
                assert shop.encode() in body, body[:300]
        assert call(f"{base}/health", key=ADMIN)[1]["models"].get(shop) == "v1"

        # ... or the cookie /dashboard?token= trades it for, then the address without it.
        no_redirects = urllib.request.build_opener(NoRedirects)
        try:
            no_redirects.open(f"{base}/dashboard?since=60&token={ADMIN}", timeout=10)
            raise AssertionError("no redirect")
        except urllib.error.HTTPError as answer:
            assert answer.code == 303, answer.read()
            assert answer.headers["location"] == "/dashboard?since=60"
            cookie = answer.headers["set-cookie"]
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "samesite", "path"} <= attributes, cookie
        assert "samesite=strict" in cookie.lower() and ADMIN not in cookie, cookie
        pair = cookie.split(";")[0]
        for path in ("/dashboard", "/dashboard/data.json", "/metrics"):
            request = urllib.request.Request(f"{base}{path}", headers={"Cookie": pair})
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200, path
        # The cookie is no admin token: the admin API takes the bearer token only.
        request = urllib.request.Request(f"{base}/v1/admin/tenants", headers={"Cookie": pair})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        assert call(f"{base}/dashboard?token=wrong")[0] == 401

        # Creating a tenant takes the admin token.
        assert call(f"{base}/v1/admin/tenants/{ghost}", {}, method="PUT")[0] == 401
        assert call(f"{base}/v1/admin/tenants/{ghost}", {}, key=shop_key, method="PUT")[0] == 403
        # Lookalikes of an existing tenant: 409; reserved or ill-formed names: 400.
        for name in (shop.upper(), f"{shop}.", f"{shop}-", f"{shop[0]}.{shop[1:]}"):
            status, body = call(f"{base}/v1/admin/tenants/{name}", {}, key=ADMIN, method="PUT")
            expected = 400 if name.endswith(".") else 409
            assert status == expected and shop in body["error"], (name, status, body)
        for name in ("CON", "nul.txt", "com1", "LPT9.x", "a..b"):
            status, body = call(f"{base}/v1/admin/tenants/{name}", {}, key=ADMIN, method="PUT")
            assert status == 400 and name in body["error"], (name, body)

        # An unknown tenant, on every route the spec lists: 4xx with a reason (404 on
        # the tenant routes), with the admin token or without, and nothing is created.
        spec = call(f"{base}/openapi.json")[1]
        fill = {"tenant": ghost, "session_id": "s", "item_id": "i", "mode": "off",
                "version": "v1", "key_id": "k"}  # fmt: skip
        routes = 0
        for template, operations in spec["paths"].items():
            if "{tenant}" not in template:
                continue
            path = template.format(**fill)
            for method in operations:
                if method == "put" and template == "/v1/admin/tenants/{tenant}":
                    continue  # creation, above
                body = None if method in ("get", "delete") else {}
                for key in (None, ADMIN):
                    status, answer = call(f"{base}{path}", body, key=key, method=method.upper())
                    if template.startswith("/v1/{tenant}") or key == ADMIN:
                        assert 400 <= status < 500 and answer["error"], (method, path, answer)
                    if template.startswith("/v1/{tenant}") and key == ADMIN:
                        assert status == 404 and "unknown tenant" in answer["error"], (path, answer)
                routes += 1
        assert routes >= 20, routes
        made = sorted(p.name for p in models.iterdir() if not p.name.startswith("."))
        assert made == [shop], made  # not the ghost, no lookalike, no device name
        assert not {ghost, "CON", "a..b"} & set(cache.hkeys(TENANT_MODES))
        assert "Traceback" not in worker.log(), worker.log()[-3000:]


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_a_redis_with_a_password(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    """Worker, HTTP and CLI against a Redis started with requirepass; the password never
    appears in the worker's log or in the CLI's messages."""
    import subprocess
    import sys

    from stream.dev.stack import redis_binary

    password = "s3cret-" + unique_name("pw")
    port = free_port()
    (tmp_path / "redis").mkdir()
    server = subprocess.Popen(
        [redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--requirepass", password, "--dir", str(tmp_path / "redis")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_until(lambda: _answers(port, password), 20)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).set("x", 1)  # the password is really required
        cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
        web = free_port()
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        cfg.extra_env.update(
            STREAMREC_REDIS_URL=url, STREAMREC_REDIS_CLUSTER="0", STREAMREC_WEB_PORT=str(web)
        )
        env = cfg.env()
        tenant = unique_name("pw")
        done = subprocess.run(
            [sys.executable, "-m", "stream", "tenant", "create", tenant],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        wrong = {**env, "STREAMREC_REDIS_URL": f"redis://:{password}x@127.0.0.1:{port}/0"}
        done = subprocess.run(
            [sys.executable, "-m", "stream", "tenant", "create", tenant],
            env=wrong, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert password not in done.stderr + done.stdout

        cfg.stack = type(
            "S", (), {"broker": stack.broker, "redis_url": url, "redis_cluster": False}
        )()  # type: ignore[assignment]
        with WorkerProcess(cfg) as worker:
            base = f"http://127.0.0.1:{web}"
            assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 60), worker.log()[
                -3000:
            ]
            status, _ = call(f"{base}/v1/default/events", {"session_id": "pw-1", "item_id": "A13"})
            assert status == 202
            recs = f"{base}/v1/default/sessions/pw-1/recommendations"
            assert wait_until(lambda: call(recs)[0] == 200, 30), worker.log()[-3000:]
            assert password not in worker.log()
    finally:
        server.terminate()
        server.wait(10)


def _answers(port: int, password: str) -> bool:
    try:
        return bool(redis.Redis(port=port, password=password, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def test_no_admin_api_without_a_token_413_and_503_with_redis_down(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    """No admin token: the admin routes are not served (nor in the spec). Over 1,000
    events in a request: 413. Redis down: the tenant routes answer 503 with the reason,
    /health/ready too; never a 500."""
    from stream.dev.stack import Service

    own = Service("redis", "127.0.0.1", free_port(), tmp_path / "redis")
    own.start()
    try:
        cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
        cfg.stack = type(
            "S",
            (),
            {
                "broker": stack.broker,
                "redis_url": f"redis://127.0.0.1:{own.port}/0",
                "redis_cluster": False,
            },
        )()  # type: ignore[assignment]
        port = free_port()
        cfg.extra_env.update(
            STREAMREC_WEB_PORT=str(port),
            STREAMREC_REDIS_RETRIES="0",
            STREAMREC_REDIS_CONNECT_TIMEOUT_S="1",
        )
        cfg.extra_env.pop("STREAMREC_ADMIN_TOKEN", None)
        base = f"http://127.0.0.1:{port}"
        with WorkerProcess(cfg) as worker:
            assert wait_until(lambda: call(f"{base}/health/ready")[0] == 200, 60), worker.log()[
                -3000:
            ]
            spec = call(f"{base}/openapi.json")[1]
            assert not [p for p in spec["paths"] if p.startswith("/v1/admin")], spec["paths"]
            assert call(f"{base}/v1/admin/tenants", key="anything")[0] == 404
            assert call(f"{base}/v1/admin/tenants/x", {}, method="PUT")[0] == 404

            click = {"session_id": "r-1", "item_id": "A13"}
            status, body = call(f"{base}/v1/default/events", [click] * 1001)
            assert status == 413 and "at most 1000" in body["error"], body
            assert call(f"{base}/v1/default/events", [click] * 1000)[0] == 202
            recs = f"{base}/v1/default/sessions/r-1/recommendations"
            assert wait_until(lambda: call(recs)[0] == 200, 30), worker.log()[-3000:]

            own.stop()
            status, body = call(recs)
            assert status == 503 and "unavailable" in body["error"], body
            status, body = call(f"{base}/v1/default/recommendations", {"items": ["A13"]})
            assert status in (200, 503), body  # ranked from the model alone, or 503
            status, body = call(f"{base}/v1/default/items/A13", {"available": False}, method="PUT")
            assert status == 503 and body["error"], body
            status, body = call(f"{base}/health/ready")
            assert status == 503 and "redis" in body["error"].lower(), body
            assert "Traceback" not in worker.log(), worker.log()[-3000:]
            assert worker.alive()
    finally:
        own.stop()
