"""The retraining job: Kafka's click log -> sessions per tenant -> gated retrain ->
register, promote, notify.

Kafka is the log of record: the job reads the ``clicks`` topic from the first offset
inside the window up to the end offsets seen when it started, with no consumer group
(it commits nothing, so it never competes with the workers). With ``jobs`` > 1 it reads
the partitions in that many processes, then trains that many tenants at a time.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from itertools import repeat
from multiprocessing import get_context

import numpy as np
from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, TopicPartition

from models.datasets import Clicks, build_sessions
from models.errors import InvalidModelError, NoModelError, StreamrecError
from models.policy_file import read_policy
from models.registry import Registry
from models.train import TrainParams
from models.trainer import GateDecision, GatePolicy, retrain
from state.connection import RedisError, RedisSettings, SyncRedis, sync_client
from state.notify import notify_model_change
from state.tenants import list_tenants
from stream.config import Settings
from stream.events import InvalidEvent, parse_event
from stream.kafka_config import KafkaClientConfig, kafka_config
from stream.rollout import RolloutSettings, start_rollout

log = logging.getLogger("streamrec.trainer")


# A click's place in the log, as one sortable number: partition << 40 | offset.
_OFFSET_BITS = 40

_Columns = tuple[list[str], list[str], list[float], list[int]]


def read_click_log(
    broker: str | KafkaClientConfig,
    topic: str,
    since_ts: float,
    tenants: Iterable[str] | None = None,
    *,
    jobs: int = 1,
) -> dict[str, Clicks]:
    """Valid clicks per tenant from ``since_ts`` up to the end offsets at call time.

    ``jobs`` processes read disjoint sets of the topic's partitions in parallel (one
    reads in this process). Rows keep each partition's log order, partitions
    interleaved; a click's ``order`` is its place in the log (partition, offset), so
    ``build_sessions`` orders clicks with the same timestamp as the log does. A session
    stays in one partition (messages are keyed by session id), so the result does not
    depend on how the partitions were split among the readers.
    """
    wanted = frozenset(tenants) if tenants else None
    groups = _split_partitions(_offset_ranges(broker, topic, since_ts), jobs)
    if len(groups) <= 1:
        parts = [_read_partitions(broker, topic, g, since_ts, wanted) for g in groups]
    else:
        # fork: the readers need nothing but their arguments; each opens its own
        # consumer (the parent's was closed above, so no librdkafka thread is forked).
        with ProcessPoolExecutor(max_workers=len(groups), mp_context=get_context("fork")) as pool:
            parts = list(
                pool.map(
                    _read_partitions,
                    repeat(broker),
                    repeat(topic),
                    groups,
                    repeat(since_ts),
                    repeat(wanted),
                )
            )
    return _merge(parts)


def _consumer(broker: str | KafkaClientConfig) -> Consumer:
    return Consumer(
        kafka_config(broker).consumer(
            "streamrec-trainer",  # required by librdkafka; nothing is committed
            {
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 50,
                # When its local queue is full, librdkafka waits this long (default 1 s)
                # before fetching that partition again; the reader empties it much sooner.
                "fetch.queue.backoff.ms": 20,
            },
        )
    )


def _offset_ranges(
    broker: str | KafkaClientConfig, topic: str, since_ts: float
) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset at or after since_ts, end offset now)}`` for the
    partitions with anything to read."""
    consumer = _consumer(broker)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise StreamrecError(f"topic {topic!r} not found on {broker}")
        parts = [TopicPartition(topic, p, int(since_ts * 1000)) for p in meta.partitions]
        starts = consumer.offsets_for_times(parts, timeout=10)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()
    return {
        tp.partition: (tp.offset, ends[tp.partition])
        for tp in starts
        if tp.offset != OFFSET_END and 0 <= tp.offset < ends[tp.partition]
    }


def _split_partitions(
    ranges: dict[int, tuple[int, int]], jobs: int
) -> list[dict[int, tuple[int, int]]]:
    """At most ``jobs`` groups of partitions with about as many messages each (the
    biggest partition first, each to the group with the fewest messages so far)."""
    groups: list[dict[int, tuple[int, int]]] = [{} for _ in range(max(1, min(jobs, len(ranges))))]
    load = [0] * len(groups)
    for p, (start, end) in sorted(ranges.items(), key=lambda kv: kv[1][0] - kv[1][1]):
        i = load.index(min(load))
        groups[i][p] = (start, end)
        load[i] += end - start
    return [g for g in groups if g]


