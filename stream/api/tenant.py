"""Tenant routes, ``/v1/{tenant}/...``: clicks in, recommendations out, the catalogue.

Every route takes the tenant's key (``Authorization: Bearer ...``, see
``stream.api.auth``); answers are JSON, errors ``{"error": reason}``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Response
from fastapi import Request as HttpRequest

from models.errors import StreamrecError
from models.names import ID_RULE, is_id
from models.rules import Request
from state.connection import RedisError
from state.control import get_item, put_items
from state.notify import notify_change
from stream.api.auth import Tenant, TenantReader
from stream.api.bodies import produce_records, read_model, read_records
from stream.api.context import ApiError, WebContext
from stream.api.schemas import (
    MAX_BULK_ITEMS,
    MAX_N,
    MAX_POST_EVENTS,
    BulkItems,
    CatalogueEntry,
    CatalogueItem,
    EventsAccepted,
    Rank,
    Ranking,
    SessionRecommendations,
    Similar,
    Stored,
    request_body,
    tenant_errors,
)
from stream.events import MAX_EVENT_BYTES, ClickEvent, event_from_dict

N = Annotated[int, Query(ge=1, le=MAX_N, description="how many items (default: top_k)")]
Exclude = Annotated[list[str], Query(description="item ids never to return (repeatable)")]
ItemId = Annotated[str, Path(description="the item id (a `/` in it sent as `%2F`)")]
SessionId = Annotated[str, Path(description="the session id (a `/` in it sent as `%2F`)")]
Category = Annotated[
    list[str], Query(description="only items of these catalogue categories (repeatable)")
]


def _click(data: Any, *, default_ts: float | None = None) -> ClickEvent:
    # An id of our own, so the client can match its events to the answer's event_ids.
    if isinstance(data, dict) and data.get("event_id") is None:
        data["event_id"] = uuid.uuid4().hex
    return event_from_dict(data, default_ts=default_ts)


def _checked_id(value: str, what: str) -> str:
    if not is_id(value):
        raise ApiError(400, f"{what} {ID_RULE}")
    return value


def routes(ctx: WebContext) -> APIRouter:
    router = APIRouter(prefix="/v1/{tenant}", tags=["tenant"])

    @router.post(
        "/events",
        status_code=202,
        summary="Post one click or an array of up to 1,000",
        response_model=EventsAccepted,
        responses=tenant_errors(408, 413),
        openapi_extra=request_body("WireClick", many=MAX_POST_EVENTS),
    )
    async def post_events(tenant: Tenant, request: HttpRequest) -> dict[str, Any]:
        """Validated (400 with a reason, nothing sent; 413 for an event over 16 KiB),
        then produced to ``clicks``. Events without an ``event_id`` get one; the answer
        lists every event's id, in order."""
        events = await read_records(request, tenant, _click, ("event", "events"))
        await produce_records(ctx, ctx.settings.clicks_topic, events, "event")
        return {"accepted": len(events), "event_ids": [e.event_id for e in events]}

    def options(exclude: list[str], category: list[str]) -> Request | None:
        for item in exclude:
            _checked_id(item, "exclude item id")
        if not exclude and not category:
            return None
        return Request(frozenset(exclude), frozenset(category))

    @router.get(
        "/sessions/{session_id:segment}/recommendations",
        summary="The ranked list answering the session's latest click",
        response_class=Response,
        responses={
            200: {
                "model": SessionRecommendations,
                "content": {"application/json": {}},
                "description": "the list, as the topic's record",
            },
            **tenant_errors(),
        },
    )
    async def session_recommendations(
        tenant: Tenant,
        session_id: SessionId,
        n: N | None = None,
        exclude: Exclude = [],  # noqa: B006  (FastAPI copies defaults)
        category: Category = [],  # noqa: B006
    ) -> Response:
        """The same JSON as the ``recommendations`` topic's record, each item with its
        ``source`` too, ranked now from the session as stored (after a model swap, from
        the new version), with the tenant's serving rules and the catalogue applied, and
        this request's ``exclude`` and ``category``; the list is refilled so ``n`` items
        come back when enough candidates exist. A tenant switched off answers 200 with no items and
        ``"reason": "tenant off"``: nothing is wrong with the request."""
        _checked_id(session_id, "session id")
        async with serving_errors():
            serving = ctx.worker()
            if await serving.tenants.mode(tenant) == "off":
                off = {
                    "tenant": tenant,
                    "session_id": session_id,
                    "items": [],
                    "reason": "tenant off",
                }
                return Response(orjson.dumps(off), media_type="application/json")
            payload = await serving.ranker.recommend_session(
                tenant, session_id, n, options(exclude, category)
            )
        if payload is None:
            raise ApiError(
                404, f"no recommendations for session {session_id!r} of tenant {tenant!r}"
            )
        return Response(payload, media_type="application/json")

    @router.post(
        "/recommendations",
        summary="Rank a session the caller holds (stateless: nothing is stored)",
        response_model=Ranking,
        responses=tenant_errors(408, 413),
        openapi_extra=request_body(Rank),
    )
    async def rank(tenant: TenantReader, request: HttpRequest) -> dict[str, Any]:
        """The list with each item's score and ``source`` (the candidate source that
        contributed most to its score), the list's ``strategy`` (its first item's source)
        and the model version."""
        body = await read_model(request, Rank, MAX_EVENT_BYTES * 4)
        n = body.n or ctx.settings.top_k
        async with serving_errors():
            ranked, version = await ctx.worker().ranker.recommend_items(
                tenant, body.items, n, options(body.exclude, body.category)
            )
        sources = ranked.sources or [ranked.strategy] * len(ranked.ids)
        return {
            "tenant": tenant,
            "items": [
                {"item_id": i, "score": s, "source": src}
                for (i, s), src in zip(ranked.items, sources, strict=True)
            ],
            "strategy": ranked.strategy,
            "model_version": version,
        }

    @router.get(
        "/items/{item_id:segment}/similar",
        summary="The item's nearest neighbours by embedding (the tenant's rules applied)",
        response_model=Similar,
        responses=tenant_errors(),
    )
    async def similar(tenant: Tenant, item_id: ItemId, n: N = 10) -> dict[str, Any]:
        _checked_id(item_id, "item id")
        async with serving_errors():
            found = await ctx.worker().ranker.similar(tenant, item_id, n)
        if found is None:
            raise ApiError(
                404, f"tenant {tenant!r}: the model in service does not know {item_id!r}"
            )
        items, version = found
        return {
            "tenant": tenant,
            "item_id": item_id,
            "items": [{"item_id": i, "score": s} for i, s in items],
            "model_version": version,
        }

    # -- the catalogue ---------------------------------------------------------------------
    async def store_items(tenant: str, entries: dict[str, dict[str, Any]]) -> int:
        serving = ctx.worker()
        async with serving_errors():
            if not await serving.tenants.exists(tenant):
                await serving.tenants.create(tenant)  # allowed: auto-creation is on (see Tenant)
            version = await put_items(serving.redis, tenant, entries)
            await notify_change(serving.redis, tenant)
        return version

    async def catalogue_item(tenant: str, item_id: str) -> dict[str, Any]:
        _checked_id(item_id, "item id")
        async with serving_errors():
            entry = await get_item(ctx.worker().redis, tenant, item_id)
        if entry is None or entry.get("deleted"):
            raise ApiError(404, f"item {item_id!r} is not in tenant {tenant!r}'s catalogue")
        return entry

    @router.get(
        "/items/{item_id:segment}",
        summary="The item's catalogue entry",
        response_model=CatalogueEntry,
        response_model_exclude_unset=True,
        responses=tenant_errors(),
    )
    async def get_catalogue_item(tenant: Tenant, item_id: ItemId) -> dict[str, Any]:
        return {"item_id": item_id, **await catalogue_item(tenant, item_id)}

    @router.put(
        "/items/{item_id:segment}",
        summary="Add or change a catalogue item (applied to recommendations within a second)",
        response_model=CatalogueEntry,
        response_model_exclude_unset=True,
        responses=tenant_errors(408, 413),
        openapi_extra=request_body(CatalogueItem),
    )
    async def put_item(tenant: Tenant, item_id: ItemId, request: HttpRequest) -> dict[str, Any]:
        _checked_id(item_id, "item id")
        entry = (await read_model(request, CatalogueItem, MAX_EVENT_BYTES)).model_dump()
        version = await store_items(tenant, {item_id: entry})
        return {"item_id": item_id, **entry, "catalogue_version": version}

    @router.delete(
        "/items/{item_id:segment}",
        summary="Remove an item from the catalogue: it is never recommended again",
        response_model=CatalogueEntry,
        response_model_exclude_unset=True,
        responses=tenant_errors(),
    )
    async def delete_item(tenant: Tenant, item_id: ItemId) -> dict[str, Any]:
        await catalogue_item(tenant, item_id)  # 404 unless it is there
        # A tombstone, not a removal: a deleted product must stay out of the lists.
        tombstone = {"available": False, "deleted": True}
        version = await store_items(tenant, {item_id: tombstone})
        return {"item_id": item_id, **tombstone, "catalogue_version": version}

    @router.post(
        "/items",
        summary=f"Add or change up to {MAX_BULK_ITEMS:,} catalogue items",
        response_model=Stored,
        responses=tenant_errors(408, 413),
        openapi_extra=request_body(BulkItems),
    )
    async def bulk_items(tenant: Tenant, request: HttpRequest) -> dict[str, Any]:
        body = await read_model(request, BulkItems, MAX_EVENT_BYTES * MAX_BULK_ITEMS)
        entries = {item.item_id: item.model_dump(exclude={"item_id"}) for item in body.root}
        version = await store_items(tenant, entries)
        return {"stored": len(entries), "catalogue_version": version}

    return router


@contextlib.asynccontextmanager
async def serving_errors() -> AsyncIterator[None]:
    """Redis or the model unavailable: 503 with the reason."""
    try:
        yield
    except ApiError:
        raise  # already an answer (ApiError is a StreamrecError too)
    except (RedisError, OSError) as exc:
        raise ApiError(503, f"the session store is unavailable: {exc}") from None
    except StreamrecError as exc:  # the tenant's model cannot be read just now
        raise ApiError(503, str(exc)) from None
