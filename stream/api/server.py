"""The worker's HTTP API: FastAPI served by uvicorn on the worker's own event loop.

The routes live by role, each module a function ``routes(ctx) -> APIRouter``:

    stream/api/server.py         health (live / ready), metrics, the app and its server
    stream/api/tenant.py  /v1/{tenant}/...: events, recommendations, similar items,
                          the catalogue (tenant key)
    stream/api/admin.py   /v1/admin/...: tenants, keys, models (admin token only)

A new module plugs in with one line in ``ROUTERS`` below. The spec is at
``/openapi.json``, interactive docs at ``/docs``.

Events posted here are validated first (a bad one gets 400 and a reason, nothing is
sent) and then produced to the ``clicks`` topic like any app's, keyed by session.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote

import orjson
from confluent_kafka import KafkaException, Producer
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from faust.contrib.asgi import AsgiService
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from models.errors import StreamrecError
from models.names import MAX_ID_CHARS
from stream.api.health import tenant_health
from stream.config import Settings
from stream.events import MAX_EVENT_BYTES, InvalidEvent

log = logging.getLogger(f"streamrec.{__name__}")
MAX_POST_EVENTS = 1000
MAX_BODY_BYTES = MAX_POST_EVENTS * MAX_EVENT_BYTES
# A body that has not arrived within this many seconds gets 408: a stalled upload must
# not hold a connection open for ever.
BODY_TIMEOUT_S = 10.0
# The JSON schema of a session, item or event id (models.names.is_id checks the rest).
ID_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}


class ApiError(StreamrecError):
    """An answer other than success: its status and the reason given to the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route (all ``{"error": reason}``)."""
    text = {
        400: "bad input, with the reason",
        401: "no valid key",
        403: "a key that does not reach this tenant",
        404: "unknown tenant, session or item",
        408: "the body did not arrive in time",
        409: "a tenant name too like an existing tenant's",
        413: "body or event over the limit",
        503: "Redis, the broker or the model unavailable, with the reason",
    }
    schema = {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }
    return {
        c: {"description": text[c], "content": {"application/json": {"schema": schema}}}
        for c in codes
    }


def tenant_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``error_responses`` of a tenant's route: besides ``codes``, what reaching a tenant
    may answer (no key, a key for another tenant, an unknown tenant, or with auto-creation
    on a refused name)."""
    return error_responses(*sorted({400, 401, 403, 404, 409, 503, *codes}))


