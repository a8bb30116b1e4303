"""Hostile click payloads built as raw bytes, structures rather than values: nesting to
tens of thousands of levels, huge arrays, integers far beyond 64 bits, duplicate keys,
NaN/Infinity literals, lone surrogates (escaped and raw), byte order marks, arbitrary
bytes and a wrong type at every field.

Each goes through the three readers of a click: the worker's parser, the trainer's log
reader and the HTTP body parser. They must decide alike (the same click, or a
rejection) and never raise anything but their own rejection."""

from __future__ import annotations

import contextlib
import math
import time

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from models.names import is_id, is_tenant
from stream.api.server import ApiError, parse_records
from stream.api.tenant import _click
from stream.events import (
    MAX_EVENT_BYTES,
    ClickEvent,
    InvalidEvent,
    event_from_dict,
    parse_event,
    parse_feedback,
)
from stream.kafka.click_log import click_of

MIN_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
DAY = 86_400.0

HOSTILE = settings(
    max_examples=1_500,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

FIELDS = ("tenant", "session_id", "item_id", "ts", "event_type", "event_id", "user_id")


def _now() -> float:
    return float(int(time.time()))


# -- values, as JSON text -------------------------------------------------------------------
def _string(body: bytes) -> bytes:
    return b'"' + body + b'"'


fine_strings = st.sampled_from([b"s-1", b"A13", b"default", b"shop", b"x:y", b"\\u00e9t\\u00e9"])
hostile_strings = st.sampled_from(
    [
        b"\\ud800",  # lone high surrogate, escaped
        b"\\udc00",  # lone low surrogate
        b"a\\ud800b",
        b"\\ud800\\u0041",  # high surrogate followed by no low one
        b"\\ud83d\\ude00",  # a valid pair (an emoji)
        b"\xed\xa0\x80",  # a surrogate as raw (invalid) UTF-8
        b"\xff\xfe",
        b"\xc3",  # truncated UTF-8
        b"\xef\xbb\xbf",  # a BOM inside a string
        b"\\u0000",
        b"a\x01b",  # a raw control character
        b"\\n",
        b"",
        b"x" * 300,
        b"\\x",
        b"a\\",
    ]
)
strings = st.one_of(fine_strings, hostile_strings).map(_string)
big_ints = st.integers(min_value=1, max_value=400).flatmap(
    lambda n: st.sampled_from([b"", b"-"]).map(lambda sign: sign + b"9" * n)
)
literals = st.sampled_from(
    [
        b"NaN",
        b"-NaN",
        b"Infinity",
        b"-Infinity",
        b"1e400",
        b"-1e400",
        b"1e-400",
        b"true",
        b"false",
        b"null",
        b"-0",
        b"-0.0",
        b"01",
        b"1.",
        b".5",
        b"+1",
        b"0x10",
        b"1e",
        b"tru",
    ]
)


@st.composite
def timestamps(draw: st.DrawFn) -> bytes:
    now = _now()
    good = [MIN_TS, MIN_TS + 0.5, now - 3600.0, now, now + DAY - 60.0]
    value = draw(
        st.sampled_from(good)
        | st.sampled_from(
            [
                0.0,
                1.0,
                MIN_TS - 1.0,
                MIN_TS,
                MIN_TS + 0.5,
                now - 3600.0,
                now,
                now + DAY - 60.0,
                now + DAY + 60.0,
                1e12,
                1e308,
                -1.0,
            ]
        )
    )
    as_int = draw(st.booleans()) and value.is_integer()
    return str(int(value)).encode() if as_int else orjson.dumps(value)


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """Containers nested 1 to 50,000 levels deep (no JSON encoder builds these)."""
    depth = draw(st.one_of(st.integers(1, 300), st.integers(300, 3_000), st.integers(1, 50_000)))
    kind = draw(st.sampled_from(["list", "object", "mixed"]))
    leaf = draw(st.sampled_from([b"", b"1", b'"x"', b"null"]))
    if kind == "list":
        return b"[" * depth + leaf + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + (leaf or b"0") + b"}" * depth
    return b'[{"a":' * (depth // 2 + 1) + (leaf or b"0") + b"}]" * (depth // 2 + 1)


@st.composite
def huge_arrays(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 12_000))
    item = draw(st.sampled_from([b"0", b"1.5", b'""', b"null", b"[]", b"{}"]))
    return b"[" + b",".join([item] * n) + b"]"


values = st.one_of(
    strings, timestamps(), big_ints, literals, nested(), huge_arrays(), st.just(b"{}")
)


# -- clicks ---------------------------------------------------------------------------------
@st.composite
def clicks(draw: st.DrawFn) -> bytes:
    """A click's members, each possibly given a hostile value, duplicated, dropped or
    joined by extra ones; then perhaps framed by a BOM, whitespace or garbage."""
    members: list[tuple[bytes, bytes]] = [
        (b"session_id", b'"s-1"'),
        (b"item_id", b'"A13"'),
    ]
    if draw(st.integers(0, 4)):
        members.append((b"ts", draw(timestamps())))
    for name in (b"tenant", b"event_type", b"event_id", b"user_id"):
        if draw(st.integers(0, 3)) == 0:
            members.append((name, draw(strings)))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(members) - 1))
        action = draw(st.sampled_from(["replace", "duplicate", "drop", "extra", "extra"]))
        name = members[i][0]
        if action == "replace":
            members[i] = (name, draw(values))
        elif action == "duplicate":
            members.insert(draw(st.integers(0, len(members))), (name, draw(values)))
        elif action == "drop":
            del members[i]
            if not members:
                members.append((b"session_id", b'"s"'))
        else:
            key = draw(st.one_of(strings, st.sampled_from([_string(f.encode()) for f in FIELDS])))
            members.append((key[1:-1], draw(values)))
    body = b"{" + b",".join(_string(k) + b":" + v for k, v in members) + b"}"
    frame = draw(
        st.sampled_from(["none"] * 8 + ["bom", "bom16", "space", "pad", "trail", "cut", "array"])
    )
    if frame == "bom":
        body = b"\xef\xbb\xbf" + body
    elif frame == "bom16":
        body = b"\xff\xfe" + body
    elif frame == "space":
        body = b" \n\t" + body + b"\r\n"
    elif frame == "pad":  # over the size limit by whitespace alone
        body = body + b" " * (MAX_EVENT_BYTES + 1 - len(body))
    elif frame == "trail":
        body = body + draw(st.sampled_from([b"x", b"}", b"\x00", b",{}", b"{}"]))
    elif frame == "cut":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif frame == "array":
        body = b"[" + body + b"]"
    return body


