"""Batch processing of click messages, independent of Faust so it can be tested alone.

One batch: validate every message (bad ones become dead letters with a reason), apply
the valid clicks to the session lists in Redis in one round trip, rank per tenant in
one vectorised call, and return the records to publish.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from models.ranking import recommend_batch
from state.sessions import Click, SessionStore
from stream.events import ClickEvent, InvalidEvent, Recommendation, parse_event
from stream.model_handle import ModelCache

DLQ_REASON_HEADER = "streamrec-reason"


@dataclass(frozen=True, slots=True)
class Inbound:
    """One consumed Kafka message, as much of it as processing needs."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None  # the original bytes, untouched
    reason: str
    source: str  # topic:partition:offset

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return [(DLQ_REASON_HEADER, self.reason.encode()), ("streamrec-source", self.source.encode())]


@dataclass(frozen=True, slots=True)
class Outgoing:
    tenant: str
    session_id: str
    payload: bytes


@dataclass
class BatchResult:
    recommendations: list[Outgoing] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0  # re-delivered events (already applied to the session)


class BatchProcessor:
    def __init__(
        self,
        store: SessionStore,
        models: ModelCache,
        *,
        top_k: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._models = models
        self._top_k = top_k
        self._clock = clock

    async def process(self, batch: Sequence[Inbound]) -> BatchResult:
        result = BatchResult()
        events: list[tuple[ClickEvent, str]] = []
        for msg in batch:
            try:
                event = parse_event(msg.value)
            except InvalidEvent as exc:
                result.dead_letters.append(DeadLetter(msg.key, msg.value, exc.reason, msg.position))
                continue
            # Without an event id the message position identifies a re-delivery.
            events.append((event, event.event_id or msg.position))
        if not events:
            return result

        updates = await self._store.append_clicks(
            [Click(e.tenant, e.session_id, e.item_id, eid) for e, eid in events]
        )
        result.duplicates = sum(1 for u in updates if not u.fresh)

        by_tenant: dict[str, list[int]] = defaultdict(list)
        for i, (event, _) in enumerate(events):
            by_tenant[event.tenant].append(i)
        ranked: list = [None] * len(events)
        versions: dict[str, str | None] = {}
        for tenant, idx in by_tenant.items():
            bundle = await self._models.get(tenant)
            versions[tenant] = bundle.version if bundle is not None else None
            if bundle is None:
                continue
            for i, r in zip(idx, recommend_batch(bundle, [updates[i].items for i in idx], self._top_k)):
                ranked[i] = r

        emitted = self._clock()
        for i, (event, eid) in enumerate(events):
            r = ranked[i]
            rec = Recommendation(
                tenant=event.tenant,
                session_id=event.session_id,
                event_id=eid,
                trigger_item=event.item_id,
                items=r.items if r is not None else [],
                model_version=versions[event.tenant],
                strategy=r.strategy if r is not None else "no_model",
                event_ts=event.ts,
                emitted_ts=emitted,
            )
            result.recommendations.append(Outgoing(event.tenant, event.session_id, rec.to_json()))
        return result
