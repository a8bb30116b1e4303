"""Request bodies the routes read themselves: bounded in size and time, and the records
(clicks, feedback) posted to the API, checked and produced to their topic."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol, TypeVar

import orjson
from confluent_kafka import KafkaException
from fastapi import Request
from pydantic import BaseModel

from stream.api.context import ApiError, WebContext
from stream.api.schemas import MAX_POST_EVENTS, parsed
from stream.events import MAX_EVENT_BYTES, InvalidEvent

MAX_BODY_BYTES = MAX_POST_EVENTS * MAX_EVENT_BYTES
# A body that has not arrived within this many seconds gets 408: a stalled upload must
# not hold a connection open for ever.
BODY_TIMEOUT_S = 10.0
M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, at most ``limit`` bytes (else 413), arrived within
    ``BODY_TIMEOUT_S`` (else 408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0

    async def receive() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"body over {limit} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {BODY_TIMEOUT_S:.0f} s") from None
    return b"".join(chunks)


def json_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None


class Record(Protocol):
    """What the POST routes produce: a click or a feedback message."""

    @property
    def session_id(self) -> str: ...

    def to_json(self) -> bytes: ...


R = TypeVar("R", bound=Record)
R_co = TypeVar("R_co", bound=Record, covariant=True)


class Parser(Protocol[R_co]):
    """``stream.events.event_from_dict`` or ``feedback_from_dict``."""

    def __call__(self, data: Any, *, default_ts: float | None = None) -> R_co: ...


async def read_records(
    request: Request,
    tenant: str,
    parse: Parser[R],
    what: tuple[str, str],
) -> list[R]:
    """The body's records (one JSON object or an array of up to ``MAX_POST_EVENTS``),
    each parsed by ``parse``. ``what`` names them in the reasons
    (singular, plural). Any bad one is a 4xx naming it, and then none is taken."""
    return parse_records(await read_body(request), tenant, parse, what, time.time())


def parse_records(
    raw: bytes, tenant: str, parse: Parser[R], what: tuple[str, str], now: float
) -> list[R]:
    """The records of a body (see :func:`read_records`); :class:`ApiError` if any is bad."""
    one, many = what
    body = json_body(raw)
    items = body if isinstance(body, list) else [body]
    if len(items) > MAX_POST_EVENTS:
        raise ApiError(413, f"at most {MAX_POST_EVENTS} {many} per request")
    records = []
    for n, data in enumerate(items):
        # The same limit as a Kafka message (the worker dead-letters larger ones): a lone
        # object is measured as sent, like a message value; one of an array, as JSON.
        if len(raw) > MAX_EVENT_BYTES:
            size = len(raw) if items is not body else _json_size(data)
            if size is None:
                raise ApiError(400, f"{one} {n} is nested too deeply")
            if size > MAX_EVENT_BYTES:
                raise ApiError(413, f"{one} {n} is larger than {MAX_EVENT_BYTES} bytes as JSON")
        if isinstance(data, dict):
            given = data.setdefault("tenant", tenant)
            if given != tenant:
                # Not repr() of any value: a deeply nested one exhausts the stack.
                named = repr(given) if type(given) is str else f"of type {type(given).__name__}"
                raise ApiError(400, f"{one} {n}: tenant {named} differs from the URL's")
        try:
            records.append(parse(data, default_ts=now))
        except InvalidEvent as exc:
            raise ApiError(400, f"{one} {n}: {exc.reason}") from None
    return records


def _json_size(data: Any) -> int | None:
    """Bytes of ``data`` as JSON; None when nested deeper than the encoder writes."""
    try:
        return len(orjson.dumps(data))
    except TypeError:  # orjson.JSONEncodeError
        return None


async def produce_records(ctx: WebContext, topic: str, records: list[R], what: str) -> None:
    """Every record to ``topic`` keyed by session and acknowledged by the broker, else a
    503 telling the client to retry."""
    producer = ctx.producer
    if producer is None:
        raise ApiError(503, "the worker is starting")
    # flush() counts undelivered records only: one the broker refused (an unknown topic,
    # a timeout) is reported here, and must not be answered 202.
    refused: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            refused.append(str(err))

    try:
        for record in records:
            producer.produce(topic, record.to_json(), record.session_id, on_delivery=delivered)
    except (BufferError, KafkaException) as exc:
        raise ApiError(503, f"the broker is not taking {what}s just now ({exc}); retry") from None
    remaining = await asyncio.to_thread(producer.flush, 10)
    if remaining:
        raise ApiError(503, f"{remaining} {what}(s) not acknowledged by the broker; retry")
    if refused:
        raise ApiError(503, f"{len(refused)} {what}(s) refused by the broker ({refused[0]}); retry")


async def read_model(request: Request, model: type[M], limit: int) -> M:
    """The body (at most ``limit`` bytes) as ``model``, or 400 with every fault."""
    return parsed(model, await read_body(request, limit))
