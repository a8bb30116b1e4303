"""Feedback routes: ``POST /v1/{tenant}/feedback`` (explicit feedback into the topic) and
``GET /v1/{tenant}/stats`` (the counters per variant, as ``streamrec stats --json``).

Plugged into the API by ``stream.api.server.ROUTERS`` at import (``stream.app`` imports it).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from state.connection import RedisError
from stream.api.auth import Tenant
from stream.api.server import (
    ID_SCHEMA,
    MAX_POST_EVENTS,
    ROUTERS,
    ApiError,
    WebContext,
    json_request_body,
    produce_records,
    read_records,
    tenant_errors,
)
from stream.events import feedback_from_dict

FEEDBACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "session_id": ID_SCHEMA,
        "item_id": ID_SCHEMA,
        "type": {"type": "string", "enum": ["click", "add_to_cart", "purchase"]},
        "rec_id": {"type": "string", "description": "the recommendation it answers"},
        "ts": {"type": "number", "description": "unix seconds; default: now"},
        "tenant": {"type": "string", "description": "must match the URL's, if given"},
    },
    "required": ["session_id", "item_id", "type"],
}


def routes(ctx: WebContext) -> APIRouter:
    router = APIRouter(prefix="/v1/{tenant}", tags=["feedback"])

    @router.post(
        "/feedback",
        status_code=202,
        summary="Post explicit feedback (one object or an array of up to 1,000)",
        responses=tenant_errors(408, 413),
        openapi_extra=json_request_body(FEEDBACK_SCHEMA, many=MAX_POST_EVENTS),
    )
    async def post_feedback(tenant: Tenant, request: Request) -> dict[str, Any]:
        """Validated like clicks (400 with a reason, nothing sent), then produced to the
        ``feedback`` topic keyed by session; the worker counts it for the variant that
        served the recommendation (``rec_id``) or the session."""
        out = await read_records(
            request, tenant, feedback_from_dict, ("feedback", "feedback objects")
        )
        await produce_records(ctx, ctx.settings.feedback_topic, out, "feedback message")
        return {"accepted": len(out)}

    @router.get(
        "/stats",
        summary="Recommendations, hits, hit rate (Wilson 95 % interval) per variant",
        responses=tenant_errors(),
    )
    async def stats(
        tenant: Tenant, since: Annotated[str, Query(description="e.g. 1h, 30m, 7d")] = "1h"
    ) -> dict[str, Any]:
        from stream.control.stats import parse_since, tenant_stats

        try:
            since_s = parse_since(since)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        processor = ctx.backend()
        client = getattr(getattr(processor, "_tenants", None), "_client", None)
        if client is None:
            raise ApiError(503, "the worker is starting")
        try:
            return await tenant_stats(client, tenant, since_s, ctx.settings.feedback_bucket_s)
        except (RedisError, OSError) as exc:
            raise ApiError(503, f"the counter store is unavailable: {exc}") from None

    return router


ROUTERS.append(routes)
