"""The worker's HTTP API: the app made of the route modules, served by uvicorn on the
worker's own event loop.

Each route module is a function ``routes(ctx) -> APIRouter`` importing only
``stream.api.context`` (the context and ``ApiError``), ``schemas``, ``bodies`` and
``auth``:

    stream/api/health.py    /health (live / ready), /metrics
    stream/api/tenant.py    /v1/{tenant}/...: events, recommendations, similar items,
                            the catalogue (tenant key)
    stream/api/feedback.py  /v1/{tenant}/feedback and /stats
    stream/api/admin.py     /v1/admin/...: tenants, keys, models, experiments (admin token)
    stream/api/dashboard.py /dashboard and its data

A new module plugs in with one line in ``ROUTES`` below. The spec is at
``/openapi.json``, interactive docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from confluent_kafka import Producer
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from faust.contrib.asgi import AsgiService
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from state.connection import UNAVAILABLE
from stream.api import admin, dashboard, feedback, health, tenant
from stream.api.context import ApiError, WebContext
from stream.api.schemas import reasons, spec_components
from stream.config import Settings

log = logging.getLogger(f"streamrec.{__name__}")


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
    could hold a connection for ever. A request the HTTP parser refuses (a malformed
    header, say ``Content-Length: 5s4``) is answered 400 with the API's JSON error, not
    uvicorn's plain text."""
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

        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": msg}).encode()
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()

        def _expired(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(
                    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n"
                    b"content-length: 0\r\n\r\n"
                )
                self.transport.close()

    return HeaderDeadline


# Every route module, in the order /docs lists them.
ROUTES: tuple[Callable[[WebContext], APIRouter], ...] = (
    health.routes,
    tenant.routes,
    feedback.routes,
    admin.routes,
    dashboard.routes,
)


def create_api(ctx: WebContext) -> FastAPI:
    # FastAPIOffline: /docs served with the Swagger UI files from the wheel, not a CDN.
    api = FastAPIOffline(
        redoc_url=None,
        static_url="/docs-static",
        title="streamrec",
        version="1",
        description="Real-time session-based recommendations: post clicks, pull lists, "
        "manage the catalogue. Tenant routes take `Authorization: Bearer <tenant key>`; "
        'admin routes the admin token. Every error is `{"error": reason}` with a 4xx '
        "or 503 status; a bad body or parameter is a 400.",
    )
    api.state.ctx = ctx  # for the dependencies in stream.api.auth
    api.add_middleware(EncodedSlashes)
    for make in ROUTES:
        api.include_router(make(ctx))
    api.openapi = lambda: _spec(api)  # type: ignore[method-assign]

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    @api.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": reasons(exc.errors())}, status_code=400)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    # A route that met Redis away answers 503 itself; this catches the rest (a cluster
    # client's own errors, say), so an outage is never a 500.
    async def redis_away(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: Redis unavailable (%s)", request.method, request.url.path, exc)
        return JSONResponse({"error": "Redis unavailable; try again"}, status_code=503)

    for unavailable in UNAVAILABLE:
        api.add_exception_handler(unavailable, redis_away)

    return api


def _spec(api: FastAPI) -> dict[str, Any]:
    """FastAPI's spec, with the bodies routes read themselves among its components and
    without the 422 it lists for every route with parameters: a bad request is a 400
    here (``bad_request`` above), documented with the route's other errors; and with the
    bearer token optional where it is."""
    if api.openapi_schema is None:
        spec = get_openapi(
            title=api.title,
            version=api.version,
            description=api.description,
            routes=api.routes,
        )
        for operations in spec["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
                if "security" in operation and "admin" not in operation.get("tags", ()):
                    # Optional outside the admin API: an open tenant needs no key, and
                    # /health answers either way (see stream.api.auth).
                    operation["security"] = [{}, *operation["security"]]
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas.update(spec_components())
        api.openapi_schema = spec
    return api.openapi_schema


class WebService(AsgiService):
    """The API on the worker's loop through Faust's ASGI support (uvicorn; Faust keeps
    the process signals)."""

    driver_version = "FastAPI on uvicorn"
    server_shutdown_timeout = 4.0

    def __init__(self, ctx: WebContext, **kwargs: Any) -> None:
        self.ctx = ctx
        settings = ctx.settings
        super().__init__(
            create_api(ctx),
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
            self.ctx.settings.kafka.producer({"linger.ms": 2, "enable.idempotence": True})
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
