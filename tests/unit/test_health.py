"""Honest health: when consumption counts as stalled; dead letters logged as a summary."""

from __future__ import annotations

import logging

import pytest

from stream.processor import DeadLetter
from stream.worker import DeadLetterLog, stall_reason, unreachable


@pytest.mark.parametrize(
    ("progress", "stalled"),
    [
        ({"lag": 0, "since_commit_s": 500.0, "batch_age_s": 0.0}, False),  # idle, nothing waits
        ({"lag": 12, "since_commit_s": 5.0, "batch_age_s": 0.1}, False),  # busy, moving
        ({"lag": 12, "since_commit_s": 45.0, "batch_age_s": 0.0}, True),  # events wait
        ({"lag": None, "since_commit_s": 45.0, "batch_age_s": 40.0}, True),  # a batch stuck
        ({}, False),  # no batch loop (agent engine)
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
