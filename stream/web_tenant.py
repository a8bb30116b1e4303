"""Tenant routes, ``/v1/{tenant}/...``: clicks in, recommendations out, the catalogue.

Every route takes the tenant's key (``Authorization: Bearer ...``, see
``stream.web_auth``); answers are JSON, errors ``{"error": reason}``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from redis.exceptions import RedisError

from models.errors import StreamrecError
from models.names import ID_RULE, is_id
from stream.events import MAX_EVENT_BYTES, InvalidEvent, event_from_dict
from stream.web import (
    MAX_POST_EVENTS,
    ApiError,
    WebContext,
    error_responses,
    json_body,
    read_body,
)
from stream.web_auth import Tenant

CLICK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "session_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "item_id": {"type": "string", "minLength": 1, "maxLength": 256},
        "ts": {"type": "number", "description": "unix seconds; default: now"},
        "event_type": {"type": "string"},
        "event_id": {"type": "string", "description": "assigned when missing"},
        "user_id": {"type": "string"},
        "tenant": {"type": "string", "description": "must match the URL's, if given"},
    },
    "required": ["session_id", "item_id"],
}


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
        responses=error_responses(400, 401, 403, 404, 408, 413, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                CLICK_SCHEMA,
                                {"type": "array", "items": CLICK_SCHEMA, "maxItems": 1000},
                            ]
                        }
                    }
                },
            }
        },
    )
    async def post_events(tenant: Tenant, request: Request) -> dict[str, Any]:
        """Validated (400 with a reason, nothing sent; 413 for an event over 16 KiB),
        then produced to ``clicks``. Events without an ``event_id`` get one; the answer
        lists every event's id, in order."""
        raw = await read_body(request)
        body = json_body(raw)
        items = body if isinstance(body, list) else [body]
        if len(items) > MAX_POST_EVENTS:
            raise ApiError(413, f"at most {MAX_POST_EVENTS} events per request")
        now = time.time()
        events = []
        for n, data in enumerate(items):
            # The same limit as a Kafka message (the worker dead-letters larger ones).
            if len(raw) > MAX_EVENT_BYTES and len(orjson.dumps(data)) > MAX_EVENT_BYTES:
                raise ApiError(413, f"event {n} is larger than {MAX_EVENT_BYTES} bytes as JSON")
            if isinstance(data, dict):
                if data.setdefault("tenant", tenant) != tenant:
                    raise ApiError(
                        400, f"event {n}: tenant {data['tenant']!r} differs from the URL's"
                    )
                if data.get("event_id") is None:
                    data["event_id"] = uuid.uuid4().hex
            try:
                events.append(event_from_dict(data, default_ts=now))
            except InvalidEvent as exc:
                raise ApiError(400, f"event {n}: {exc.reason}") from None
        producer = ctx.producer
        if producer is None:
            raise ApiError(503, "the worker is starting")
        topic = ctx.settings.clicks_topic
        for event in events:
            producer.produce(topic, event.to_json(), event.session_id)
        remaining = await asyncio.to_thread(producer.flush, 10)
        if remaining:
            raise ApiError(503, f"{remaining} event(s) not acknowledged by the broker; retry")
        return {"accepted": len(events), "event_ids": [e.event_id for e in events]}

    @router.get(
        "/sessions/{session_id}/recommendations",
        summary="The ranked list answering the session's latest click",
        responses=error_responses(400, 401, 403, 404, 503),
    )
    async def session_recommendations(
        tenant: Tenant,
        session_id: Annotated[str, Path(description="the session id")],
    ) -> Response:
        """The same JSON as the ``recommendations`` topic's record, ranked now from the
        session as stored (after a model swap, from the new version)."""
        _checked_id(session_id, "session id")
        try:
            payload = await backend().recommend_session(tenant, session_id)
        except (RedisError, OSError) as exc:
            raise ApiError(503, f"the session store is unavailable: {exc}") from None
        except StreamrecError as exc:  # the tenant's model cannot be read just now
            raise ApiError(503, str(exc)) from None
        if payload is None:
            raise ApiError(
                404, f"no recommendations for session {session_id!r} of tenant {tenant!r}"
            )
        return Response(payload, media_type="application/json")

    _ = Query  # used by the routes added below
    return router
