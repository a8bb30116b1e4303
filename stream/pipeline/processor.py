"""Batch processing of click messages, independent of Faust so it can be tested alone.

One batch: validate every message (bad ones become dead letters with a reason), apply
the valid clicks to the session lists in Redis in one round trip, rank per tenant in
one vectorised call, and return the records to publish.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaException

from models.bundle import ModelBundle
from models.experiments import POPULAR, is_variant
from models.ranking import Ranked, recommend_flat, similar_items
from models.registry import TenantNameRefused
from models.rules import Catalogue, Request, ServingRules, apply_rules, banned_mask
from state.connection import UNAVAILABLE
from state.feedback import LIST_ITEMS, decode_list, encode_list
from state.keys import ITEM_SEP
from state.sessions import SessionUpdate, flatten
from stream.events import (
    SCORE_DECIMALS,
    ClickEvent,
    InvalidEvent,
    RecommendationWriter,
    items_json,
    parse_event,
    parse_events,
    parse_feedback,
    record_time,
)
from stream.pipeline.collaborators import (
    ArmPolicies,
    FeedbackLog,
    ModelSource,
    SessionLog,
    TenantLookup,
)

DLQ_REASON_HEADER = "streamrec-reason"
# A dead letter carries the original bytes up to this size; a larger message (the broker
# may accept up to its own limit, ~1 MiB) is replaced by a stand-in (see ``stand_in``) so
# the dead letter itself can always be published.
DLQ_MAX_ORIGINAL_BYTES = 512 * 1024
STAND_IN_HEAD_BYTES = 1024
STAND_IN_KEY_BYTES = 1024
UNDELIVERABLE = "streamrec-undeliverable"

log = logging.getLogger(f"streamrec.{__name__}")

# What stops a batch (to be retried whole): the loop's own infrastructure failing, Redis
# unable to take any command included. Any other exception while handling one record
# (Redis refusing a command on that record's keys too) is that record's fault, or a bug
# it hit: the record is dead-lettered and the batch goes on.
INFRASTRUCTURE: tuple[type[BaseException], ...] = (*UNAVAILABLE, KafkaException)


class Message(Protocol):
    """What processing reads of a consumed Kafka message (the batch loop's
    :class:`stream.kafka.consumer.Consumed` records). Its ``timestamp`` (ms), when it
    has one, is the time of a click without ``ts``."""

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
    feedback: int = 0  # explicit feedback messages counted
    # For metrics: records by (tenant, variant, strategy), implicit hits by (tenant,
    # variant), and each answered event's lag (emitted - event time), in seconds.
    by_variant: dict[tuple[str, str, str], int] = field(default_factory=dict)
    hits: dict[tuple[str, str], int] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)


class BatchProcessor:
    """Clicks and feedback messages in, records to publish and dead letters out. Its
    collaborators come in through the constructor (see ``stream.pipeline.collaborators``):
    the worker passes the Redis-backed ones, a unit test in-memory ones."""

    def __init__(
        self,
        store: SessionLog,
        models: ModelSource,
        tenants: TenantLookup,
        *,
        top_k: int,
        policies: ArmPolicies | None = None,
        feedback: FeedbackLog | None = None,
        feedback_topic: str = "feedback",
        auto_create_tenants: bool = True,
        clock: Callable[[], float] = time.time,
        rank_threads: int = 1,
    ) -> None:
        """``policies``: which version serves which session (None: the version in
        service serves everything); ``feedback``: implicit feedback and counters (None:
        off, as for the benchmark's baseline); messages from ``feedback_topic`` are
        explicit feedback, not clicks; ``auto_create_tenants``: a click of an unknown
        tenant creates it (else it is dead-lettered)."""
        self._store = store
        self._models = models
        self._tenants = tenants
        self._top_k = top_k
        self._policies = policies
        self._feedback = feedback
        # One flush at a time: a flush returns once the lists taken before it are
        # written too (a handover must find them in Redis, not on their way there).
        self._flushing = asyncio.Lock()
        self._feedback_topic = feedback_topic
        self._auto_create_tenants = auto_create_tenants
        self._clock = clock
        self._rank_threads = rank_threads
        self._writer = RecommendationWriter()
        # rec_id = variant, this process's tag and a counter: unique without coordination
        # and it names the variant, so explicit feedback is attributed without a lookup.
        self._rec_tag = f"-{os.urandom(4).hex()}-"
        self._rec_n = 0

    async def process(self, batch: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        events: list[ClickEvent] = []  # each with an event id
        at: list[int] = []  # each event's place in the batch
        origins: list[tuple[str, int]] = []  # each event's partition and offset
        partition_names: dict[tuple[str, int], str] = {}
        known: dict[str, bool] = {}  # tenant -> exists (feedback never creates one)
        failed = _Failures(batch, result)
        now = time.time()  # the end of the range of ts, once per batch
        parsed = self._parse(batch, now)
        # tenant -> None when it may be served, else why not (or what failed asking)
        admitted = await self._admit_all({e.tenant for e in parsed if type(e) is ClickEvent})
        for j, (msg, event) in enumerate(zip(batch, parsed, strict=True)):
            if type(event) is not ClickEvent:
                if event is None:
                    try:
                        await self._explicit(msg, result, known, now)
                    except INFRASTRUCTURE:
                        raise
                    except Exception as exc:
                        failed.add(j, exc)
                elif isinstance(event, InvalidEvent):
                    result.dead_letters.append(DeadLetter.of(msg, event.reason))
                else:  # a bug the parser hit on this record
                    failed.add(j, event)  # type: ignore[arg-type]
                continue
            refused = admitted[event.tenant]
            if refused is not None:
                if isinstance(refused, str):
                    result.dead_letters.append(DeadLetter.of(msg, refused))
                else:
                    failed.add(j, refused)
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
            failed.report()
            return result

        fb = self._feedback
        # Asked without loading a model: they load one tenant at a time below.
        tenants = {e.tenant for e in events}
        count_for = await self._models.without_model(tenants)
        arms = await self._new_arms(events)
        # The previous batch's lists and counts go out first in this batch's round trip.
        taken = fb.take() if fb is not None else ({}, [])
        try:
            updates = await self._store.append_clicks(
                events,  # type: ignore[arg-type]  # every event_id is set above
                count_for=count_for,
                origins=origins,
                before=self._store.store_lists_commands(taken[0]) + taken[1],
                arms=arms,
            )
        except INFRASTRUCTURE:
            if fb is not None:
                fb.restore(taken)
            raise
        except Exception:
            # Not the store going away but one click it cannot apply (a session's stored
            # data it cannot read, or a bug): the clicks are applied again one at a time
            # (idempotent) and those failing alone dead-lettered. The feedback went out
            # with the failed round trip, or is lost: counters, never counted twice.
            events, at, updates = await self._apply_alone(
                events, at, origins, count_for, arms, failed
            )
            if not events:
                failed.report()
                return result
        except BaseException:
            if fb is not None:
                fb.restore(taken)
            raise
        result.duplicates = sum(1 for u in updates if not u.fresh)
        by_tenant: dict[str, list[int]] = defaultdict(list)
        if len(tenants) == 1:
            by_tenant[events[0].tenant] = list(range(len(events)))
        else:
            for i, event in enumerate(events):
                by_tenant[event.tenant].append(i)

        ranked: list[Ranked | None] = [None] * len(events)
        served: list[str | None] = [None] * len(events)  # the version of each
        for tenant, idx in by_tenant.items():
            # One tenant's model held at a time: once its clicks are ranked the cache may
            # evict it, so a batch over more tenants than the budget holds stays within it.
            try:
                bundle = await self._models.get(tenant)
            except INFRASTRUCTURE:
                raise
            except Exception as exc:
                for i in idx:
                    failed.add(at[i], exc)
                continue
            answer = (tenant, bundle, events, updates, ranked, served, result)
            try:
                await self._answer(idx, *answer)
            except INFRASTRUCTURE:
                raise
            except Exception:
                # Whatever one session did to the tenant's ranking, the others are
                # answered: one at a time, and the records that fail alone are
                # dead-lettered.
                for i in idx:
                    ranked[i] = None
                    try:
                        await self._answer([i], *answer)
                    except INFRASTRUCTURE:
                        raise
                    except Exception as exc:
                        failed.add(at[i], exc)

        emitted = self._clock()
        by_variant, lags, hits = result.by_variant, result.lags, result.hits
        recommendations = result.recommendations
        write, tag, n, new = self._writer, self._rec_tag, self._rec_n, tuple.__new__
        fresh: dict[tuple[str, str], int] = {}  # recommendations counted, per variant
        # With feedback: each click is judged against the list its session was shown
        # last (from Redis for the session's first click of the batch, else the list
        # answering its previous click in this batch), then its own list is remembered:
        # (variant, rec_id, items), encoded once per session at the end.
        shown: dict[tuple[str, str], tuple[str, str, list[str]] | None] = {}
        for event, r, j, u, version in zip(events, ranked, at, updates, served, strict=True):
            tenant = event.tenant
            if fb is not None:
                key = (tenant, event.session_id)
                if u.fresh:
                    prev = shown[key] if key in shown else u.hit and decode_list(u.hit)
                    if prev and event.item_id in prev[2]:
                        place = prev[2].index(event.item_id) + 1
                        if place <= LIST_ITEMS:
                            fb.hit(tenant, prev[0], place)
                            hit_key = (tenant, prev[0])
                            hits[hit_key] = hits.get(hit_key, 0) + 1
                if r is None:
                    shown[key] = None
                    continue
            elif r is None:
                continue
            variant = version or POPULAR
            n += 1
            rec_id = f"{variant}{tag}{n:x}"
            try:
                payload = write(
                    event, event.event_id, r.ids, r.scores, r.strategy, version, emitted, rec_id,
                    variant, None, r.encoded,
                )  # fmt: skip
            except Exception as exc:
                failed.add(j, exc)
                continue
            recommendations.append(new(Outgoing, (event.session_id, payload, j)))
            key3 = (tenant, variant, r.strategy)
            by_variant[key3] = by_variant.get(key3, 0) + 1
            lags.append(emitted - event.ts)
            if fb is not None:
                shown[key] = (variant, rec_id, r.ids)
                if u.fresh:
                    key2 = (tenant, variant)
                    fresh[key2] = fresh.get(key2, 0) + 1
        self._rec_n = n
        if fb is not None:
            for (tenant, variant), count in fresh.items():
                fb.recommended(tenant, variant, count)
            for (tenant, session_id), made in shown.items():
                if made is not None:
                    variant, rec_id, ids = made
                    fb.shown(tenant, session_id, encode_list(variant, rec_id, ids[:LIST_ITEMS]))
        failed.report()
        return result

    async def _apply_alone(
        self,
        events: list[ClickEvent],
        at: list[int],
        origins: list[tuple[str, int]],
        count_for: list[str],
        arms: list[str] | None,
        failed: _Failures,
    ) -> tuple[list[ClickEvent], list[int], list[SessionUpdate]]:
        """The clicks the session store takes one at a time, their places in the batch
        and their updates; the others dead-lettered."""
        kept: list[ClickEvent] = []
        kept_at: list[int] = []
        updates: list[SessionUpdate] = []
        for k, (event, j, origin) in enumerate(zip(events, at, origins, strict=True)):
            try:
                (update,) = await self._store.append_clicks(
                    [event],  # type: ignore[list-item]  # its event_id is set
                    count_for=count_for,
                    origins=[origin],
                    arms=None if arms is None else [arms[k]],
                )
            except INFRASTRUCTURE:
                raise
            except Exception as exc:
                failed.add(j, exc, "session store")
                continue
            kept.append(event)
            kept_at.append(j)
            updates.append(update)
        return kept, kept_at, updates

    def _parse(
        self, batch: Sequence[Message], now: float
    ) -> list[ClickEvent | InvalidEvent | Exception | None]:
        """Each message's click, or why it is not one (an :class:`InvalidEvent`, or the
        exception a bug raised on it); None for explicit feedback. Kafka's own timestamp
        (ms) stands for a missing ts."""
        topic = self._feedback_topic
        clicks = [j for j, msg in enumerate(batch) if msg.topic != topic]
        msgs = [batch[j] for j in clicks] if len(clicks) < len(batch) else batch
        try:
            got: list[Any] = parse_events(
                [m.value for m in msgs], [getattr(m, "timestamp", None) for m in msgs], now
            )
        except Exception:  # a bug the batch hit: each record alone, so it hits only its own
            got = [self._parse_one(m, now) for m in msgs]
        if msgs is batch:
            return got
        out: list[Any] = [None] * len(batch)
        for j, event in zip(clicks, got, strict=True):
            out[j] = event
        return out

    @staticmethod
    def _parse_one(msg: Message, now: float) -> ClickEvent | Exception:
        try:
            stamp = getattr(msg, "timestamp", None)
            return parse_event(msg.value, default_ts=record_time(stamp), now=now)
        except Exception as exc:  # InvalidEvent, or a bug
            return exc

    async def _admit_all(self, tenants: set[str]) -> dict[str, str | Exception | None]:
        """Each tenant's admission (see ``_admit``), or the exception asking raised (its
        records are dead-lettered, the others go on)."""
        admitted: dict[str, str | Exception | None] = {}
        for tenant in tenants:
            try:
                admitted[tenant] = await self._admit(tenant)
            except INFRASTRUCTURE:
                raise
            except Exception as exc:
                admitted[tenant] = exc
        return admitted

    async def _new_arms(self, events: Sequence[ClickEvent]) -> list[str] | None:
        """Each click's arm by its session's hash point under its tenant's shares now
        ("" under a fixed policy), for a session that has none yet: the session script
        stores it with the click. A session's arm then never lives only in this worker
        (as its latest list does until written), so the worker that takes the partition
        next finds it however this one goes. None when no tenant runs an experiment."""
        policies = self._policies
        if policies is None:
            return None
        shares: dict[str, list[tuple[str, float]] | None] = {}
        for tenant in {e.tenant for e in events}:
            try:
                policy = await policies.get(tenant)
            except INFRASTRUCTURE:
                raise
            except Exception:  # the tenant's records fail in _answer, one by one
                policy = None
            shares[tenant] = None if policy is None else policies.shares(tenant, policy)
        if not any(shares.values()):
            return None
        assign = policies.assign
        out = []
        for e in events:
            tenant_shares = shares[e.tenant]
            out.append(assign(e.tenant, e.session_id, tenant_shares) if tenant_shares else "")
        return out

    async def _answer(
        self,
        idx: list[int],
        tenant: str,
        bundle: ModelBundle | None,
        events: list[ClickEvent],
        updates: list[SessionUpdate],
        ranked: list[Ranked | None],
        served: list[str | None],
        result: BatchResult,
    ) -> None:
        """Rank one tenant's events ``idx`` (into ``ranked``, their versions into
        ``served``) by the versions its policy assigns them; none when the tenant is
        switched off."""
        if await self._tenants.mode(tenant) == "off":
            result.suppressed += len(idx)  # recorded, not answered
            return
        for arm, group in await self._arms(tenant, bundle, idx, events, updates):
            answers = await self._rank(tenant, arm, [updates[i] for i in group])
            version = arm.version if arm is not None else None
            for i, r in zip(group, answers, strict=True):
                ranked[i] = r
                served[i] = version

    async def _explicit(
        self, msg: Message, result: BatchResult, known: dict[str, bool], now: float
    ) -> None:
        """Count one explicit feedback message for the variant that served it: the one
        its rec_id names, else the one serving the session now. Feedback for a tenant
        that does not exist is dead-lettered: it must not create counters (or a tenant)
        for any name a producer sends."""
        try:
            fb = parse_feedback(
                msg.value, default_ts=record_time(getattr(msg, "timestamp", None)), now=now
            )
        except InvalidEvent as exc:
            result.dead_letters.append(DeadLetter.of(msg, f"feedback: {exc.reason}"))
            return
        exists = known.get(fb.tenant)
        if exists is None:
            exists = known[fb.tenant] = await self._tenants.exists(fb.tenant)
        if not exists:
            reason = f"feedback: unknown tenant: {fb.tenant!r} does not exist"
            result.dead_letters.append(DeadLetter.of(msg, reason))
            return
        if self._feedback is None:
            return
        variant = fb.rec_id.partition("-")[0] if fb.rec_id else ""
        if not is_variant(variant):
            variant = await self.variant_of(fb.tenant, fb.session_id)
        self._feedback.explicit(fb.tenant, variant, fb.type)
        result.feedback += 1

    async def variant_of(self, tenant: str, session_id: str) -> str:
        """The variant serving a session now."""
        stored = await self._store.session(tenant, session_id)
        bundle = await self.bundle_for(tenant, session_id, stored.shown_by if stored else None)
        return bundle.version if bundle is not None else POPULAR

    async def bundle_for(
        self, tenant: str, session_id: str, shown_by: str | None = None
    ) -> ModelBundle | None:
        """The model serving one session under the tenant's policy (``shown_by``: the
        variant of its latest list, the arm it stays on while that arm has a share)."""
        bundle = await self._models.get(tenant)
        update = [SessionUpdate(False, "", shown_by=shown_by)]
        ((served, _),) = await self._arms(tenant, bundle, [0], [(tenant, session_id)], update)
        return served

    async def _arms(
        self,
        tenant: str,
        bundle: ModelBundle | None,
        idx: list[int],
        sessions: Sequence[Sequence[str]],
        updates: Sequence[SessionUpdate] | None = None,
    ) -> list[tuple[ModelBundle | None, list[int]]]:
        """The tenant's events (``idx`` into ``sessions``, each ``(tenant, session_id,
        ...)``) by the version serving them: all to the one in service under a fixed
        policy, else each session to its arm (a version that cannot be loaded is
        replaced by the one in service).

        A session stays on its arm (``updates[i].shown_by``: the arm that served its
        previous list, else the one stored at its first click, see ``_new_arms``) while
        that arm has a share: a bandit's shares move every few seconds, and the hash alone
        would move the sessions near a slice's edge from arm to arm. Sessions without an
        arm (an HTTP pull of an unknown one) are placed by the hash."""
        policies = self._policies
        policy = await policies.get(tenant) if policies is not None else None
        if policies is None or policy is None or bundle is None:
            return [(bundle, idx)]
        shares = policies.shares(tenant, policy)
        serving = {arm for arm, share in shares if share > 0}
        # One arm per session, even when only one of its clicks in the batch carries the
        # list's variant (a click consumes the list).
        kept: dict[str, str] = {}
        if updates is not None:
            for i in idx:
                arm = updates[i].shown_by
                if arm in serving:
                    kept.setdefault(sessions[i][1], arm)  # type: ignore[arg-type]
        by_arm: dict[str, list[int]] = {}
        assign = policies.assign
        for i in idx:
            sid = sessions[i][1]
            arm = kept.get(sid)
            if arm is None:
                arm = kept[sid] = assign(tenant, sid, shares)
            by_arm.setdefault(arm, []).append(i)
        out: dict[str, tuple[ModelBundle | None, list[int]]] = {}
        for arm, group in by_arm.items():
            served = await self._models.get_version(tenant, arm) or bundle
            if served.version in out:
                out[served.version][1].extend(group)
            else:
                out[served.version] = (served, group)
        return list(out.values())

    async def flush_feedback(self) -> None:
        """Write the feedback recorded since the last batch (when no batch came for a
        while: the counters should not wait for traffic)."""
        fb = self._feedback
        if fb is None:
            return
        async with self._flushing:
            if not fb.pending():
                return
            taken = fb.take()
            try:
                await self._store.run(self._store.store_lists_commands(taken[0]) + taken[1])
            except BaseException:
                fb.restore(taken)
                raise

    async def recommend_session(
        self,
        tenant: str,
        session_id: str,
        n: int | None = None,
        request: Request | None = None,
    ) -> bytes | None:
        """The record answering the session's latest event, computed now from the session
        as stored (HTTP pull); None for an unknown session or a tenant switched off.

        The same JSON as that event's record on the topic, ranked by the same code (only
        ``emitted_ts`` and, after a swap, ``model_version`` differ). It is computed on
        request, not stored: a Redis write of every record would cost the batch path far
        more than the occasional pull does."""
        stored = await self._store.session(tenant, session_id)
        if stored is None or await self._tenants.mode(tenant) == "off":
            return None
        bundle = await self.bundle_for(tenant, session_id, stored.shown_by)
        update = SessionUpdate(True, stored.joined)
        (r,) = await self._rank(tenant, bundle, [update], n, request, sources=True)
        latest = ClickEvent(
            tenant, session_id, update.items[-1], stored.ts, event_id=stored.event_id
        )
        version = bundle.version if bundle is not None else None
        return self._record(latest, r, version, self._clock())

    async def recommend_items(
        self, tenant: str, items: Sequence[str], n: int, request: Request | None = None
    ) -> tuple[Ranked, str | None]:
        """A session the caller holds (oldest first) ranked like a stored one, under the
        tenant's rules, with each item's source; nothing is stored. (ranked, model
        version)"""
        bundle = await self._models.get(tenant)
        update = SessionUpdate(True, ITEM_SEP.join(items))
        (r,) = await self._rank(tenant, bundle, [update], n, request, sources=True)
        return r, bundle.version if bundle is not None else None

    async def similar(
        self, tenant: str, item_id: str, n: int, request: Request | None = None
    ) -> tuple[list[tuple[str, float]], str] | None:
        """The item's nearest neighbours by embedding that the tenant's rules allow; None
        when the tenant's model does not know the item."""
        bundle = await self._models.get(tenant)
        if bundle is None or bundle.index(item_id) is None:
            return None
        rules, catalogue, _ = await self._tenants.serving(tenant, bundle)
        # Rank more than n so the list can be refilled after filtering.
        pool = similar_items(bundle, item_id, k=bundle.n_items, same_cluster=False)
        top = apply_rules(pool, [item_id], rules.with_exclude("current"), catalogue, n, request)
        return top, bundle.version

    def _record(
        self,
        event: ClickEvent,
        r: Ranked,
        version: str | None,
        emitted: float,
        rec_id: str | None = None,
        variant: str | None = None,
    ) -> bytes:
        """The recommendation record answering ``event`` (its event id is set), ranked
        by model ``version`` (None: popular items)."""
        if rec_id is None:
            variant = version or POPULAR
            self._rec_n += 1
            rec_id = f"{variant}{self._rec_tag}{self._rec_n:x}"
        return self._writer(
            event,
            event.event_id,  # type: ignore[arg-type]
            r.ids,
            r.scores,
            r.strategy,
            version,
            emitted,
            rec_id,
            variant,
            r.sources,
        )

    async def _admit(self, tenant: str) -> str | None:
        """None when the tenant exists (or was created now, auto-creation being on);
        else the dead letter's reason."""
        if await self._tenants.exists(tenant):
            return None
        if not self._auto_create_tenants:
            return unknown_tenant(tenant)
        try:
            await self._tenants.create(tenant)
        except TenantNameRefused as exc:  # a lookalike or a reserved name
            return f"unknown tenant: {exc.refusal.reason}"
        log.info("tenant %s created by its first click", tenant)
        return None

    async def _rank(
        self,
        tenant: str,
        bundle: ModelBundle | None,
        updates: Sequence[SessionUpdate],
        k: int | None = None,
        request: Request | None = None,
        sources: bool = False,
    ) -> list[Ranked]:
        """One tenant's sessions ranked, its serving rules applied (and the request's):
        by its model, or popular items without one; with ``sources``, each item's
        (``Ranked.sources``: the HTTP answers give it, the topic's records do not)."""
        k = k or self._top_k
        rules, catalogue, banned = await self._tenants.serving(tenant, bundle)
        if bundle is not None:
            if request is not None and (request.exclude_items or request.categories):
                only_request = Catalogue(category=catalogue.category)
                extra = banned_mask(bundle.items, NO_RULES, only_request, request)
                banned = extra if banned is None else banned | extra
            flat, lengths = flatten(updates)
            return recommend_flat(
                bundle,
                flat,
                lengths,
                k,
                banned=banned,
                exclude=rules.exclude,
                threads=self._rank_threads,
                sources=sources,
                decimals=SCORE_DECIMALS,
                # The topic's records: their item lists in one compiled pass.
                encode=None if sources else partial(items_json, bundle),
            )
        popular = await self._tenants.popular(tenant)
        lists = [popular_ruled(popular, u.items, rules, catalogue, k, request) for u in updates]
        if sources:
            for r in lists:
                r.sources = [r.strategy] * len(r.ids)
        return lists


