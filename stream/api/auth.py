"""Who may call what: tenant keys and the admin token, as FastAPI dependencies.

- Tenant routes: ``Authorization: Bearer <key>``. A key of this tenant or the admin
  token passes; another tenant's key is 403; no key or an unknown one is 401 when the
  tenant has keys (or ``STREAMREC_REQUIRE_KEYS`` is on), else the tenant is open.
- Admin routes: the admin token only (401 without it, 403 for a tenant key); with no
  ``STREAMREC_ADMIN_TOKEN`` configured they are not served at all.
- Every tenant's numbers (/dashboard, its data, /metrics, the details of /health): the
  admin token as a bearer header, or the cookie ``/dashboard?token=...`` trades it for,
  unless ``STREAMREC_PUBLIC_DASHBOARD`` is on. Beyond those the cookie reaches only the
  read-only ranking the dashboard's "try a session" box calls (``TenantReader``), so no
  other site can make a browser change anything with it.
- A tenant that does not exist is 404, unless auto-creation is on; a new tenant's name
  must pass ``models.names.tenant_refusal`` (400, or 409 for another tenant's lookalike).

Keys are compared by SHA-256 digest; neither keys nor digests are logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from models.names import TENANT_RULE, is_tenant, tenant_refusal
from models.registry import Registry
from state.connection import RedisError
from stream.api.server import ApiError, WebContext
from stream.control.tenants import key_digest

bearer = HTTPBearer(auto_error=False, description="a tenant key or the admin token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def is_admin(ctx: WebContext, credentials: HTTPAuthorizationCredentials | None) -> bool:
    token = ctx.settings.admin_token
    return bool(
        token
        and credentials is not None
        and hmac.compare_digest(credentials.credentials.encode(), token.encode())
    )


def _ctx(request: Request) -> WebContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


def tenant_name(tenant: Annotated[str, Path(description="the tenant (shop) name")]) -> str:
    """The path's tenant, if it is a valid name (400 if not)."""
    if not is_tenant(tenant):
        raise ApiError(400, f"tenant {TENANT_RULE}")
    return tenant


# For the admin routes, which check the token, not the tenant's keys.
TenantName = Annotated[str, Depends(tenant_name)]


async def tenant_access(request: Request, tenant: TenantName, credentials: Credentials) -> str:
    """The path's tenant, once the caller may reach it."""
    try:
        return await _tenant_access(_ctx(request), tenant, credentials)
    except (RedisError, OSError) as exc:
        raise ApiError(503, f"Redis is unavailable, keys cannot be checked: {exc}") from None


async def _tenant_access(
    ctx: WebContext, tenant: str, credentials: HTTPAuthorizationCredentials | None
) -> str:
    directory = getattr(ctx.backend(), "tenants", None)
    if directory is None:
        raise ApiError(503, "the worker is starting")
    await directory.mode(tenant)  # reads the control files once after start-up
    damaged = directory.disabled(tenant)
    if damaged is not None:  # its keys may be unknown: nobody passes
        if is_admin(ctx, credentials):
            raise ApiError(503, f"tenant disabled: {damaged.path.name}: {damaged.reason}")
        # The file and its fault are the operator's business (/health with the token).
        raise ApiError(503, "tenant disabled: a control file is damaged")
    if not is_admin(ctx, credentials):
        owner = None
        if credentials is not None:
            owner = await directory.key_owner(key_digest(credentials.credentials))
        if owner is not None and owner != tenant:
            raise ApiError(403, "this key belongs to another tenant")
        if owner is None and (ctx.settings.require_keys or await directory.has_keys(tenant)):
            raise ApiError(401, "a valid key is required (Authorization: Bearer <key>)")
    await _existing(ctx, directory, tenant)
    return tenant


async def _existing(ctx: WebContext, directory: Any, tenant: str) -> None:
    """404 for a tenant that was never created, unless auto-creation is on (then its
    first click or catalogue write creates it, if its name may be a new tenant's)."""
    if await directory.exists(tenant):
        return
    if not ctx.settings.auto_create_tenants:
        raise ApiError(404, f"unknown tenant {tenant!r}")
    await may_create(ctx, tenant)


async def may_create(ctx: WebContext, tenant: str) -> None:
    """400 for a name no tenant may have, 409 for a lookalike of an existing tenant."""
    registry = Registry(ctx.settings.registry_dir)
    try:
        existing = await asyncio.to_thread(registry.tenants)
    except OSError as exc:
        raise ApiError(503, f"the registry cannot be read: {exc}") from None
    refused = tenant_refusal(tenant, existing)
    if refused is not None:
        raise ApiError(409 if refused.conflict else 400, refused.reason)


Tenant = Annotated[str, Depends(tenant_access)]


async def admin_access(request: Request, credentials: Credentials) -> None:
    ctx = _ctx(request)
    if is_admin(ctx, credentials):
        return
    if credentials is not None:
        directory = getattr(ctx.backend(), "tenants", None)
        try:
            owner = directory and await directory.key_owner(key_digest(credentials.credentials))
        except (RedisError, OSError):
            owner = None  # not the admin token either way: 401 below
        if owner:
            raise ApiError(403, "a tenant key does not reach the admin API")
    raise ApiError(401, "the admin token is required (Authorization: Bearer <token>)")


# -- every tenant's numbers: the dashboard, /metrics, the details of /health -------------
VIEW_COOKIE = "streamrec_admin"
VIEW_COOKIE_MAX_AGE_S = 12 * 3600


def view_cookie(token: str) -> str:
    """The cookie's value: derived from the admin token (which it never contains), so
    a new token ends every cookie made with the old one."""
    return hmac.new(token.encode(), b"streamrec dashboard", hashlib.sha256).hexdigest()


def has_view_cookie(request: Request) -> bool:
    """The cookie ``/dashboard?token=...`` set, made from the current admin token."""
    token, cookie = _ctx(request).settings.admin_token, request.cookies.get(VIEW_COOKIE)
    return bool(
        token and cookie and hmac.compare_digest(cookie.encode(), view_cookie(token).encode())
    )


def may_view(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    ctx = _ctx(request)
    if ctx.settings.public_dashboard or is_admin(ctx, credentials):
        return True
    return has_view_cookie(request)


async def tenant_read_access(request: Request, tenant: TenantName, credentials: Credentials) -> str:
    """``tenant_access``, where the dashboard's cookie counts as the admin token: for
    read-only tenant routes the dashboard calls (its "try a session" box ranks items
    without storing anything). A public dashboard alone opens nothing here."""
    if credentials is None and has_view_cookie(request):
        token = _ctx(request).settings.admin_token
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    return await tenant_access(request, tenant, credentials)


TenantReader = Annotated[str, Depends(tenant_read_access)]


async def view_access(request: Request, credentials: Credentials) -> None:
    """The admin token (header or cookie), unless the dashboard is public."""
    if may_view(request, credentials):
        return
    if not _ctx(request).settings.admin_token:
        raise ApiError(
            403,
            "every tenant's numbers need the admin token, and none is configured: set "
            "STREAMREC_ADMIN_TOKEN (or STREAMREC_PUBLIC_DASHBOARD=1 to show them to anyone "
            "who can reach this port)",
        )
    try:
        await admin_access(request, credentials)
    except ApiError as exc:
        if exc.status != 401:
            raise
        raise ApiError(
            401,
            "the admin token is required (Authorization: Bearer <token>; in a browser, open "
            "/dashboard?token=<token> once)",
        ) from None


async def view_allowed(request: Request, credentials: Credentials) -> bool:
    """May the caller see every tenant's numbers? (For routes that answer either way.)"""
    return may_view(request, credentials)
