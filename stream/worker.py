"""The worker: one ``mode.Service`` that owns what the stream, the timers and the HTTP
views share: the session store and tenant directory (Redis), the model cache, the
counters and the policy while Redis is away. ``stream.app.create_app`` declares the
Faust app around it.

The batch loop (``stream.pipeline.loop``, a child service of the worker) feeds the
:class:`BatchProcessor`. It is at-least-once: a batch's offsets are committed only after
its Redis writes and the delivery of every record it sent; session updates are
idempotent, so a re-delivered batch appends nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from typing import Any

from mode import Service, ServiceT

from models.errors import StreamrecError
from models.kernels import KernelCount, kernel_cache, kernel_count
from models.policy_file import all_policies
from models.registry import Registry
from state.connection import UNAVAILABLE, AsyncRedis, RedisError, async_client
from state.feedback import FeedbackRecorder
from state.notify import model_changes
from state.sessions import SessionStore
from stream.config import Settings
from stream.control.policies import PolicyDirectory
from stream.pipeline.loop import BatchLoop
from stream.pipeline.metrics import WorkerMetrics
from stream.pipeline.model_cache import ModelCache
from stream.pipeline.processor import BatchProcessor, BatchResult, DeadLetter, Message
from stream.pipeline.tenant_directory import TenantDirectory
from stream.shutdown import start_up_done
from stream.timing import backoff

log = logging.getLogger(f"streamrec.{__name__}")

# /health says "degraded" when events wait and nothing was committed for this long.
STALL_AFTER_S = 30.0
# The periodic counters line, written only when something changed since the last one.
REPORT_INTERVAL_S = 30.0
# Pauses between attempts at a batch while Redis is away: from ~0.1 s, doubling, to 5 s.
HOLD_BASE_S = 0.1
HOLD_CAP_S = 5.0


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


def unreachable(what: str, exc: BaseException) -> str:
    """A /health reason; a timeout's message is empty (a hung Redis said "redis
    unreachable: " and nothing more), so its type stands in."""
    return f"{what} unreachable: {str(exc) or type(exc).__name__}"


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


@dataclass(frozen=True)
class WorkerBackend:
    """What the HTTP views reach of a running worker: the processor (ranking on request),
    the tenant directory (modes, keys, existence), the policies (an experiment's shares)
    and the Redis client (counters, catalogue)."""

    processor: BatchProcessor
    tenants: TenantDirectory
    policies: PolicyDirectory
    redis: AsyncRedis


@dataclass
class WorkerStats:
    events_in: int = 0
    recommendations: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    suppressed: int = 0
    batches: int = 0
    feedback: int = 0