NO_RULES = ServingRules(exclude="none")


class _Failures:
    """The records of a batch dead-lettered on an unexpected error (a bug they hit):
    each is named by the exception's type, and the first is logged with its traceback
    once per batch."""

    def __init__(self, batch: Sequence[Message], result: BatchResult) -> None:
        self._batch = batch
        self._result = result
        self._first: tuple[int, BaseException] | None = None
        self._count = 0

    def add(self, j: int, exc: BaseException, where: str = "internal") -> None:
        msg = self._batch[j]
        self._result.dead_letters.append(DeadLetter.of(msg, f"{where}: {type(exc).__name__}"))
        self._count += 1
        if self._first is None:
            self._first = (j, exc)

    def report(self) -> None:
        if self._first is None:
            return
        j, exc = self._first
        log.error(
            "%d record(s) dead-lettered on an internal error, the first at %s",
            self._count,
            position(self._batch[j]),
            exc_info=exc,
        )


def unknown_tenant(tenant: str) -> str:
    return (
        f"unknown tenant: {tenant!r} does not exist (create it with `streamrec tenant create`, "
        "or set STREAMREC_AUTO_CREATE_TENANTS=1)"
    )


def popular_ruled(
    popular: Sequence[tuple[str, float]],
    seen: Sequence[str],
    rules: ServingRules,
    catalogue: Catalogue,
    k: int,
    request: Request | None = None,
) -> Ranked:
    """Cold start: the tenant's most clicked items its rules allow."""
    top = apply_rules(popular, seen, rules, catalogue, k, request)
    return Ranked([item for item, _ in top], [score for _, score in top], "popular")
