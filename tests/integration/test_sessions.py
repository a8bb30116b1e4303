"""Session lists in the real Redis: idempotent, capped, no consecutive duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.asyncio import Redis

from state import keys
from state.sessions import Click, SessionStore
from stream.devstack import EmbeddedStack


async def _run(stack: EmbeddedStack, clicks: list[Click], cap: int = 3):
    client = Redis.from_url(stack.redis_url)
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


def test_last_recommendations_are_kept_per_session(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    t = unique_name("tenant")

    async def run() -> tuple[object, object, object]:
        client = Redis.from_url(stack.redis_url)
        try:
            store = SessionStore(client, cap=3, ttl_s=60)
            await store.store_last_recs(
                [(t, "s1", b'{"n": 1}'), (t, "s2", b'{"n": 2}'), (t, "s1", b'{"n": 3}')]
            )
            return (
                await store.last_recs(t, "s1"),
                await store.last_recs(t, "s2"),
                await client.ttl(keys.last_recs(t, "s1")),
            )
        finally:
            await client.aclose()

    s1, s2, ttl = asyncio.run(run())
    assert (s1, s2) == (b'{"n": 3}', b'{"n": 2}') and 0 < ttl <= 60
