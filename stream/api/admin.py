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
from stream.api.bodies import read_model
from stream.api.context import ApiError, WebContext
from stream.api.schemas import (
    AbTest,
    Bandit,
    Created,
    Experiment,
    NewKey,
    Policy,
    Revoked,
    Rules,
    Serving,
    Stop,
    TenantMode,
    Tenants,
    Versions,
    error_responses,
    request_body,
)
from stream.control.service import CacheBehind, Control, UnknownTenantError

ADMIN_ERRORS = error_responses(400, 401, 403, 404, 503)
MAX_BODY_BYTES = 1 << 16


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
    control = Control(ctx.settings)

    async def run(fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except NothingToRollBack as exc:  # the request is fine; the tenant's state is not
            raise ApiError(409, str(exc)) from None
        except (UnknownTenantError, UnknownVersionError) as exc:
            raise ApiError(404, str(exc)) from None
        except CacheBehind as exc:  # the change is saved; the workers learn of it later
            raise ApiError(503, str(exc)) from None
        except TenantNameRefused as exc:
            raise ApiError(409 if exc.refusal.conflict else 400, str(exc)) from None
        except StreamrecError as exc:
            raise ApiError(400, str(exc)) from None
        except (OSError, RedisError) as exc:
            raise ApiError(503, f"the registry or Redis is unavailable: {exc}") from None

    @router.get(
        "/tenants",
        summary="Every tenant with its mode and model in service",
        response_model=Tenants,
    )
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
        response_model=Created,
        responses=error_responses(409),
    )
    async def create_tenant(tenant: TenantName) -> dict[str, Any]:
        """400 for a reserved name (CON, NUL, COM1, ...) or one with ``..``; 409 for a
        name that differs from an existing tenant's only by case, dots or trailing
        punctuation."""
        created = await run(control.create, tenant)
        return {"tenant": tenant, "created": created}

    @router.put(
        "/tenants/{tenant}/mode/{mode}",
        summary="Switch a tenant on, freeze or off",
        response_model=TenantMode,
    )
    async def set_mode(tenant: TenantName, mode: str) -> dict[str, Any]:
        if mode not in MODES:
            raise ApiError(400, f"mode must be one of {', '.join(MODES)}")
        await run(control.set_mode, tenant, mode)
        return {"tenant": tenant, "mode": mode}

    @router.get(
        "/tenants/{tenant}/rules", summary="The tenant's serving rules", response_model=Rules
    )
    async def get_rules(tenant: TenantName) -> dict[str, Any]:
        return await run(control.rules, tenant)

    @router.put(
        "/tenants/{tenant}/rules",
        summary="Set serving rules (exclude none|current|seen, blocklist, categories)",
        response_model=Rules,
        responses=error_responses(408, 413),
        openapi_extra=request_body(Rules),
    )
    async def put_rules(tenant: TenantName, request: Request) -> dict[str, Any]:
        body = await read_model(request, Rules, 1 << 20)
        try:
            rules = ServingRules.from_dict(body.model_dump())
        except (ValueError, TypeError) as exc:
            raise ApiError(400, str(exc)) from None
        return await run(control.set_rules, tenant, rules)

    @router.post(
        "/tenants/{tenant}/keys",
        status_code=201,
        summary="Create a tenant key",
        response_model=NewKey,
    )
    async def create_key(tenant: TenantName) -> dict[str, Any]:
        """The key is in this answer only; it is stored as a SHA-256 digest."""
        key_id, key = await run(control.create_key, tenant)
        return {"tenant": tenant, "key_id": key_id, "key": key}

    @router.delete(
        "/tenants/{tenant}/keys/{key_id}", summary="Revoke a tenant key", response_model=Revoked
    )
    async def revoke_key(tenant: TenantName, key_id: str) -> dict[str, Any]:
        await run(control.revoke_key, tenant, key_id)
        return {"tenant": tenant, "revoked": key_id}

    @router.get(
        "/tenants/{tenant}/models", summary="The tenant's model versions", response_model=Versions
    )
    async def list_models(tenant: TenantName) -> dict[str, Any]:
        await run(control.require, tenant)
        infos = await run(registry.versions, tenant)
        return {"tenant": tenant, "versions": [dataclasses.asdict(i) for i in infos]}

    @router.post(
        "/tenants/{tenant}/models/{version}/promote",
        summary="Promote a version",
        response_model=Serving,
        response_model_exclude_unset=True,
    )
    async def promote(tenant: TenantName, version: str) -> dict[str, Any]:
        await run(control.promote, tenant, version)
        return {"tenant": tenant, "current": version}

    @router.post(
        "/tenants/{tenant}/models/rollback",
        summary="Roll back to the previous version",
        response_model=Serving,
        response_model_exclude_unset=True,
        responses=error_responses(409),
    )
    async def rollback(tenant: TenantName) -> dict[str, Any]:
        """404 for an unknown tenant; 409 when no version was promoted before the one in
        service (nothing to roll back to)."""
        current, _ = await run(control.rollback, tenant)
        return {"tenant": tenant, "current": current}

    # -- experiments and bandits ---------------------------------------------------------
    @router.get(
        "/tenants/{tenant}/experiment",
        summary="The experiment's arms and decision",
        response_model=Experiment,
    )
    async def experiment_status(tenant: TenantName) -> dict[str, Any]:
        """Each arm's share, recommendations, hits, hit rate and 95 % interval; for an
        A/B test the decision and its p-value (as ``streamrec experiment status``)."""
        await run(control.require, tenant)
        return await run(control.experiment_status, tenant)

    @router.post(
        "/tenants/{tenant}/experiment",
        status_code=201,
        summary="Start an A/B test: a candidate version to a share of the sessions",
        response_model=Policy,
        responses=error_responses(408, 413),
        openapi_extra=request_body(AbTest),
    )
    async def start_experiment(tenant: TenantName, request: Request) -> dict[str, Any]:
        body = await read_model(request, AbTest, MAX_BODY_BYTES)
        await run(control.require, tenant)
        policy, heard = await run(
            control.start_ab, tenant, body.variant, body.share, body.min_recommendations
        )
        return {"tenant": tenant, **policy, "workers_notified": heard}

    @router.post(
        "/tenants/{tenant}/bandit",
        status_code=201,
        summary="Start a bandit (Thompson sampling on hit rate) over two or more versions",
        response_model=Policy,
        responses=error_responses(408, 413),
        openapi_extra=request_body(Bandit),
    )
    async def start_bandit(tenant: TenantName, request: Request) -> dict[str, Any]:
        body = await read_model(request, Bandit, MAX_BODY_BYTES)
        await run(control.require, tenant)
        policy, heard = await run(
            control.start_bandit, tenant, body.versions, body.discount, body.floor
        )
        return {"tenant": tenant, **policy, "workers_notified": heard}

    @router.post(
        "/tenants/{tenant}/experiment/stop",
        summary="End the experiment or bandit: promote the candidate, or keep the version",
        response_model=Serving,
        response_model_exclude_unset=True,
        responses=error_responses(408, 413),
        openapi_extra=request_body(Stop),
    )
    async def stop_experiment(tenant: TenantName, request: Request) -> dict[str, Any]:
        action = (await read_model(request, Stop, MAX_BODY_BYTES)).action
        await run(control.require, tenant)
        serving, heard = await run(control.stop, tenant, action)
        return {"tenant": tenant, "current": serving, "workers_notified": heard}

    return router
