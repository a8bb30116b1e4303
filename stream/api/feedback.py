"""Feedback routes: ``POST /v1/{tenant}/feedback`` (explicit feedback into the topic) and
``GET /v1/{tenant}/stats`` (the counters per variant, as ``streamrec stats --json``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from state.connection import RedisError
from stream.api.auth import Tenant
from stream.api.bodies import produce_records, read_records
from stream.api.context import ApiError, WebContext
from stream.api.schemas import (
    MAX_POST_EVENTS,
    Accepted,
    Feedback,
    TenantStats,
    request_body,
    tenant_errors,
)
from stream.control.stats import tenant_stats
from stream.events import feedback_from_dict
from stream.timing import parse_duration


def routes(ctx: WebContext) -> APIRouter:
    router = APIRouter(prefix="/v1/{tenant}", tags=["feedback"])

    @router.post(
        "/feedback",
        status_code=202,
        summary="Post explicit feedback (one object or an array of up to 1,000)",
        response_model=Accepted,
        responses=tenant_errors(408, 413),
        openapi_extra=request_body(Feedback, many=MAX_POST_EVENTS),
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
        response_model=TenantStats,
        responses=tenant_errors(),
    )
    async def stats(
        tenant: Tenant, since: Annotated[str, Query(description="e.g. 1h, 30m, 7d")] = "1h"
    ) -> dict[str, Any]:
        try:
            since_s = parse_duration(since)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        redis = ctx.worker().redis
        try:
            return await tenant_stats(redis, tenant, since_s, ctx.settings.feedback_bucket_s)
        except (RedisError, OSError) as exc:
            raise ApiError(503, f"the counter store is unavailable: {exc}") from None

    return router
