"""Admin routes, ``/v1/admin/...`` (the admin token only; not served without one):
tenants (create, mode, serving rules), tenant keys (create, revoke), models (list,
promote, rollback), experiments and bandits (start, status, stop). The same operations
as ``streamrec tenant|models|experiment|bandit``, on the same durable store (the
registry) with Redis as its cache."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request

from models.errors import StreamrecError
from models.registry import (
    MODES,
    NothingToRollBack,
    Registry,
    TenantNameRefused,
    UnknownVersionError,
)
from models.rules import ServingRules
from state.connection import RedisError
from stream.api.auth import TenantName, admin_access
from stream.api.server import (
    ApiError,
    WebContext,
    error_responses,
    json_body,
    json_request_body,
    read_body,
)
from stream.control import experiments
from stream.control.tenants import TenantControl, UnknownTenantError

ADMIN_ERRORS = error_responses(400, 401, 403, 404, 503)


def routes(ctx: WebContext) -> APIRouter:
    router = APIRouter(
        prefix="/v1/admin",
        tags=["admin"],
        dependencies=[Depends(admin_access)],
        responses=ADMIN_ERRORS,
    )
    if not ctx.settings.admin_token:
        return APIRouter()  # off: no admin token configured
    registry = Registry(ctx.settings.registry_dir)
    control = TenantControl(ctx.settings)

    async def run(fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except NothingToRollBack as exc:  # the request is fine; the tenant's state is not
            raise ApiError(409, str(exc)) from None
        except (UnknownTenantError, UnknownVersionError) as exc:
            raise ApiError(404, str(exc)) from None
        except TenantNameRefused as exc:
            raise ApiError(409 if exc.refusal.conflict else 400, str(exc)) from None
        except StreamrecError as exc:
            raise ApiError(400, str(exc)) from None
        except (OSError, RedisError) as exc:
            raise ApiError(503, f"the registry or Redis is unavailable: {exc}") from None

    @router.get("/tenants", summary="Every tenant with its mode and model in service")
    async def list_tenants() -> dict[str, Any]:
        modes = await run(registry.tenant_modes)
        return {
            "tenants": [
                {"tenant": t, "mode": m, "model_version": registry.current_version(t)}
                for t, m in sorted(modes.items())
            ]
        }

    @router.put(
        "/tenants/{tenant}",
        status_code=201,
        summary="Create a tenant",
        responses=error_responses(409),
    )
    async def create_tenant(tenant: TenantName) -> dict[str, Any]:
        """400 for a reserved name (CON, NUL, COM1, ...) or one with ``..``; 409 for a
        name that differs from an existing tenant's only by case, dots or trailing
        punctuation."""
        created = await run(control.create, tenant)
        return {"tenant": tenant, "created": created}

    @router.put("/tenants/{tenant}/mode/{mode}", summary="Switch a tenant on, freeze or off")
    async def set_mode(tenant: TenantName, mode: str) -> dict[str, Any]:
        if mode not in MODES:
            raise ApiError(400, f"mode must be one of {', '.join(MODES)}")
        await run(control.set_mode, tenant, mode)
        return {"tenant": tenant, "mode": mode}

    @router.get("/tenants/{tenant}/rules", summary="The tenant's serving rules")
    async def get_rules(tenant: TenantName) -> dict[str, Any]:
        return await run(control.rules, tenant)

    @router.put(
        "/tenants/{tenant}/rules",
        summary="Set serving rules (exclude none|current|seen, blocklist, categories)",
        openapi_extra=json_request_body(RULES_SCHEMA),
    )
    async def put_rules(tenant: TenantName, request: Request) -> dict[str, Any]:
        body = json_body(await read_body(request, 1 << 20))
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        try:
            rules = ServingRules.from_dict(body)
        except (ValueError, TypeError) as exc:
            raise ApiError(400, str(exc)) from None
        return await run(control.set_rules, tenant, rules)

    @router.post("/tenants/{tenant}/keys", status_code=201, summary="Create a tenant key")
    async def create_key(tenant: TenantName) -> dict[str, Any]:
        """The key is in this answer only; it is stored as a SHA-256 digest."""
        key_id, key = await run(control.create_key, tenant)
        return {"tenant": tenant, "key_id": key_id, "key": key}

    @router.delete("/tenants/{tenant}/keys/{key_id}", summary="Revoke a tenant key")
    async def revoke_key(tenant: TenantName, key_id: str) -> dict[str, Any]:
        await run(control.revoke_key, tenant, key_id)
        return {"tenant": tenant, "revoked": key_id}

    @router.get("/tenants/{tenant}/models", summary="The tenant's model versions")
    async def list_models(tenant: TenantName) -> dict[str, Any]:
        await run(control.require, tenant)
        infos = await run(registry.versions, tenant)
        return {"tenant": tenant, "versions": [dataclasses.asdict(i) for i in infos]}

    @router.post("/tenants/{tenant}/models/{version}/promote", summary="Promote a version")
    async def promote(tenant: TenantName, version: str) -> dict[str, Any]:
        await run(control.promote, tenant, version)
        return {"tenant": tenant, "current": version}

    @router.post(
        "/tenants/{tenant}/models/rollback",
        summary="Roll back to the previous version",
        responses=error_responses(409),
    )
    async def rollback(tenant: TenantName) -> dict[str, Any]:
        """404 for an unknown tenant; 409 when no version was promoted before the one in
        service (nothing to roll back to)."""
        current = await run(control.rollback, tenant)
        return {"tenant": tenant, "current": current}

    # -- experiments and bandits ---------------------------------------------------------
    async def body_object(request: Request) -> dict[str, Any]:
        body = json_body(await read_body(request, 1 << 16))
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    @router.get("/tenants/{tenant}/experiment", summary="The experiment's arms and decision")
    async def experiment_status(tenant: TenantName) -> dict[str, Any]:
        """Each arm's share, recommendations, hits, hit rate and 95 % interval; for an
        A/B test the decision and its p-value (as ``streamrec experiment status``)."""
        await run(control.require, tenant)
        return await run(experiments.status, ctx.settings, tenant)

    @router.post(
        "/tenants/{tenant}/experiment",
        status_code=201,
        summary="Start an A/B test: a candidate version to a share of the sessions",
        openapi_extra=json_request_body(AB_SCHEMA),
    )
    async def start_experiment(tenant: TenantName, request: Request) -> dict[str, Any]:
        body = await body_object(request)
        variant, share = body.get("variant"), body.get("share", 0.1)
        least = body.get("min_recommendations", 1000)
        if not isinstance(variant, str) or not variant:
            raise ApiError(400, "variant (the candidate version, like v5) is required")
        if not _number(share) or not _integer(least):
            raise ApiError(400, "share must be a number, min_recommendations an integer")
        await run(control.require, tenant)
        policy, heard = await run(
            experiments.start_ab, ctx.settings, tenant, variant, float(share), least
        )
        return {"tenant": tenant, **policy, "workers_notified": heard}

    @router.post(
        "/tenants/{tenant}/bandit",
        status_code=201,
        summary="Start a bandit (Thompson sampling on hit rate) over two or more versions",
        openapi_extra=json_request_body(BANDIT_SCHEMA),
    )
    async def start_bandit(tenant: TenantName, request: Request) -> dict[str, Any]:
        body = await body_object(request)
        versions = body.get("versions")
        discount, floor = body.get("discount", 0.999), body.get("floor", 0.01)
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise ApiError(400, "versions must be a list of model versions")
        if not _number(discount) or not _number(floor):
            raise ApiError(400, "discount and floor must be numbers")
        await run(control.require, tenant)
        policy, heard = await run(
            experiments.start_bandit, ctx.settings, tenant, versions, float(discount), float(floor)
        )
        return {"tenant": tenant, **policy, "workers_notified": heard}

    @router.post(
        "/tenants/{tenant}/experiment/stop",
        summary="End the experiment or bandit: promote the candidate, or keep the version",
        openapi_extra=json_request_body(STOP_SCHEMA),
    )
    async def stop_experiment(tenant: TenantName, request: Request) -> dict[str, Any]:
        action = (await body_object(request)).get("action")
        if action not in experiments.ACTIONS:
            raise ApiError(400, f"action must be one of {', '.join(experiments.ACTIONS)}")
        await run(control.require, tenant)
        serving, heard = await run(experiments.stop, ctx.settings, tenant, action)
        return {"tenant": tenant, "current": serving, "workers_notified": heard}

    return router


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


AB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "variant": {"type": "string", "minLength": 1, "description": "the candidate version"},
        "share": {
            "type": "number",
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1,
            "description": "the candidate's share of sessions (default 0.1)",
        },
        "min_recommendations": {
            "type": "integer",
            "minimum": 1,
            "description": "per arm, before the test may decide (default 1000)",
        },
    },
    "required": ["variant"],
}

BANDIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "versions": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "discount": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "floor": {"type": "number", "minimum": 0, "maximum": 0.5},
    },
    "required": ["versions"],
}

STOP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"action": {"type": "string", "enum": ["promote", "keep"]}},
    "required": ["action"],
}


RULES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "exclude": {"type": "string", "enum": ["none", "current", "seen"]},
        "blocklist": {"type": "array", "items": {"type": "string"}},
        "include_categories": {"type": "array", "items": {"type": "string"}},
        "exclude_categories": {"type": "array", "items": {"type": "string"}},
    },
}
