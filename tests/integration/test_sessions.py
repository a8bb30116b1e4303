"""Session lists in the real Redis: idempotent, capped, no consecutive duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from models.ranking import STRATEGIES
from models.registry import Registry
from state import keys, sessions
from state.sessions import RECENT_IDS, Click, SessionStore, StoredSession
from stream.dev.stack import EmbeddedStack
from stream.pipeline.model_cache import ModelCache
from stream.pipeline.processor import BatchProcessor
from stream.pipeline.tenant_directory import TenantDirectory
from tests.integration.helpers import async_redis

pytestmark = [pytest.mark.broker_agnostic, pytest.mark.cluster]


async def _run(stack: EmbeddedStack, clicks: list[Click], cap: int = 3):
    client = async_redis(stack)
    try:
        store = SessionStore(client, cap=cap, ttl_s=60)
        updates = await store.append_clicks(clicks)
        ttl = await client.ttl(keys.session(clicks[0].tenant, clicks[0].session_id))
        return updates, ttl
    finally:
        await client.aclose()


def test_append_is_idempotent_capped_and_skips_repeats(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    t, s = unique_name("tenant"), "s1"
    clicks = [
        Click(t, s, "a", "e1"),
        Click(t, s, "a", "e2"),  # consecutive repeat: not appended
        Click(t, s, "b", "e3"),
        Click(t, s, "b", "e3"),  # re-delivery of e3
        Click(t, s, "c", "e4"),
        Click(t, s, "d", "e5"),  # cap 3 drops "a"
    ]
    updates, ttl = asyncio.run(_run(stack, clicks))
    assert [u.fresh for u in updates] == [True, True, True, False, True, True]
    assert [u.items for u in updates] == [
        ["a"],
        ["a"],
        ["a", "b"],
        ["a", "b"],
        ["a", "b", "c"],
        ["b", "c", "d"],
    ]
    assert 0 < ttl <= 60
    # Delivering the whole batch again changes nothing.
    again, _ = asyncio.run(_run(stack, clicks))
    assert not any(u.fresh for u in again)
    assert again[-1].items == ["b", "c", "d"]


def test_a_click_delivered_again_after_its_list_was_consumed_keeps_the_arm(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    """A crash after a click consumed its list and before the next list was written
    re-delivers the click: it must still name the arm that served the session."""
    t, s = unique_name("tenant"), "s1"

    async def go():
        client = async_redis(stack)
        try:
            store = SessionStore(client, cap=3, ttl_s=60)
            await store.append_clicks([Click(t, s, "a", "e1")])
            shown = keys.ITEM_SEP.join(["v2", "rec-1", "x", "y"])
            await store.run(store.store_lists_commands({(t, s): shown}))
            first = await store.append_clicks([Click(t, s, "b", "e2")])
            again = await store.append_clicks([Click(t, s, "b", "e2")])
            later = await store.append_clicks([Click(t, s, "c", "e3")])
            return first, again, later, await store.session(t, s)
        finally:
            await client.aclose()

    first, again, later, stored = asyncio.run(go())
    assert (first[0].fresh, first[0].shown_by) == (True, "v2")
    assert (again[0].fresh, again[0].shown_by) == (False, "v2")
    assert (later[0].fresh, later[0].shown_by, later[0].hit) == (True, "v2", None)
    assert stored is not None and stored.shown_by == "v2"


def test_a_session_keeps_the_arm_its_first_click_gave_it_before_any_list_is_written(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    """The arm a click gives a session without one is stored with the click: a worker
    that goes before writing the session's list leaves the arm to the next worker, whose
    hash assignment may name another by then."""
    t, s = unique_name("tenant"), "s1"

    async def go():
        client = async_redis(stack)
        try:
            store = SessionStore(client, cap=3, ttl_s=60)
            clicks = [Click(t, s, "a", "e1"), Click(t, s, "b", "e2")]
            first = await store.append_clicks(clicks, arms=["v1", "v1"])
            later = await store.append_clicks([Click(t, s, "c", "e3")], arms=["v2"])
            again = await store.append_clicks([Click(t, s, "a", "e1")], arms=["v2"])
            shown = keys.ITEM_SEP.join(["v3", "rec-1", "x"])
            await store.run(store.store_lists_commands({(t, s): shown}))
            listed = await store.append_clicks([Click(t, s, "d", "e4")], arms=["v2"])
            other = await store.append_clicks([Click(t, "s2", "a", "e1")], arms=[""])
            ttl = await client.ttl(keys.session(t, s))
            return first, later, again, listed, other, ttl, await store.session(t, s)
        finally:
            await client.aclose()

    first, later, again, listed, other, ttl, stored = asyncio.run(go())
    assert [u.shown_by for u in first] == ["v1", "v1"]
    assert (later[0].fresh, later[0].shown_by) == (True, "v1")
    assert (again[0].fresh, again[0].shown_by) == (False, "v1")
    # A list, once written, names the version that served it (the arm, or its stand-in).
    assert listed[0].shown_by == "v3"
    assert stored is not None and stored.shown_by == "v3"
    assert other[0].shown_by is None
    assert 0 < ttl <= 60


def test_tenants_and_sessions_are_separate(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    t1, t2 = unique_name("tenant"), unique_name("tenant")
    updates, _ = asyncio.run(
        _run(
            stack,
            [Click(t1, "s", "x", "e1"), Click(t2, "s", "y", "e1"), Click(t1, "s2", "z", "e1")],
        )
    )
    assert [u.items for u in updates] == [["x"], ["y"], ["z"]]
    assert all(u.fresh for u in updates)


def test_pull_answers_with_the_record_of_the_sessions_latest_event(
    stack: EmbeddedStack, unique_name: Callable[[str], str], trained_model_dir: Path
) -> None:
    """HTTP pull ranks the stored session on request: the same record as the topic got
    for the session's latest event (only the emission time differs), by the tenant's
    model or, for a tenant without one, by popularity; nothing once it is switched off."""
    registry = Registry(trained_model_dir)
    items = registry.load("default").item_list
    sid, shop = unique_name("pull"), unique_name("shop")  # `shop` has no model

    def msg(tenant: str, i: int, item: str, event_id: str) -> SimpleNamespace:
        value = orjson.dumps(
            {
                "tenant": tenant,
                "session_id": sid,
                "item_id": item,
                "ts": 1_700_000_000.5 + i,
                "event_id": event_id,
            }
        )
        return SimpleNamespace(key=sid.encode(), value=value, topic="clicks", partition=0, offset=i)

    async def run() -> tuple[dict[str, list[bytes]], list[bytes | None]]:
        client = async_redis(stack, decode_responses=True)
        tenants = TenantDirectory(client)
        try:
            processor = BatchProcessor(
                SessionStore(client, cap=50, ttl_s=60),
                ModelCache(registry),
                tenants,
                top_k=10,
                clock=lambda: 42.0,
            )
            published: dict[str, list[bytes]] = {"default": [], shop: []}
            for tenant in published:
                first = await processor.process(
                    [msg(tenant, 0, items[0], "p0"), msg(tenant, 1, items[1], "p1")]
                )
                # p2 repeats the newest item (not appended, still the latest event); p1
                # again is a re-delivery and changes nothing.
                second = await processor.process(
                    [msg(tenant, 2, items[1], "p2"), msg(tenant, 1, items[1], "p1")]
                )
                published[tenant] = [
                    o.payload for o in first.recommendations + second.recommendations
                ]
            pulled = [
                await processor.recommend_session("default", sid),
                await processor.recommend_session(shop, sid),
                await processor.recommend_session("default", "never-seen"),
            ]
            await client.hset(keys.TENANT_MODES, shop, "off")
            tenants.invalidate()
            pulled.append(await processor.recommend_session(shop, sid))
            return published, pulled
        finally:
            await client.aclose()

    published, (by_model, by_popularity, unknown, switched_off) = asyncio.run(run())
    for tenant, pulled, strategy in (
        ("default", by_model, STRATEGIES),
        (shop, by_popularity, ("popular",)),
    ):
        latest = orjson.loads(published[tenant][2])
        assert latest["event_id"] == "p2" and latest["event_ts"] == 1_700_000_002.5
        assert latest["strategy"] in strategy
        assert pulled is not None
        got = orjson.loads(pulled)
        # Each record has its own rec_id (a pull is a list shown again), and a pull names
        # each item's source (the topic's records do not); the rest is equal.
        assert got.pop("rec_id") != latest.pop("rec_id")
        sources = [item.pop("source") for item in got["items"]]
        assert sources[0] == latest["strategy"] and set(sources) <= set(STRATEGIES)
        assert all("source" not in item for item in latest["items"])
        assert got == latest
    assert unknown is None and switched_off is None


async def _append(stack: EmbeddedStack, clicks: list[Click], origins=None, cap: int = 50):
    client = async_redis(stack)
    try:
        store = SessionStore(client, cap=cap, ttl_s=60)
        return await store.append_clicks(clicks, origins=origins)
    finally:
        await client.aclose()


def test_twenty_thousand_clicks_keep_a_sessions_footprint_bounded(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    """Idempotency costs constant memory: no field per event."""
    t, s = unique_name("tenant"), "hot"
    clicks = [Click(t, s, f"item-{i % 97}", f"event-{i:08d}") for i in range(20_000)]
    origins = [("clicks:0", i) for i in range(20_000)]

    async def run() -> tuple[int, int, bytes, list[bool]]:
        client = async_redis(stack)
        store = SessionStore(client, cap=50, ttl_s=60)
        latest = keys.ITEM_SEP.join(["v1", "rec-1", *(f"item-{i}" for i in range(20))])
        try:
            for at in range(0, 20_000, 2_000):
                await _append(stack, clicks[at : at + 2_000], origins[at : at + 2_000])
                # Its latest list written back, as the worker does after each batch.
                await store.run(store.store_lists_commands({(t, s): latest}))
            # The last batch re-delivered (longer than the ring of recent ids): nothing new.
            again = await _append(stack, clicks[-2_000:], origins[-2_000:])
            key = keys.session(t, s)
            return (
                await client.hlen(key),
                await client.memory_usage(key),
                await client.object("encoding", key),
                [u.fresh for u in again],
            )
        finally:
            await client.aclose()

    fields, memory, encoding, again = asyncio.run(run())
    assert not any(again)
    assert fields <= 9, f"{fields} fields"
    # 50 items, the latest list, the digests of the newest ids and a few fields, however
    # many events there were, in Redis's compact encoding of a small hash.
    assert encoding in (b"listpack", b"ziplist"), encoding
    assert memory < 2 * 1024, f"{memory} bytes"


def test_the_newest_ids_are_recognised_at_another_offset_whatever_their_length(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    """A producer's retry puts an event on the topic again at a later offset: its id
    recognises it among the session's newest, however long the ids (up to 256)."""
    t, s = unique_name("tenant"), "s"
    ids = [f"{i:03d}".ljust(256, "x") for i in range(40)]
    clicks = [Click(t, s, f"item-{i}", eid) for i, eid in enumerate(ids)]
    newest, older = clicks[-RECENT_IDS:], clicks[-RECENT_IDS - 1]

    async def run() -> tuple[list[bool], list[bool], list[str]]:
        await _append(stack, clicks, [("clicks:0", i) for i in range(40)])
        again = await _append(stack, newest, [("clicks:0", 40 + i) for i in range(RECENT_IDS)])
        # Beyond the newest the ids are forgotten: the memory a session takes stays fixed.
        forgotten = await _append(stack, [older], [("clicks:0", 100)])
        return [u.fresh for u in again], [u.fresh for u in forgotten], again[-1].items

    again, forgotten, items = asyncio.run(run())
    assert not any(again), f"{again.count(True)} of the newest {RECENT_IDS} taken as new"
    assert forgotten == [True]
    assert items == [c.item_id for c in clicks]


