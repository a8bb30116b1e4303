"""Tenants' control state in Redis: existence, API key digests, serving rules, catalogue.

Existence, keys and rules are durable in the model registry (``models.registry``) and
cached here, each hash with a ``_loaded`` field saying it was filled from the registry
since Redis last started empty (like the modes in ``state.tenants``). The catalogue lives
in Redis only (AOF): it is data the shop sends again, not configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import redis
from redis.asyncio import Redis

from state import keys
from state.resp import text


# -- the caches of registry files: a hash with a marker field once filled --------------
async def read_cached(client: Redis, key: str, marker: str) -> dict[str, str] | None:
    """The cache hash ``key`` as text, without its ``marker`` field; None when the marker
    is missing (the cache was not filled from the registry since Redis started)."""
    raw = {text(k): text(v) for k, v in (await client.hgetall(key)).items()}
    if raw.pop(marker, None) is None:
        return None
    return raw


async def fill_cache(client: Redis, key: str, marker: str, mapping: Mapping[str, Any]) -> None:
    """Fill the cache hash ``key`` from the registry (all of it) and mark it filled."""
    await client.hset(key, mapping={**mapping, marker: "1"})


# -- existence (the modes hash: a tenant exists once it has a mode there) --------------
async def tenant_known(client: Redis, tenant: str) -> bool:
    return bool(await client.hexists(keys.TENANT_MODES, tenant))


async def cache_tenant(client: Redis, tenant: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.hsetnx(keys.TENANT_MODES, tenant, "on")
    pipe.sadd(keys.TENANTS, tenant)
    await pipe.execute()


def cache_tenant_sync(client: redis.Redis, tenant: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.hsetnx(keys.TENANT_MODES, tenant, "on")
    pipe.sadd(keys.TENANTS, tenant)
    pipe.execute()


# -- keys ------------------------------------------------------------------------------
# A field's value: "<tenant> <key id>", plus " revoked" once revoked (kept, so that a
# tenant that ever had a key is never open again). A field only moves forward (absent ->
# active -> revoked): a key is added with HSETNX and a revocation always wins, so no
# late or stale write (a slow creation, a refill from an older read of the registry)
# can bring a revoked key back.
async def read_keys(client: Redis) -> dict[str, tuple[str, bool]] | None:
    """digest -> (tenant, active); None when the cache was not filled since Redis started."""
    raw = await read_cached(client, keys.API_KEYS, keys.KEYS_LOADED)
    if raw is None:
        return None
    out = {}
    for digest, value in raw.items():
        parts = value.split(" ")
        out[digest] = (parts[0], len(parts) < 3)
    return out


def _key_commands(pipe: Any, entries: Mapping[str, tuple[str, str, bool]]) -> None:
    for digest, (tenant, key_id, active) in entries.items():
        if active:
            pipe.hsetnx(keys.API_KEYS, digest, f"{tenant} {key_id}")
        else:
            pipe.hset(keys.API_KEYS, digest, f"{tenant} {key_id} revoked")


async def cache_keys(
    client: Redis, entries: Mapping[str, tuple[str, str, bool]], *, loaded: bool = True
) -> None:
    """Fill the cache from the registry (``loaded``: all of it, so mark it filled)."""
    pipe = client.pipeline(transaction=False)
    _key_commands(pipe, entries)
    if loaded:
        pipe.hset(keys.API_KEYS, keys.KEYS_LOADED, "1")
    await pipe.execute()


def add_key_sync(client: redis.Redis, digest: str, tenant: str, key_id: str) -> None:
    client.hsetnx(keys.API_KEYS, digest, f"{tenant} {key_id}")


def revoke_key_sync(client: redis.Redis, digest: str, tenant: str, key_id: str) -> None:
    client.hset(keys.API_KEYS, digest, f"{tenant} {key_id} revoked")


# -- serving rules ---------------------------------------------------------------------
async def read_rules(client: Redis) -> dict[str, dict[str, Any]] | None:
    raw = await read_cached(client, keys.TENANT_RULES, keys.RULES_LOADED)
    if raw is None:
        return None
    return {t: orjson.loads(v) for t, v in raw.items()}


async def cache_rules(client: Redis, rules: Mapping[str, Mapping[str, Any]]) -> None:
    mapping = {t: orjson.dumps(r) for t, r in rules.items()}
    await fill_cache(client, keys.TENANT_RULES, keys.RULES_LOADED, mapping)


def set_rules_sync(client: redis.Redis, tenant: str, rules: Mapping[str, Any]) -> None:
    client.hset(keys.TENANT_RULES, tenant, orjson.dumps(rules))


# -- one tenant's control state, cached again from the registry -------------------------
async def cache_control(
    client: Redis,
    tenant: str,
    mode: str,
    key_entries: Mapping[str, tuple[str, str, bool]],
    rules: Mapping[str, Any],
    policy: Mapping[str, Any] | None,
) -> None:
    """What the registry holds for ``tenant`` into the caches (after its files changed
    or were repaired); the caches' ``_loaded`` marks are left as they are."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(keys.TENANT_MODES, tenant, mode)
    pipe.sadd(keys.TENANTS, tenant)
    _key_commands(pipe, key_entries)
    if rules:
        pipe.hset(keys.TENANT_RULES, tenant, orjson.dumps(rules))
    else:
        pipe.hdel(keys.TENANT_RULES, tenant)
    if policy:
        pipe.hset(keys.POLICIES, tenant, orjson.dumps(policy))
    else:
        pipe.hdel(keys.POLICIES, tenant)
    await pipe.execute()


