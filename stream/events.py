"""The wire contracts: click events in, recommendations out (JSON).

Validation lives here, at the edge, and is shared by the worker (bad input goes to the
dead-letter topic with the reason) and by the producer helper (bad input raises in the
app before it is sent).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from itertools import chain, repeat
from operator import attrgetter
from typing import Annotated, Any, NamedTuple, cast

import msgspec
import numpy as np
import orjson
from msgspec.structs import astuple

from models.bundle import ModelBundle
from models.encoded import json_rows
from models.errors import StreamrecError
from models.names import MAX_ID_CHARS, TENANT_PATTERN, has_control, is_tenant

# The one maximum size of an event, as JSON bytes: for a Kafka message value and for each
# event posted over HTTP (413 beyond it). Larger messages are dead-lettered.
MAX_EVENT_BYTES = 16 * 1024
MAX_EVENT_TYPE_CHARS = 32
DEFAULT_TENANT = "default"
# The times a click may carry: from 2000-01-01T00:00:00Z to a day ahead of the reader's
# clock (clocks drift; a click from the far past or future is a producer's bug and would
# skew the lag metric and the training window).
MIN_TS = 946_684_800.0
MAX_TS_AHEAD_S = 86_400.0
TS_OUT_OF_RANGE = "ts out of range"


def ts_in_range(ts: float, now: float | None) -> bool:
    """Is ``ts`` a time a click may carry (``now``: the reader's clock, read if None)?"""
    return MIN_TS <= ts <= (time.time() if now is None else now) + MAX_TS_AHEAD_S


def record_time(timestamp_ms: int | None) -> float | None:
    """A Kafka record's timestamp in unix seconds: the time of a click without ``ts``."""
    return timestamp_ms / 1000 if timestamp_ms is not None and timestamp_ms >= 0 else None


_valid_tenants: set[str] = {DEFAULT_TENANT}


class InvalidEvent(StreamrecError, ValueError):
    """A click event that breaks the contract; ``reason`` is short and machine-greppable.
    (Still a ValueError: callers that validate input catch that.)"""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClickEvent(NamedTuple):
    # A NamedTuple: immutable like a frozen dataclass and cheaper to build, which matters
    # at tens of thousands of events a second.
    tenant: str
    session_id: str
    item_id: str
    ts: float
    event_type: str = "view"
    event_id: str | None = None
    user_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "tenant": self.tenant,
            "session_id": self.session_id,
            "item_id": self.item_id,
            "ts": self.ts,
            "event_type": self.event_type,
        }
        if self.event_id is not None:
            d["event_id"] = self.event_id
        if self.user_id is not None:
            d["user_id"] = self.user_id
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _id_field(data: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = data.get(name)
    if type(value) is str and 0 < len(value) <= MAX_ID_CHARS and not has_control(value):
        return value  # the common case, checked first
    if value is None:
        if required:
            raise InvalidEvent(f"missing field '{name}'")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"field '{name}' must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidEvent(f"field '{name}' is empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidEvent(f"field '{name}' is longer than {MAX_ID_CHARS} characters")
    # Ids are joined by a control character in Redis and written to logs.
    raise InvalidEvent(f"field '{name}' contains control characters")


def event_from_dict(
    data: Any, *, default_ts: float | None = None, now: float | None = None
) -> ClickEvent:
    """Validate an already-decoded event; raises :class:`InvalidEvent`. ``now``: the
    clock the range of ``ts`` is checked against (default: read here)."""
    if not isinstance(data, dict):
        raise InvalidEvent(f"event must be a JSON object, got {type(data).__name__}")
    tenant = data.get("tenant", DEFAULT_TENANT)
    if type(tenant) is not str or tenant not in _valid_tenants:
        if not is_tenant(tenant):
            raise InvalidEvent(f"field 'tenant' must match {TENANT_PATTERN}")
        if len(_valid_tenants) < 100_000:  # remember good names; bounded
            _valid_tenants.add(tenant)
    session_id = _id_field(data, "session_id", required=True)
    item_id = _id_field(data, "item_id", required=True)
    ts = data.get("ts")
    if ts is None:  # absent or null: the time it was received, where known
        ts = default_ts
    if ts is None:
        raise InvalidEvent("missing field 'ts'")
    # An int may be beyond any float (a dict from an app): compared as it is, never
    # converted before it is known to be in range.
    if type(ts) is not int and (type(ts) is not float or not math.isfinite(ts)):
        raise InvalidEvent("field 'ts' must be a finite number of unix seconds")
    event_type = data.get("event_type", "view")
    if type(event_type) is not str or not 0 < len(event_type) <= MAX_EVENT_TYPE_CHARS:
        raise InvalidEvent(f"field 'event_type' must be a string of 1-{MAX_EVENT_TYPE_CHARS} chars")
    event_id = _id_field(data, "event_id", required=False)
    user_id = _id_field(data, "user_id", required=False)
    if not ts_in_range(ts, now):
        raise InvalidEvent(TS_OUT_OF_RANGE)
    return ClickEvent(
        tenant,
        session_id,  # type: ignore[arg-type]
        item_id,  # type: ignore[arg-type]
        float(ts),
        event_type,
        event_id,
        user_id,
    )


_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]