payloads = st.one_of(
    clicks(),
    clicks(),
    clicks(),
    nested(),
    huge_arrays(),
    values,
    st.binary(max_size=300),
)


# -- the three readers ----------------------------------------------------------------------
def _worker(raw: bytes, stamp: float) -> ClickEvent | str:
    try:
        event = parse_event(raw, default_ts=stamp)
    except InvalidEvent as exc:
        assert exc.reason, "a rejection names its reason"
        return "rejected"
    _check_contract(event)
    return event


def _trainer(raw: bytes, stamp: float) -> ClickEvent | str:
    event = click_of(raw, int(stamp * 1000))
    return "rejected" if event is None else event


def _http(raw: bytes, stamp: float, tenant: str = "default") -> list[ClickEvent] | str:
    try:
        return parse_records(raw, tenant, _click, ("event", "events"), stamp)
    except ApiError as exc:
        assert exc.status in (400, 413) and exc.reason
        return "rejected"


def _check_contract(event: ClickEvent) -> None:
    assert is_tenant(event.tenant)
    assert is_id(event.session_id) and is_id(event.item_id)
    assert type(event.ts) is float and math.isfinite(event.ts)
    assert MIN_TS <= event.ts <= time.time() + DAY
    event.to_json()  # every accepted click can be written out again


def _as_posted(event: ClickEvent, posted: ClickEvent) -> ClickEvent:
    """HTTP assigns an event id when the click has none."""
    return posted._replace(event_id=None) if event.event_id is None else posted


