"""The worker's ``TenantDirectory``: what it needs to know per tenant besides its model
(mode, keys, serving rules, catalogue, cold-start popular items, and the mask of items
its rules ban from its model's lists).

Modes, keys, rules and popular items live in Redis (``state``); reading them on every
batch would cost a round trip, so they are cached for ``ttl_s`` and dropped at once
when a change notice arrives.

The registry's files are the truth, Redis a cache of them. ``check_files`` (on the
worker's timer, never per batch) stats every tenant's control files and re-reads those
that changed: a damaged one disables its tenant only (logged once, listed by
``disabled_tenants``; its clicks are recorded and not answered, like a tenant switched
off), and a changed or repaired one is cached again in Redis, which also heals a cache
that missed a change while Redis was away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.bundle import ModelBundle
from models.policy_file import POLICY, read_policy
from models.registry import KEYS, MODE, RULES, DamagedFileError, Registry, key_entries
from models.rules import Catalogue, ServingRules, banned_mask
from state.connection import AsyncRedis, RedisError
from state.control import (
    cache_control,
    cache_keys,
    cache_rules,
    cache_tenant,
    catalogue_versions,
    read_catalogue,
    read_keys,
    read_rules,
    tenant_known,
)
from state.tenants import cache_modes, most_popular, read_modes

log = logging.getLogger(f"streamrec.{__name__}")

# The files whose damage disables a tenant (CURRENT and the model: see ModelCache).
CONTROL_FILES = (MODE, KEYS, RULES, POLICY)


@dataclass(frozen=True)
class ControlState:
    """One tenant's control files as read from the registry."""

    mode: str
    keys: dict[str, tuple[str, str, bool]]
    rules: dict[str, Any]
    policy: dict[str, Any] | None


def read_control(registry: Registry, tenant: str) -> ControlState:
    """The tenant's control files, each checked; ``DamagedFileError`` names the first
    that is not readable or not what it should be."""
    return ControlState(
        registry.mode(tenant) or "on",
        key_entries({tenant: registry.keys(tenant)}),
        registry.rules(tenant),
        read_policy(registry, tenant),
    )


Stamp = tuple[tuple[int, int, int] | None, ...]


def control_stamp(registry: Registry, tenant: str) -> Stamp:
    """(inode, size, mtime) of each control file, None where there is none: a file
    replaced (every change is an atomic rename) or edited in place changes it."""
    directory = registry.pointer_path(tenant).parent
    out: list[tuple[int, int, int] | None] = []
    for name in CONTROL_FILES:
        try:
            st = os.stat(directory / name)
        except FileNotFoundError:
            out.append(None)
        except OSError as exc:  # unreadable: re-read (and found damaged) when it changes
            out.append((-1, exc.errno or 0, 0))
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


POPULAR_DEPTH = 200
# A catalogue change is seen within this long even if its notice is lost.
CATALOGUE_CHECK_S = 1.0


