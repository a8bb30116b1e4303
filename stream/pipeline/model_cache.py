"""Per-tenant model handles: load on first use, hot-swap when a new version is promoted.

Loading happens in a thread (never on the event loop); a swap is one dict assignment,
so an in-flight batch keeps the bundle it started with. A version that fails
validation is logged and ignored; the one in service stays.

Memory is a budget in bytes (the arrays of the models held, experiment arms included):
a load beyond it evicts the least recently used models, so thousands of tenants share a
worker with only the recently clicked ones resident. At start-up the most recently
promoted models are loaded first, until the next one would not fit; the rest load on
their tenant's first click.

Reloads follow content, not names: the periodic check (and a change notice) compares
CURRENT's stat and the stats of the loaded version's files with those seen at load, so
a pointer written again (the same version promoted again), or a file replaced,
repaired or truncated, makes the version be verified and loaded anew. A refused version
is tried again once its files or the pointer change, not at every check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import resource
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from models.bundle import ModelBundle, open_files, served_bytes
from models.errors import NoModelError, StreamrecError
from models.ranking import MIN_ROWS_PER_THREAD, rank_rows
from models.registry import DamagedFileError, Registry
from stream.events import SCORE_DECIMALS, items_json

log = logging.getLogger(f"streamrec.{__name__}")
_T = TypeVar("_T")


# (inode, size, mtime in ns) of a file: a rename over it, a write or a truncation
# changes it. Paths as str: a Path object is ~3 times the size, and a worker holds
# 1,000 models.
Stat = tuple[int, int, int]


@dataclass
class _Slot:
    bundle: ModelBundle | None
    version: str | None  # the CURRENT pointer's value when last checked
    checked_at: float
    # Every file of the loaded version as verified against the manifest's checksums at
    # load: a file that changes later is verified again before it is served again.
    files: dict[str, Stat] = field(default_factory=dict)
    pointer: Stat | None = None  # CURRENT when last read
    # Why the version CURRENT names is not the one loaded: (file, reason), and its
    # files when it was refused (it is tried again when they change).
    problem: tuple[str, str] | None = None
    refused: tuple[tuple[str, Stat], ...] | None = None


class ModelCache:
    """An LRU of loaded models, at most ``max_bytes`` of arrays in memory (the most
    recently used model stays even if it alone is larger); no limit by default (the
    worker's setting gives one). A large array is a memory map holding a file descriptor
    (small ones are read into memory, see ``models.bundle.MAP_MIN_BYTES``): at most
    ``max_files`` of them (default half the process's limit of open files, the rest left
    to sockets and logs)."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_bytes: int = sys.maxsize,
        max_files: int | None = None,
        rank_threads: int = 1,
    ) -> None:
        self._registry = registry
        self.max_bytes = max_bytes
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.max_files = max_files if max_files is not None else max(64, soft // 2)
        self._files = 0  # memory maps held (one per large array)
        self._rank_threads = rank_threads
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="streamrec-model-load")
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self.swaps = 0
        # Versions other than the one in service (an experiment's arms), by (tenant,
        # version), LRU as well; a version that failed to load is retried after a while.
        self._arms: OrderedDict[tuple[str, str], ModelBundle] = OrderedDict()
        self._arm_failed: dict[tuple[str, str], float] = {}
        self._arm_lock = asyncio.Lock()
        self.loads = 0  # versions loaded (start-up, swaps, experiment arms)
        self.evictions = 0  # models dropped to stay within the budget
        self._bytes = 0  # of every bundle held (slots and arms)
        # The budget was reached: readiness stops waiting for models in service and the
        # periodic preload stops reading the registry (tenants load on first click).
        self._full = False

    async def _in_loader(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` in the thread that loads models: one thread, so the memory of
        the models loaded and evicted comes and goes in one of the allocator's arenas
        (spread over a pool's threads, each arena keeps its share of freed memory and the
        worker's resident memory grows with every model loaded, not with those held)."""
        return await asyncio.get_running_loop().run_in_executor(self._loader, fn, *args)

    def resident_bytes(self) -> int:
        """Bytes of the models' arrays held now (slots and experiment arms)."""
        return self._bytes

    def loaded(self) -> dict[str, str | None]:
        return {t: (s.bundle.version if s.bundle else None) for t, s in self._slots.items()}

    def problems(self) -> list[str]:
        """Tenants whose version in service (the CURRENT pointer) is not the one loaded."""
        out = []
        for tenant, slot in self._slots.items():
            serving = slot.bundle.version if slot.bundle else None
            if slot.problem is not None:
                out.append(
                    f"tenant {tenant}: version {slot.version} in service is not loaded "
                    f"(serving {serving or 'no model'}): {slot.problem[1]}"
                )
        return out

    def tenant_problems(self) -> dict[str, dict[str, Any]]:
        """Tenant -> ``{"status": "degraded", "file", "reason", "serving"}`` for each
        tenant whose version in service was refused (for /health)."""
        return {
            tenant: {
                "status": "degraded",
                "file": slot.problem[0],
                "reason": slot.problem[1],
                "serving": slot.bundle.version if slot.bundle else None,
            }
            for tenant, slot in self._slots.items()
            if slot.problem is not None
        }

    def in_service(self) -> dict[str, str]:
        """Tenant -> version in service (the registry's CURRENT pointers), the most
        recently promoted first. Reads every tenant's pointer."""
        found: list[tuple[int, str, str]] = []
        for tenant in self._registry.tenants():
            try:
                version = self._registry.current_version(tenant)
                promoted = os.stat(self._registry.pointer_path(tenant)).st_mtime_ns
            except (DamagedFileError, OSError):
                continue  # its slot says why (see problems)
            if version is not None:
                found.append((-promoted, tenant, version))
        return {tenant: version for _, tenant, version in sorted(found)}

    def not_loaded(self) -> list[str]:
        """Tenants whose version in service is not in memory yet (reads the registry).
        Once the budget is reached, none: the LRU decides which are resident."""
        if self._full:
            return []
        return [
            f"tenant {tenant}: version {version} in service not loaded yet"
            for tenant, version in self.in_service().items()
            if tenant not in self._slots
        ]

    async def preload(self) -> int:
        """Load the tenants' versions in service not in memory, the most recently
        promoted first, until the next would not fit the budget: at start-up, so that a
        tenant's first click does not wait for its model and readiness can tell, then on
        every check, for a tenant that got its first version since. How many were
        loaded. Preloaded models go behind the ones clicked (first to be evicted), the
        older ones first."""
        if self._full:
            return 0
        started = time.perf_counter()
        serving = await asyncio.to_thread(self.in_service)
        loaded = 0
        for tenant, version in serving.items():
            if tenant in self._slots:
                continue
            size = await asyncio.to_thread(self._stored_bytes, tenant, version)
            if self._bytes + size > self.max_bytes:
                self._full = True
            else:
                await self._load(tenant)
                if tenant in self._slots:
                    self._slots.move_to_end(tenant, last=False)
                loaded += 1
            if self._full:
                log.info(
                    "model memory budget reached (%s of %s, %d of %d memory maps): the "
                    "other tenants' models load on their first click",
                    _mb(self._bytes), _mb(self.max_bytes), self._files, self.max_files,
                )  # fmt: skip
                break
        if loaded:
            log.info(
                "models in service loaded for %d tenant(s) (%s, %.0f ms)",
                loaded,
                _mb(self._bytes),
                (time.perf_counter() - started) * 1000,
            )
        return loaded

    def _stored_bytes(self, tenant: str, version: str) -> int:
        """What loading the version will cost of the budget (0 if its manifest cannot
        tell: the load says why)."""
        try:
            return served_bytes(self._registry.version_dir(tenant, version))
        except (StreamrecError, OSError):
            return 0

    async def get(self, tenant: str) -> ModelBundle | None:
        slot = self._slots.get(tenant)
        if slot is None:
            slot = await self._load(tenant)
        else:
            self._slots.move_to_end(tenant)
        return slot.bundle

    async def without_model(self, tenants: Collection[str]) -> list[str]:
        """Those of ``tenants`` without a model: known to have none, or (not in memory)
        no version in service. Loads nothing (a batch loads its tenants' models one at
        a time, see ``BatchProcessor``)."""
        known = {t: self._slots[t].bundle is None for t in tenants if t in self._slots}
        unknown = [t for t in tenants if t not in known]
        if unknown:
            known.update(await asyncio.to_thread(self._without_pointer, unknown))
        return [t for t in tenants if known[t]]

    def _without_pointer(self, tenants: list[str]) -> dict[str, bool]:
        return {t: not self._registry.pointer_path(t).exists() for t in tenants}

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
                bundle, _ = await self._in_loader(self._load_ready, tenant, version)
            except Exception as exc:  # a damaged version fails in ways nobody listed
                log.error(
                    "tenant %s: experiment arm %s cannot be loaded: %s", tenant, version, _why(exc)
                )
                self._arm_failed[key] = time.monotonic()
                return None
            self._arms[key] = bundle
            self._hold(bundle, 1)
            self.loads += 1
            self._evict(keep=tenant)
            log.info(
                "tenant %s: loaded model %s as an experiment arm (%.0f ms)",
                tenant, version, (time.perf_counter() - started) * 1000,
            )  # fmt: skip
            return bundle

    async def refresh(self, tenants: list[str] | None = None) -> None:
        """Load what changed (of ``tenants``, default every tenant in memory): a pointer
        written again (another version, or the same one promoted again), files of the
        loaded version changed on disk (verified again: served again if they still
        match, else dropped), a refused version whose files changed."""
        for tenant in list(self._slots) if tenants is None else tenants:
            slot = self._slots.get(tenant)
            if slot is None:
                continue  # not in memory: it will load the current version on first use
            if slot.files and not await asyncio.to_thread(_same_files, slot.files):
                log.error(
                    "tenant %s: the files of model %s changed on disk; verifying them again",
                    tenant,
                    slot.bundle.version if slot.bundle else None,
                )
                if slot.bundle is not None:
                    self._hold(slot.bundle, -1)
                slot.bundle, slot.files = None, {}
                await self._load(tenant, previous=slot)
                continue
            if not await asyncio.to_thread(self._unchanged, tenant, slot):
                await self._load(tenant, previous=slot)

    def _unchanged(self, tenant: str, slot: _Slot) -> bool:
        """Nothing to load again: the same pointer, and no refused version's files
        changed since it was refused."""
        _, pointer = self._pointer(tenant)
        if pointer != slot.pointer:
            return False
        return slot.problem is None or self._version_files(tenant, slot.version) == slot.refused

    def _pointer(self, tenant: str) -> tuple[str | None, Stat | None]:
        """CURRENT's version and stat, in one open (the version None if unreadable)."""
        try:
            with open(self._registry.pointer_path(tenant), "rb") as fh:
                st = os.fstat(fh.fileno())
                raw = fh.read(256)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, (-1, exc.errno or 0, 0)
        version = raw.decode("utf-8", "replace").strip() or None
        return version, (st.st_ino, st.st_size, st.st_mtime_ns)

    def _version_files(
        self, tenant: str, version: str | None
    ) -> tuple[tuple[str, Stat], ...] | None:
        try:
            directory = self._registry.version_dir(tenant, version or "")
            return tuple(sorted((f.name, _stat(f)) for f in directory.iterdir()))
        except (StreamrecError, OSError):
            return None

    def _fallback(self, tenant: str, refused: str | None) -> tuple[ModelBundle, dict[str, Stat]]:
        """The newest valid version from the tenant's promotion history."""
        for version in reversed(self._registry.promoted_versions(tenant)):
            if version == refused:
                continue
            try:
                return self._load_ready(tenant, version)
            except Exception:  # a damaged version fails in ways nobody listed
                continue
        raise NoModelError(f"tenant {tenant!r}: no valid version in the history")

    def _load_ready(self, tenant: str, version: str) -> tuple[ModelBundle, dict[str, Stat]]:
        """Load and validate a version (checksums), note its files' stats, and warm it
        (see :func:`warm`) before it serves."""
        directory = self._registry.version_dir(tenant, version)
        # Noted before the files are verified: a change while they are read is seen. (A
        # missing version: the load says so.)
        files = (
            {str(f): _stat(f) for f in directory.iterdir() if f.is_file()}
            if directory.is_dir()
            else {}
        )
        # A private copy: a registry file truncated in place cannot crash the worker.
        bundle = self._registry.load(tenant, version, private=True)
        warm(bundle, self._rank_threads)
        return bundle, files

    async def _load(self, tenant: str, previous: _Slot | None = None) -> _Slot:
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            slot = self._slots.get(tenant)
            if slot is not None and slot is not previous:
                return slot  # someone else loaded it while we waited
            started = time.perf_counter()
            version, pointer = await asyncio.to_thread(self._pointer, tenant)
            # Before the load: a repair made while it fails is seen at the next check.
            seen = await asyncio.to_thread(self._version_files, tenant, version)
            try:
                if pointer is None:
                    raise NoModelError(f"tenant {tenant!r} has no promoted model")
                if version is None:
                    raise DamagedFileError(
                        tenant, self._registry.pointer_path(tenant), "names no version"
                    )
                bundle, files = await self._in_loader(self._load_ready, tenant, version)
            except NoModelError:
                slot = _Slot(None, None, time.monotonic(), pointer=pointer)
            except Exception as exc:  # a damaged version fails in ways nobody listed
                if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                    # The process's trouble, not the version's: not remembered, so the
                    # tenant's next click (or check) tries again.
                    log.error(
                        "tenant %s: model %s not loaded now (%s); tried again at its next "
                        "click", tenant, version, _why(exc),
                    )  # fmt: skip
                    return previous or _Slot(None, version, time.monotonic(), pointer=pointer)
                problem = (self._problem_file(tenant, version), _why(exc))
                # An invalid version, or a CURRENT naming none (torn or garbled).
                if previous is not None and previous.bundle is not None:
                    log.error(
                        "tenant %s: model version refused, keeping the one in service: %s",
                        tenant,
                        problem[1],
                    )
                    # Remember what was refused so we do not retry it on every check.
                    previous.version, previous.pointer = version, pointer
                    previous.problem, previous.refused = problem, seen
                    return previous
                # Nothing in service (start-up, or its files changed): the newest valid
                # version of the history, reported as not loaded (see ``problems``).
                try:
                    bundle, files = await self._in_loader(self._fallback, tenant, version)
                except NoModelError:
                    bundle, files = None, {}
                log.error(
                    "tenant %s: model version %s refused (%s); serving %s",
                    tenant,
                    version,
                    problem[1],
                    f"{bundle.version} from its history" if bundle else "popular items",
                )
                slot = _Slot(bundle, version, time.monotonic(), files, pointer, problem, seen)
            else:
                old = previous.bundle.version if previous and previous.bundle else None
                slot = _Slot(bundle, version, time.monotonic(), files, pointer)
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
            replaced = self._slots.get(tenant)
            if replaced is not None and replaced.bundle is not None:
                self._hold(replaced.bundle, -1)
            if slot.bundle is not None:
                self._hold(slot.bundle, 1)
            self._slots[tenant] = slot
            self._slots.move_to_end(tenant)
            self._evict(keep=tenant)
            return slot

    def _hold(self, bundle: ModelBundle, sign: int) -> None:
        self._bytes += sign * model_bytes(bundle)
        self._files += sign * open_files(bundle)

    def _over(self) -> bool:
        return self._bytes > self.max_bytes or self._files > self.max_files

    def _evict(self, keep: str) -> None:
        """Drop the least recently used until the models fit the budget: experiment arms
        first (the version in service is what most clicks need), never ``keep``'s model
        in service (a batch waits for it). An in-flight batch keeps the bundles it holds."""
        if self._over():
            self._full = True
        while self._over() and self._arms:
            (tenant, version), bundle = self._arms.popitem(last=False)
            self._hold(bundle, -1)
            self.evictions += 1
            log.info("tenant %s: experiment arm %s evicted from memory (LRU)", tenant, version)
        for tenant in list(self._slots):
            if not self._over():
                break
            if tenant == keep:
                continue
            slot = self._slots[tenant]
            if slot.bundle is None:
                continue  # costs nothing: kept, its state (a refusal) stays known
            del self._slots[tenant]
            self._hold(slot.bundle, -1)
            self.evictions += 1
            log.debug("tenant %s: model evicted from memory (LRU)", tenant)

    def _problem_file(self, tenant: str, version: str | None) -> str:
        """The version's directory when CURRENT names one that exists, else CURRENT."""
        try:
            directory = self._registry.version_dir(tenant, version or "")
        except StreamrecError:
            directory = None
        if directory is not None and directory.is_dir():
            return str(directory)
        return str(self._registry.pointer_path(tenant))


def model_bytes(bundle: ModelBundle) -> int:
    """What a model costs of the budget: its arrays."""
    return sum(a.nbytes for a in _arrays(bundle))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def warm(bundle: ModelBundle, threads: int = 1) -> None:
    """Make the model's first batch like the others: its memory-mapped arrays paged in,
    and one ranking through the serving path, as large a batch as spreads over
    ``threads`` (the compiled kernel is loaded or compiled for these arrays' types, and
    each ranking thread makes its scratch space), its records' items written (the
    model's table of encoded ids made)."""
    for value in _arrays(bundle):
        if value.size and not value.dtype.hasobject:
            # One byte per page is enough to fault it in.
            np.add.reduce(value.reshape(-1).view(np.uint8)[::4096])
    rows = max(1, threads) * MIN_ROWS_PER_THREAD
    items = bundle.ids(np.asarray(bundle.popularity)[:rows])
    # Sessions of one to three popular items, so that every source has candidates (an
    # empty model: one empty session).
    sessions = (
        [[items[(r + a) % len(items)] for a in range(1 + r % 3)] for r in range(rows)]
        if items
        else [[]]
    )
    flat, lengths = [i for s in sessions for i in s], [len(s) for s in sessions]
    rows = rank_rows(bundle, flat, lengths, 10, threads=threads, decimals=SCORE_DECIMALS)
    items_json(bundle, rows.items, rows.scores)


def _arrays(bundle: ModelBundle) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for f in dataclasses.fields(bundle):
        value = getattr(bundle, f.name)
        values = value.values() if isinstance(value, dict) else [value]
        out += [v for v in values if isinstance(v, np.ndarray)]
    return out


def _stat(path: os.PathLike[str] | str) -> Stat:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _same_files(files: dict[str, Stat]) -> bool:
    try:
        return all(_stat(path) == stat for path, stat in files.items())
    except OSError:
        return False


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
