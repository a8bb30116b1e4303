"""``/dashboard``: a page served by the worker (no extra service, nothing fetched from
elsewhere; the page, its script and style are package files under ``stream/api/static``).

It shows this worker's events in and recommendations out per second, latency p50/p99,
consumer lag per partition and dead letters by reason (``stream.pipeline.metrics.LiveWindow``);
every tenant with mode, policy and version in service, its version timeline
(promotions and rollbacks from the registry's history), online hit rate per variant
over time, an experiment's arms with what each served and its hit rate; how many
tenants are on / freeze / off; and a box ranking typed item ids through
``POST /v1/{tenant}/recommendations`` (which takes the dashboard's cookie too).

Both need the admin token (``stream.api.auth``): ``/dashboard?token=...`` trades it
for a cookie. ``/dashboard/data.json`` is what the page draws: the same numbers as ``streamrec
stats`` / ``GET /v1/{tenant}/stats`` and ``streamrec experiment status``, computed by
the same functions. Plugged into the API by ``stream.api.server.ROUTERS`` at import.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel

from models.errors import StreamrecError
from models.policy_file import all_policies
from models.registry import Registry
from state.connection import RedisError
from state.feedback import read_buckets, totals
from stream.api.auth import (
    VIEW_COOKIE,
    VIEW_COOKIE_MAX_AGE_S,
    Credentials,
    view_access,
    view_cookie,
)
from stream.api.server import ROUTERS, ApiError, WebContext, error_responses
from stream.control.policies import experiment_status
from stream.control.stats import stats_json

# Tenants drawn (most recommendations in the window first); the rest are listed.
MAX_CHARTED = 12
POINTS = 30  # points per chart line
HISTORY_SHOWN = 50  # a tenant's latest promotions and rollbacks
# The page's files, read once (package data: shipped in the wheel).
STATIC = {
    name: (files("stream.api") / "static" / name).read_bytes()
    for name in ("dashboard.html", "dashboard.js", "dashboard.css")
}


class HistoryEntry(BaseModel):
    action: str  # promote or rollback
    version: str
    previous: str | None = None
    ts: float | None = None  # unix seconds (None in an entry that does not record it)


class PartitionLag(BaseModel):
    topic: str
    partition: int
    lag: int  # events waiting


class LiveNumbers(BaseModel):
    events_per_s: float
    recs_per_s: float
    dead_per_s: float
    p50_ms: float | None  # None: no recommendation in that time
    p99_ms: float | None


class LivePoint(LiveNumbers):
    t: float  # unix seconds


class Live(BaseModel):
    """The worker serving the page: its own numbers, not the deployment's."""

    step_s: float
    started: float
    points: list[LivePoint]
    last_minute: LiveNumbers
    partitions: list[PartitionLag] | None  # None: no consumer reported its partitions
    dead_letters: dict[str, int]  # by the reason's kind, since the worker started


class TenantView(BaseModel):
    tenant: str
    mode: str
    policy: str
    version: str | None
    variants: dict[str, dict[str, Any]]  # stream.control.stats.variant_json
    series: dict[str, list[tuple[float, float, int]]]  # per variant: [t, hit rate, recs]
    history: list[HistoryEntry] | None  # None: not read (a tenant not charted)
    experiment: dict[str, Any] | None = None  # stream.control.policies.experiment_status


class DashboardData(BaseModel):
    generated: float
    since_s: float
    modes: dict[str, int]
    tenants: list[TenantView]
    live: Live | None  # None: a process without the worker's counters


def _registry_view(registry: Registry) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    modes = registry.tenant_modes()
    versions = {t: registry.current_version(t) for t in modes}
    return modes, versions, all_policies(registry)