def json_request_body(schema: dict[str, Any], many: int = 0) -> dict[str, Any]:
    """``openapi_extra`` for a route reading a JSON body it parses itself: ``schema``,
    or with ``many`` either one such object or an array of up to ``many``."""
    if many:
        schema = {"oneOf": [schema, {"type": "array", "items": schema, "maxItems": many}]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, at most ``limit`` bytes (else 413), arrived within
    ``BODY_TIMEOUT_S`` (else 408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0

    async def receive() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"body over {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {BODY_TIMEOUT_S:.0f} s") from None
    return b"".join(chunks)


def json_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None


class Record(Protocol):
    """What the POST routes produce: a click or a feedback message."""

    @property
    def session_id(self) -> str: ...

    def to_json(self) -> bytes: ...


R = TypeVar("R", bound=Record)
R_co = TypeVar("R_co", bound=Record, covariant=True)


class Parser(Protocol[R_co]):
    """``stream.events.event_from_dict`` or ``feedback_from_dict``."""

    def __call__(self, data: Any, *, default_ts: float | None = None) -> R_co: ...


async def read_records(
    request: Request,
    tenant: str,
    parse: Parser[R],
    what: tuple[str, str],
) -> list[R]:
    """The body's records (one JSON object or an array of up to ``MAX_POST_EVENTS``),
    each parsed by ``parse``. ``what`` names them in the reasons
    (singular, plural). Any bad one is a 4xx naming it, and then none is taken."""
    return parse_records(await read_body(request), tenant, parse, what, time.time())


def parse_records(
    raw: bytes, tenant: str, parse: Parser[R], what: tuple[str, str], now: float
) -> list[R]:
    """The records of a body (see :func:`read_records`); :class:`ApiError` if any is bad."""
    one, many = what
    body = json_body(raw)
    items = body if isinstance(body, list) else [body]
    if len(items) > MAX_POST_EVENTS:
        raise ApiError(413, f"at most {MAX_POST_EVENTS} {many} per request")
    records = []
    for n, data in enumerate(items):
        # The same limit as a Kafka message (the worker dead-letters larger ones): a lone
        # object is measured as sent, like a message value; one of an array, as JSON.
        if len(raw) > MAX_EVENT_BYTES:
            size = len(raw) if items is not body else _json_size(data)
            if size is None:
                raise ApiError(400, f"{one} {n} is nested too deeply")
            if size > MAX_EVENT_BYTES:
                raise ApiError(413, f"{one} {n} is larger than {MAX_EVENT_BYTES} bytes as JSON")
        if isinstance(data, dict):
            given = data.setdefault("tenant", tenant)
            if given != tenant:
                # Not repr() of any value: a deeply nested one exhausts the stack.
                named = repr(given) if type(given) is str else f"of type {type(given).__name__}"
                raise ApiError(400, f"{one} {n}: tenant {named} differs from the URL's")
        try:
            records.append(parse(data, default_ts=now))
        except InvalidEvent as exc:
            raise ApiError(400, f"{one} {n}: {exc.reason}") from None
    return records


def _json_size(data: Any) -> int | None:
    """Bytes of ``data`` as JSON; None when nested deeper than the encoder writes."""
    try:
        return len(orjson.dumps(data))
    except TypeError:  # orjson.JSONEncodeError
        return None


async def produce_records(ctx: WebContext, topic: str, records: list[R], what: str) -> None:
    """Every record to ``topic`` keyed by session and acknowledged by the broker, else a
    503 telling the client to retry."""
    producer = ctx.producer
    if producer is None:
        raise ApiError(503, "the worker is starting")
    # flush() counts undelivered records only: one the broker refused (an unknown topic,
    # a timeout) is reported here, and must not be answered 202.
    refused: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            refused.append(str(err))

    try:
        for record in records:
            producer.produce(topic, record.to_json(), record.session_id, on_delivery=delivered)
    except (BufferError, KafkaException) as exc:
        raise ApiError(503, f"the broker is not taking {what}s just now ({exc}); retry") from None
    remaining = await asyncio.to_thread(producer.flush, 10)
    if remaining:
        raise ApiError(503, f"{remaining} {what}(s) not acknowledged by the broker; retry")
    if refused:
        raise ApiError(503, f"{len(refused)} {what}(s) refused by the broker ({refused[0]}); retry")


def prometheus_text(counters: dict[str, float], gauges: dict[str, float]) -> str:
    lines = []
    for kind, values in (("counter", counters), ("gauge", gauges)):
        for name, value in values.items():
            lines += [f"# TYPE streamrec_{name} {kind}", f"streamrec_{name} {value}"]
    return "\n".join(lines) + "\n"


@dataclass
class WebContext:
    """What the routes reach: settings, the worker's counters and models, and the
    worker's clients (built when it starts, never at import time)."""

    settings: Settings
    stats: Any
    models: Any  # stream.pipeline.model_cache.ModelCache
    # The worker's batch processor (ranking, session store, tenant directory).
    backend: Callable[[], Any]
    # -> {"reasons": [why the worker is degraded], "ready": bool, ...details}
    probe: Callable[[], Awaitable[dict[str, Any]]] | None = None
    # (tenant, session_id) -> the session's latest record (kept for older callers).
    pull: Callable[[str, str], Awaitable[bytes | None]] | None = None
    producer: Producer | None = None
    boot_ts: float = field(default_factory=time.time)
    # -> the Prometheus exposition (stream.pipeline.metrics); None: the plain counters below.
    metrics: Callable[[], bytes] | None = None
    # since_s -> this worker's recent numbers for /dashboard (stream.pipeline.metrics.LiveWindow).
    live: Callable[[float], dict[str, Any]] | None = None

    def counters(self) -> dict[str, float]:
        s = self.stats
        return {
            "events_total": s.events_in,
            "recommendations_total": s.recommendations,
            "dead_letters_total": s.dead_letters,
            "redelivered_total": s.duplicates,
            "switched_off_total": s.suppressed,
            "batches_total": s.batches,
            "model_swaps_total": self.models.swaps,
        }


def health_routes(ctx: WebContext) -> APIRouter:
    from stream.api.auth import view_access, view_allowed

    router = APIRouter(tags=["health"])

    async def checks() -> dict[str, Any]:
        if ctx.probe is None:
            return {"reasons": [], "ready": True}
        return await ctx.probe()

    @router.get("/health", summary="Health; with the admin token, reasons and counters")
    async def health(detailed: bool = Depends(view_allowed)) -> JSONResponse:
        """``ok``, or ``degraded`` (503). With the admin token (or a public dashboard)
        also the reasons (Redis unreachable, consumption stalled with events waiting, a
        tenant's version in service not loaded), the models and the counters: they name
        tenants."""
        report = await checks()
        reasons = report.get("reasons", [])
        status = {"status": "degraded" if reasons else "ok"}
        body = (
            {
                **status,
                **report,
                "uptime_s": round(time.time() - ctx.boot_ts, 1),
                **ctx.counters(),
                "models": ctx.models.loaded(),
                "tenants": tenant_health(getattr(ctx.backend(), "tenants", None), ctx.models),
            }
            if detailed
            else status
        )
        return JSONResponse(body, status_code=503 if reasons else 200)

    @router.get("/health/live", summary="Liveness: the worker's event loop answers")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @router.get(
        "/health/ready",
        summary="Readiness: Redis answers, partitions assigned, models in service loaded",
        responses=error_responses(503),
    )
    async def ready(detailed: bool = Depends(view_allowed)) -> JSONResponse:
        """Open to all; the reasons (which may name tenants) with the admin token only."""
        report = await checks()
        not_ready = report.get("not_ready", report.get("reasons", []))
        if not_ready:
            error = (
                "; ".join(not_ready)
                if detailed
                else f"not ready: {len(not_ready)} reason(s), listed with the admin token"
            )
            return JSONResponse({"error": error, **(report if detailed else {})}, status_code=503)
        return JSONResponse({"status": "ready", **(report if detailed else {})})

    @router.get(
        "/metrics",
        summary="Prometheus text (the admin token)",
        response_class=PlainTextResponse,
        dependencies=[Depends(view_access)],
        responses=error_responses(401, 403),
    )
    async def metrics() -> PlainTextResponse:
        if ctx.metrics is not None:
            return PlainTextResponse(ctx.metrics(), media_type="text/plain; version=0.0.4")
        gauges = {"models_loaded": len(ctx.models.loaded())}
        return PlainTextResponse(prometheus_text(ctx.counters(), gauges))

    return router


# -- ids holding a slash ----------------------------------------------------------------
# The server decodes the path before routing, so ``a%2Fb`` would arrive as two segments.
# Routes see each segment decoded with any ``/`` or ``%`` it decoded to written back as
# ``%2F`` / ``%25``; the ``segment`` convertor of an id parameter undoes exactly that.
_WRITTEN_BACK = re.compile("%2F|%25")


def routing_path(raw_path: bytes) -> str:
    """The path routes match: each segment of ``raw_path`` percent-decoded, a slash or
    percent sign inside it escaped again."""
    return "/".join(
        unquote(segment).replace("%", "%25").replace("/", "%2F")
        for segment in raw_path.decode("ascii", "replace").split("/")
    )


class SegmentConvertor(Convertor[str]):
    """A path parameter that may hold ``/`` (sent as ``%2F``): session and item ids."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return _WRITTEN_BACK.sub(lambda m: "/" if m[0] == "%2F" else "%", value)

    def to_string(self, value: str) -> str:
        return value.replace("%", "%25").replace("/", "%2F")


register_url_convertor("segment", SegmentConvertor())


class EncodedSlashes:
    """ASGI middleware: routes match ``routing_path`` of the raw path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%" in raw:
            scope = {**scope, "path": routing_path(raw)}
        await self.app(scope, receive, send)


# -- the header deadline -----------------------------------------------------------------
def header_deadline(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing (with a 408) a connection whose request line and
    headers are not complete ``timeout_s`` after it opened, or after the first byte of
    a later request on it. uvicorn's own timeouts start only after a response, and
    every byte received restarts them, so a client sending a header a byte at a time
    could hold a connection for ever."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[valid-type, misc]
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's head is complete
                self._disarm()
            elif self._head_timer is None and (cycle is None or cycle.response_complete):
                self._arm()  # the start of a later request's head

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n"
                    b"content-length: 0\r\n\r\n"
                )
                self.transport.close()

    return HeaderDeadline


def _routers() -> list[Callable[[WebContext], APIRouter]]:
    """Every route module; add yours here (one line)."""
    from stream.api import admin, tenant

    return [health_routes, tenant.routes, admin.routes]


ROUTERS: list[Callable[[WebContext], APIRouter]] = []  # extra modules, appended at import


def create_api(ctx: WebContext) -> FastAPI:
    # FastAPIOffline: /docs served with the Swagger UI files from the wheel, not a CDN.
    api = FastAPIOffline(
        redoc_url=None,
        static_url="/docs-static",
        title="streamrec",
        version="1",
        description="Real-time session-based recommendations: post clicks, pull lists, "
        "manage the catalogue. Tenant routes take `Authorization: Bearer <tenant key>`; "
        "admin routes the admin token.",
    )
    api.state.ctx = ctx  # for the dependencies in stream.api.auth
    api.add_middleware(EncodedSlashes)
    for make in [*_routers(), *ROUTERS]:
        api.include_router(make(ctx))

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    @api.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return JSONResponse({"error": "; ".join(reasons)}, status_code=400)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    return api


class WebService(AsgiService):
    """The API on the worker's loop through Faust's ASGI support (uvicorn; Faust keeps
    the process signals)."""

    driver_version = "FastAPI on uvicorn"
    server_shutdown_timeout = 4.0

    def __init__(
        self,
        settings: Settings,
        stats: Any,
        models: Any,
        pull: Callable[[str, str], Awaitable[bytes | None]] | None = None,
        probe: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        backend: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._settings = settings
        self.ctx = WebContext(
            settings, stats, models, backend or (lambda: None), probe=probe, pull=pull
        )
        super().__init__(
            create_api(self.ctx),
            host=settings.web_host,
            port=settings.web_port,
            uvicorn_options=self.uvicorn_options_for(settings),
            **kwargs,
        )

    @staticmethod
    def uvicorn_options_for(settings: Settings) -> dict[str, Any]:
        return {
            "access_log": False,  # request lines are never logged
            "lifespan": "off",
            "timeout_graceful_shutdown": 2,
            "http": header_deadline(settings.web_header_timeout_s),
        }

    async def on_start(self) -> None:
        # The same partitioner as ClickProducer (stream/kafka/config.py): a session's
        # clicks land on one partition whether they came over HTTP or from the helper.
        self.ctx.producer = Producer(
            self._settings.kafka.producer({"linger.ms": 2, "enable.idempotence": True})
        )
        try:
            # Bound here, not by uvicorn, which exits the process on a busy port.
            sock = socket.create_server((self.host, self.port))
        except OSError as exc:
            # A second worker on the same host: serve the stream anyway, just not HTTP.
            log.error(
                "HTTP API disabled: cannot listen on %s:%d (%s); set STREAMREC_WEB_PORT to a "
                "free port or 0",
                self.host,
                self.port,
                exc.strerror,
            )
            return
        self._server = self._create_server()
        self._serve_fut = self.add_future(self._server.serve(sockets=[sock]))
        log.info("HTTP API on %s:%d (docs at /docs)", self.host, self.port)

    async def on_stop(self) -> None:
        await super().on_stop()
        if self.ctx.producer is not None:
            await asyncio.to_thread(self.ctx.producer.flush, 5)
