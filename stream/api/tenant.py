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
from stream.api.server import (
    ID_SCHEMA,
    MAX_POST_EVENTS,
    ApiError,
    WebContext,
    json_body,
    json_request_body,
    produce_records,
    read_body,
    read_records,
    tenant_errors,
)
from stream.events import MAX_EVENT_BYTES, ClickEvent, event_from_dict

CLICK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "session_id": ID_SCHEMA,
        "item_id": ID_SCHEMA,
        "ts": {"type": "number", "description": "unix seconds; default: now"},
        "event_type": {"type": "string"},
        "event_id": {"type": "string", "description": "assigned when missing"},
        "user_id": {"type": "string"},
        "tenant": {"type": "string", "description": "must match the URL's, if given"},
    },
    "required": ["session_id", "item_id"],
}


MAX_N = 100
MAX_SESSION_ITEMS = 200
MAX_BULK_ITEMS = 10_000
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

    def backend() -> Any:
        processor = ctx.backend()
        if processor is None:
            raise ApiError(503, "the worker is starting")
        return processor

    @router.post(
        "/events",
        status_code=202,
        summary="Post one click or an array of up to 1,000",
        responses=tenant_errors(408, 413),
        openapi_extra=json_request_body(CLICK_SCHEMA, many=MAX_POST_EVENTS),
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
        responses=tenant_errors(),
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
            processor = backend()
            if await processor.tenants.mode(tenant) == "off":
                off = {
                    "tenant": tenant,
                    "session_id": session_id,
                    "items": [],
                    "reason": "tenant off",
                }
                return Response(orjson.dumps(off), media_type="application/json")
            payload = await processor.recommend_session(
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
        responses=tenant_errors(413),
        openapi_extra=json_request_body(RANK_SCHEMA),
    )
    async def rank(tenant: TenantReader, request: HttpRequest) -> dict[str, Any]:
        """The list with each item's score and ``source`` (the candidate source that
        contributed most to its score), the list's ``strategy`` (its first item's source)
        and the model version."""
        body = json_body(await read_body(request, MAX_EVENT_BYTES * 4))
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object with 'items'")
        items, n = body.get("items"), body.get("n", ctx.settings.top_k)
        exclude, category = body.get("exclude", []), body.get("category", [])
        if not isinstance(items, list) or not 0 < len(items) <= MAX_SESSION_ITEMS:
            raise ApiError(400, f"items must be a list of 1 to {MAX_SESSION_ITEMS} item ids")
        for item in items:
            _checked_id(item, "item id")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise ApiError(400, f"n must be an integer from 1 to {MAX_N}")
        if not _strings(exclude) or not _strings(category):
            raise ApiError(400, "exclude and category must be lists of strings")
        async with serving_errors():
            ranked, version = await backend().recommend_items(
                tenant, items, n, options(exclude, category)
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
        responses=tenant_errors(),
    )
    async def similar(tenant: Tenant, item_id: ItemId, n: N = 10) -> dict[str, Any]:
        _checked_id(item_id, "item id")
        async with serving_errors():
            found = await backend().similar(tenant, item_id, n)
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
        directory = backend().tenants
        async with serving_errors():
            if not await directory.exists(tenant):
                await directory.create(tenant)  # allowed: auto-creation is on (see Tenant)
            version = await put_items(directory.client, tenant, entries)
            await notify_change(directory.client, tenant)
        return version

    async def catalogue_item(tenant: str, item_id: str) -> dict[str, Any]:
        _checked_id(item_id, "item id")
        async with serving_errors():
            entry = await get_item(backend().tenants.client, tenant, item_id)
        if entry is None or entry.get("deleted"):
            raise ApiError(404, f"item {item_id!r} is not in tenant {tenant!r}'s catalogue")
        return entry

    @router.get(
        "/items/{item_id:segment}",
        summary="The item's catalogue entry",
        responses=tenant_errors(),
    )
    async def get_catalogue_item(tenant: Tenant, item_id: ItemId) -> dict[str, Any]:
        return {"item_id": item_id, **await catalogue_item(tenant, item_id)}

    @router.put(
        "/items/{item_id:segment}",
        summary="Add or change a catalogue item (applied to recommendations within a second)",
        responses=tenant_errors(413),
        openapi_extra=json_request_body(ITEM_SCHEMA),
    )
    async def put_item(tenant: Tenant, item_id: ItemId, request: HttpRequest) -> dict[str, Any]:
        _checked_id(item_id, "item id")
        entry = catalogue_entry(json_body(await read_body(request, MAX_EVENT_BYTES)))
        version = await store_items(tenant, {item_id: entry})
        return {"item_id": item_id, **entry, "catalogue_version": version}

    @router.delete(
        "/items/{item_id:segment}",
        summary="Remove an item from the catalogue: it is never recommended again",
        responses=tenant_errors(),
    )
    async def delete_item(tenant: Tenant, item_id: ItemId) -> dict[str, Any]:
        await catalogue_item(tenant, item_id)  # 404 unless it is there
        # A tombstone, not a removal: a deleted product must stay out of the lists.
        version = await store_items(tenant, {item_id: {"available": False, "deleted": True}})
        return {"item_id": item_id, "deleted": True, "catalogue_version": version}

    @router.post(
        "/items",
        summary=f"Add or change up to {MAX_BULK_ITEMS:,} catalogue items",
        responses=tenant_errors(408, 413),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "array",
                            "maxItems": MAX_BULK_ITEMS,
                            "items": {
                                **ITEM_SCHEMA,
                                "properties": {
                                    **ITEM_SCHEMA["properties"],
                                    "item_id": {"type": "string"},
                                },
                                "required": ["item_id"],
                            },
                        }
                    }
                },
            }
        },
    )
    async def bulk_items(tenant: Tenant, request: HttpRequest) -> dict[str, Any]:
        body = json_body(await read_body(request))
        if not isinstance(body, list) or not 0 < len(body) <= MAX_BULK_ITEMS:
            raise ApiError(400, f"the body must be a list of 1 to {MAX_BULK_ITEMS} items")
        entries: dict[str, dict[str, Any]] = {}
        for n, data in enumerate(body):
            if not isinstance(data, dict) or not isinstance(data.get("item_id"), str):
                raise ApiError(400, f"item {n}: an object with a string 'item_id' is required")
            item_id = _checked_id(data.pop("item_id"), f"item {n}: item id")
            try:
                entries[item_id] = catalogue_entry(data)
            except ApiError as exc:
                raise ApiError(400, f"item {n}: {exc.reason}") from None
        version = await store_items(tenant, entries)
        return {"stored": len(entries), "catalogue_version": version}

    return router


ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "available": {"type": "boolean", "description": "false: never recommended"},
        "category": {"type": ["string", "null"], "maxLength": 256},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 256}},
    },
}

RANK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": ID_SCHEMA,
            "minItems": 1,
            "maxItems": MAX_SESSION_ITEMS,
            "description": "the session's items, oldest first",
        },
        "n": {"type": "integer", "minimum": 1, "maximum": MAX_N},
        "exclude": {"type": "array", "items": {"type": "string"}},
        "category": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["items"],
}


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def catalogue_entry(data: Any) -> dict[str, Any]:
    """A catalogue entry from a request body: ``available`` (default true), ``category``,
    ``tags``; anything else is a 400."""
    if not isinstance(data, dict):
        raise ApiError(400, "a catalogue item is a JSON object")
    unknown = set(data) - {"available", "category", "tags"}
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    available = data.get("available", True)
    category = data.get("category")
    tags = data.get("tags", [])
    if not isinstance(available, bool):
        raise ApiError(400, "available must be true or false")
    if category is not None and not (isinstance(category, str) and is_id(category)):
        raise ApiError(400, f"category {ID_RULE}")
    if not _strings(tags) or not all(is_id(t) for t in tags):
        raise ApiError(400, f"tags must be a list of strings; each {ID_RULE}")
    return {"available": available, "category": category, "tags": tags}


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
