"""Tenant policies in Redis: a cache of the registry's POLICY.json files (durable),
filled like the tenant modes (``keys.POLICIES_LOADED`` says it was filled since Redis
last started empty)."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from redis.asyncio import Redis

from state import keys
from state.control import fill_cache, read_cached


def set_policy(client: redis.Redis, tenant: str, policy: dict[str, Any] | None) -> None:
    if policy is None:
        client.hdel(keys.POLICIES, tenant)
    else:
        client.hset(keys.POLICIES, tenant, orjson.dumps(policy))


async def read_policies(client: Redis) -> dict[str, dict[str, Any]] | None:
    """The cached policies; None when the cache was not filled since Redis started."""
    raw = await read_cached(client, keys.POLICIES, keys.POLICIES_LOADED)
    if raw is None:
        return None
    out: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        try:
            out[name] = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
    return out


async def cache_policies(client: Redis, policies: dict[str, dict[str, Any]]) -> None:
    mapping = {t: orjson.dumps(p) for t, p in policies.items()}
    await fill_cache(client, keys.POLICIES, keys.POLICIES_LOADED, mapping)