def _histories(registry: Registry, tenants: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each tenant's latest promotions and rollbacks, oldest first."""
    out = {}
    for tenant in tenants:
        steps = [
            {
                "action": e["action"],
                "version": e["version"],
                "previous": e.get("previous") if isinstance(e.get("previous"), str) else None,
                "ts": float(e["ts"]) if isinstance(e.get("ts"), int | float) else None,
            }
            for e in registry.history_entries(tenant)
            if e.get("action") in ("promote", "rollback") and isinstance(e.get("version"), str)
        ]
        out[tenant] = steps[-HISTORY_SHOWN:]
    return out


async def dashboard_data(ctx: WebContext, since_s: float, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    processor = ctx.backend()
    client = getattr(getattr(processor, "_tenants", None), "_client", None)
    if client is None:
        raise ApiError(503, "the worker is starting")
    registry = Registry(ctx.settings.registry_dir)
    try:
        modes, versions, policies = await asyncio.to_thread(_registry_view, registry)
    except (OSError, StreamrecError) as exc:
        raise ApiError(503, f"the registry cannot be read: {exc}") from None
    bucket_s = ctx.settings.feedback_bucket_s
    directory = getattr(processor, "policies", None)
    bandit = directory.bandit_shares_now() if directory is not None else {}
    tenants = []
    for tenant in sorted(modes):
        try:
            buckets = await read_buckets(client, tenant, now - since_s, now, bucket_s)
        except (RedisError, OSError) as exc:
            raise ApiError(503, f"the counter store is unavailable: {exc}") from None
        stats = stats_json(tenant, totals(buckets), since_s)
        policy = policies.get(tenant)
        entry: dict[str, Any] = {
            "tenant": tenant,
            "mode": modes[tenant],
            "policy": policy["policy"] if policy else "fixed",
            "version": versions.get(tenant),
            "variants": stats["variants"],
            "series": _series(buckets, now - since_s, now, bucket_s),
            "history": None,
        }
        if policy is not None:
            since = float(policy.get("started", now - since_s))
            arms = [b for b in buckets if b[0] >= since - bucket_s]
            if since < now - since_s:
                arms = await read_buckets(client, tenant, since, now, bucket_s)
            entry["experiment"] = experiment_status(
                tenant, policy, arms, bandit.get(tenant), versions.get(tenant)
            )
        tenants.append(entry)
    tenants.sort(key=lambda t: -sum(v["recommendations"] for v in t["variants"].values()))
    for t in tenants[MAX_CHARTED:]:
        t["series"] = {}
    charted = [t["tenant"] for t in tenants[:MAX_CHARTED]]
    try:
        histories = await asyncio.to_thread(_histories, registry, charted)
    except (OSError, StreamrecError) as exc:
        raise ApiError(503, f"the registry cannot be read: {exc}") from None
    for t in tenants[:MAX_CHARTED]:
        t["history"] = histories[t["tenant"]]
    return {
        "generated": now,
        "since_s": since_s,
        "modes": {m: Counter(modes.values()).get(m, 0) for m in ("on", "freeze", "off")},
        "tenants": tenants,
        "live": ctx.live(since_s) if ctx.live is not None else None,
    }


def _series(
    buckets: list, start: float, end: float, bucket_s: float
) -> dict[str, list[list[float]]]:
    """Hit rate per variant: ``[[t, rate, recs]]``, one point per bucket with traffic,
    or per slice when there are more than ``POINTS``; the slices span the buckets with
    traffic, not the whole window (recent traffic in a long window is not one dot), and
    each point sits at the middle of its buckets."""
    busy = [ts for ts, per in buckets if any(c.recommendations for c in per.values())]
    if not busy:
        return {}
    first = max(start, min(busy))
    width = max(float(bucket_s), (end - first) / POINTS)
    slices: dict[str, dict[int, list[float]]] = {}
    for ts, per in buckets:
        k = min(POINTS - 1, int((ts - first) // width))
        middle = min(end, ts + bucket_s / 2)
        for variant, c in per.items():
            if not c.recommendations:
                continue
            acc = slices.setdefault(variant, {}).setdefault(k, [0, 0, 0.0, 0])
            acc[0] += c.hits
            acc[1] += c.recommendations
            acc[2] += middle
            acc[3] += 1
    return {
        variant: [
            [round(t / m, 1), round(h / n, 5), n] for _, (h, n, t, m) in sorted(points.items())
        ]
        for variant, points in sorted(slices.items())
    }


def routes(ctx: WebContext) -> APIRouter:
    router = APIRouter(tags=["dashboard"])

    @router.get(
        "/dashboard",
        response_class=HTMLResponse,
        summary="The built-in dashboard (the admin token)",
        responses={303: {"description": "the token traded for a cookie"}}
        | error_responses(401, 403),
    )
    async def page(
        request: Request,
        credentials: Credentials = None,
        token: Annotated[
            str | None,
            Query(description="the admin token, traded for a cookie (then left out of the URL)"),
        ] = None,
    ) -> Response:
        """Open ``/dashboard?token=<admin token>`` once: the answer sets an HttpOnly,
        SameSite=Strict cookie and redirects to the same address without the token, so it
        stays out of the browser's history and of proxies' logs."""
        if token is not None:
            admin = ctx.settings.admin_token
            if not (admin and hmac.compare_digest(token.encode(), admin.encode())):
                raise ApiError(401, "the token is not the admin token")
            rest = request.url.remove_query_params("token")
            location = rest.path + (f"?{rest.query}" if rest.query else "")
            answer = RedirectResponse(location, status_code=303, headers=PRIVATE)
            answer.set_cookie(
                VIEW_COOKIE,
                view_cookie(admin),
                max_age=VIEW_COOKIE_MAX_AGE_S,
                path="/",
                secure=request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
            return answer
        await view_access(request, credentials)
        return HTMLResponse(STATIC["dashboard.html"], headers=PRIVATE)

    # The script and style name no tenant: served to anyone, like /docs' files.
    @router.get("/dashboard/dashboard.js", include_in_schema=False)
    async def script() -> Response:
        return Response(STATIC["dashboard.js"], media_type="text/javascript")

    @router.get("/dashboard/dashboard.css", include_in_schema=False)
    async def style() -> Response:
        return Response(STATIC["dashboard.css"], media_type="text/css")

    @router.get(
        "/dashboard/data.json",
        summary="What the dashboard draws (the admin token)",
        responses=error_responses(400, 401, 403, 503),
        dependencies=[Depends(view_access)],
    )
    async def data(
        since: Annotated[
            float, Query(gt=0, le=30 * 86400, description="seconds of hit rates and live numbers")
        ] = 3600,
    ) -> DashboardData:
        """Every tenant's numbers: the admin token (a bearer header, or the cookie
        ``/dashboard?token=...`` sets), unless ``STREAMREC_PUBLIC_DASHBOARD`` is on.
        ``live`` is the answering worker's own (at most its last hour); hit rates
        and experiments count every worker's traffic."""
        return DashboardData.model_validate(await dashboard_data(ctx, since))

    return router


# Pages and answers naming every tenant are kept out of caches; no address is passed on.
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


ROUTERS.append(routes)
