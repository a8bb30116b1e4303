"""What the worker needs to know per tenant besides its model, cached briefly.

Modes (on / freeze / off) and cold-start popular items live in Redis; reading them on
every batch would cost a round trip, so they are cached for ``ttl_s`` and dropped at
once when a change notice arrives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from state.tenants import cache_modes, most_popular, read_modes

log = logging.getLogger("streamrec.worker")

POPULAR_DEPTH = 200


class TenantDirectory:
    def __init__(
        self,
        client: Redis,
        *,
        ttl_s: float = 2.0,
        durable: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        # Reads the modes from the durable store (the registry): Redis only caches them.
        self._durable = durable
        self._modes: dict[str, str] = {}
        self._modes_at = float("-inf")
        self._popular: dict[str, tuple[float, list[tuple[str, float]]]] = {}

    async def mode(self, tenant: str) -> str:
        now = time.monotonic()
        if now - self._modes_at > self._ttl_s:
            modes = await read_modes(self._client)
            if modes is None:
                # Redis started empty (restart without persistence): refill the cache.
                durable = await asyncio.to_thread(self._durable) if self._durable else {}
                await cache_modes(self._client, durable)
                log.info("tenant modes loaded into Redis from the registry: %s", durable)
                modes = await read_modes(self._client) or durable
            self._modes = modes
            self._modes_at = now
        return self._modes.get(tenant, "on")

    async def popular(self, tenant: str) -> list[tuple[str, float]]:
        now = time.monotonic()
        cached = self._popular.get(tenant)
        if cached is None or now - cached[0] > self._ttl_s:
            cached = (now, await most_popular(self._client, tenant, POPULAR_DEPTH))
            self._popular[tenant] = cached
        return cached[1]

    def invalidate(self) -> None:
        self._modes_at = float("-inf")
        self._popular.clear()
