"""The worker's log reads like its life: quiet when idle, a line when something happened,
tenant mode changes named."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from state import keys
from state.tenants import TenantDirectory, mode_changes
from stream.config import Settings
from stream.worker import Worker


def test_periodic_line_only_when_something_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(Settings(home=str(tmp_path), web_port=0))
    caplog.set_level(logging.INFO, logger="streamrec.stream")

    def lines_after_report() -> list[str]:
        caplog.clear()
        asyncio.run(worker.report())
        return [r.getMessage() for r in caplog.records]

    assert lines_after_report() == []  # idle since start: nothing to say
    worker.stats.events_in += 3
    worker.stats.recommendations += 3
    (line,) = lines_after_report()
    assert line.startswith("events=3 recommendations=3 ")
    assert lines_after_report() == []  # idle again


def test_mode_changes() -> None:
    old = {"a": "on", "b": "freeze", "c": "off"}
    new = {"a": "off", "b": "freeze", "d": "freeze"}
    assert mode_changes(old, new) == [("a", "on", "off"), ("c", "off", "on"), ("d", "on", "freeze")]
    assert mode_changes(new, new) == []


class ModesHash:
    """Just the modes hash of Redis, as ``TenantDirectory.mode`` reads it."""

    def __init__(self, modes: dict[str, str]) -> None:
        self.modes = {**modes, keys.MODES_LOADED: "1"}

    async def hgetall(self, key: str) -> dict[str, str]:
        assert key == keys.TENANT_MODES
        return dict(self.modes)


def test_tenant_mode_changes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    redis = ModesHash({"shop": "on", "lab": "freeze"})
    directory = TenantDirectory(redis, ttl_s=0.0)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="streamrec.state")

    def lines_after_read() -> list[str]:
        caplog.clear()
        assert asyncio.run(directory.mode("shop")) == redis.modes["shop"]
        return [r.getMessage() for r in caplog.records]

    assert lines_after_read() == ["tenant lab: mode freeze"]  # first read: who is not on
    assert lines_after_read() == []
    redis.modes["shop"] = "off"
    assert lines_after_read() == ["tenant shop: mode on -> off"]
