"""One bad record never stops a batch: whatever goes wrong with it (decoding, admitting
its tenant, ranking, writing its record out) dead-letters that record with a reason and
the others are answered; only the loop's own infrastructure (Redis) stops the batch.

The store, models and tenants are in-memory fakes; ranking is a fake that fails for the
sessions holding a chosen item."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import stream.pipeline.processor as processor_module
from models.errors import StreamrecError
from models.ranking import Ranked
from models.rules import Catalogue, ServingRules
from state.feedback import FeedbackRecorder
from state.keys import ITEM_SEP
from state.sessions import SessionUpdate
from stream.pipeline.processor import BatchProcessor, BatchResult

DEEP = b'{"session_id":"s","item_id":"i","x":' + b"[" * 3000 + b"]" * 3000 + b"}"


class Store:
    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], list[str]] = {}
        self.fail: BaseException | None = None

    async def append_clicks(
        self, events: Sequence[Any], count_for: Any, origins: Any, before: Any, arms: Any = None
    ) -> list[SessionUpdate]:
        if self.fail is not None:
            raise self.fail
        out = []
        for e in events:
            items = self.sessions.setdefault((e.tenant, e.session_id), [])
            if not items or items[-1] != e.item_id:
                items.append(e.item_id)
            out.append(SessionUpdate(True, ITEM_SEP.join(items)))
        return out

    def store_lists_commands(self, lists: Any) -> list[Any]:
        return []


class Models:
    bundle = SimpleNamespace(version="v1", items=None)

    async def get(self, tenant: str) -> Any:
        return self.bundle

    async def get_version(self, tenant: str, version: str) -> Any:
        return self.bundle

    async def without_model(self, tenants: Any) -> list[str]:
        return []


class Tenants:
    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.unreachable = False

    async def exists(self, tenant: str) -> bool:
        if self.unreachable:
            raise RedisConnectionError("Redis is away")
        return tenant == "default"

    async def create(self, tenant: str) -> None:
        if tenant in self.refuse:
            raise StreamrecError(f"cannot create {tenant}")

    async def mode(self, tenant: str) -> str:
        return "on"

    async def serving(self, tenant: str, bundle: Any) -> tuple[ServingRules, Catalogue, None]:
        return ServingRules(), Catalogue(), None

    async def popular(self, tenant: str) -> list[tuple[str, float]]:
        return []


def fake_ranking(flat: list[str], lengths: list[int]) -> list[Ranked]:
    """Ranks every session; fails for one holding the item "boom" (a bug of the ranking
    code), and answers one holding "surrogate" with an id that cannot be written as JSON
    (a damaged model)."""
    if "boom" in flat:
        raise ValueError("the kernel failed")
    out, start = [], 0
    for n in lengths:
        items = flat[start : start + n]
        start += n
        bad = "surrogate" in items
        out.append(Ranked(["\ud800" if bad else "R1", "R2"], [0.9, 0.5], "model"))
    return out


@pytest.fixture
def ranking(monkeypatch: pytest.MonkeyPatch) -> None:
    def recommend_flat(bundle: Any, flat: list[str], lengths: list[int], k: int, **_: Any) -> Any:
        return fake_ranking(flat, lengths)

    monkeypatch.setattr(processor_module, "recommend_flat", recommend_flat)


def _processor(feedback: bool) -> tuple[BatchProcessor, Store, Tenants]:
    store, tenants = Store(), Tenants()
    fb = FeedbackRecorder(bucket_s=60) if feedback else None
    proc = BatchProcessor(store, Models(), tenants, top_k=2, feedback=fb)  # type: ignore[arg-type]
    return proc, store, tenants


def _msg(offset: int, value: bytes | None, timestamp: int | None = None) -> SimpleNamespace:
    msg = SimpleNamespace(key=b"k", value=value, topic="clicks", partition=0, offset=offset)
    if timestamp is not None:
        msg.timestamp = timestamp
    return msg


def _click(session: str, item: str, event_id: str, **extra: Any) -> bytes:
    data = {"session_id": session, "item_id": item, "ts": time.time(), "event_id": event_id}
    return orjson.dumps({**data, **extra})


def _run(proc: BatchProcessor, batch: list[SimpleNamespace]) -> BatchResult:
    return asyncio.run(proc.process(batch))


def _answered(result: BatchResult) -> list[str]:
    return [orjson.loads(o.payload)["event_id"] for o in result.recommendations]


def _dead(result: BatchResult) -> dict[str, str]:
    return {d.source: d.reason for d in result.dead_letters}


@pytest.mark.parametrize("feedback", [False, True])
def test_a_poisoned_record_is_dead_lettered_and_the_batch_goes_on(
    ranking: None, feedback: bool
) -> None:
    proc, _, _ = _processor(feedback)
    batch = [
        _msg(0, _click("s1", "A", "e0")),
        _msg(1, DEEP),  # the decoder runs out of stack
        _msg(2, _click("s2", "A", "e2")),
        _msg(3, _click("s3", "boom", "e3")),  # the ranking raises for this session
        _msg(4, _click("s4", "B", "e4")),
        _msg(5, _click("s5", "surrogate", "e5")),  # its record cannot be serialised
        _msg(6, _click("s6", "C", "e6")),
    ]
    result = _run(proc, batch)
    assert sorted(_answered(result)) == ["e0", "e2", "e4", "e6"]
    dead = _dead(result)
    assert set(dead) == {"clicks:0:1", "clicks:0:3", "clicks:0:5"}
    assert "not valid JSON" in dead["clicks:0:1"]
    assert dead["clicks:0:3"] == "internal: ValueError"
    assert dead["clicks:0:5"] == "internal: UnicodeEncodeError"  # a lone surrogate
    # Each answered click points at its own message (for an undeliverable record).
    assert sorted(o.index for o in result.recommendations) == [0, 2, 4, 6]


def test_a_record_the_parser_chokes_on_is_dead_lettered_as_internal(
    ranking: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug the batch's parser hits (on any record) costs the batch nothing: its records
    are parsed one by one, and only the record the bug is in is dead-lettered."""
    real = processor_module.parse_event

    def parse_events(raws: list[bytes | None], *_: Any, **__: Any) -> Any:
        if b"choke" in raws:
            raise KeyError("a bug")
        raise AssertionError("the batch holds a choking record")

    def parse_event(raw: bytes | None, **kwargs: Any) -> Any:
        if raw == b"choke":
            raise KeyError("a bug")
        return real(raw, **kwargs)

    monkeypatch.setattr(processor_module, "parse_events", parse_events)
    monkeypatch.setattr(processor_module, "parse_event", parse_event)
    proc, _, _ = _processor(False)
    batch = [_msg(0, b"choke"), _msg(1, _click("s1", "A", "e1")), _msg(2, b"{nope")]
    result = _run(proc, batch)
    assert _answered(result) == ["e1"]
    dead = _dead(result)
    assert dead["clicks:0:0"] == "internal: KeyError"
    assert "not valid JSON" in dead["clicks:0:2"]


