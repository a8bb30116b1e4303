from __future__ import annotations

import time

import orjson
import pytest

from stream.events import (
    MAX_EVENT_BYTES,
    ClickEvent,
    InvalidEvent,
    RecommendationWriter,
    parse_event,
    parse_events,
    record_time,
)


def test_valid_event_round_trips() -> None:
    event = ClickEvent("shop-1", "s-42", "A13", 1700000000.25, "view", "e1", "u1")
    assert parse_event(event.to_json()) == event


def test_defaults_for_optional_fields() -> None:
    event = parse_event(b'{"session_id": "s", "item_id": "i", "ts": 1700000005}')
    assert (event.tenant, event.event_type, event.event_id, event.ts) == (
        "default",
        "view",
        None,
        1700000005.0,
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty message"),
        (b"{nope", "not valid JSON"),
        (b'{"session_id": "s", "item_id": "\xff", "ts": 1}', "not valid UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"item_id": "i", "ts": 1}', "missing field 'session_id'"),
        (b'{"session_id": "s", "ts": 1}', "missing field 'item_id'"),
        (b'{"session_id": 3, "item_id": "i", "ts": 1}', "'session_id' must be a string"),
        (b'{"session_id": "s", "item_id": "", "ts": 1}', "'item_id' is empty"),
        (b'{"session_id": "s", "item_id": "i", "ts": "yesterday"}', "'ts' must be"),
        (b'{"session_id": "s", "item_id": "i", "ts": true}', "'ts' must be"),
        (b'{"session_id": "s", "item_id": "i", "ts": -1}', "ts out of range"),
        (b'{"session_id": "s", "item_id": "i", "ts": 946684799.9}', "ts out of range"),
        (b'{"session_id": "s", "item_id": "i"}', "missing field 'ts'"),
        (b'{"tenant": "a b", "session_id": "s", "item_id": "i", "ts": 1}', "'tenant' must match"),
        (b'{"tenant": "../x", "session_id": "s", "item_id": "i", "ts": 1}', "'tenant' must match"),
        # A full match: "$" would let a trailing newline through, as one tenant more.
        (b'{"tenant": "shop\\n", "session_id": "s", "item_id": "i", "ts": 1}', "'tenant' must"),
        (b'{"tenant": ["x"], "session_id": "s", "item_id": "i", "ts": 1}', "'tenant' must match"),
        (b'{"session_id": "s", "item_id": "i", "ts": NaN}', "not valid JSON"),
        (orjson.dumps({"session_id": "s", "item_id": "x" * 300, "ts": 1}), "longer than"),
        (orjson.dumps({"session_id": "s", "item_id": "x" * MAX_EVENT_BYTES, "ts": 1}), "larger"),
        (b'{"session_id": "s", "item_id": "i", "ts": 1, "event_type": 7}', "'event_type'"),
        (b'{"session_id": "s", "item_id": "a\\u001fb", "ts": 1}', "control characters"),
        # Each field once more where the typed decoder (msgspec) would accept the shape.
        (b'{"session_id": "a\\nb", "item_id": "i", "ts": 1}', "'session_id' contains control"),
        (b'{"session_id": "s", "item_id": "i", "ts": 1, "event_id": "\\u0000"}', "'event_id'"),
        (b'{"session_id": "s", "item_id": "i", "ts": 1, "user_id": "u\\u007f"}', "'user_id'"),
        (b'{"session_id": "s", "item_id": "i", "ts": 1, "event_id": ""}', "'event_id' is empty"),
        (
            orjson.dumps({"session_id": "s", "item_id": "i", "ts": 1, "user_id": "u" * 300}),
            "longer",
        ),
        (b'{"session_id": "s", "item_id": "i", "ts": null}', "missing field 'ts'"),
        (b'{"session_id": "s", "item_id": "i", "ts": 1e400}', "not valid JSON"),
        (b'{"tenant": null, "session_id": "s", "item_id": "i", "ts": 1}', "'tenant' must match"),
        (b'{"session_id": "s", "item_id": "i", "ts": 1, "event_type": ""}', "'event_type'"),
    ],
)
def test_invalid_events_name_the_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    assert reason in info.value.reason


