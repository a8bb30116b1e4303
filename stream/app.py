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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from models.registry import Registry
from state.notify import model_changes
from state.sessions import SessionStore
from stream.batch_loop import BatchLoop, DoneFn, ProcessFn
from stream.config import Settings
from stream.model_handle import ModelCache
from stream.processor import BatchProcessor, BatchResult, Message
from stream.tenant_state import TenantDirectory
from stream.web import WebService

log = logging.getLogger("streamrec.worker")


@dataclass
class WorkerStats:
    events_in: int = 0
    recommendations: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    suppressed: int = 0
    batches: int = 0


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
        producer_acks=1,
        producer_linger=0.002,
        web_enabled=settings.web_port > 0,
        # Faust keeps its own state under datadir (default: the current directory).
        datadir=str(Path(settings.home) / "faust"),
    )
    models = ModelCache(Registry(settings.registry_dir), max_models=settings.max_models)
    stats = WorkerStats()
    holder: dict[str, Any] = {}

    def processor() -> BatchProcessor:
        # Clients are built when the worker starts, never at import time.
        if "processor" not in holder:
            redis = Redis.from_url(settings.redis_url, socket_timeout=5, decode_responses=True)
            store = SessionStore(redis, cap=settings.session_cap, ttl_s=settings.session_ttl_s)
            tenants = TenantDirectory(redis, ttl_s=settings.model_check_interval_s)
            holder.update(redis=redis, store=store, tenants=tenants)
            holder["processor"] = BatchProcessor(store, models, tenants, top_k=settings.top_k)
        return holder["processor"]

    async def pull(tenant: str, session_id: str) -> bytes | None:
        return await processor().recommend_session(tenant, session_id)

    async def process_with_retry(batch: list[Message]) -> BatchResult:
        # Redis down: hold the batch (so nothing is skipped or committed) and retry with
        # backoff; consumption stops because the agent does not take the next batch.
        delay = 0.1
        failing = False
        while True:
            try:
                result = await processor().process(batch)
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
        for dead in result.dead_letters:
            log.warning("dead letter %s: %s", dead.source, dead.reason)

    if settings.engine == "batch":
        app.service(BatchLoop(settings, process_with_retry, count))
    elif settings.engine == "agent":
        _add_agent(app, settings, process_with_retry, count)
    else:
        raise ValueError(f"STREAMREC_ENGINE={settings.engine!r}: choose 'batch' or 'agent'")

    if settings.web_port > 0:
        app.web_server(WebService(settings, stats, models, pull))

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

    app.streamrec_stats = stats  # type: ignore[attr-defined]
    app.streamrec_models = models  # type: ignore[attr-defined]
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
