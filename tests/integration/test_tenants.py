"""Many tenants through one worker: own items and model each, cold start, and off."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from models.datasets import read_clicks, sessionize
from models.registry import Registry
from models.train import TrainParams, train_model
from state import keys
from state.notify import notify_model_change
from state.tenants import set_mode
from stream.dev.stack import EmbeddedStack
from stream.dev.testing import WorkerProcess, consume, produce
from stream.events import ClickEvent
from tests.integration.helpers import make_config, sync_redis

pytestmark = [pytest.mark.broker_agnostic, pytest.mark.cluster]


@pytest.fixture(scope="module")
def shop_sessions(eshop_csv: Path) -> list[list[str]]:
    return sessionize(read_clicks(eshop_csv, fmt="eshop"))[:3000]


def _train_for(registry: Registry, tenant: str, sessions: list[list[str]], prefix: str) -> str:
    renamed = [[f"{prefix}{item}" for item in s] for s in sessions]
    bundle = train_model(renamed, TrainParams(epochs=3, seed=3))
    version = registry.register(tenant, bundle, {})
    registry.promote(tenant, version)
    return version


def _events(tenant: str, prefix: str, items: list[str], n: int, tag: str) -> list[ClickEvent]:
    return [
        ClickEvent(
            tenant,
            f"{tag}-{i % 20}",
            f"{prefix}{items[i % len(items)]}",
            time.time(),
            event_id=f"{tenant}-{tag}-{i}",
        )
        for i in range(n)
    ]


def _send(stack: EmbeddedStack, topic: str, events: list[ClickEvent]) -> None:
    produce(stack.broker, topic, [(e.session_id.encode(), e.to_json()) for e in events])


def test_tenants_get_their_own_items_models_and_switch(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    shop_sessions: list[list[str]],
) -> None:
    registry = Registry(tmp_path / "models")
    a, b, c = unique_name("shop-a"), unique_name("shop-b"), unique_name("shop-c")
    va = _train_for(registry, a, shop_sessions, "a:")
    _train_for(registry, b, shop_sessions, "b:")
    _train_for(registry, b, shop_sessions, "b:")  # b serves v2, a serves v1
    vb = registry.current_version(b)
    assert va != vb
    cfg = make_config(stack, unique_name, tmp_path, tmp_path / "models")
    items = sorted({i for s in shop_sessions[:200] for i in s})

    first = (
        _events(a, "a:", items, 300, "x")
        + _events(b, "b:", items, 300, "x")
        + _events(c, "c:", items, 300, "x")
    )
    first = [e for trio in zip(first[:300], first[300:600], first[600:], strict=True) for e in trio]
    with WorkerProcess(cfg) as worker:
        _send(stack, cfg.clicks, first)
        recs = consume(stack.broker, cfg.recs, len(first))
        assert len(recs) == len(first), worker.log()[-3000:]
        payloads = [orjson.loads(m.value()) for m in recs]
        for p in payloads:
            prefix = {a: "a:", b: "b:", c: "c:"}[p["tenant"]]
            assert p["items"], p
            assert all(i["item_id"].startswith(prefix) for i in p["items"]), p
            assert p["model_version"] == {a: va, b: vb, c: None}[p["tenant"]]
            if p["tenant"] == c:
                assert p["strategy"] == "popular"  # no model yet: its own most clicked items

        # Switch b off: its clicks are recorded but not answered; a is untouched.
        client = sync_redis(stack)
        set_mode(client, b, "off")
        notify_model_change(client, b, None)
        time.sleep(1.0)
        second = _events(a, "a:", items, 50, "y") + _events(b, "b:", items, 50, "y")
        _send(stack, cfg.clicks, second)
        consume(stack.broker, cfg.recs, len(first) + 50, timeout=30)
        # Ask for one more than should exist: it must time out at exactly len(first) + 50.
        recs = consume(stack.broker, cfg.recs, len(first) + 51, timeout=10)
        assert len(recs) == len(first) + 50
        second_ids = {e.event_id for e in second}
        new = [
            p for p in map(lambda m: orjson.loads(m.value()), recs) if p["event_id"] in second_ids
        ]
        assert len(new) == 50 and {p["tenant"] for p in new} == {a}
        assert client.hget(keys.session(b, "y-0"), "i")  # recorded while off

        # Back on: answered at once, with the session it built while off.
        set_mode(client, b, "on")
        notify_model_change(client, b, None)
        time.sleep(1.0)
        third = _events(b, "b:", items, 20, "y")
        third = [
            ClickEvent(e.tenant, e.session_id, e.item_id, e.ts, event_id=f"{e.event_id}-on")
            for e in third
        ]
        _send(stack, cfg.clicks, third)
        recs = consume(stack.broker, cfg.recs, len(first) + 50 + 20, timeout=30)
        assert len(recs) == len(first) + 70, worker.log()[-3000:]
        third_ids = {e.event_id for e in third}
        back = [
            p for p in map(lambda m: orjson.loads(m.value()), recs) if p["event_id"] in third_ids
        ]
        assert len(back) == 20
        assert all(p["model_version"] == vb for p in back)