def test_a_tenant_that_cannot_be_created_dead_letters_its_records_only(ranking: None) -> None:
    proc, _, tenants = _processor(False)
    tenants.refuse.add("shop")
    result = _run(
        proc,
        [
            _msg(0, _click("s1", "A", "e0", tenant="shop")),
            _msg(1, _click("s1", "A", "e1")),
            _msg(2, _click("s2", "A", "e2", tenant="shop")),
        ],
    )
    assert _answered(result) == ["e1"]
    assert _dead(result) == {
        "clicks:0:0": "internal: StreamrecError",
        "clicks:0:2": "internal: StreamrecError",
    }


def test_redis_going_away_still_stops_the_batch_for_a_retry(ranking: None) -> None:
    proc, store, tenants = _processor(True)
    tenants.unreachable = True
    with pytest.raises(RedisConnectionError):
        _run(proc, [_msg(0, _click("s1", "A", "e0"))])
    tenants.unreachable = False
    store.fail = RedisConnectionError("Redis is away")
    with pytest.raises(RedisConnectionError):
        _run(proc, [_msg(0, _click("s1", "A", "e0"))])


def test_ranking_that_fails_on_its_infrastructure_stops_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def recommend_flat(*_: Any, **__: Any) -> Any:
        raise OSError("the model's file went away")

    monkeypatch.setattr(processor_module, "recommend_flat", recommend_flat)
    proc, _, _ = _processor(False)
    with pytest.raises(OSError):
        _run(proc, [_msg(0, _click("s1", "A", "e0"))])


def test_a_click_without_ts_takes_its_kafka_timestamp_and_ts_is_range_checked(
    ranking: None,
) -> None:
    proc, _, _ = _processor(False)
    stamp_ms = int(time.time() * 1000) - 2_000
    result = _run(
        proc,
        [
            _msg(0, b'{"session_id":"s1","item_id":"A","event_id":"e0"}', stamp_ms),
            _msg(1, _click("s2", "A", "e1", ts=0)),
            _msg(2, _click("s3", "A", "e2", ts=time.time() + 2 * 86_400)),
            _msg(3, b'{"session_id":"s4","item_id":"A","event_id":"e3"}', 0),
        ],
    )
    (record,) = [orjson.loads(o.payload) for o in result.recommendations]
    assert record["event_id"] == "e0" and record["event_ts"] == stamp_ms / 1000
    assert _dead(result) == {
        "clicks:0:1": "ts out of range",
        "clicks:0:2": "ts out of range",
        "clicks:0:3": "ts out of range",
    }
