"""Tenant policies in Redis: a cache of the registry's POLICY.json files (durable),
filled like the tenant modes (``keys.POLICIES_LOADED`` says it was filled since Redis
last started empty)."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from redis.asyncio import Redis

from state import keys


def set_policy(client: redis.Redis, tenant: str, policy: dict[str, Any] | None) -> None:
    if policy is None:
        client.hdel(keys.POLICIES, tenant)
    else:
        client.hset(keys.POLICIES, tenant, orjson.dumps(policy))


async def read_policies(client: Redis) -> dict[str, dict[str, Any]] | None:
    """The cached policies; None when the cache was not filled since Redis started."""
    raw = await client.hgetall(keys.POLICIES)
    out: dict[str, dict[str, Any]] = {}
    loaded = False
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else k
        if name == keys.POLICIES_LOADED:
            loaded = True
            continue
        try:
            out[name] = orjson.loads(v)
        except orjson.JSONDecodeError:
            continue
    return out if loaded else None


async def cache_policies(client: Redis, policies: dict[str, dict[str, Any]]) -> None:
    mapping: dict[str, Any] = {t: orjson.dumps(p) for t, p in policies.items()}
    await client.hset(keys.POLICIES, mapping={**mapping, keys.POLICIES_LOADED: "1"})
