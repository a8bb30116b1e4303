"""The retraining job: Kafka's click log -> sessions per tenant -> gated retrain ->
register, promote, notify.

Kafka is the log of record: the job reads the ``clicks`` topic from the first offset
inside the window up to the end offsets seen when it started, with no consumer group
(it commits nothing, so it never competes with the workers).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import numpy as np
import redis
from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, TopicPartition

from models.datasets import Clicks, build_sessions
from models.errors import InvalidModelError, NoModelError, StreamrecError
from models.registry import Registry
from models.train import TrainParams
from models.trainer import GateDecision, GatePolicy, retrain
from state.notify import notify_model_change
from state.tenants import list_tenants
from stream.config import Settings
from stream.events import InvalidEvent, parse_event

log = logging.getLogger("streamrec.trainer")


@dataclass
class TenantLog:
    session_ids: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)

    def to_clicks(self) -> Clicks:
        n = len(self.item_ids)
        return Clicks(
            np.asarray(self.session_ids, dtype=str),
            np.asarray(self.item_ids, dtype=str),
            np.asarray(self.ts, dtype=np.float64),
            np.arange(n, dtype=np.int64),
        )


def read_click_log(
    broker: str, topic: str, since_ts: float, tenants: Iterable[str] | None = None
) -> dict[str, TenantLog]:
    """Valid clicks per tenant from ``since_ts`` up to the end offsets at call time."""
    wanted = set(tenants) if tenants else None
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": "streamrec-trainer",  # required by librdkafka; nothing is committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
        }
    )
    logs: dict[str, TenantLog] = defaultdict(TenantLog)
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
        todo = {
            tp.partition
            for tp in starts
            if tp.offset != OFFSET_END and tp.offset >= 0 and tp.offset < ends[tp.partition]
        }
        consumer.assign([tp for tp in starts if tp.partition in todo])

        def take(msg: Message) -> None:
            try:
                event = parse_event(msg.value())
            except InvalidEvent:
                return  # the worker dead-lettered it already
            if event.ts < since_ts or (wanted is not None and event.tenant not in wanted):
                return
            entry = logs[event.tenant]
            entry.session_ids.append(event.session_id)
            entry.item_ids.append(event.item_id)
            entry.ts.append(event.ts)

        while todo:
            for msg in consumer.consume(10_000, timeout=1.0):
                if msg.error() is None:
                    take(msg)
                    if msg.offset() >= ends[msg.partition()] - 1:
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
    return dict(logs)


@dataclass(frozen=True)
class TenantOutcome:
    tenant: str
    decision: GateDecision
    version: str | None  # the registered candidate, promoted or not


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
) -> list[TenantOutcome]:
    """One pass over every tenant with clicks in the window."""
    now = time.time() if now is None else now
    started = time.perf_counter()
    logs = read_click_log(settings.broker, settings.clicks_topic, now - window_s, tenants)
    clicks = sum(len(v.item_ids) for v in logs.values())
    log.info(
        "read %d clicks of %d tenants from %s in %.1fs",
        clicks,
        len(logs),
        settings.clicks_topic,
        time.perf_counter() - started,
    )
    modes = _modes(settings)
    window = (now - window_s, now)
    jobs_args = [
        (settings, tenant, logs.pop(tenant), modes.get(tenant, "on"), params, policy, window)
        for tenant in sorted(logs)
    ]
    outcomes = []
    # Tenants are independent: train them in parallel processes (training holds the GIL
    # for much of its time). Each process is single-threaded so they do not oversubscribe.
    with ProcessPoolExecutor(
        max_workers=max(1, jobs), mp_context=get_context("fork"), initializer=_single_threaded
    ) as pool:
        for outcome in (
            pool.map(_retrain_tenant, *zip(*jobs_args, strict=True), chunksize=1)
            if jobs_args
            else []
        ):
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
    return outcomes


def _single_threaded() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _retrain_tenant(
    settings: Settings,
    tenant: str,
    clicks: TenantLog,
    mode: str,
    params: TrainParams,
    policy: GatePolicy,
    window: tuple[float, float],
) -> TenantOutcome:
    registry = Registry(settings.registry_dir)
    if mode != "on":
        return TenantOutcome(tenant, GateDecision("skipped", f"tenant is {mode}"), None)
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
    sessions = build_sessions(clicks.to_clicks())
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
                "clicks": len(clicks.item_ids),
                "sessions": len(sessions),
            },
            "metrics": {
                f"hr@{policy.k}": decision.candidate.hr if decision.candidate else None,
                f"mrr@{policy.k}": decision.candidate.mrr if decision.candidate else None,
            },
        },
    )
    if decision.action == "promoted":
        registry.promote(tenant, version)
        notify_model_change(settings.redis_url, tenant, version)
    return TenantOutcome(tenant, decision, version)


def _modes(settings: Settings) -> dict[str, str]:
    # Without the modes a frozen tenant could be retrained: better not to run at all.
    try:
        return list_tenants(redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3))
    except redis.RedisError as exc:
        raise StreamrecError(
            f"cannot read tenant modes from Redis at {settings.redis_url}: {exc}"
        ) from None
