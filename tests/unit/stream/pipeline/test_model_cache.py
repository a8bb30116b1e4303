from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import models.bundle as bundle_module
from models.registry import Registry
from models.train import TrainParams, train_model
from stream.pipeline.model_cache import ModelCache, model_bytes

SESSIONS = [["a", "b", "c"], ["b", "c", "d"], ["c", "d", "a"], ["a", "c"]] * 5


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path)
    bundle = train_model(SESSIONS, TrainParams(epochs=1, n_clusters=2, seed=1))
    for tenant in ("t1", "t2", "t3"):
        reg.promote(tenant, reg.register(tenant, bundle, {}))
    return reg


def _room_for(registry: Registry, models: int) -> int:
    """A budget in bytes that holds ``models`` of the fixture's models, not one more."""
    return int(model_bytes(registry.load("t1", private=True)) * (models + 0.5))


def test_loads_on_first_use_and_evicts_least_recently_used(registry: Registry) -> None:
    cache = ModelCache(registry, max_bytes=_room_for(registry, 2))

    async def run() -> None:
        assert (await cache.get("t1")).version == "v1"
        await cache.get("t2")
        await cache.get("t1")  # t1 is now the most recent
        await cache.get("t3")  # evicts t2
        assert set(cache.loaded()) == {"t1", "t3"}
        assert await cache.get("nobody") is None  # no model: None, not an error

    asyncio.run(run())


def test_the_budget_counts_bytes_and_evictions(registry: Registry) -> None:
    one = model_bytes(registry.load("t1", private=True))
    cache = ModelCache(registry, max_bytes=_room_for(registry, 2))

    async def run() -> None:
        for tenant in ("t1", "t2", "t3", "t1", "t2"):
            assert (await cache.get(tenant)) is not None
        # t1 evicted by t3, t2 by t1's reload, t3 by t2's: each load beyond the budget
        # pushes out the least recently used.
        assert list(cache.loaded()) == ["t1", "t2"]
        assert (cache.loads, cache.evictions) == (5, 3)
        assert cache.resident_bytes() == 2 * one
        await cache.get("nobody")  # a tenant without a model costs no bytes
        assert cache.resident_bytes() == 2 * one and cache.evictions == 3

    asyncio.run(run())


def test_memory_maps_are_a_budget_too(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle_module, "MAP_MIN_BYTES", 0)  # every array mapped, as large ones
    maps = len(registry.load("t1", private=True).named_arrays())  # one per array
    cache = ModelCache(registry, max_files=2 * maps)

    async def run() -> None:
        assert await cache.preload() == 3  # the third goes over: one evicted, then stop
        assert len(cache.loaded()) == 2 and cache.evictions == 1
        for tenant in ("t1", "t2", "t3"):
            assert (await cache.get(tenant)) is not None
        assert len(cache.loaded()) == 2

    asyncio.run(run())