def test_recommendation_json_follows_the_contract() -> None:
    click = ClickEvent("t", "s", "A1", 1.0)
    data = orjson.loads(
        RecommendationWriter()(
            click, "e", ["B2", "C3"], [0.5, 0.25], "embedding", "v3", 2.0, "v3-x-1", "v3"
        )
    )
    assert set(data) == {
        "tenant",
        "session_id",
        "event_id",
        "rec_id",
        "variant",
        "trigger_item",
        "items",
        "model_version",
        "strategy",
        "event_ts",
        "emitted_ts",
    }
    assert data["items"] == [{"item_id": "B2", "score": 0.5}, {"item_id": "C3", "score": 0.25}]
    assert (data["tenant"], data["session_id"], data["trigger_item"], data["event_ts"]) == (
        "t",
        "s",
        "A1",
        1.0,
    )
    assert (data["rec_id"], data["variant"]) == ("v3-x-1", "v3")


def test_reused_writer_gives_the_same_records_as_a_fresh_one() -> None:
    click = ClickEvent("default", "s1", "A1", 1.0, event_id="e1")
    write = RecommendationWriter()
    cases = [(["B", "C", "D"], [0.3, 0.2, 0.1]), (["E"], [0.9]), ([], []), (["F", "G"], [1, 2])]
    for ids, scores in cases * 2:
        got = write(click, "e1", ids, scores, "embedding", "v1", 2.0)
        assert got == RecommendationWriter()(click, "e1", ids, scores, "embedding", "v1", 2.0)
        assert orjson.loads(got)["items"] == [
            {"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)
        ]


def _one(raw: bytes | None, stamp: int | None, now: float) -> object:
    try:
        event = parse_event(raw, default_ts=record_time(stamp), now=now)
    except InvalidEvent as exc:
        return ("invalid", exc.reason)
    return (type(event), event)


def _outcome(got: object) -> object:
    return ("invalid", got.reason) if isinstance(got, InvalidEvent) else (type(got), got)


def test_a_batch_parses_as_its_values_one_by_one() -> None:
    now = time.time()
    good = [
        ClickEvent("default", f"s{i}", f"A{i}", now - i, "view", f"e{i}", "u1" if i else None)
        for i in range(4)
    ]
    values = [e.to_json() for e in good]
    cases = [
        values,  # all valid: checked once for the batch
        [*values, b'{"session_id": "s", "item_id": "a\\u001fb", "ts": %d}' % now],
        [*values, b'{"session_id": "s", "item_id": "i", "ts": 1, "user_id": "\\u007f"}'],
        [*values, b'{"session_id": "s", "item_id": "i", "ts": 1}'],  # out of range
        [*values, b'{"session_id": "s", "item_id": "i"}'],  # no ts: its Kafka timestamp
        [*values, b'{"session_id": "s", "item_id": "i", "ts": null}'],
        [*values, b'{"session_id": "a\x7fb", "item_id": "i", "ts": %d}' % now],  # a raw DEL
        [*values, b'{"session_id": "a\\"b\\u00e9", "item_id": "i", "ts": %d}' % now],
        [*values, b'{"tenant": "shop-never-seen-1", "session_id": "s", "item_id": "i"}'],
        [None, b"{nope", *values, b"[1]", b'{"session_id": "s", "item_id": "", "ts": 1}'],
        [orjson.dumps({"session_id": "s", "item_id": "x" * MAX_EVENT_BYTES, "ts": 1})],
        [],
    ]
    for batch in cases:
        stamps = [int(now * 1000) - 5_000, None] * len(batch)
        stamps = stamps[: len(batch)]
        got = parse_events(batch, stamps, now)
        assert [_outcome(g) for g in got] == [
            _one(raw, stamp, now) for raw, stamp in zip(batch, stamps, strict=True)
        ]
    assert [_outcome(g) for g in parse_events(values, [None] * 4, now)] == [
        (ClickEvent, e) for e in good
    ]