# The typed shape of a click as sent: a valid one decodes in one C pass. Other members
# take the checked path (event_from_dict): msgspec skips what it ignores without
# validating it (invalid UTF-8, out-of-range numbers), and orjson, which the HTTP API
# uses, rejects those. Its JSON schema is the HTTP API's (POST /v1/{tenant}/events).
class WireClick(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A click event: a session viewed an item."""

    # The fields of ClickEvent, in its order: a decoded click becomes one in a C call.
    tenant: Annotated[str, msgspec.Meta(description="over HTTP: the URL's, if given")] = (
        DEFAULT_TENANT
    )
    session_id: _Id
    item_id: _Id
    ts: Annotated[float, msgspec.Meta(description="unix seconds; default: now")] | None = None
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_TYPE_CHARS)] = "view"
    event_id: Annotated[_Id, msgspec.Meta(description="assigned when missing")] | None = None
    user_id: _Id | None = None


_wire_click = msgspec.json.Decoder(WireClick)


def parse_event(
    raw: bytes | None, *, default_ts: float | None = None, now: float | None = None
) -> ClickEvent:
    """Decode and validate one Kafka message value; raises :class:`InvalidEvent` and
    nothing else, whatever the bytes. ``default_ts``: the time of a click without ``ts``
    (its Kafka record's timestamp); ``now``: as for :func:`event_from_dict`.

    msgspec decodes and types a valid event in one C pass, cheaper than orjson plus the
    checks of :func:`event_from_dict` (benchmarks/event_parse.py compares them); whatever
    it does not accept at once takes that path, whose checks name the reason."""
    event = _typed(_wire(raw), now)
    if event is not None:
        return event
    return event_from_dict(_decode(raw), default_ts=default_ts, now=now)


def parse_events(
    raws: Sequence[bytes | None], stamps: Sequence[int | None], now: float
) -> list[ClickEvent | InvalidEvent]:
    """:func:`parse_event` of a batch of message values (``stamps``: their Kafka
    timestamps in ms, :func:`record_time`), each value's event or the error it raises.

    The checks msgspec does not make (control characters, known tenants, the range of
    ``ts``) are made once over the whole batch; only a batch failing them is checked
    value by value."""
    try:  # the common case, in C loops: every value decodes
        if max(map(len, raws), default=0) > MAX_EVENT_BYTES:  # type: ignore[arg-type]
            raise ValueError("a value too large")
        wires: list[WireClick | None] = list(map(_wire_click.decode, raws))  # type: ignore[arg-type]
        typed, decoded = cast("list[WireClick]", wires), raws
    except Exception:  # a value None, too large or not decoded: decided one by one below
        wires = [_wire(raw) for raw in raws]
        typed = [w for w in wires if w is not None]
        decoded = [raw for raw, w in zip(raws, wires, strict=True) if w is not None]
    times = list(map(_ts, typed))
    if (
        None not in times
        and (not times or (MIN_TS <= min(times) and max(times) <= now + MAX_TS_AHEAD_S))  # type: ignore[type-var]
        and set(map(_tenant, typed)) <= _valid_tenants
        and not _any_control(decoded, typed)  # type: ignore[arg-type]
    ):
        if typed is wires:
            return list(map(tuple.__new__, repeat(ClickEvent), map(astuple, typed)))
        new = tuple.__new__
        return [
            new(ClickEvent, astuple(w)) if w is not None else _checked(raw, stamp, now)
            for w, raw, stamp in zip(wires, raws, stamps, strict=True)
        ]
    return [_checked(raw, stamp, now) for raw, stamp in zip(raws, stamps, strict=True)]


def _checked(raw: bytes | None, stamp: int | None, now: float) -> ClickEvent | InvalidEvent:
    try:
        return parse_event(raw, default_ts=record_time(stamp), now=now)
    except InvalidEvent as exc:
        return exc


def _wire(raw: bytes | None) -> WireClick | None:
    """The typed decoding of a value, None when msgspec does not accept it as it is."""
    if raw is None or len(raw) > MAX_EVENT_BYTES:
        return None
    try:
        return _wire_click.decode(raw)
    except Exception:  # e.g. RecursionError, deeply nested: the checked path decides
        return None


def _typed(wire: WireClick | None, now: float | None) -> ClickEvent | None:
    """The event of a typed decoding when it passes the checks msgspec does not make."""
    if (
        wire is not None
        and wire.ts is not None  # absent or null: the checks of event_from_dict decide
        and ts_in_range(wire.ts, now)
        and wire.tenant in _valid_tenants
        and not has_control(wire.session_id)
        and not has_control(wire.item_id)
        and (wire.event_id is None or not has_control(wire.event_id))
        and (wire.user_id is None or not has_control(wire.user_id))
    ):
        return tuple.__new__(ClickEvent, astuple(wire))  # the fields in the same order
    return None


_ts = attrgetter("ts")
_tenant = attrgetter("tenant")
_ids = attrgetter("session_id", "item_id")
_optional_ids = attrgetter("event_id", "user_id")


def _any_control(raws: Sequence[bytes], wires: list[WireClick]) -> bool:
    """Does any id of ``wires`` (decoded from ``raws``) hold a control character?

    JSON strings cannot hold raw bytes below 0x20 (msgspec refuses them), so such a
    character comes from an escape (a backslash) or is a raw DEL: without either in the
    batch's bytes, no id holds one. Else one search over all the ids."""
    joined = b"".join(raws)
    if b"\\" not in joined and b"\x7f" not in joined:
        return False
    ids = "".join(chain.from_iterable(map(_ids, wires)))
    optional = "".join(filter(None, chain.from_iterable(map(_optional_ids, wires))))
    return has_control(ids) or has_control(optional)


def _decode(raw: bytes | None) -> Any:
    """The JSON in one message value, within the size limit; :class:`InvalidEvent` if not."""
    if raw is None:
        raise InvalidEvent("empty message (no value)")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"message larger than {MAX_EVENT_BYTES} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson rejects invalid UTF-8 too; say which it was.
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent("value is not valid UTF-8") from None
        raise InvalidEvent(f"value is not valid JSON: {exc}") from None


# Scores in recommendation records (the topic's and HTTP's): digits past these say nothing
# to a consumer (the list's order is the ranking) and cost the broker bytes that compress
# badly.
SCORE_DECIMALS = 4


class _Item(msgspec.Struct):
    item_id: str
    score: float


class _SourcedItem(msgspec.Struct):
    item_id: str
    score: float
    source: str


class _Record(msgspec.Struct):
    """A recommendation record, its fields in the contract's order."""

    tenant: str
    session_id: str
    event_id: str
    rec_id: str | None
    trigger_item: str
    items: list[_Item] | list[_SourcedItem]
    model_version: str | None
    variant: str | None
    strategy: str
    event_ts: float
    emitted_ts: float


class RecommendationWriter:
    """Serialises recommendation records (topic ``recommendations``).

    msgspec encodes a record from structs built in C calls: cheaper than filling dicts
    for orjson, whose every call costs more than msgspec's whole record here
    (benchmarks/batch_parts.py shows what a batch spends on its records). A list given
    already encoded (``items_json``, from :func:`items_json`) is written as it is."""

    def __init__(self) -> None:
        self._encode = msgspec.json.Encoder().encode

    def __call__(
        self,
        event: ClickEvent,
        event_id: str,
        item_ids: list[str],
        scores: list[float],
        strategy: str,
        model_version: str | None,
        emitted_ts: float,
        rec_id: str | None = None,
        variant: str | None = None,
        sources: list[str] | None = None,
        items_json: bytes | None = None,
    ) -> bytes:
        items: Any
        if items_json is not None:
            items = msgspec.Raw(items_json)
        elif sources is None:
            items = list(map(_Item, item_ids, scores))
        else:  # HTTP answers
            triples = zip(item_ids, scores, sources, strict=True)
            items = [_SourcedItem(i, score, source) for i, score, source in triples]
        return self._encode(
            _Record(
                event.tenant,
                event.session_id,
                event_id,
                rec_id,
                event.item_id,
                items,
                model_version,
                variant,
                strategy,
                event.ts,
                emitted_ts,
            )
        )


class _ItemHeads(NamedTuple):
    """Each model item's record entry up to its score, ``{"item_id":"...","score":``, as
    msgspec writes it: item r is ``data[starts[r]:starts[r + 1]]``, empty for an id that
    cannot be encoded (a lone surrogate)."""

    data: np.ndarray  # uint8
    starts: np.ndarray  # int64 [items + 1]


def _item_heads(bundle: ModelBundle) -> _ItemHeads:
    """The bundle's item heads, made once per bundle."""
    made = bundle.derived.get("record_items")
    if made is None:
        # An item's entry as the writer encodes it, cut before its score.
        encode, score = msgspec.json.encode, len(b"0.0}")
        parts = []
        for item_id in bundle.items.tolist():
            try:
                parts.append(encode(_Item(item_id, 0.0))[:-score])
            except UnicodeEncodeError:
                parts.append(b"")
        starts = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(list(map(len, parts)), out=starts[1:])
        data = np.frombuffer(b"".join(parts), dtype=np.uint8)
        made = bundle.derived["record_items"] = _ItemHeads(data, starts)
    return made


def items_json(
    bundle: ModelBundle, items: np.ndarray, scores: np.ndarray, decimals: int = SCORE_DECIMALS
) -> list[bytes | None]:
    """The ``items`` array of each ranked row as a record carries it, in one compiled
    pass: the same bytes as the writer's own (``RecommendationWriter``). ``items``: model
    rows (int64 [rows, k], a row ending at its first -1), ``scores``: rounded to
    ``decimals`` (``ndarray.round``). None for a row the pass cannot write (an id that
    cannot be encoded, a score it does not write as msgspec does): the writer's way."""
    heads = _item_heads(bundle)
    data, ends, done = json_rows(heads.data, heads.starts, items, scores, 10**decimals, decimals)
    out = data.tobytes()
    starts = [0, *ends.tolist()]
    return [
        out[a:b] if ok else None
        for a, b, ok in zip(starts, starts[1:], done.tolist(), strict=False)
    ]


FEEDBACK_TYPES = ("click", "add_to_cart", "purchase")


class FeedbackEvent(NamedTuple):
    """Explicit feedback on a recommendation (topic ``feedback``, key = session id)."""

    tenant: str
    session_id: str
    item_id: str
    type: str
    ts: float
    rec_id: str | None = None

    def to_json(self) -> bytes:
        d: dict[str, Any] = {
            "tenant": self.tenant,
            "session_id": self.session_id,
            "item_id": self.item_id,
            "type": self.type,
            "ts": self.ts,
        }
        if self.rec_id is not None:
            d["rec_id"] = self.rec_id
        return orjson.dumps(d)


def feedback_from_dict(
    data: Any, *, default_ts: float | None = None, now: float | None = None
) -> FeedbackEvent:
    """Validate decoded feedback by the rules of a click; raises :class:`InvalidEvent`."""
    if not isinstance(data, dict):
        raise InvalidEvent(f"feedback must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in FEEDBACK_TYPES:
        raise InvalidEvent(f"field 'type' must be one of {', '.join(FEEDBACK_TYPES)}")
    # The click rules for tenant, ids and ts (event_type is not part of feedback).
    click = event_from_dict(
        {k: v for k, v in data.items() if k != "event_type"}, default_ts=default_ts, now=now
    )
    return FeedbackEvent(
        click.tenant,
        click.session_id,
        click.item_id,
        kind,
        click.ts,
        _id_field(data, "rec_id", required=False),
    )


def parse_feedback(
    raw: bytes | None, *, default_ts: float | None = None, now: float | None = None
) -> FeedbackEvent:
    """Decode and validate one feedback message value; raises :class:`InvalidEvent`."""
    return feedback_from_dict(_decode(raw), default_ts=default_ts, now=now)
