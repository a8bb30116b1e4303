"""The worker's HTTP API (aiohttp), for apps that would rather not speak Kafka.

    GET  /health                                          liveness + counters (JSON)
    GET  /metrics                                         Prometheus text format
    GET  /v1/{tenant}/sessions/{session_id}/recommendations   latest list for a session
    POST /v1/{tenant}/events                              one click or a JSON array of clicks

Events posted here are validated first (a bad one gets 400 and a reason, nothing is
sent) and then produced to the ``clicks`` topic like any app's, keyed by session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import Producer
from mode import Service
from redis.exceptions import RedisError

from models.errors import StreamrecError
from models.names import ID_RULE, TENANT_RULE, is_id, is_tenant
from stream.config import Settings
from stream.events import MAX_EVENT_BYTES, InvalidEvent, event_from_dict

log = logging.getLogger("streamrec.web")
MAX_POST_EVENTS = 1000
# A body that has not arrived within this many seconds gets 408: a stalled upload must
# not hold a connection open for ever.
BODY_TIMEOUT_S = 10.0


def prometheus_text(counters: dict[str, float], gauges: dict[str, float]) -> str:
    lines = []
    for kind, values in (("counter", counters), ("gauge", gauges)):
        for name, value in values.items():
            lines += [f"# TYPE streamrec_{name} {kind}", f"streamrec_{name} {value}"]
    return "\n".join(lines) + "\n"


class WebService(Service):
    def __init__(
        self,
        settings: Settings,
        stats: Any,
        models: Any,
        pull: Callable[[str, str], Awaitable[bytes | None]],
        probe: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._stats = stats
        self._models = models
        self._pull = pull  # (tenant, session_id) -> the session's latest record
        # -> {"reasons": [why the worker is degraded], "ready": bool, ...details}
        self._probe = probe
        self._runner: web.AppRunner | None = None
        self._producer: Producer | None = None
        self._boot_ts = time.time()

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_POST_EVENTS * MAX_EVENT_BYTES)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get(
            "/v1/{tenant}/sessions/{session_id}/recommendations", self.recommendations
        )
        app.router.add_post("/v1/{tenant}/events", self.post_events)
        return app

    async def on_start(self) -> None:
        # The same partitioner as ClickProducer (stream/kafka_config.py): a session's
        # clicks land on one partition whether they came over HTTP or from the helper.
        self._producer = Producer(
            self._settings.kafka.producer({"linger.ms": 2, "enable.idempotence": True})
        )
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, "0.0.0.0", self._settings.web_port).start()
        except OSError as exc:
            # A second worker on the same host: serve the stream anyway, just not HTTP.
            log.error(
                "HTTP API disabled: port %d is busy (%s); set STREAMREC_WEB_PORT to a "
                "free port or 0",
                self._settings.web_port,
                exc.strerror,
            )
            return
        log.info("HTTP API on port %d", self._settings.web_port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 5)

    def counters(self) -> dict[str, float]:
        s = self._stats
        return {
            "events_total": s.events_in,
            "recommendations_total": s.recommendations,
            "dead_letters_total": s.dead_letters,
            "redelivered_total": s.duplicates,
            "switched_off_total": s.suppressed,
            "batches_total": s.batches,
            "model_swaps_total": self._models.swaps,
        }

    async def health(self, request: web.Request) -> web.Response:
        """``ok``, or ``degraded`` with the reasons (Redis unreachable, consumption stalled
        with events waiting, a tenant's version in service not loaded); 503 when
        degraded, so a load balancer or orchestrator can act on it."""
        checks: dict[str, Any] = {"reasons": [], "ready": True}
        if self._probe is not None:
            checks = await self._probe()
        reasons = checks.get("reasons", [])
        return web.json_response(
            {
                "status": "degraded" if reasons else "ok",
                **checks,
                "uptime_s": round(time.time() - self._boot_ts, 1),
                **self.counters(),
                "models": self._models.loaded(),
            },
            status=503 if reasons else 200,
            dumps=lambda o: orjson.dumps(o).decode(),
        )

    async def metrics(self, request: web.Request) -> web.Response:
        gauges = {"models_loaded": len(self._models.loaded())}
        return web.Response(
            text=prometheus_text(self.counters(), gauges),
            content_type="text/plain",
            charset="utf-8",
        )

    async def recommendations(self, request: web.Request) -> web.Response:
        tenant, session_id = request.match_info["tenant"], request.match_info["session_id"]
        if not is_tenant(tenant):
            return _error(400, f"tenant {TENANT_RULE}")
        if not is_id(session_id):
            return _error(400, f"session id {ID_RULE}")
        try:
            payload = await self._pull(tenant, session_id)
        except (RedisError, OSError) as exc:
            return _error(503, f"the session store is unavailable: {exc}")
        except StreamrecError as exc:  # the tenant's model cannot be read just now
            return _error(503, str(exc))
        if payload is None:
            return _error(
                404, f"no recommendations for session {session_id!r} of tenant {tenant!r}"
            )
        return web.Response(body=payload, content_type="application/json")

    async def post_events(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if not is_tenant(tenant):
            return _error(400, f"tenant {TENANT_RULE}")
        try:
            raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT_S)
        except TimeoutError:
            return _error(408, f"the body did not arrive within {BODY_TIMEOUT_S:.0f} s")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body is not valid JSON: {exc}")
        items = body if isinstance(body, list) else [body]
        if len(items) > MAX_POST_EVENTS:
            return _error(413, f"at most {MAX_POST_EVENTS} events per request")
        now = time.time()
        events = []
        for n, data in enumerate(items):
            # The same limit as a Kafka message (the worker dead-letters larger ones).
            if len(raw) > MAX_EVENT_BYTES and len(orjson.dumps(data)) > MAX_EVENT_BYTES:
                return _error(413, f"event {n} is larger than {MAX_EVENT_BYTES} bytes as JSON")
            if isinstance(data, dict) and data.setdefault("tenant", tenant) != tenant:
                return _error(400, f"event {n}: tenant {data['tenant']!r} differs from the URL's")
            try:
                events.append(event_from_dict(data, default_ts=now))
            except InvalidEvent as exc:
                return _error(400, f"event {n}: {exc.reason}")
        assert self._producer is not None
        for event in events:
            self._producer.produce(self._settings.clicks_topic, event.to_json(), event.session_id)
        remaining = await asyncio.to_thread(self._producer.flush, 10)
        if remaining:
            return _error(503, f"{remaining} event(s) not acknowledged by the broker; retry")
        return web.json_response({"accepted": len(events)}, status=202)


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