def test_running_out_of_file_descriptors_is_not_held_against_the_model(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ModelCache(registry)
    load = registry.load

    def out_of_descriptors(*args: object, **kwargs: object) -> object:
        raise OSError(errno.EMFILE, "Too many open files")

    async def run() -> None:
        monkeypatch.setattr(registry, "load", out_of_descriptors)
        assert await cache.get("t1") is None  # this click: popular items
        assert cache.tenant_problems() == {}  # not the version's fault
        monkeypatch.setattr(registry, "load", load)
        assert (await cache.get("t1")).version == "v1"  # the next click loads it

    asyncio.run(run())


def test_a_model_larger_than_the_budget_is_still_served(registry: Registry) -> None:
    cache = ModelCache(registry, max_bytes=1)

    async def run() -> None:
        assert (await cache.get("t1")) is not None
        assert (await cache.get("t2")) is not None  # t1 goes, t2 alone stays
        assert list(cache.loaded()) == ["t2"] and cache.evictions == 1

    asyncio.run(run())


def test_preload_takes_the_most_recently_promoted_first_and_stops_at_the_budget(
    registry: Registry,
) -> None:
    for age, tenant in enumerate(("t2", "t3", "t1")):  # t2 newest, t1 oldest
        os.utime(registry.pointer_path(tenant), (1e9 - age * 100, 1e9 - age * 100))
    cache = ModelCache(registry, max_bytes=_room_for(registry, 2))

    async def run() -> None:
        assert await cache.preload() == 2
        assert set(cache.loaded()) == {"t2", "t3"} and cache.evictions == 0
        assert cache.not_loaded() == []  # full: the LRU decides, readiness does not wait
        # The older of the two preloaded goes first when a click needs room.
        await cache.get("t1")
        assert set(cache.loaded()) == {"t2", "t1"}
        assert await cache.preload() == 0  # full: nothing read, nothing loaded

    asyncio.run(run())


def test_refresh_swaps_to_the_promoted_version_and_refuses_a_corrupt_one(
    registry: Registry,
) -> None:
    cache = ModelCache(registry)

    async def run() -> None:
        first = await cache.get("t1")
        v2 = registry.register("t1", first, {})
        registry.promote("t1", v2)
        await cache.refresh()
        assert (await cache.get("t1")).version == v2 and cache.swaps == 1
        v3 = registry.register("t1", first, {})
        registry.promote("t1", v3)
        (registry.root / "t1" / v3 / "manifest.json").write_text("{not json")
        await cache.refresh()
        assert (await cache.get("t1")).version == v2  # still serving v2
        await cache.refresh()  # and does not retry the refused pointer every time
        assert cache.swaps == 1

    asyncio.run(run())


def test_registered_files_are_read_only(registry: Registry) -> None:
    files = list((registry.root / "t1" / "v1").iterdir())
    assert files and all(f.stat().st_mode & 0o222 == 0 for f in files)


def test_a_corrupt_current_at_start_serves_the_newest_valid_version_and_is_not_ready(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = registry.load("t1")
    registry.promote("t1", registry.register("t1", bundle, {}))  # v2
    v3 = registry.register("t1", bundle, {})
    registry.promote("t1", v3)
    arrays = registry.root / "t1" / v3
    target = next(p for p in sorted(arrays.iterdir()) if p.suffix == ".npy")
    target.chmod(0o644)
    target.write_bytes(target.read_bytes()[:-8])  # truncated in place
    cache = ModelCache(registry)

    async def run() -> None:
        assert (await cache.get("t1")).version == "v2"
        (problem,) = cache.problems()
        assert "version v3 in service is not loaded" in problem and "v2" in problem

    caplog.set_level(logging.ERROR, "streamrec.stream")
    asyncio.run(run())
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "v3 refused" in error.getMessage() and "serving v2" in error.getMessage()


def test_a_loaded_version_whose_file_shrinks_is_dropped_for_a_valid_one(
    registry: Registry,
) -> None:
    bundle = registry.load("t1")
    v2 = registry.register("t1", bundle, {})
    registry.promote("t1", v2)
    cache = ModelCache(registry)

    async def run() -> None:
        assert (await cache.get("t1")).version == v2
        assert cache.problems() == []
        # Another file of the same name and a different size replaces one of v2's.
        victim = next(
            p for p in sorted((registry.root / "t1" / v2).iterdir()) if p.suffix == ".npy"
        )
        data = victim.read_bytes()
        victim.unlink()
        victim.write_bytes(data[:-8])
        await cache.refresh()
        assert (await cache.get("t1")).version == "v1"
        assert cache.problems()

    asyncio.run(run())


def test_a_garbled_current_at_start_serves_the_version_in_the_history(registry: Registry) -> None:
    registry.pointer_path("t2").write_text("v9\x00\x00")
    cache = ModelCache(registry)

    async def run() -> None:
        assert (await cache.get("t2")).version == "v1"
        assert cache.problems()

    asyncio.run(run())


def test_preload_loads_every_version_in_service_and_readiness_waits_for_it(
    registry: Registry,
) -> None:
    cache = ModelCache(registry)
    registry.create_tenant("no-model")  # exists, nothing in service: not waited for

    async def run() -> None:
        serving = cache.in_service()
        assert serving == {"t1": "v1", "t2": "v1", "t3": "v1"}
        await cache.get("t2")  # a click of t2 loads it; t1 and t3 are still not in memory
        waiting = cache.not_loaded()
        assert len(waiting) == 2 and all("not loaded yet" in w for w in waiting), waiting
        await cache.preload()
        assert cache.loaded() == {"t1": "v1", "t2": "v1", "t3": "v1"}
        assert cache.not_loaded() == []

    asyncio.run(run())


def test_readiness_does_not_wait_for_more_tenants_than_the_cache_holds(
    registry: Registry,
) -> None:
    cache = ModelCache(registry, max_bytes=_room_for(registry, 2))

    async def run() -> None:
        await cache.preload()
        assert len(cache.loaded()) == 2
        await cache.get("somebody-else")  # no model: takes no room
        assert cache.not_loaded() == []

    asyncio.run(run())


def test_a_tenant_promoted_after_start_is_loaded_by_the_next_check(registry: Registry) -> None:
    cache = ModelCache(registry)

    async def run() -> None:
        assert await cache.preload() == 3
        bundle = await cache.get("t1")
        registry.promote("t4", registry.register("t4", bundle, {}))  # a new tenant's first
        assert cache.not_loaded() != []  # not ready until it is loaded
        assert await cache.preload() == 1 and cache.loaded()["t4"] == "v1"
        assert await cache.preload() == 0  # nothing left to load: a cheap check

    asyncio.run(run())


def _truncate_in_place(path: Path) -> bytes:
    data = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(data[:-8])
    return data


def test_a_repaired_version_promoted_again_is_reloaded_without_a_restart(
    registry: Registry,
) -> None:
    cache = ModelCache(registry)
    victim = next(p for p in sorted((registry.root / "t1" / "v1").iterdir()) if p.suffix == ".npy")

    async def run() -> None:
        assert (await cache.get("t1")).version == "v1"
        data = _truncate_in_place(victim)
        await cache.refresh()
        assert await cache.get("t1") is None and cache.problems()  # degraded: popular items
        victim.write_bytes(data)  # restored, and the same version promoted again
        registry.promote("t1", "v1")
        await cache.refresh(["t1"])
        assert (await cache.get("t1")).version == "v1"
        assert cache.problems() == [] and cache.tenant_problems() == {}

    asyncio.run(run())


def test_a_refused_version_is_loaded_once_its_files_are_repaired(registry: Registry) -> None:
    bundle = registry.load("t1")
    v2 = registry.register("t1", bundle, {})
    registry.promote("t1", v2)
    victim = next(p for p in sorted((registry.root / "t1" / v2).iterdir()) if p.suffix == ".npy")
    data = _truncate_in_place(victim)
    cache = ModelCache(registry)

    async def run() -> None:
        assert (await cache.get("t1")).version == "v1"  # v2 refused: the history's v1
        (problem,) = cache.tenant_problems().values()
        assert problem["status"] == "degraded" and problem["serving"] == "v1"
        assert problem["file"].endswith(v2) and "checksum" in problem["reason"], problem
        loads = cache.loads
        await cache.refresh()
        assert cache.loads == loads  # nothing changed: not retried at every check
        victim.write_bytes(data)  # repaired in place, nobody promotes anything
        await cache.refresh()
        assert (await cache.get("t1")).version == v2 and cache.tenant_problems() == {}

    asyncio.run(run())


def test_a_manifest_that_breaks_the_loader_unexpectedly_disables_that_model_only(
    registry: Registry,
) -> None:
    bundle = registry.load("t1")
    v2 = registry.register("t1", bundle, {})
    registry.promote("t1", v2)
    manifest_path = registry.root / "t1" / v2 / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["arrays"]["items"]["shape"] = 5  # not a list: no InvalidModelError for this
    manifest_path.chmod(0o644)
    manifest_path.write_text(json.dumps(manifest))
    cache = ModelCache(registry)

    async def run() -> None:
        assert (await cache.get("t1")).version == "v1"
        assert (await cache.get("t2")).version == "v1"
        assert list(cache.tenant_problems()) == ["t1"]

    asyncio.run(run())


def test_a_current_of_undecodable_bytes_is_refused_for_its_tenant_only(registry: Registry) -> None:
    registry.pointer_path("t2").write_bytes(b"v1\xff\xfe")
    cache = ModelCache(registry)

    async def run() -> None:
        assert (await cache.get("t2")).version == "v1"  # from the history
        assert list(cache.tenant_problems()) == ["t2"]
        assert set(cache.in_service()) == {"t1", "t2", "t3"}

    asyncio.run(run())


def test_the_tenants_without_a_model_are_told_without_loading_one(registry: Registry) -> None:
    cache = ModelCache(registry)

    async def run() -> None:
        assert await cache.without_model(["t1", "nobody", "t2"]) == ["nobody"]
        assert cache.loads == 0 and cache.loaded() == {}
        await cache.get("nobody")  # known now: no model
        assert await cache.without_model(["nobody", "t1"]) == ["nobody"]

    asyncio.run(run())


def test_models_load_in_one_thread(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    # One allocator arena for the models loaded and evicted: spread over threads, the
    # freed memory stays in each thread's arena and resident memory keeps growing.
    threads: set[int] = set()
    load = registry.load

    def noted(*args: Any, **kwargs: Any) -> Any:
        threads.add(threading.get_ident())
        time.sleep(0.05)  # long enough for loads asked together to overlap
        return load(*args, **kwargs)

    monkeypatch.setattr(registry, "load", noted)
    cache = ModelCache(registry)

    async def run() -> None:
        await asyncio.gather(*(cache.get(t) for t in ("t1", "t2", "t3")))
        assert len(cache.loaded()) == 3

    asyncio.run(run())
    assert len(threads) == 1 and threading.get_ident() not in threads