# -- catalogue -------------------------------------------------------------------------
async def put_items(client: Redis, tenant: str, entries: Mapping[str, Mapping[str, Any]]) -> int:
    """Store catalogue entries; returns the catalogue's new version."""
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.catalogue(tenant), mapping={i: orjson.dumps(e) for i, e in entries.items()})
    pipe.incr(keys.catalogue_version(tenant))
    return int((await pipe.execute())[-1])


async def get_item(client: Redis, tenant: str, item_id: str) -> dict[str, Any] | None:
    raw = await client.hget(keys.catalogue(tenant), item_id)
    return None if raw is None else orjson.loads(raw)


async def read_catalogue(client: Redis, tenant: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """(version, item -> entry)."""
    pipe = client.pipeline(transaction=True)
    pipe.get(keys.catalogue_version(tenant))
    pipe.hgetall(keys.catalogue(tenant))
    version, raw = await pipe.execute()
    return int(version or 0), {text(i): orjson.loads(e) for i, e in raw.items()}


def catalogue_categories(client: redis.Redis, tenants: Iterable[str]) -> dict[str, dict[str, str]]:
    """Tenant -> item -> category, for the items of each tenant's catalogue that name one
    (the trainer's category features; a pipeline of one HGETALL a tenant)."""
    names = list(tenants)
    pipe = client.pipeline(transaction=False)
    for tenant in names:
        pipe.hgetall(keys.catalogue(tenant))
    out: dict[str, dict[str, str]] = {}
    for tenant, raw in zip(names, pipe.execute(), strict=True):
        found = {}
        for item, entry in raw.items():
            category = orjson.loads(entry).get("category")
            if category:
                found[text(item)] = str(category)
        out[tenant] = found
    return out


async def catalogue_versions(client: Redis, tenants: Iterable[str]) -> dict[str, int]:
    names = list(tenants)
    if not names:
        return {}
    # A pipeline of GETs, not MGET: the tenants' counters lie in different hash slots.
    pipe = client.pipeline(transaction=False)
    for tenant in names:
        pipe.get(keys.catalogue_version(tenant))
    values = await pipe.execute()
    return {t: int(v or 0) for t, v in zip(names, values, strict=True)}
