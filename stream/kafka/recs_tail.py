"""Following the ``recommendations`` topic: what ``streamrec recs tail`` reads and prints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from stream.kafka.config import KafkaClientConfig
from stream.kafka.topics import topic_reader

TOP = 5  # items shown per line


def follow(
    kafka: KafkaClientConfig, topic: str, *, from_beginning: bool = False
) -> Iterator[bytes]:
    """Every record value of ``topic``, from its end (or beginning) on, until the caller
    stops; the consumer is closed then."""
    consumer = topic_reader(
        kafka,
        [topic],
        # A short fetch wait: lists show as they come, on Tansu too (it answers a fetch
        # only when its wait is over).
        {"fetch.wait.max.ms": 100},
        timeout=10,
        start=OFFSET_BEGINNING if from_beginning else OFFSET_END,
    )
    try:
        while True:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None and msg.value() is not None:
                    yield msg.value()
    finally:
        consumer.close()


def parse(raw: bytes) -> dict[str, Any] | None:
    """A recommendation record, or None for a value that is not one."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("items"), list):
        return None
    return rec


def matches(rec: dict[str, Any], tenant: str | None, session: str | None) -> bool:
    return (tenant is None or rec.get("tenant") == tenant) and (
        session is None or rec.get("session_id") == session
    )


def list_line(rec: dict[str, Any], top: int = TOP) -> str:
    """``shop/s-42 clicked A13 -> A16 (embedding), A15, ... +5  v1, 3.2 ms after the click``.

    An item's source is shown where the record names it; ``strategy`` names the source
    of the top item. The latency is ``emitted_ts - event_ts``: from the click's time to
    the list's publication by the worker."""
    items = [i for i in rec.get("items", []) if isinstance(i, dict)]
    shown = []
    for n, item in enumerate(items[:top]):
        source = item.get("source") or (rec.get("strategy") if n == 0 else None)
        shown.append(f"{item.get('item_id')}" + (f" ({source})" if source else ""))
    more = f" +{len(items) - top}" if len(items) > top else ""
    version = rec.get("model_version") or "no model"
    emitted, event = rec.get("emitted_ts"), rec.get("event_ts")
    latency = (
        f"{(emitted - event) * 1000:.1f} ms after the click"
        if isinstance(emitted, int | float) and isinstance(event, int | float)
        else "latency unknown"
    )
    return (
        f"{rec.get('tenant')}/{rec.get('session_id')} clicked {rec.get('trigger_item')} -> "
        f"{', '.join(shown) or '(no items)'}{more}  {version}, {latency}"
    )
