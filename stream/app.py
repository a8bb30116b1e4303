"""The Faust app: clicks in, recommendations out, plus model hot-swap timers and HTTP.

``create_app(settings)`` builds the app; the module attribute ``app`` (built on first
access from the environment) lets ``faust -A stream.app worker`` find it too.

Two engines run the same :class:`BatchProcessor`: ``batch`` (default), the batch loop
in ``stream.batch_loop``, and ``agent``, a textbook Faust agent kept as the reference
the benchmarks compare against. Both are at-least-once: a batch's offsets are committed
(``take_events`` acks it) only after its Redis writes and the delivery of every record
it sent; session updates are idempotent, so a re-delivered batch appends nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from models.policy_file import all_policies
from models.registry import Registry
from state.feedback import FeedbackRecorder
from state.notify import model_changes
from state.sessions import SessionStore
from stream import dashboard, web_feedback  # noqa: F401  (their routes join the API)
from stream.batch_loop import BatchLoop, DoneFn, ProcessFn
from stream.config import Settings
from stream.metrics import WorkerMetrics
from stream.model_handle import ModelCache
from stream.policies import PolicyDirectory
from stream.processor import BatchProcessor, BatchResult, DeadLetter, Message
from stream.tenant_state import TenantDirectory
from stream.web import WebService

log = logging.getLogger(f"streamrec.{__name__}")


# /health says "degraded" when events wait and nothing was committed for this long.
STALL_AFTER_S = 30.0


def stall_reason(progress: dict[str, Any], after_s: float = STALL_AFTER_S) -> str | None:
    """Why consumption counts as stalled, from ``BatchLoop.progress()``: events wait and
    nothing was committed for ``after_s``, or one batch has been in hand that long."""
    lag, since = progress.get("lag") or 0, progress.get("since_commit_s") or 0.0
    if lag and since > after_s:
        return f"consumption stalled: no commit for {since:.0f} s, {lag} events waiting"
    age = progress.get("batch_age_s") or 0.0
    if age > after_s:
        return f"consumption stalled: a batch in hand for {age:.0f} s"
    return None


class DeadLetterLog:
    """Dead letters logged as a summary per reason at most every INTERVAL_S (a fuzzing
    client once made one WARNING line per message, 10,512 of them)."""

    INTERVAL_S = 10.0

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._example: dict[str, str] = {}
        self._last = time.monotonic() - self.INTERVAL_S

    def add(self, dead_letters: list[DeadLetter]) -> None:
        for dead in dead_letters:
            # The reason's kind, without the details that vary from one message to the next.
            kind = dead.reason.split(":", 1)[0][:100]
            self._counts[kind] += 1
            self._example.setdefault(kind, dead.source)
        if time.monotonic() - self._last >= self.INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self._counts:
            log.warning(
                "dead letters: %s",
                "; ".join(
                    f"{n} x {kind} (e.g. {self._example[kind]})"
                    for kind, n in self._counts.most_common()
                ),
            )
            self._counts.clear()
            self._example.clear()
        self._last = time.monotonic()


@dataclass
class WorkerStats:
    events_in: int = 0
    recommendations: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    suppressed: int = 0
    batches: int = 0
    feedback: int = 0


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        # In batch mode our own consumer owns the group named app_id; Faust's consumer
        # (idle there) must not join it with its own assignor.
        settings.app_id if settings.engine == "agent" else f"{settings.app_id}-host",
        broker=f"kafka://{settings.broker}",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        # Security and acks from the one Kafka client configuration (stream/kafka_config.py).
        broker_credentials=settings.kafka.faust_credentials(),
        producer_acks=settings.kafka.faust_acks(),
        producer_linger=0.002,
        web_enabled=settings.web_port > 0,
        # Faust keeps its own state under datadir (default: the current directory).
        datadir=str(Path(settings.home) / "faust"),
    )
    registry = Registry(settings.registry_dir)
    models = ModelCache(registry, max_models=settings.max_models)
    stats = WorkerStats()
    holder: dict[str, Any] = {}
    dead_log = DeadLetterLog()

    def processor() -> BatchProcessor:
        # Clients are built when the worker starts, never at import time.
        if "processor" not in holder:
            redis = Redis.from_url(settings.redis_url, socket_timeout=5, decode_responses=True)
            store = SessionStore(redis, cap=settings.session_cap, ttl_s=settings.session_ttl_s)
            tenants = TenantDirectory(
                redis,
                ttl_s=settings.model_check_interval_s,
                durable=registry.tenant_modes,
                registry=registry,
            )
            holder.update(redis=redis, store=store, tenants=tenants)
            feedback = (
                FeedbackRecorder(
                    bucket_s=settings.feedback_bucket_s,
                    retention_s=int(settings.feedback_retention_h * 3600),
                )
                if settings.feedback
                else None
            )
            holder["processor"] = BatchProcessor(
                store, models, tenants, top_k=settings.top_k, feedback=feedback
            )
            holder["processor"].feedback_topic = settings.feedback_topic
            holder["processor"].policies = holder["policies"] = PolicyDirectory(
                redis,
                durable=lambda: all_policies(registry),
                ttl_s=settings.model_check_interval_s,
                bucket_s=settings.feedback_bucket_s,
            )
            holder["processor"].auto_create_tenants = settings.auto_create_tenants
        return holder["processor"]

    async def pull(tenant: str, session_id: str) -> bytes | None:
        return await processor().recommend_session(tenant, session_id)

    metrics = WorkerMetrics(
        stats=stats,
        models=models,
        progress=lambda: loop.progress() if loop is not None else {},
        modes=registry.tenant_modes,
        max_tenants=settings.metrics_max_tenants,
    )

    async def process_with_retry(batch: list[Message]) -> BatchResult:
        # Redis down: hold the batch (so nothing is skipped or committed) and retry with
        # backoff; consumption stops because the agent does not take the next batch.
        delay = 0.1
        failing = False
        while True:
            try:
                started = time.perf_counter()
                result = await processor().process(batch)
                metrics.batch(result, time.perf_counter() - started)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if not failing:
                    log.error(
                        "Redis unavailable (%s); holding %d events and retrying", exc, len(batch)
                    )
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if failing:
                log.warning("Redis is back; resuming")
            return result

    def count(n_events: int, result: BatchResult) -> None:
        stats.batches += 1
        stats.events_in += n_events
        stats.recommendations += len(result.recommendations)
        stats.dead_letters += len(result.dead_letters)
        stats.duplicates += result.duplicates
        stats.suppressed += result.suppressed
        stats.feedback += result.feedback
        if result.dead_letters:
            dead_log.add(result.dead_letters)

    loop: BatchLoop | None = None
    if settings.engine == "batch":
        loop = BatchLoop(settings, process_with_retry, count)
        app.service(loop)
    elif settings.engine == "agent":
        _add_agent(app, settings, process_with_retry, count)
    else:
        raise ValueError(f"STREAMREC_ENGINE={settings.engine!r}: choose 'batch' or 'agent'")

    async def probe() -> dict[str, Any]:
        """Why the worker is degraded, if it is (for /health)."""
        reasons: list[str] = []
        processor()
        try:
            await asyncio.wait_for(holder["redis"].ping(), timeout=1.0)
        except (RedisError, OSError, TimeoutError) as exc:
            reasons.append(f"redis unreachable: {exc or type(exc).__name__}")
        progress = loop.progress() if loop is not None else {}
        stalled = stall_reason(progress)
        if stalled:
            reasons.append(stalled)
        not_loaded = models.problems()
        reasons += not_loaded
        # Ready: the above, and partitions assigned (the batch engine owns its group).
        not_ready = list(reasons)
        if loop is not None and not progress.get("assigned"):
            not_ready.append("no partitions assigned yet")
        return {
            "reasons": reasons,
            "ready": not not_ready,
            "not_ready": not_ready,
            "consumer": progress,
        }

    if settings.web_port > 0:
        web = WebService(settings, stats, models, pull, probe, backend=processor)
        web.ctx.metrics = metrics.render
        app.web_server(web)

    @app.timer(DeadLetterLog.INTERVAL_S)
    async def log_dead_letters() -> None:
        dead_log.flush()

    async def refresh_bandits() -> None:
        # A bandit's shares follow its counters every few seconds, never per event.
        if "policies" in holder:
            try:
                await holder["policies"].refresh_bandits()
            except (RedisError, OSError) as exc:
                log.warning("bandit shares not recomputed (%s)", exc)

    app.timer(settings.bandit_interval_s)(refresh_bandits)

    @app.timer(1.0)
    async def flush_feedback() -> None:
        # Counters go out with the next batch; without traffic, from here.
        if "processor" in holder:
            try:
                await holder["processor"].flush_feedback()
            except (RedisError, OSError) as exc:
                log.debug("feedback flush failed (%s); kept for the next batch", exc)

    @app.timer(settings.model_check_interval_s)
    async def check_models() -> None:
        await models.refresh()

    @app.task
    async def listen_for_models() -> None:
        # Pub/sub makes a swap near-instant; the timer above is the backstop.
        while True:
            client = Redis.from_url(settings.redis_url, socket_timeout=None)
            try:
                async for tenant in model_changes(client):
                    if "tenants" in holder:
                        holder["tenants"].invalidate()
                    if "policies" in holder:
                        holder["policies"].invalidate()
                    await models.refresh([tenant])
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await asyncio.sleep(2.0)
            finally:
                await client.aclose()

    @app.timer(30.0)
    async def report() -> None:
        log.info(
            "events=%d recommendations=%d dead_letters=%d redelivered=%d switched_off=%d "
            "batches=%d models=%s",
            stats.events_in,
            stats.recommendations,
            stats.dead_letters,
            stats.duplicates,
            stats.suppressed,
            stats.batches,
            models.loaded(),
        )

    return app


def _add_agent(app: faust.App, settings: Settings, process: ProcessFn, done: DoneFn) -> None:
    """The textbook Faust agent: batches via ``take_events``, one producer future per record."""
    clicks = app.topic(settings.clicks_topic, key_type=bytes, value_type=bytes)
    recs = app.topic(settings.recs_topic, key_type=bytes, value_type=bytes)
    dlq = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes)

    @app.agent(clicks, name="recommend")
    async def recommend(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            batch = [e.message for e in events]
            result = await process(batch)
            pending = [
                await recs.send(key=o.session_id.encode(), value=o.payload)
                for o in result.recommendations
            ]
            pending += [
                await dlq.send(key=d.key, value=d.value, headers=d.headers)
                for d in result.dead_letters
            ]
            # Delivered before the loop body ends, so before take_events acks the batch.
            await asyncio.gather(*pending)
            done(len(batch), result)


def __getattr__(name: str) -> Any:
    if name == "app":
        app = create_app(Settings.from_env())
        globals()["app"] = app
        return app
    raise AttributeError(name)