class Worker(Service):
    """Clicks in, recommendations out. Redis clients are made when the worker starts (or
    when an HTTP view needs them first), never at import time."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry_dir)
        self.models = ModelCache(
            self.registry,
            max_bytes=int(settings.models_max_bytes),
            rank_threads=settings.rank_threads,
        )
        self.stats = WorkerStats()
        self.dead_letters = DeadLetterLog()
        # Set once every kernel and model in service is warm (see ``_warm_up``): the
        # consumer joins its group after that, and /health/ready waits for it.
        self.warm = asyncio.Event()
        self._kernels_at_ready: KernelCount | None = None
        self._checking: asyncio.Future[None] | None = None
        # The consumer, a child service (started after ``on_start``).
        self.consumer = BatchLoop(
            settings, self.process, self.count, warm=self.warm.wait, handover=self.flush_feedback
        )
        self.metrics = WorkerMetrics(
            stats=self.stats,
            models=self.models,
            progress=self.progress,
            modes=self.registry.tenant_modes,
            max_tenants=settings.metrics_max_tenants,
        )
        self._backend: WorkerBackend | None = None
        self._reported = self._snapshot()
        super().__init__(**kwargs)

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        return [self.consumer]

    async def on_start(self) -> None:
        self._connect()
        # In the background, so that the HTTP server answers (not ready) meanwhile.
        self.add_future(self._warm_up())

    async def _warm_up(self) -> None:
        """Load every model in service and rank once with each (which compiles the
        kernels, or loads them from numba's cache), before the consumer joins its group:
        the first batches are then as fast as the rest."""
        started = time.perf_counter()
        try:
            await self.models.preload()
        except (StreamrecError, OSError) as exc:
            log.error("models in service not preloaded (%s); loaded on first use", exc)
        self._kernels_at_ready = kernels = kernel_count()
        log.info(
            "warm: %d kernel signature(s) ready (%d compiled, %d from the cache), %d model(s) "
            "in memory, in %.1f s",
            kernels.signatures, kernels.compiled, kernels.from_cache, len(self.models.loaded()),
            time.perf_counter() - started,
        )  # fmt: skip
        if kernels.compiled:
            log.info(
                "the kernels were not in numba's cache (%s) for these sources, numba and CPU: "
                "`streamrec warm` compiles them ahead of a first start",
                kernel_cache(),
            )
        self.warm.set()
        await self.consumer.assigned.wait()
        start_up_done()

    async def on_shutdown(self) -> None:
        # After the consumer (a child) finished its batches in hand.
        if self._backend is not None:
            try:
                await asyncio.wait_for(self._backend.redis.aclose(), timeout=1.0)
            except (TimeoutError, *UNAVAILABLE):
                pass

    # -- what the stream, the timers and the views share -----------------------------------
    @property
    def backend(self) -> WorkerBackend:
        """What the HTTP views use of the worker (its clients made on first use)."""
        return self._connect()

    @property
    def processor(self) -> BatchProcessor:
        return self.backend.processor

    def _connect(self) -> WorkerBackend:
        if self._backend is None:
            self._backend = self._build()
        return self._backend

    def _build(self) -> WorkerBackend:
        s, registry = self.settings, self.registry
        redis = async_client(s.redis, decode_responses=True)
        store = SessionStore(
            redis,
            cap=s.session_cap,
            ttl_s=s.session_ttl_s,
            popular_cap=s.popular_cap,
            popular_ttl_s=s.popular_ttl_s,
        )
        tenants = TenantDirectory(
            redis, ttl_s=s.model_check_interval_s, durable=registry.tenant_modes, registry=registry
        )
        feedback = (
            FeedbackRecorder(
                bucket_s=s.feedback_bucket_s, retention_s=int(s.feedback_retention_h * 3600)
            )
            if s.feedback
            else None
        )
        policies = PolicyDirectory(
            redis,
            durable=lambda: all_policies(registry),
            ttl_s=s.model_check_interval_s,
            bucket_s=s.feedback_bucket_s,
        )
        processor = BatchProcessor(
            store,
            self.models,
            tenants,
            top_k=s.top_k,
            policies=policies,
            feedback=feedback,
            feedback_topic=s.feedback_topic,
            auto_create_tenants=s.auto_create_tenants,
            rank_threads=s.rank_threads,
        )
        return WorkerBackend(processor, tenants, policies, redis)

    # -- the stream ----------------------------------------------------------------------
    async def process(self, batch: list[Message]) -> BatchResult:
        """One batch, held and retried for as long as Redis is away: consumption stops
        because the engine does not take the next batch until this one returns. One log
        line per back-off step, whose pauses grow to HOLD_CAP_S; the sleep is where a
        stop cancels the batch (it is re-delivered)."""
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                result = await self.processor.process(batch)
                break
            except UNAVAILABLE as exc:
                failures += 1
                # Redis away: the batch is held (nothing skipped, nothing committed).
                delay = backoff(failures + 1, HOLD_BASE_S, HOLD_CAP_S, jitter=True)
                log.log(
                    logging.ERROR if failures == 1 else logging.WARNING,
                    "Redis unavailable (%s); holding %d events, retrying in %.1f s (attempt %d)",
                    str(exc) or type(exc).__name__, len(batch), delay, failures,
                )  # fmt: skip
                await asyncio.sleep(delay)
        self.metrics.batch(result, time.perf_counter() - started, len(batch))
        if failures:
            log.warning("Redis is back; resuming")
        return result

    def count(self, n_events: int, result: BatchResult) -> None:
        stats = self.stats
        stats.batches += 1
        stats.events_in += n_events
        stats.recommendations += len(result.recommendations)
        stats.dead_letters += len(result.dead_letters)
        stats.duplicates += result.duplicates
        stats.suppressed += result.suppressed
        stats.feedback += result.feedback
        if result.dead_letters:
            self.dead_letters.add(result.dead_letters)

    def progress(self) -> dict[str, Any]:
        return self.consumer.progress()

    # -- HTTP ----------------------------------------------------------------------------
    async def probe(self) -> dict[str, Any]:
        """Why the worker is degraded, if it is (for /health)."""
        reasons: list[str] = []
        try:
            await asyncio.wait_for(self.backend.redis.ping(), timeout=1.0)
        except (RedisError, OSError, TimeoutError) as exc:
            reasons.append(unreachable("redis", exc))
        progress = self.progress()
        stalled = stall_reason(progress)
        if stalled:
            reasons.append(stalled)
        # A tenant's refused model or damaged file is that tenant's: /health's "tenants".
        # Ready: the above, partitions assigned (the batch loop owns its group) and
        # every tenant's version in service in memory (preloaded at start-up).
        not_ready = list(reasons)
        if not self.warm.is_set():
            not_ready.append("warming up: loading the models in service and their kernels")
        try:
            not_ready += await asyncio.to_thread(self.models.not_loaded)
        except OSError as exc:
            not_ready.append(f"the model registry cannot be read: {exc}")
        if not progress.get("assigned"):
            not_ready.append("no partitions assigned yet")
        return {
            "reasons": reasons,
            "ready": not not_ready,
            "not_ready": not_ready,
            "consumer": progress,
            "kernels": self.kernels(),
        }

    def kernels(self) -> dict[str, int]:
        """Kernel signatures warmed before ready, and compiled since: argument types the
        warm-up did not cover, or the first model of a worker that started without any
        (compiled as it loads, before it serves)."""
        now, warmed = kernel_count(), self._kernels_at_ready
        if warmed is None:
            return {"warmed": 0, "compiled_after_ready": 0}
        return {
            "warmed": warmed.signatures,
            "compiled_after_ready": now.signatures - warmed.signatures,
        }

    # -- timers (declared in stream.app) -------------------------------------------------
    async def flush_dead_letters(self) -> None:
        self.dead_letters.flush()

    async def refresh_bandits(self) -> None:
        # A bandit's shares follow its counters every few seconds, never per event.
        if self._backend is not None:
            try:
                await self._backend.policies.refresh_bandits()
            except (RedisError, OSError) as exc:
                log.warning("bandit shares not recomputed (%s)", exc)

    async def flush_feedback(self) -> None:
        # Counters go out with the next batch; without traffic, from here.
        if self._backend is not None:
            try:
                await self._backend.processor.flush_feedback()
            except (RedisError, OSError) as exc:
                log.debug("feedback flush failed (%s); kept for the next batch", exc)

    async def check_models(self) -> None:
        # Loading a model takes longer than the timer's interval: it runs beside the
        # timer, one check at a time, and only once the start-up's warm-up is done.
        if self.warm.is_set() and (self._checking is None or self._checking.done()):
            self._checking = self.add_future(self._check_models())

    async def _check_models(self) -> None:
        await self.models.refresh()
        try:
            await self.backend.tenants.check_files()
        except OSError as exc:
            log.warning("tenant control files not checked (%s)", exc)
        # A tenant whose first version was promoted since start-up: loaded now, not at
        # its next click (and /health/ready does not wait for that click).
        try:
            await self.models.preload()
        except (StreamrecError, OSError) as exc:
            log.warning("models in service not loaded (%s); loaded on first use", exc)

    async def listen_for_models(self) -> None:
        # Pub/sub makes a swap near-instant; the ``check_models`` timer is the backstop.
        # One client throughout: a cluster client keeps the nodes it found, so it
        # resubscribes through another node when the one it listened on fails.
        client = async_client(self.settings.redis, subscriber=True)
        try:
            while True:
                try:
                    async for tenant in model_changes(client):
                        backend = self._backend
                        if backend is not None:
                            backend.policies.invalidate()
                            backend.tenants.invalidate()
                            # Read now, not at the next batch: a mode change is logged when
                            # it happens, traffic or not.
                            await backend.tenants.mode(tenant)
                        await self.models.refresh([tenant])
                except UNAVAILABLE + (RedisError,):  # unreachable, or a refused reply
                    await asyncio.sleep(2.0)
        finally:
            await client.aclose()

    async def report(self) -> None:
        """The counters, when they changed since the last line: an idle worker is quiet."""
        now = self._snapshot()
        if now == self._reported:
            return
        self._reported = now
        s, m = self.stats, self.models
        # Models as counts: a worker may hold thousands (their versions: /health).
        log.info(
            "events=%d recommendations=%d dead_letters=%d redelivered=%d switched_off=%d "
            "batches=%d models=%d (%.0f MB) model_loads=%d model_evictions=%d",
            s.events_in, s.recommendations, s.dead_letters, s.duplicates, s.suppressed,
            s.batches, len(m.loaded()), m.resident_bytes() / 1e6, m.loads, m.evictions,
        )  # fmt: skip

    def _snapshot(self) -> tuple[Any, ...]:
        m = self.models
        return (*astuple(self.stats), len(m.loaded()), m.loads, m.evictions)
