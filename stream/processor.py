"""Batch processing of click messages, independent of Faust so it can be tested alone.

One batch: validate every message (bad ones become dead letters with a reason), apply
the valid clicks to the session lists in Redis in one round trip, rank per tenant in
one vectorised call, and return the records to publish.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

from models.bundle import ModelBundle
from models.ranking import Ranked, recommend_flat
from state.sessions import SessionStore, SessionUpdate, flatten
from stream.events import ClickEvent, InvalidEvent, RecommendationWriter, parse_event
from stream.model_handle import ModelCache
from stream.tenant_state import TenantDirectory

DLQ_REASON_HEADER = "streamrec-reason"
# A dead letter carries the original bytes up to this size; a larger message (the broker
# may accept up to its own limit, ~1 MiB) is replaced by a stand-in (see ``stand_in``) so
# the dead letter itself can always be published.
DLQ_MAX_ORIGINAL_BYTES = 512 * 1024
STAND_IN_HEAD_BYTES = 1024
STAND_IN_KEY_BYTES = 1024
UNDELIVERABLE = "streamrec-undeliverable"

log = logging.getLogger("streamrec.worker")


class Message(Protocol):
    """What processing reads of a consumed Kafka message (aiokafka's ConsumerRecord and
    Faust's Message both have it, so batches are passed through without copying)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


def position(msg: Message) -> str:
    return f"{msg.topic}:{msg.partition}:{msg.offset}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None  # the original bytes, untouched (a stand-in's: the first bytes)
    reason: str
    source: str  # topic:partition:offset
    # Set on a stand-in: the original's size and SHA-256 (hex).
    original_size: int | None = None
    sha256: str | None = None
    # A record the worker produced and could not publish (dead-lettered, not dropped).
    undeliverable: bool = False

    @classmethod
    def of(cls, msg: Message, reason: str) -> DeadLetter:
        """The dead letter of a consumed message: the original bytes, or a stand-in when
        they are too large to publish."""
        dead = cls(msg.key, msg.value, reason, position(msg))
        size = len(msg.value or b"") + len(msg.key or b"")
        return dead if size <= DLQ_MAX_ORIGINAL_BYTES else dead.stand_in(reason)

    def stand_in(self, reason: str) -> DeadLetter:
        """A small record standing for one that can never be published as it is: its
        first bytes, original size, SHA-256 and the reason."""
        if self.original_size is not None:
            return replace(self, reason=reason)
        value = self.value or b""
        key = self.key[:STAND_IN_KEY_BYTES] if self.key is not None else None
        return DeadLetter(
            key,
            value[:STAND_IN_HEAD_BYTES],
            reason,
            self.source,
            len(value),
            hashlib.sha256(value).hexdigest(),
            self.undeliverable,
        )

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        topic, partition, offset = _split_source(self.source)
        headers = [
            (DLQ_REASON_HEADER, self.reason.encode()),
            ("streamrec-source", self.source.encode()),
            ("streamrec-topic", topic.encode()),
            ("streamrec-partition", partition.encode()),
            ("streamrec-offset", offset.encode()),
        ]
        if self.original_size is not None:
            headers += [
                ("streamrec-stand-in", b"1"),
                ("streamrec-original-size", str(self.original_size).encode()),
                ("streamrec-sha256", (self.sha256 or "").encode()),
            ]
        if self.undeliverable:
            headers.append((UNDELIVERABLE, b"1"))
        return headers


def _split_source(source: str) -> tuple[str, str, str]:
    """``topic:partition:offset`` (the topic may itself contain ':')."""
    topic, _, rest = source.rpartition(":")
    topic, _, partition = topic.rpartition(":")
    return topic, partition, rest


class Outgoing(NamedTuple):
    session_id: str  # the record's key
    payload: bytes
    index: int = -1  # the answered click's place in the batch (for a dead letter of it)


@dataclass
class BatchResult:
    recommendations: list[Outgoing] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0  # re-delivered events (already applied to the session)
    suppressed: int = 0  # events of tenants switched off: recorded, not answered


class BatchProcessor:
    def __init__(
        self,
        store: SessionStore,
        models: ModelCache,
        tenants: TenantDirectory,
        *,
        top_k: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._models = models
        self._tenants = tenants
        self._top_k = top_k
        self._clock = clock
        self._writer = RecommendationWriter()

    async def process(self, batch: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        events: list[ClickEvent] = []  # each with an event id
        at: list[int] = []  # each event's place in the batch
        origins: list[tuple[str, int]] = []  # each event's partition and offset
        partition_names: dict[tuple[str, int], str] = {}
        for j, msg in enumerate(batch):
            try:
                event = parse_event(msg.value)
            except InvalidEvent as exc:
                result.dead_letters.append(DeadLetter.of(msg, exc.reason))
                continue
            if event.event_id is None:
                # Without an event id the message position identifies a re-delivery.
                event = event._replace(event_id=position(msg))
            events.append(event)
            at.append(j)
            tp = (msg.topic, msg.partition)
            name = partition_names.get(tp)
            if name is None:
                name = partition_names[tp] = f"{msg.topic}:{msg.partition}"
            origins.append((name, msg.offset))
        if not events:
            return result

        by_tenant: dict[str, list[int]] = defaultdict(list)
        for i, event in enumerate(events):
            by_tenant[event.tenant].append(i)
        bundles = {t: await self._models.get(t) for t in by_tenant}
        updates = await self._store.append_clicks(
            events,  # type: ignore[arg-type]  # every event_id is set above
            count_for=[t for t, b in bundles.items() if b is None],
            origins=origins,
        )
        result.duplicates = sum(1 for u in updates if not u.fresh)

        ranked: list[Ranked | None] = [None] * len(events)
        for tenant, idx in by_tenant.items():
            if await self._tenants.mode(tenant) == "off":
                result.suppressed += len(idx)  # recorded above, not answered
                continue
            answers = await self._rank(tenant, bundles[tenant], [updates[i] for i in idx])
            for i, r in zip(idx, answers, strict=True):
                ranked[i] = r

        emitted = self._clock()
        for event, r, j in zip(events, ranked, at, strict=True):
            if r is not None:
                payload = self._record(event, r, bundles[event.tenant], emitted)
                result.recommendations.append(Outgoing(event.session_id, payload, j))
        return result

    async def recommend_session(self, tenant: str, session_id: str) -> bytes | None:
        """The record answering the session's latest event, computed now from the session
        as stored (HTTP pull); None for an unknown session or a tenant switched off.

        The same JSON as that event's record on the topic, ranked by the same code (only
        ``emitted_ts`` and, after a swap, ``model_version`` differ). Computing it on
        request instead of storing every record in Redis saved a quarter of the batch
        time (see BENCHMARKS.md)."""
        stored = await self._store.session(tenant, session_id)
        if stored is None or await self._tenants.mode(tenant) == "off":
            return None
        bundle = await self._models.get(tenant)
        update = SessionUpdate(True, stored.joined)
        (r,) = await self._rank(tenant, bundle, [update])
        latest = ClickEvent(
            tenant, session_id, update.items[-1], stored.ts, event_id=stored.event_id
        )
        return self._record(latest, r, bundle, self._clock())

    def _record(
        self, event: ClickEvent, r: Ranked, bundle: ModelBundle | None, emitted: float
    ) -> bytes:
        """The recommendation record answering ``event`` (its event id is set)."""
        version = bundle.version if bundle is not None else None
        return self._writer(
            event,
            event.event_id,  # type: ignore[arg-type]
            r.ids,
            r.scores,
            r.strategy,
            version,
            emitted,
        )

    async def _rank(
        self, tenant: str, bundle: ModelBundle | None, updates: Sequence[SessionUpdate]
    ) -> list[Ranked]:
        """One tenant's sessions ranked: by its model, or popular items without one."""
        if bundle is not None:
            flat, lengths = flatten(updates)
            return recommend_flat(bundle, flat, lengths, self._top_k)
        popular = await self._tenants.popular(tenant)
        return [popular_excluding(popular, u.items, self._top_k) for u in updates]


def popular_excluding(popular: Sequence[tuple[str, float]], seen: Sequence[str], k: int) -> Ranked:
    """Cold start: the tenant's most clicked items the session has not seen yet."""
    skip = set(seen)
    top = [(item, score) for item, score in popular if item not in skip][:k]
    return Ranked([item for item, _ in top], [score for _, score in top], "popular")
