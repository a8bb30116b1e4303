"""POST /events and /feedback answer 202 only for records the broker acknowledged: a
broker that is down or refuses them is a 503 with the reason, never a silent loss."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import Producer

from stream.api.server import ApiError, produce_records
from stream.events import ClickEvent


def _event() -> ClickEvent:
    return ClickEvent("default", "s-1", "A13", time.time(), event_id="e-1")


def test_a_broker_that_is_down_is_a_503_with_the_reason() -> None:
    # Nothing listens on port 1; records time out fast, within produce_records' flush.
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300})
    ctx = SimpleNamespace(producer=producer)
    with pytest.raises(ApiError) as exc:
        asyncio.run(produce_records(ctx, "clicks", [_event()], "event"))  # type: ignore[arg-type]
    assert exc.value.status == 503 and "refused by the broker" in exc.value.reason
    assert "retry" in exc.value.reason


def test_no_producer_yet_is_a_503() -> None:
    with pytest.raises(ApiError) as exc:
        asyncio.run(produce_records(SimpleNamespace(producer=None), "c", [_event()], "event"))  # type: ignore[arg-type]
    assert exc.value.status == 503
