"""Honest health: when consumption counts as stalled; dead letters logged as a summary."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from models.registry import DamagedFileError, Registry
from models.train import TrainParams, train_model
from stream.api.health import tenant_health
from stream.pipeline.model_cache import ModelCache
from stream.pipeline.processor import DeadLetter
from stream.worker import DeadLetterLog, stall_reason, unreachable


@pytest.mark.parametrize(
    ("progress", "stalled"),
    [
        ({"lag": 0, "since_commit_s": 500.0, "batch_age_s": 0.0}, False),  # idle, nothing waits
        ({"lag": 12, "since_commit_s": 5.0, "batch_age_s": 0.1}, False),  # busy, moving
        ({"lag": 12, "since_commit_s": 45.0, "batch_age_s": 0.0}, True),  # events wait
        ({"lag": None, "since_commit_s": 45.0, "batch_age_s": 40.0}, True),  # a batch stuck
        ({}, False),  # no batch loop (yet)
    ],
)
def test_stall_reason(progress: dict[str, float | None], stalled: bool) -> None:
    reason = stall_reason(progress, after_s=30.0)
    assert (reason is not None) == stalled
    if stalled:
        assert reason.startswith("consumption stalled")  # type: ignore[union-attr]


def test_dead_letters_are_logged_as_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    summary = DeadLetterLog()
    caplog.set_level(logging.WARNING, "streamrec.stream")
    for i in range(1000):
        reason = "value is not valid JSON: unexpected character" if i % 2 else "missing field 'ts'"
        summary.add([DeadLetter(None, b"x", reason, f"clicks:0:{i}")])
    summary.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the first at once, then the rest in one summary
    assert "500 x value is not valid JSON" in lines[1] and "499 x missing field 'ts'" in lines[1]


def test_an_unreachable_redis_is_named_with_a_reason_even_on_a_timeout() -> None:
    assert unreachable("redis", TimeoutError()) == "redis unreachable: TimeoutError"
    refused = ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    assert unreachable("redis", refused).endswith("Connection refused.")


def test_health_names_each_disabled_or_degraded_tenant_with_its_file_and_reason(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path)
    bundle = train_model(
        [["a", "b", "c"], ["b", "c", "d"]] * 5, TrainParams(epochs=1, n_clusters=2)
    )
    for tenant in ("shop-a", "shop-b", "shop-c"):
        registry.promote(tenant, registry.register(tenant, bundle, {}))
    (tmp_path / "shop-b" / "RULES.json").write_text("[1,2")
    registry.pointer_path("shop-c").write_text("v7\n")  # names a version it does not have
    _, damaged = registry.each_tenant(registry.rules)

    class Directory:
        def disabled_tenants(self) -> dict[str, DamagedFileError]:
            return damaged

    cache = ModelCache(registry)

    async def load() -> None:
        for tenant in ("shop-a", "shop-b", "shop-c"):
            await cache.get(tenant)

    asyncio.run(load())
    report = tenant_health(Directory(), cache)
    assert list(report) == ["shop-b", "shop-c"]
    assert report["shop-b"] == {
        "status": "disabled",
        "file": str(tmp_path / "shop-b" / "RULES.json"),
        "reason": damaged["shop-b"].reason,
    }
    assert "JSON" in report["shop-b"]["reason"]
    assert report["shop-c"]["status"] == "degraded" and report["shop-c"]["serving"] == "v1"
    assert report["shop-c"]["file"] == str(registry.pointer_path("shop-c"))
    assert "v7" in report["shop-c"]["reason"]
