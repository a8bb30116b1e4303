"""What every route module may import: the context the routes reach and the error they
raise. The parts of the worker the routes use are named here as small protocols, so the
API depends on what it calls, not on the worker's classes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Producer

from models.errors import StreamrecError
from models.ranking import Ranked
from models.registry import DamagedFileError
from models.rules import Request
from state.connection import AsyncRedis
from stream.config import Settings


class ApiError(StreamrecError):
    """An answer other than success: its status and the reason given to the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Ranker(Protocol):
    """The worker's ranking, as the tenant routes call it."""

    async def recommend_session(
        self, tenant: str, session_id: str, n: int | None = None, request: Request | None = None
    ) -> bytes | None: ...

    async def recommend_items(
        self, tenant: str, items: Sequence[str], n: int, request: Request | None = None
    ) -> tuple[Ranked, str | None]: ...

    async def similar(
        self, tenant: str, item_id: str, n: int, request: Request | None = None
    ) -> tuple[list[tuple[str, float]], str] | None: ...


class Tenants(Protocol):
    """The worker's tenant directory: modes, keys, existence, damaged control files."""

    async def mode(self, tenant: str) -> str: ...

    async def exists(self, tenant: str) -> bool: ...

    async def create(self, tenant: str) -> None: ...

    async def key_owner(self, digest: str) -> str | None: ...

    async def has_keys(self, tenant: str) -> bool: ...

    def disabled(self, tenant: str) -> DamagedFileError | None: ...

    def disabled_tenants(self) -> dict[str, DamagedFileError]: ...


class Models(Protocol):
    """The worker's model cache, as /health reports it."""

    def loaded(self) -> dict[str, str | None]: ...

    def tenant_problems(self) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True)
class Serving:
    """The worker's parts the routes use once it is connected."""

    ranker: Ranker
    tenants: Tenants
    # The catalogue, change notices and the feedback counters live there.
    redis: AsyncRedis
    # tenant -> arm -> share: what each running bandit serves now.
    bandit_shares: Callable[[], dict[str, dict[str, float]]]


@dataclass
class WebContext:
    """What the routes reach: settings, the worker's numbers and models, and the
    worker's clients (built when it starts, never at import time)."""

    settings: Settings
    # The worker's totals for /health (events, recommendations, dead letters, ...).
    counters: Callable[[], dict[str, float]]
    models: Models
    # The worker's parts; None until the worker is built.
    serving: Callable[[], Serving] | None = None
    # -> {"reasons": [why the worker is degraded], "ready": bool, ...details}
    probe: Callable[[], Awaitable[dict[str, Any]]] | None = None
    producer: Producer | None = None
    boot_ts: float = field(default_factory=time.time)
    # -> the Prometheus exposition (stream.pipeline.metrics).
    metrics: Callable[[], bytes] = bytes
    # since_s -> this worker's recent numbers for /dashboard (stream.pipeline.metrics.LiveWindow).
    live: Callable[[float], dict[str, Any]] | None = None

    def worker(self) -> Serving:
        """The worker's parts, or 503 while it starts."""
        if self.serving is None:
            raise ApiError(503, "the worker is starting")
        return self.serving()