def _read_partitions(
    broker: str | KafkaClientConfig,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    since_ts: float,
    wanted: frozenset[str] | None,
) -> dict[str, Clicks]:
    """Valid clicks per tenant in ``ranges`` (``{partition: (start, end)}`` offsets)."""
    columns: dict[str, _Columns] = {}

    def take(msg: Message) -> None:
        try:
            event = parse_event(msg.value())
        except InvalidEvent:
            return  # the worker dead-lettered it already
        if event.ts < since_ts or (wanted is not None and event.tenant not in wanted):
            return
        entry = columns.get(event.tenant)
        if entry is None:
            entry = columns[event.tenant] = ([], [], [], [])
        entry[0].append(event.session_id)
        entry[1].append(event.item_id)
        entry[2].append(event.ts)
        entry[3].append(msg.partition() << _OFFSET_BITS | msg.offset())

    consumer = _consumer(broker)
    try:
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in ranges.items()])
        todo = set(ranges)
        while todo:
            # consume() waits for a full batch or the timeout: keep the wait short for
            # the last, partial batches.
            for msg in consumer.consume(10_000, timeout=0.1):
                if msg.error() is None:
                    take(msg)
                    if msg.offset() >= ranges[msg.partition()][1] - 1:
                        todo.discard(msg.partition())
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    todo.discard(msg.partition())
        # Some brokers (the embedded one) report an end offset inside the last record
        # batch; the rest of that batch may still be buffered: take it too.
        for msg in consumer.consume(100_000, timeout=0.5):
            if msg.error() is None:
                take(msg)
    finally:
        consumer.close()
    # numpy columns: cheap to send back from a reader process and to a training one
    out = {}
    while columns:
        tenant, (sids, items, ts, order) = columns.popitem()  # lists freed as they go
        out[tenant] = Clicks(
            np.asarray(sids, dtype=str),
            np.asarray(items, dtype=str),
            np.asarray(ts, dtype=np.float64),
            np.asarray(order, dtype=np.int64),
        )
    return out


def _merge(parts: list[dict[str, Clicks]]) -> dict[str, Clicks]:
    """One ``Clicks`` per tenant from the readers' results."""
    by_tenant: dict[str, list[Clicks]] = defaultdict(list)
    for part in parts:
        while part:
            tenant, clicks = part.popitem()
            by_tenant[tenant].append(clicks)
    out = {}
    for tenant in sorted(by_tenant):
        chunks = by_tenant.pop(tenant)  # each reader's arrays freed once joined
        out[tenant] = (
            chunks[0]
            if len(chunks) == 1
            else Clicks(
                np.concatenate([c.session_ids for c in chunks]),
                np.concatenate([c.item_ids for c in chunks]),
                np.concatenate([c.ts for c in chunks]),
                np.concatenate([c.order for c in chunks]),
            )
        )
    return out


@dataclass(frozen=True)
class TenantOutcome:
    tenant: str
    decision: GateDecision
    version: str | None  # the registered candidate, promoted or not


@dataclass(frozen=True)
class PassReport:
    outcomes: list[TenantOutcome]  # one per tenant with clicks in the window, by name
    clicks: int  # valid clicks read from the log
    read_s: float  # reading and validating the log
    train_s: float  # training, gating, registering and promoting every tenant


def run_once(
    settings: Settings,
    *,
    window_s: float,
    params: TrainParams,
    policy: GatePolicy,
    tenants: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
    now: float | None = None,
    jobs: int = 1,
    keep_unpromoted: int = 5,
    rollout: RolloutSettings | None = None,
) -> PassReport:
    """One pass over every tenant with clicks in the window; ``jobs`` processes read the
    log, then as many train the tenants. ``rollout``: staged rollouts (else a candidate
    that passes the gate is promoted at once)."""
    now = time.time() if now is None else now
    started = time.perf_counter()
    logs = read_click_log(settings.kafka, settings.clicks_topic, now - window_s, tenants, jobs=jobs)
    clicks = sum(len(v) for v in logs.values())
    read_s = time.perf_counter() - started
    log.info(
        "read %d clicks of %d tenants from %s in %.1fs",
        clicks,
        len(logs),
        settings.clicks_topic,
        read_s,
    )
    started = time.perf_counter()
    modes = _modes(settings)
    window = (now - window_s, now)
    outcomes: list[TenantOutcome] = []

    def done(outcome: TenantOutcome) -> None:
        outcomes.append(outcome)
        if progress:
            progress(outcome.tenant)
        d = outcome.decision
        log.info(
            "tenant %s: %s%s: %s",
            outcome.tenant,
            d.action,
            f" {outcome.version}" if outcome.version else "",
            d.reason,
        )

    for tenant in sorted(t for t in logs if modes.get(t, "on") != "on"):
        del logs[tenant]
        done(TenantOutcome(tenant, GateDecision("skipped", f"tenant is {modes[tenant]}"), None))
    # Tenants are independent: train them in parallel processes (training holds the GIL
    # for much of its time). Each process is single-threaded so they do not oversubscribe.
    # Biggest tenant first, so that the processes finish together rather than one of
    # them training a big tenant alone at the end.
    queue = sorted(logs, key=lambda t: (-len(logs[t]), t))
    if queue:
        with ProcessPoolExecutor(
            max_workers=max(1, min(jobs, len(queue))),
            mp_context=get_context("fork"),
            initializer=_single_threaded,
        ) as pool:
            futures = [
                pool.submit(
                    _retrain_tenant,
                    settings,
                    t,
                    logs.pop(t),
                    params,
                    policy,
                    window,
                    keep_unpromoted,
                    rollout,
                )  # fmt: skip
                for t in queue
            ]
            for future in as_completed(futures):
                done(future.result())
    outcomes.sort(key=lambda o: o.tenant)
    return PassReport(outcomes, clicks, read_s, time.perf_counter() - started)


