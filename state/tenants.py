"""Tenants in Redis: who has sent clicks, each one's on / freeze / off switch (a cache of
the registry's MODE files), and click counts per item for tenants that have no model yet."""

from __future__ import annotations

from models.errors import InvalidSettingError
from state import keys
from state.connection import AsyncRedis, SyncRedis
from state.control import fill_cache, read_cached
from state.resp import text

MODES = ("on", "freeze", "off")


def set_mode(client: SyncRedis, tenant: str, mode: str) -> None:
    if mode not in MODES:
        raise InvalidSettingError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.TENANT_MODES, tenant, mode)
    pipe.sadd(keys.TENANTS, tenant)
    pipe.execute()


def list_tenants(client: SyncRedis) -> dict[str, str]:
    """Every known tenant with its mode."""
    pipe = client.pipeline(transaction=False)
    pipe.smembers(keys.TENANTS)
    pipe.hgetall(keys.TENANT_MODES)
    members, modes = pipe.execute()
    decoded = {text(k): text(v) for k, v in modes.items()}
    decoded.pop(keys.MODES_LOADED, None)
    names = {text(m) for m in members} | set(decoded)
    return {t: decoded.get(t, "on") for t in sorted(names)}


async def read_modes(client: AsyncRedis) -> dict[str, str] | None:
    """The cached modes; None when the cache was not filled from the durable store since
    Redis started (see ``keys.MODES_LOADED``)."""
    return await read_cached(client, keys.TENANT_MODES, keys.MODES_LOADED)


async def cache_modes(client: AsyncRedis, modes: dict[str, str]) -> None:
    """Fill the cache from the durable store (what it holds wins over the cache)."""
    await fill_cache(client, keys.TENANT_MODES, keys.MODES_LOADED, modes)


async def most_popular(client: AsyncRedis, tenant: str, n: int) -> list[tuple[str, float]]:
    return [
        (text(i), float(s))
        for i, s in await client.zrevrange(keys.popularity(tenant), 0, n - 1, withscores=True)
    ]
