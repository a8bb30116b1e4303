"""Implicit feedback in the real Redis: a click on an item of the session's previous
list is a hit for the variant that served it, counted once, in the batch's round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode

from models.experiments import is_variant
from models.ranking import recommend
from models.registry import Registry
from state import keys
from state.feedback import FeedbackRecorder, read_buckets, totals
from state.sessions import SessionStore
from stream.dev.stack import EmbeddedStack
from stream.pipeline.model_cache import ModelCache
from stream.pipeline.processor import BatchProcessor
from stream.pipeline.tenant_directory import TenantDirectory
from tests.integration.helpers import async_redis

pytestmark = [pytest.mark.broker_agnostic, pytest.mark.cluster]


class CountingPool(ConnectionPool):
    """The real pool, counting connections taken: one per round trip (a command or a
    pipeline)."""

    round_trips = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.round_trips += 1
        return await super().get_connection(*args, **kwargs)


def counted_client(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """A client of the stack's Redis and the object whose ``round_trips`` counts its round
    trips; on a cluster, those to any node (a pipeline sends each node its share at once)."""
    if not stack.redis_cluster:
        pool = CountingPool.from_url(stack.redis_url, decode_responses=True)
        return Redis(connection_pool=pool), pool
    counter = SimpleNamespace(round_trips=0)
    for name in ("execute_pipeline", "execute_command"):
        real = getattr(ClusterNode, name)

        async def counted(self: ClusterNode, *args: Any, _real: Any = real, **kw: Any) -> Any:
            counter.round_trips += 1
            return await _real(self, *args, **kw)

        monkeypatch.setattr(ClusterNode, name, counted)
    return async_redis(stack, decode_responses=True), counter


def _msg(sid: str, offset: int, item: str) -> SimpleNamespace:
    value = orjson.dumps(
        {"tenant": "default", "session_id": sid, "item_id": item, "ts": 1e9 + offset,
         "event_id": f"{sid}-{offset}"}
    )  # fmt: skip
    return SimpleNamespace(key=sid.encode(), value=value, topic="c", partition=0, offset=offset)


def test_a_click_on_a_recommended_item_is_a_hit_for_its_variant(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    trained_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = Registry(trained_model_dir)
    version = registry.current_version("default")
    bundle = registry.load("default")
    items = bundle.item_list
    a, b = unique_name("sa"), unique_name("sb")

    async def run() -> tuple[list[dict], dict, list[int], int]:
        client, pool = counted_client(stack, monkeypatch)
        feedback = FeedbackRecorder(bucket_s=60, retention_s=3600, clock=lambda: 1_800_000_000.0)
        processor = BatchProcessor(
            SessionStore(client, cap=50, ttl_s=60),
            ModelCache(registry),
            TenantDirectory(client, ttl_s=3600),
            top_k=10,
            feedback=feedback,
        )
        try:
            first = await processor.process([_msg(a, 0, items[0]), _msg(b, 0, items[0])])
            recs = [orjson.loads(o.payload) for o in first.recommendations]
            shown_a = [i["item_id"] for i in recs[0]["items"]]
            not_shown = next(i for i in items if i not in shown_a and i != items[0])
            # Next batch: session a clicks its 3rd recommended item (a hit at 3); session
            # b clicks something it was not shown (a miss). Its round trip also carries
            # the first batch's lists and counters: no round trip of their own.
            pool.round_trips = 0
            second = await processor.process([_msg(a, 1, shown_a[2]), _msg(b, 1, not_shown)])
            trips = [pool.round_trips]
            then = orjson.loads(second.recommendations[0].payload)["items"]
            then_shown = [i["item_id"] for i in then]
            # Then a hit at 1 read from Redis, and in the same batch a hit at 2 on the
            # list that click got (known in advance: the ranking is deterministic).
            after = [items[0], shown_a[2], then_shown[0]]
            next_list = recommend(bundle, after, 10, exclude="current").ids  # the default rule
            pool.round_trips = 0
            third = await processor.process([_msg(a, 2, then_shown[0]), _msg(a, 3, next_list[1])])
            trips.append(pool.round_trips)
            # Re-delivery of the second batch: no hit counted twice.
            await processor.process([_msg(a, 1, shown_a[2]), _msg(b, 1, not_shown)])
            await processor.flush_feedback()
            recs += [
                orjson.loads(o.payload) for o in second.recommendations + third.recommendations
            ]
            buckets = await read_buckets(
                client, "default", 1_800_000_000 - 60, 1_800_000_000, 60, is_variant
            )
            ttl = await client.ttl(keys.counters("default", 1_800_000_000))
            return recs, totals(buckets), trips, ttl
        finally:
            await client.aclose()

    # The counters are per tenant, and the test shares tenant "default": use a bucket no
    # other test writes to (the recorder's clock above).
    recs, counted, trips, ttl = asyncio.run(run())
    # One Redis round trip per batch, feedback included; on a cluster one per master at
    # most, sent side by side.
    assert trips == [1, 1] or (stack.redis_cluster and max(trips) <= len(stack.masters)), trips
    assert 3600 < ttl <= 3600 + 60  # the counters go after the retention (and a bucket)
    assert all(r["variant"] == version and r["rec_id"].startswith(f"{version}-") for r in recs)
    assert len({r["rec_id"] for r in recs}) == len(recs)
    c = counted[version]
    assert c.recommendations == 6  # 2 + 2 + 2 fresh clicks answered; the re-delivery not
    assert c.hits == 3
    assert c.hit_position_sum == 3 + 1 + 2


def test_a_tenant_without_a_model_is_served_and_counted_as_popular(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    tenant = unique_name("coldshop")

    def msg(sid: str, offset: int, item: str) -> SimpleNamespace:
        value = orjson.dumps(
            {"tenant": tenant, "session_id": sid, "item_id": item, "ts": 1e9 + offset,
             "event_id": f"{sid}-{offset}"}
        )  # fmt: skip
        return SimpleNamespace(key=sid.encode(), value=value, topic="c", partition=0, offset=offset)

    async def run() -> tuple[list[dict], dict]:
        client = async_redis(stack, decode_responses=True)
        processor = BatchProcessor(
            SessionStore(client, cap=50, ttl_s=60),
            ModelCache(Registry(tmp_path / "empty")),
            TenantDirectory(client, ttl_s=0),
            top_k=10,
            feedback=FeedbackRecorder(bucket_s=60, clock=lambda: 1_800_000_000.0),
        )
        try:
            await processor.process([msg(f"w{i}", 0, f"I{i % 4}") for i in range(8)])
            first = await processor.process([msg("s", 0, "I0")])
            (rec,) = [orjson.loads(o.payload) for o in first.recommendations]
            clicked = rec["items"][0]["item_id"]
            second = await processor.process([msg("s", 1, clicked)])
            await processor.flush_feedback()
            recs = [rec, *(orjson.loads(o.payload) for o in second.recommendations)]
            buckets = await read_buckets(
                client, tenant, 1_800_000_000, 1_800_000_000, 60, is_variant
            )
            return recs, totals(buckets)
        finally:
            await client.aclose()

    recs, counted = asyncio.run(run())
    assert all(r["variant"] == "popular" and r["model_version"] is None for r in recs), recs
    assert all(r["rec_id"].startswith("popular-") and r["strategy"] == "popular" for r in recs)
    assert set(counted) == {"popular"}
    c = counted["popular"]
    assert (c.recommendations, c.hits, c.hit_position_sum) == (10, 1, 1)