def test_a_digest_matching_across_two_recent_ones_is_not_a_re_delivery(
    stack: EmbeddedStack, unique_name: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recent digests are kept back to back: an event's digest found straddling two
    of them is a new event."""
    fixed = {"e1": b"AAAABBBB", "e2": b"CCCCDDDD", "e3": b"BBBBCCCC"}
    monkeypatch.setattr(sessions, "digest", fixed.__getitem__)
    t = unique_name("tenant")
    clicks = [Click(t, "s", "a", "e1"), Click(t, "s", "b", "e2"), Click(t, "s", "c", "e3")]
    updates = asyncio.run(_append(stack, clicks, [("clicks:0", i) for i in range(3)]))
    assert [u.fresh for u in updates] == [True, True, True]
    assert updates[-1].items == ["a", "b", "c"]


def test_a_session_stored_before_the_digests_is_read_and_goes_on(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    """A session as the store wrote it before fixed-size digests (its recent event ids
    joined, the newest last) is read, not taken for a new session: its items, latest
    event, arm and list; an event among its ids sent again is a re-delivery; the next
    click goes on from it."""
    t, s, sep = unique_name("tenant"), "s", keys.ITEM_SEP
    shown = sep.join(["v2", "v2-ab-1", "x", "c", "y"])
    old = {
        "i": sep.join(["a", "b"]), "n": "2", "l": "b", "lt": "1700000001.5",
        "r": sep.join(["old-1", "old-2"]), "o:clicks:0": "7", "p": shown, "a": "v1",
    }  # fmt: skip

    async def run():
        client = async_redis(stack, decode_responses=True)
        try:
            store = SessionStore(client, cap=50, ttl_s=60)
            await client.hset(keys.session(t, s), mapping=old)
            before = await store.session(t, s)
            resent = await store.append_clicks([Click(t, s, "b", "old-2")], origins=[("c:1", 0)])
            fresh = await store.append_clicks(
                [Click(t, s, "c", "new-1", 1_700_000_002.5)], origins=[("clicks:0", 8)]
            )
            again = await store.append_clicks([Click(t, s, "c", "new-1")], origins=[("c:1", 1)])
            after = await store.session(t, s)
            return before, resent, fresh, again, after, await client.ttl(keys.session(t, s))
        finally:
            await client.aclose()

    before, resent, fresh, again, after, ttl = asyncio.run(run())
    assert before == StoredSession(sep.join(["a", "b"]), "old-2", 1_700_000_001.5, "v2")
    assert (resent[0].fresh, resent[0].items, resent[0].shown_by) == (False, ["a", "b"], "v2")
    assert (fresh[0].fresh, fresh[0].items, fresh[0].hit) == (True, ["a", "b", "c"], shown)
    assert (again[0].fresh, again[0].items) == (False, ["a", "b", "c"])
    assert after == StoredSession(sep.join(["a", "b", "c"]), "new-1", 1_700_000_002.5, "v2")
    assert 0 < ttl <= 60


def test_the_same_event_sent_twice_at_another_offset_is_applied_once(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    t = unique_name("tenant")
    clicks = [Click(t, "s", "a", "e1"), Click(t, "s", "b", "e2"), Click(t, "s", "b", "e2")]
    updates = asyncio.run(
        _append(stack, clicks, [("clicks:1", 5), ("clicks:1", 6), ("clicks:1", 9)])
    )
    assert [u.fresh for u in updates] == [True, True, False]
    assert updates[-1].items == ["a", "b"]


def test_ids_with_separators_never_share_a_key(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    t = unique_name("tenant")
    ids = ["x:y", "x%3Ay", "x}y", "{x", "x"]
    updates = asyncio.run(_append(stack, [Click(t, sid, f"item-{sid}", "e1") for sid in ids]))
    assert [u.items for u in updates] == [[f"item-{sid}"] for sid in ids]
    assert len({keys.session(t, sid) for sid in ids}) == len(ids)
    assert keys.session("default", "x:y") != keys.session("default:x", "y")


def test_cold_start_popularity_stays_at_its_cap_and_expires(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    """One producer sending ever new item ids cannot grow a tenant's popularity set
    without bound: it keeps the most clicked items (the default cap) and has a TTL."""
    t = unique_name("tenant")
    cap, distinct = 10_000, 13_000
    # Three items clicked often, then a flood of items clicked once each.
    hot = [Click(t, f"h{i}", f"hot-{i % 3}", f"h{i}") for i in range(30)]
    flood = [Click(t, f"s{i % 500}", f"item-{i}", f"e{i}") for i in range(distinct)]

    async def run() -> tuple[int, int, list[str]]:
        client = async_redis(stack, decode_responses=True)
        try:
            store = SessionStore(client, cap=50, ttl_s=60)
            stream = hot + flood
            for at in range(0, len(stream), 2_000):
                await store.append_clicks(stream[at : at + 2_000], count_for=[t])
            key = keys.popularity(t)
            top = await client.zrevrange(key, 0, 2)
            return await client.zcard(key), await client.ttl(key), top
        finally:
            await client.aclose()

    size, ttl, top = asyncio.run(run())
    assert size == cap, f"{size} members"
    assert ttl > 0, f"TTL {ttl}"
    assert sorted(top) == ["hot-0", "hot-1", "hot-2"]


def test_a_session_clicked_within_its_ttl_stays(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    """The TTL is set again by a click once a hundredth of it has passed: a session
    clicked within its TTL never expires, one left alone does."""
    t = unique_name("tenant")

    async def run() -> tuple[list[str], list[str], int]:
        client = async_redis(stack)
        try:
            store = SessionStore(client, cap=50, ttl_s=2)
            for i in range(3):
                await store.append_clicks([Click(t, "s", f"i{i}", f"e{i}")])
                await asyncio.sleep(1.5)
            kept = await store.session_items(t, "s")
            await asyncio.sleep(2.1)
            gone = await store.session_items(t, "s")
            return kept, gone, await client.exists(keys.session(t, "s"))
        finally:
            await client.aclose()

    kept, gone, exists = asyncio.run(run())
    assert kept == ["i0", "i1", "i2"]
    assert gone == [] and exists == 0
