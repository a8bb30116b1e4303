"""Tenants in Redis: who has sent clicks, each one's on / freeze / off switch, and
click counts per item for tenants that have no model yet."""

from __future__ import annotations

import redis
from redis.asyncio import Redis

from state import keys

MODES = ("on", "freeze", "off")


def set_mode(client: redis.Redis, tenant: str, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.TENANT_MODES, tenant, mode)
    pipe.sadd(keys.TENANTS, tenant)
    pipe.execute()


def list_tenants(client: redis.Redis) -> dict[str, str]:
    """Every known tenant with its mode."""
    pipe = client.pipeline(transaction=False)
    pipe.smembers(keys.TENANTS)
    pipe.hgetall(keys.TENANT_MODES)
    members, modes = pipe.execute()
    decoded = {_text(k): _text(v) for k, v in modes.items()}
    decoded.pop(keys.MODES_LOADED, None)
    names = {_text(m) for m in members} | set(decoded)
    return {t: decoded.get(t, "on") for t in sorted(names)}


async def read_modes(client: Redis) -> dict[str, str] | None:
    """The cached modes; None when the cache was not filled from the durable store since
    Redis started (see ``keys.MODES_LOADED``)."""
    raw = await client.hgetall(keys.TENANT_MODES)
    modes = {_text(k): _text(v) for k, v in raw.items()}
    if modes.pop(keys.MODES_LOADED, None) is None:
        return None
    return modes


async def cache_modes(client: Redis, modes: dict[str, str]) -> None:
    """Fill the cache from the durable store (what it holds wins over the cache)."""
    await client.hset(keys.TENANT_MODES, mapping={**modes, keys.MODES_LOADED: "1"})


async def most_popular(client: Redis, tenant: str, n: int) -> list[tuple[str, float]]:
    return [
        (_text(i), float(s))
        for i, s in await client.zrevrange(keys.popularity(tenant), 0, n - 1, withscores=True)
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
