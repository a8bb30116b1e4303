"""Admin routes, ``/v1/admin/...`` (the admin token only; not served without one):
tenants (create, mode, serving rules), tenant keys (create, revoke), models (list,
promote, rollback). The same operations as ``streamrec tenant`` and ``streamrec models``,
on the same durable store (the registry) with Redis as its cache."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request

from models.errors import StreamrecError
from models.registry import MODES, Registry
from models.rules import ServingRules
from state.connection import RedisError
from stream.tenant_control import TenantControl, UnknownTenantError
from stream.web import (
    ApiError,
    WebContext,
    error_responses,
    json_body,
    json_request_body,
    read_body,
)
from stream.web_auth import TenantName, admin_access

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
        except UnknownTenantError as exc:
            raise ApiError(404, str(exc)) from None
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

    @router.put("/tenants/{tenant}", status_code=201, summary="Create a tenant")
    async def create_tenant(tenant: TenantName) -> dict[str, Any]:
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

    @router.post("/tenants/{tenant}/models/rollback", summary="Roll back to the previous version")
    async def rollback(tenant: TenantName) -> dict[str, Any]:
        current = await run(control.rollback, tenant)
        return {"tenant": tenant, "current": current}

    return router


RULES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "exclude": {"type": "string", "enum": ["none", "current", "seen"]},
        "blocklist": {"type": "array", "items": {"type": "string"}},
        "include_categories": {"type": "array", "items": {"type": "string"}},
        "exclude_categories": {"type": "array", "items": {"type": "string"}},
    },
}