class TenantDirectory:
    def __init__(
        self,
        client: AsyncRedis,
        *,
        ttl_s: float = 2.0,
        durable: Callable[[], dict[str, str]] | None = None,
        registry: Registry | None = None,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        # Reads the modes from the durable store (the registry): Redis only caches them.
        self._durable = durable
        self._modes: dict[str, str] = {}
        self._modes_at = float("-inf")
        self._modes_read = False  # the first read logs modes, later ones their changes
        self._popular: dict[str, tuple[float, list[tuple[str, float]]]] = {}
        self._registry = registry
        self._keys: dict[str, tuple[str, bool]] = {}  # digest -> (tenant, active)
        self._keys_at = float("-inf")
        self._rules: dict[str, ServingRules] = {}
        self._rules_at = float("-inf")
        # tenant -> (catalogue version, catalogue); checked every CATALOGUE_CHECK_S
        self._catalogues: dict[str, tuple[int, Catalogue]] = {}
        self._catalogue_at: dict[str, float] = {}
        # tenant -> ((model version, catalogue version, rules), mask)
        self._masks: dict[str, tuple[tuple[object, ...], np.ndarray]] = {}
        # Tenants disabled by a damaged control file, and each tenant's files as last seen.
        self._disabled: dict[str, DamagedFileError] = {}
        self._stamps: dict[str, Stamp] = {}
        self._scanned = False
        self._scan_lock = asyncio.Lock()
        self._bad_rules: dict[str, str] = {}  # tenant -> the rules error last logged

    # -- damaged control files -----------------------------------------------------------
    def disabled(self, tenant: str) -> DamagedFileError | None:
        """Why the tenant is disabled (a damaged control file), or None."""
        return self._disabled.get(tenant)

    def disabled_tenants(self) -> dict[str, DamagedFileError]:
        return dict(self._disabled)

    def _disable(self, tenant: str, exc: DamagedFileError) -> None:
        before = self._disabled.get(tenant)
        self._disabled[tenant] = exc
        if before is None or str(before) != str(exc):
            log.error(
                "tenant %s disabled: %s: %s; its clicks are recorded, not answered, and its "
                "HTTP routes answer 503 until the file is repaired",
                tenant,
                exc.path,
                exc.reason,
            )

    def _note_damaged(self, damaged: dict[str, DamagedFileError]) -> None:
        for tenant, exc in damaged.items():
            self._disable(tenant, exc)

    async def check_files(self) -> None:
        """Re-read the control files of every tenant whose files changed since the last
        check (all of them the first time): disable a tenant whose file is damaged,
        enable it again once repaired, and cache what changed in Redis. On the worker's
        timer: a stat of each file, no read unless it changed."""
        if self._registry is None:
            return
        async with self._scan_lock:
            first = not self._scanned
            changed = await asyncio.to_thread(self._changed_files)
            recached = False
            for tenant, (stamp, found) in changed.items():
                if isinstance(found, DamagedFileError):
                    self._disable(tenant, found)
                    self._stamps[tenant] = stamp
                    continue
                was = self._disabled.get(tenant)
                if not first or was is not None:
                    try:
                        await cache_control(
                            self._client, tenant, found.mode, found.keys, found.rules, found.policy
                        )
                    except (RedisError, OSError) as exc:
                        log.warning("tenant %s: control state not cached (%s)", tenant, exc)
                        continue  # its stamp is not kept: the next check tries again
                    recached = True
                if was is not None:
                    del self._disabled[tenant]
                    log.warning("tenant %s: %s repaired; served again", tenant, was.path)
                self._stamps[tenant] = stamp
            self._scanned = True
            if recached:
                self.invalidate()

    def _changed_files(self) -> dict[str, tuple[Stamp, ControlState | DamagedFileError]]:
        assert self._registry is not None
        registry = self._registry
        tenants = registry.tenants()
        for gone in set(self._stamps) - set(tenants):
            self._stamps.pop(gone, None)
            self._disabled.pop(gone, None)
        out: dict[str, tuple[Stamp, ControlState | DamagedFileError]] = {}
        for tenant in tenants:
            stamp = control_stamp(registry, tenant)
            if self._stamps.get(tenant) == stamp:
                continue
            try:
                out[tenant] = (stamp, read_control(registry, tenant))
            except DamagedFileError as exc:
                out[tenant] = (stamp, exc)
        return out

    async def _scan_once(self) -> None:
        # The first check runs before the first answer, not a timer interval later.
        if not self._scanned:
            try:
                await self.check_files()
            except OSError as exc:
                log.warning("tenant control files not checked (%s)", exc)

    async def mode(self, tenant: str) -> str:
        """The tenant's switch; ``off`` while it is disabled (see :meth:`disabled`)."""
        now = time.monotonic()
        if now - self._modes_at > self._ttl_s:
            await self._scan_once()
            modes = await read_modes(self._client)
            if modes is None:
                # Redis started empty (restart without persistence): refill the cache.
                durable = await asyncio.to_thread(self._durable) if self._durable else {}
                await cache_modes(self._client, durable)
                log.info("tenant modes loaded into Redis from the registry: %s", durable)
                modes = await read_modes(self._client) or durable
            # The loop's name must not shadow ``tenant``, read below.
            for name, before, after in mode_changes(self._modes, modes):
                if not self._modes_read:
                    log.info("tenant %s: mode %s", name, after)
                else:
                    log.info("tenant %s: mode %s -> %s", name, before, after)
            self._modes, self._modes_at, self._modes_read = modes, now, True
        if tenant in self._disabled:
            return "off"
        return self._modes.get(tenant, "on")

    async def popular(self, tenant: str) -> list[tuple[str, float]]:
        now = time.monotonic()
        cached = self._popular.get(tenant)
        if cached is None or now - cached[0] > self._ttl_s:
            cached = (now, await most_popular(self._client, tenant, POPULAR_DEPTH))
            self._popular[tenant] = cached
        return cached[1]

    @property
    def client(self) -> AsyncRedis:
        return self._client

    def invalidate(self) -> None:
        self._modes_at = float("-inf")
        self._keys_at = float("-inf")
        self._rules_at = float("-inf")
        self._catalogue_at.clear()
        self._popular.clear()

    # -- existence -----------------------------------------------------------------------
    async def exists(self, tenant: str) -> bool:
        await self.mode(tenant)
        if tenant in self._modes:
            return True
        # Created since the cache was read (by the admin API, the CLI, another worker)?
        if await tenant_known(self._client, tenant):
            self._modes[tenant] = "on"
            return True
        # The registry is the store of record: a tenant whose directory was made without
        # touching this Redis (`streamrec train --tenant`, a restored backup) exists.
        if self._registry is not None:
            mode = await asyncio.to_thread(self._durable_mode, tenant)
            if isinstance(mode, DamagedFileError):
                self._disable(tenant, mode)
                return True  # it exists, disabled
            if mode is not None:
                await cache_modes(self._client, {tenant: mode})
                await cache_tenant(self._client, tenant)
                self._modes[tenant] = mode
                return True
        return False

    def _durable_mode(self, tenant: str) -> str | DamagedFileError | None:
        assert self._registry is not None
        if not self._registry.exists(tenant):
            return None
        try:
            return self._registry.mode(tenant) or "on"
        except DamagedFileError as exc:
            return exc

    async def create(self, tenant: str) -> None:
        """Create the tenant: durable in the registry first, then the Redis cache."""
        if self._registry is not None:
            await asyncio.to_thread(self._registry.create_tenant, tenant)
        await cache_tenant(self._client, tenant)
        self._modes.setdefault(tenant, "on")

    # -- keys ----------------------------------------------------------------------------
    async def _key_map(self) -> dict[str, tuple[str, bool]]:
        now = time.monotonic()
        if now - self._keys_at > self._ttl_s:
            await self._scan_once()
            found = await read_keys(self._client)
            if found is None:
                durable = {}
                if self._registry is not None:
                    by_tenant, damaged = await asyncio.to_thread(
                        self._registry.each_tenant, self._registry.keys
                    )
                    self._note_damaged(damaged)
                    durable = key_entries(by_tenant)
                await cache_keys(self._client, durable)
                found = await read_keys(self._client) or {}
            self._keys, self._keys_at = found, now
        return self._keys

    async def key_owner(self, digest: str) -> str | None:
        """The tenant owning the key with this digest (a revoked key is gone within the
        cache's few seconds, at once where the revocation's notice arrives)."""
        entry = (await self._key_map()).get(digest)
        return entry[0] if entry is not None and entry[1] else None

    async def has_keys(self, tenant: str) -> bool:
        """Has the tenant ever had a key (then every call needs a valid one)?"""
        return any(t == tenant for t, _ in (await self._key_map()).values())

    # -- serving rules and catalogue -----------------------------------------------------
    async def rules(self, tenant: str) -> ServingRules:
        now = time.monotonic()
        if now - self._rules_at > self._ttl_s:
            found = await read_rules(self._client)
            if found is None:
                durable: dict[str, dict[str, Any]] = {}
                if self._registry is not None:
                    by_tenant, damaged = await asyncio.to_thread(
                        self._registry.each_tenant, self._registry.rules
                    )
                    self._note_damaged(damaged)
                    durable = {t: r for t, r in by_tenant.items() if r}
                await cache_rules(self._client, durable)
                found = durable
            parsed = {}
            for name, data in found.items():
                try:
                    parsed[name] = ServingRules.from_dict(data)
                except ValueError as exc:
                    if self._bad_rules.get(name) != str(exc):  # once, not at every read
                        self._bad_rules[name] = str(exc)
                        log.error("tenant %s: cached serving rules ignored: %s", name, exc)
            self._rules, self._rules_at = parsed, now
        return self._rules.get(tenant, DEFAULT_RULES)

    async def catalogue(self, tenant: str) -> tuple[int, Catalogue]:
        now = time.monotonic()
        cached = self._catalogues.get(tenant)
        if cached is not None and now - self._catalogue_at.get(tenant, -1e18) <= CATALOGUE_CHECK_S:
            return cached
        version = (await catalogue_versions(self._client, [tenant]))[tenant]
        if cached is None or cached[0] != version:
            version, entries = await read_catalogue(self._client, tenant)
            cached = (version, Catalogue.from_entries(entries))
            self._catalogues[tenant] = cached
        self._catalogue_at[tenant] = now
        return cached

    async def serving(
        self, tenant: str, bundle: ModelBundle | None
    ) -> tuple[ServingRules, Catalogue, np.ndarray | None]:
        """The tenant's rules, catalogue and (with a model) the mask of its banned items,
        rebuilt only when the model, the catalogue or the rules changed."""
        rules = await self.rules(tenant)
        version, catalogue = await self.catalogue(tenant)
        if bundle is None:
            return rules, catalogue, None
        stamp = (bundle.version, id(bundle), version, rules)
        cached = self._masks.get(tenant)
        if cached is None or cached[0] != stamp:
            cached = (stamp, banned_mask(bundle.items, rules, catalogue))
            self._masks[tenant] = cached
        return rules, catalogue, cached[1]


DEFAULT_RULES = ServingRules()


def mode_changes(old: dict[str, str], new: dict[str, str]) -> list[tuple[str, str, str]]:
    """``(tenant, before, after)`` for each tenant whose mode differs (a tenant with no
    entry is on)."""
    return [
        (t, old.get(t, "on"), new.get(t, "on"))
        for t in sorted(old.keys() | new.keys())
        if old.get(t, "on") != new.get(t, "on")
    ]
