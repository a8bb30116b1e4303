"""Fuzzing the parsers with hypothesis: every payload is either accepted (and then
satisfies the contract) or rejected with InvalidEvent and a reason; nothing else is ever
raised. At least 10,000 generated payloads per parser (bounded: a few seconds each)."""

from __future__ import annotations

import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.names import is_id, is_tenant
from stream.events import (
    MAX_EVENT_BYTES,
    InvalidEvent,
    _decode,
    event_from_dict,
    feedback_from_dict,
    parse_event,
    parse_events,
    parse_feedback,
    record_time,
)

EXAMPLES = 10_000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "A13", "s-1", "x:y", "a\n", "\x00", "é", "{", "a" * 300, "default"]),
)
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # what JSON encoders emit
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
# Near-valid objects (the interesting cases) mixed with arbitrary JSON values.
click_like = st.fixed_dictionaries(
    {},
    optional={
        "tenant": st.one_of(text, scalar),
        "session_id": st.one_of(text, scalar),
        "item_id": st.one_of(text, scalar),
        "ts": scalar,
        "event_type": st.one_of(text, scalar),
        "event_id": st.one_of(text, scalar),
        "user_id": st.one_of(text, scalar),
        "type": st.one_of(st.sampled_from(["click", "add_to_cart", "purchase"]), scalar),
        "rec_id": st.one_of(text, scalar),
        "extra": json_value,
    },
)
payload = st.one_of(click_like, click_like, json_value)
raw_bytes = st.one_of(
    st.binary(max_size=200),
    payload.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)).filter(bool),
)


def _checked(parse, value) -> str:  # noqa: ANN001
    try:
        event = parse(value)
    except InvalidEvent as exc:
        assert exc.reason, "a rejection names its reason"
        return "rejected"
    assert is_tenant(event.tenant)
    assert is_id(event.session_id) and is_id(event.item_id)
    assert isinstance(event.ts, float) and math.isfinite(event.ts)
    return "accepted"


# Each test sees EXAMPLES payloads: objects (as an HTTP body's events) and raw bytes (as
# a Kafka message's value).
either = st.one_of(payload.map(lambda v: ("dict", v)), raw_bytes.map(lambda v: ("raw", v)))


@FUZZ
@given(either)
def test_click_parser_accepts_or_rejects_with_a_reason(case: tuple[str, object]) -> None:
    kind, value = case
    if kind == "dict":
        _checked(lambda v: event_from_dict(v, default_ts=1.0), value)
    else:
        if _checked(lambda v: parse_event(v, default_ts=1.0), value) == "accepted":
            assert len(value) <= MAX_EVENT_BYTES  # type: ignore[arg-type]
        # parse_event decodes with msgspec first: it must accept exactly what the checks
        # of event_from_dict accept, with the same event, and reject with their reason.
        for default_ts in (None, 1.0):
            typed = _outcome(parse_event, value, default_ts)
            assert typed == _outcome(_checks_only, value, default_ts)


@settings(max_examples=EXAMPLES // 10, deadline=None, database=None)
@given(st.lists(st.tuples(raw_bytes, st.sampled_from([None, 1_700_000_000_000])), max_size=8))
def test_a_batch_parses_as_its_values_one_by_one(batch: list[tuple[bytes, int | None]]) -> None:
    """The batch's checks (made once over all its values) decide as each value's."""
    now = 1_700_000_000.0
    raws, stamps = [raw for raw, _ in batch], [stamp for _, stamp in batch]
    got = [
        exc.reason if isinstance(exc, InvalidEvent) else (type(exc), exc)
        for exc in parse_events(raws, stamps, now)
    ]
    alone = []
    for raw, stamp in batch:
        try:
            event = parse_event(raw, default_ts=record_time(stamp), now=now)
        except InvalidEvent as exc:
            alone.append(exc.reason)
        else:
            alone.append((type(event), event))
    assert got == alone


def _checks_only(raw: bytes, default_ts: float | None) -> object:
    return event_from_dict(_decode(raw), default_ts=default_ts)


def _outcome(parse, raw: bytes, default_ts: float | None) -> object:  # noqa: ANN001
    try:
        return parse(raw, default_ts=default_ts)
    except InvalidEvent as exc:
        return exc.reason


@FUZZ
@given(either)
def test_feedback_parser_accepts_or_rejects_with_a_reason(case: tuple[str, object]) -> None:
    kind, value = case
    parse = feedback_from_dict if kind == "dict" else parse_feedback
    try:
        event = parse(value, default_ts=1.0)  # type: ignore[arg-type]
    except InvalidEvent as exc:
        assert exc.reason
        return
    assert is_tenant(event.tenant) and is_id(event.session_id) and is_id(event.item_id)
