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
from stream.shutdown import RepeatFilter, install_log_filters
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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_client_error_is_let_through_once_per_growing_gap() -> None:
    clock = Clock()
    repeats = RepeatFilter(first_gap_s=1.0, max_gap_s=8.0, clock=clock)
    passed = []
    # aiokafka's complaint 200 times a second for 30 s, as when its broker is gone.
    for step in range(6000):
        clock.now = step * 0.005
        record = _record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused")
        if repeats.filter(record):
            passed.append((clock.now, record.getMessage()))
    times = [t for t, _ in passed]
    assert times[:5] == [0.0, 1.0, 3.0, 7.0, 15.0]  # gaps of 1, 2, 4, 8 s
    assert len(passed) <= 7
    assert passed[0][1] == "Unable connect to node with id 1: refused"
    assert passed[1][1].endswith("(and 199 more like it in 1 s)")


def test_repeat_filter_leaves_streamrec_lines_and_other_messages_alone() -> None:
    repeats = RepeatFilter(clock=Clock())
    for _ in range(3):
        assert repeats.filter(_record("streamrec.stream.worker", "dead letters: %s", "x"))
        assert repeats.filter(_record("aiokafka", "fetched", level=logging.INFO))
    assert repeats.filter(_record("aiokafka", "Unable to update metadata from %s", [1]))
    assert repeats.filter(_record("aiokafka", "Failed fetch messages from %s: %s", 1, "e"))
    # librdkafka speaks through a streamrec logger, one template for every facility.
    rd = "streamrec.stream.kafka.config.rdkafka"
    assert repeats.filter(_record(rd, "%s [%s] %s", "FAIL", "producer-1", "refused"))
    assert repeats.filter(_record(rd, "%s [%s] %s", "ERROR", "producer-1", "down"))
    assert not repeats.filter(_record(rd, "%s [%s] %s", "FAIL", "producer-1", "refused"))


def test_an_exception_ending_a_thread_is_one_record(caplog: pytest.LogCaptureFixture) -> None:
    import threading

    previous = threading.excepthook
    try:
        install_log_filters(logging.getLogger("streamrec-test-root"))

        def fail() -> None:
            raise ValueError("broken\nacross lines")

        thread = threading.Thread(target=fail, name="client")
        with caplog.at_level(logging.ERROR):
            thread.start()
            thread.join()
    finally:
        threading.excepthook = previous
    (record,) = [r for r in caplog.records if "thread client" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is ValueError