@HOSTILE
@given(payloads)
@example(b'{"session_id":"s","item_id":"i","x":' + b"[" * 3000 + b"]" * 3000 + b"}")
@example(b'{"session_id":"s","item_id":"i","ts":1e9,"x":' + b"[" * 900 + b"]" * 900 + b"}")
@example(b'{"session_id":"s","item_id":"i","ts":1e9,"x":"\xff"}')
@example(b'{"session_id":"s","item_id":"i","ts":1e9,"x":1e400}')
@example(b'{"session_id":"s","item_id":"i","ts":0}')
@example(b'{"session_id":"s","item_id":"i","ts":1e308}')
@example(b'{"session_id":"s","item_id":"i","ts":1e9}' + b" " * MAX_EVENT_BYTES)
@example(b'{"session_id":"s","item_id":"i","tenant":' + b"[" * 1000 + b"]" * 1000 + b"}")
@example(
    b'[{"session_id":"s","item_id":"i","x":' + b"[" * 300 + b"]" * 300 + b"}" + b" " * 17000 + b"]"
)
def test_worker_trainer_and_http_decide_alike_and_never_raise(raw: bytes) -> None:
    stamp = _now() - 60.0  # the Kafka record's timestamp / the HTTP request's time
    worker = _worker(raw, stamp)
    assert _trainer(raw, stamp) == worker
    with contextlib.suppress(InvalidEvent):  # feedback: the same decoding, never raises
        parse_feedback(raw, default_ts=stamp)
    # Over HTTP the tenant is the URL's: the one the worker found, if it took the click.
    posted = _http(raw, stamp, "default" if worker == "rejected" else worker.tenant)
    if raw.lstrip(b" \t\r\n").startswith(b"["):
        # HTTP takes an array of clicks; the worker takes one object per message.
        assert worker == "rejected"
        if posted != "rejected":
            for data, event in zip(orjson.loads(raw), posted, strict=True):
                alone = _worker(orjson.dumps(data), stamp)
                assert alone != "rejected" and _as_posted(alone, event) == alone
        return
    if worker == "rejected":
        assert posted == "rejected", posted
    else:
        assert posted != "rejected", worker
        (event,) = posted
        assert _as_posted(worker, event) == worker


def test_a_click_nested_thousands_of_levels_deep_is_rejected_everywhere() -> None:
    for depth in (2_000, 3_000, 7_000, 50_000):
        raw = b'{"session_id":"s","item_id":"i","x":' + b"[" * depth + b"]" * depth + b"}"
        stamp = _now()
        assert _worker(raw, stamp) == _trainer(raw, stamp) == _http(raw, stamp) == "rejected"


def test_ts_outside_2000_to_a_day_ahead_is_out_of_range() -> None:
    now = time.time()
    for ts in (0.0, 1.0, MIN_TS - 0.001, now + DAY + 60, 1e12, 1e308):
        raw = orjson.dumps({"session_id": "s", "item_id": "i", "ts": ts})
        try:
            parse_event(raw)
        except InvalidEvent as exc:
            assert exc.reason == "ts out of range", (ts, exc.reason)
        else:
            raise AssertionError(f"ts={ts} accepted")
        try:
            parse_records(raw, "default", _click, ("event", "events"), now)
        except ApiError as exc:
            assert exc.status == 400 and "ts out of range" in exc.reason
        else:
            raise AssertionError(f"ts={ts} accepted over HTTP")
    for ts in (MIN_TS, now - 1.0, now + DAY - 60):
        raw = orjson.dumps({"session_id": "s", "item_id": "i", "ts": ts})
        assert parse_event(raw).ts == ts


def test_a_click_without_ts_takes_the_kafka_records_timestamp() -> None:
    raw = b'{"session_id":"s","item_id":"i"}'
    stamp_ms = int(time.time() * 1000) - 5_000
    event = click_of(raw, stamp_ms)
    assert event is not None and event.ts == stamp_ms / 1000
    # A record timestamp outside the range is as bad as such a ts.
    assert click_of(raw, 0) is None
    assert click_of(raw, None) is None  # no timestamp at all: missing ts


def _deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


python_values = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
    st.integers(0, 5_000).map(_deep_list),
    st.just(b"bytes"),
    st.just(object()),
)


@HOSTILE
@given(
    st.fixed_dictionaries(
        {"session_id": st.just("s") | python_values, "item_id": st.just("i") | python_values},
        optional={f: python_values for f in FIELDS if f not in ("session_id", "item_id")},
    )
)
@example({"session_id": "s", "item_id": "i", "ts": 10**400})
@example({"session_id": "s", "item_id": "i", "ts": -(10**400)})
@example({"session_id": "s", "item_id": "i", "ts": float("nan")})
def test_an_apps_dict_is_accepted_or_rejected_with_a_reason(data: dict) -> None:
    """What an app hands the producer helper (any Python values, not only JSON's)."""
    try:
        event = event_from_dict(data, default_ts=time.time())
    except InvalidEvent as exc:
        assert exc.reason
    else:
        _check_contract(event)