def _single_threaded() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _retrain_tenant(
    settings: Settings,
    tenant: str,
    clicks: Clicks,
    params: TrainParams,
    policy: GatePolicy,
    window: tuple[float, float],
    keep_unpromoted: int = 5,
    rollout: RolloutSettings | None = None,
) -> TenantOutcome:
    registry = Registry(settings.registry_dir)
    try:
        current = registry.load(tenant)
    except NoModelError:
        current = None
    except InvalidModelError as exc:
        log.warning(
            "tenant %s: the version in service cannot be loaded (%s); gating against nothing",
            tenant,
            exc,
        )
        current = None
    try:
        running = read_policy(registry, tenant)
    except StreamrecError:
        running = None
    if running is not None:
        # An experiment, bandit or rollout decides this tenant's versions for now.
        decision = GateDecision("skipped", f"a {running['policy']} policy is running")
        return TenantOutcome(tenant, decision, None)
    offsets = log_positions(clicks)
    last = _last_trained(registry, tenant)
    if last is not None and not has_new_clicks(offsets, last[1]):
        decision = GateDecision(
            "skipped",
            f"no new clicks since {last[0]} was trained",
            current_version=current.version if current is not None else None,
        )
        return TenantOutcome(tenant, decision, None)
    sessions = build_sessions(clicks)
    bundle, decision = retrain(sessions, current, params, policy)
    if bundle is None:
        return TenantOutcome(tenant, decision, None)
    version = registry.register(
        tenant,
        bundle,
        {
            "gate": decision.to_manifest(policy),
            "data_window": {
                "from": window[0],
                "to": window[1],
                "clicks": len(clicks),
                "sessions": len(sessions),
                # The newest offset read per partition: the next pass skips the tenant
                # unless one of them moved.
                "offsets": {str(p): o for p, o in offsets.items()},
            },
            "metrics": {
                f"hr@{policy.k}": decision.candidate.hr if decision.candidate else None,
                f"mrr@{policy.k}": decision.candidate.mrr if decision.candidate else None,
            },
        },
    )
    if decision.action == "promoted":
        if rollout is not None and current is not None:
            # Staged: the candidate earns its traffic online (stream.rollout).
            start_rollout(settings, tenant, version, current.version, rollout)
            decision = replace(
                decision, action="rollout", reason=f"{decision.reason}; staged rollout started"
            )
        else:
            registry.promote(tenant, version)
            notify_model_change(_redis(settings.redis), tenant, version)
    _prune(registry, tenant, keep_unpromoted)
    return TenantOutcome(tenant, decision, version)


def log_positions(clicks: Clicks) -> dict[int, int]:
    """The newest offset read per partition, from each click's place in the log."""
    if not len(clicks):
        return {}
    order = np.asarray(clicks.order, dtype=np.int64)
    partitions = order >> _OFFSET_BITS
    offsets = order & ((1 << _OFFSET_BITS) - 1)
    return {int(p): int(offsets[partitions == p].max()) for p in np.unique(partitions)}


def has_new_clicks(now: dict[int, int], trained: dict[int, int]) -> bool:
    """Does the window hold a click the last trained version did not see?"""
    return any(o > trained.get(p, -1) for p, o in now.items())


def _last_trained(registry: Registry, tenant: str) -> tuple[str, dict[int, int]] | None:
    """The newest registered version with the log positions it was trained up to."""
    for info in reversed(registry.versions(tenant)):
        window = registry.manifest(tenant, info.version).get("data_window") or {}
        offsets = window.get("offsets")
        if isinstance(offsets, dict):
            try:
                return info.version, {int(p): int(o) for p, o in offsets.items()}
            except (TypeError, ValueError):
                return None
        return None  # trained elsewhere (streamrec train): no positions to compare
    return None


def _prune(registry: Registry, tenant: str, keep: int) -> None:
    """At most ``keep`` unpromoted versions (never an experiment's arms)."""
    try:
        policy = read_policy(registry, tenant)
    except StreamrecError:
        policy = None
    protect = set((policy or {}).get("arms") or ())
    deleted = registry.prune_unpromoted(tenant, keep, protect)
    if deleted:
        log.info("tenant %s: deleted unpromoted version(s) %s", tenant, ", ".join(deleted))


_clients: dict[RedisSettings, SyncRedis] = {}


def _redis(settings: RedisSettings) -> SyncRedis:
    """One client per training process, reused for every tenant's notice."""
    client = _clients.get(settings)
    if client is None:
        client = _clients[settings] = sync_client(settings)
    return client


def _modes(settings: Settings) -> dict[str, str]:
    # Without the modes a frozen tenant could be retrained: better not to run at all.
    # The registry's (durable) modes win over Redis's cache, which a restart may empty.
    try:
        cached = list_tenants(_redis(settings.redis))
        return {**cached, **Registry(settings.registry_dir).modes()}
    except RedisError as exc:
        raise StreamrecError(
            f"cannot read tenant modes from Redis at {settings.redis_display}: {exc}"
        ) from None
