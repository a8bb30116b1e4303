"""Per-tenant model handles: load on first use, hot-swap when a new version is promoted.

Loading happens in a thread (never on the event loop); a swap is one dict assignment,
so an in-flight batch keeps the bundle it started with. A version that fails
validation is logged and ignored; the one in service stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from models.bundle import ModelBundle
from models.errors import NoModelError, StreamrecError
from models.ranking import recommend
from models.registry import Registry

log = logging.getLogger(f"streamrec.{__name__}")


@dataclass
class _Slot:
    bundle: ModelBundle | None
    version: str | None  # the CURRENT pointer's value when last checked
    checked_at: float
    # Size of every file of the loaded version, checked against the manifest's checksums
    # at load: a file whose size changes later (truncated in place) is never read again.
    # Paths as str: a Path object is ~3 times the size, and a worker holds 1,000 models.
    sizes: dict[str, int] = field(default_factory=dict)


class ModelCache:
    """An LRU of loaded models, at most ``max_models`` tenants in memory."""

    def __init__(self, registry: Registry, *, max_models: int = 256) -> None:
        self._registry = registry
        self._max_models = max_models
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self.swaps = 0
        # Versions other than the one in service (an experiment's arms), by (tenant,
        # version), LRU as well; a version that failed to load is retried after a while.
        self._arms: OrderedDict[tuple[str, str], ModelBundle] = OrderedDict()
        self._arm_failed: dict[tuple[str, str], float] = {}
        self._arm_lock = asyncio.Lock()
        self.loads = 0  # versions loaded (start-up, swaps, experiment arms)

    def loaded(self) -> dict[str, str | None]:
        return {t: (s.bundle.version if s.bundle else None) for t, s in self._slots.items()}

    def problems(self) -> list[str]:
        """Tenants whose version in service (the CURRENT pointer) is not the one loaded."""
        out = []
        for tenant, slot in self._slots.items():
            serving = slot.bundle.version if slot.bundle else None
            if slot.version is not None and serving != slot.version:
                out.append(
                    f"tenant {tenant}: version {slot.version} in service is not loaded "
                    f"(serving {serving or 'no model'})"
                )
        return out

    def in_service(self) -> dict[str, str]:
        """Tenant -> version in service (the registry's CURRENT pointers), at most
        ``max_models`` tenants: what a ready worker has in memory. Reads files."""
        serving: dict[str, str] = {}
        for tenant in self._registry.tenants():
            version = self._registry.current_version(tenant)
            if version is not None:
                serving[tenant] = version
                if len(serving) >= self._max_models:
                    break
        return serving

    def not_loaded(self, serving: dict[str, str]) -> list[str]:
        """Tenants of ``serving`` (see :meth:`in_service`) not in memory yet. A full cache
        cannot hold them all (tenants without a model take slots too): then none is
        reported, the LRU decides."""
        if len(self._slots) >= self._max_models:
            return []
        return [
            f"tenant {tenant}: version {version} in service not loaded yet"
            for tenant, version in serving.items()
            if tenant not in self._slots
        ]

    async def preload(self) -> int:
        """Load every tenant's version in service (see :meth:`in_service`) that is not in
        memory, while the cache has room: at start-up, so a tenant's first click does not
        wait for its model and readiness can tell, then on every check, for a tenant that
        got its first version since. How many were loaded."""
        started = time.perf_counter()
        serving = await asyncio.to_thread(self.in_service)
        loaded = 0
        for tenant in serving:
            if len(self._slots) >= self._max_models:
                break  # full: the LRU decides (and readiness does not wait, see not_loaded)
            if tenant not in self._slots:
                await self._load(tenant)
                loaded += 1
        if loaded:
            log.info(
                "models in service loaded for %d tenant(s) (%.0f ms)",
                loaded,
                (time.perf_counter() - started) * 1000,
            )
        return loaded

    async def get(self, tenant: str) -> ModelBundle | None:
        slot = self._slots.get(tenant)
        if slot is None:
            slot = await self._load(tenant)
        else:
            self._slots.move_to_end(tenant)
        return slot.bundle

    async def get_version(self, tenant: str, version: str) -> ModelBundle | None:
        """A given version of the tenant (an experiment's arm): the one in service when
        it is that one, else loaded and kept beside it; None if it cannot be loaded."""
        current = await self.get(tenant)
        if current is not None and current.version == version:
            return current
        key = (tenant, version)
        bundle = self._arms.get(key)
        if bundle is not None:
            self._arms.move_to_end(key)
            return bundle
        if time.monotonic() - self._arm_failed.get(key, float("-inf")) < 30.0:
            return None
        async with self._arm_lock:
            bundle = self._arms.get(key)
            if bundle is not None:
                return bundle
            started = time.perf_counter()
            try:
                bundle, _ = await asyncio.to_thread(self._load_ready, tenant, version)
            except (StreamrecError, OSError, ValueError) as exc:
                log.error("tenant %s: experiment arm %s cannot be loaded: %s", tenant, version, exc)
                self._arm_failed[key] = time.monotonic()
                return None
            self._arms[key] = bundle
            self.loads += 1
            while len(self._arms) > self._max_models:
                self._arms.popitem(last=False)
            log.info(
                "tenant %s: loaded model %s as an experiment arm (%.0f ms)",
                tenant, version, (time.perf_counter() - started) * 1000,
            )  # fmt: skip
            return bundle

    async def refresh(self, tenants: list[str] | None = None) -> None:
        """Swap in newly promoted versions (of ``tenants``, default every tenant in memory);
        drop a loaded version whose files changed size under it."""
        for tenant in list(self._slots) if tenants is None else tenants:
            slot = self._slots.get(tenant)
            if slot is None:
                continue  # not in memory: it will load the current version on first use
            if slot.sizes and not await asyncio.to_thread(_same_sizes, slot.sizes):
                log.error(
                    "tenant %s: the files of model %s changed on disk; no longer serving it",
                    tenant,
                    slot.bundle.version if slot.bundle else None,
                )
                slot.bundle, slot.sizes = None, {}
                await self._load(tenant, previous=slot)
                continue
            current = await asyncio.to_thread(self._registry.current_version, tenant)
            if current != slot.version:
                await self._load(tenant, previous=slot)

    def _fallback(self, tenant: str, refused: str | None) -> tuple[ModelBundle, dict[str, int]]:
        """The newest valid version from the tenant's promotion history."""
        for version in reversed(self._registry.promoted_versions(tenant)):
            if version == refused:
                continue
            try:
                return self._load_ready(tenant, version)
            except (StreamrecError, OSError, ValueError):
                continue
        raise NoModelError(f"tenant {tenant!r}: no valid version in the history")

    def _load_ready(self, tenant: str, version: str | None) -> tuple[ModelBundle, dict[str, int]]:
        """Load and validate a version (checksums), note its files' sizes, and rank once
        with it: the first ranking of a process loads the compiled kernel, which should
        not happen inside a batch."""
        # A private copy: a registry file truncated in place cannot crash the worker.
        bundle = self._registry.load(tenant, version, private=True)
        directory = self._registry.version_dir(tenant, bundle.version)
        sizes = {str(f): f.stat().st_size for f in directory.iterdir() if f.is_file()}
        recommend(bundle, [], 1)
        return bundle, sizes

    async def _load(self, tenant: str, previous: _Slot | None = None) -> _Slot:
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            slot = self._slots.get(tenant)
            if slot is not None and slot is not previous:
                return slot  # someone else loaded it while we waited
            started = time.perf_counter()
            version: str | None = None
            try:
                version = await asyncio.to_thread(self._registry.current_version, tenant)
                bundle, sizes = await asyncio.to_thread(self._load_ready, tenant, version)
            except NoModelError:
                slot = _Slot(None, None, time.monotonic())
            except (StreamrecError, OSError, ValueError) as exc:
                # An invalid version, or a CURRENT naming none (torn or garbled).
                if previous is not None and previous.bundle is not None:
                    log.error(
                        "tenant %s: model version refused, keeping the one in service: %s",
                        tenant,
                        exc,
                    )
                    # Remember the refused pointer so we do not retry it on every check.
                    previous.version = version
                    return previous
                # Nothing in service (start-up, or its files changed): the newest valid
                # version of the history, reported as not ready (see ``problems``).
                try:
                    bundle, sizes = await asyncio.to_thread(self._fallback, tenant, version)
                except NoModelError:
                    bundle, sizes = None, {}
                log.error(
                    "tenant %s: model version %s refused (%s); serving %s",
                    tenant,
                    version,
                    exc,
                    f"{bundle.version} from its history" if bundle else "popular items",
                )
                slot = _Slot(bundle, version, time.monotonic(), sizes)
            else:
                old = previous.bundle.version if previous and previous.bundle else None
                slot = _Slot(bundle, version, time.monotonic(), sizes)
                self.loads += 1
                if old is not None:
                    self.swaps += 1
                    log.info(
                        "tenant %s: swapped model %s -> %s (%.0f ms)",
                        tenant,
                        old,
                        version,
                        (time.perf_counter() - started) * 1000,
                    )
                else:
                    log.info(
                        "tenant %s: loaded model %s (%.0f ms)",
                        tenant,
                        version,
                        (time.perf_counter() - started) * 1000,
                    )
            self._slots[tenant] = slot
            self._slots.move_to_end(tenant)
            while len(self._slots) > self._max_models:
                evicted, _ = self._slots.popitem(last=False)
                log.info("tenant %s: model evicted from memory (LRU)", evicted)
            return slot


def _same_sizes(sizes: dict[str, int]) -> bool:
    try:
        return all(os.stat(path).st_size == size for path, size in sizes.items())
    except OSError:
        return False
