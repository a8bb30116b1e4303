"""``/health`` (live, ready) and ``/metrics``; and what /health says about tenants: each
one that is disabled (a damaged control file) or degraded (its version in service
refused), with the file and the reason. A tenant's trouble is its own: it does not make
the worker degraded or not ready."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from stream.api.auth import view_access, view_allowed
from stream.api.context import Models, Tenants, WebContext
from stream.api.schemas import Error, Health, error_responses


def tenant_health(directory: Tenants | None, models: Models) -> dict[str, dict[str, Any]]:
    """Tenant -> ``{"status": "disabled" | "degraded", "file", "reason", ...}``, only for
    tenants with a problem. ``directory``: the worker's tenant directory (None while it
    starts); ``models``: its model cache."""
    out: dict[str, dict[str, Any]] = dict(models.tenant_problems())
    if directory is not None:
        for tenant, exc in directory.disabled_tenants().items():
            out[tenant] = {"status": "disabled", "file": str(exc.path), "reason": exc.reason}
    return dict(sorted(out.items()))


def routes(ctx: WebContext) -> APIRouter:
    router = APIRouter(tags=["health"])

    async def checks() -> dict[str, Any]:
        if ctx.probe is None:
            return {"reasons": [], "ready": True}
        return await ctx.probe()

    @router.get(
        "/health",
        summary="Health; with the admin token, reasons and counters",
        response_model=Health,
        responses={503: {"description": "degraded, with the reasons", "model": Health}},
    )
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
                "tenants": tenant_health(ctx.worker().tenants if ctx.serving else None, ctx.models),
            }
            if detailed
            else status
        )
        return JSONResponse(body, status_code=503 if reasons else 200)

    @router.get(
        "/health/live",
        summary="Liveness: the worker's event loop answers",
        response_model=Health,
    )
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @router.get(
        "/health/ready",
        summary="Readiness: Redis answers, partitions assigned, models in service loaded",
        response_model=Health,
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
            answer = Error(error=error, **(report if detailed else {}))
            return JSONResponse(answer.model_dump(), status_code=503)
        return JSONResponse({"status": "ready", **(report if detailed else {})})

    @router.get(
        "/metrics",
        summary="Prometheus text (the admin token)",
        response_class=PlainTextResponse,
        dependencies=[Depends(view_access)],
        responses=error_responses(401, 403),
    )
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(ctx.metrics(), media_type="text/plain; version=0.0.4")

    return router
