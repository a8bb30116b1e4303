"""BatchProcessor alone: arm stickiness, hit attribution, serving rules, tenant modes and
per-record failures, with a real (tiny) model and in-memory collaborators.

The fakes implement the protocols of ``stream.pipeline.collaborators`` the way the Redis
classes do (the session log follows ``state.sessions.APPEND_LUA``); the feedback
recorder and the ranking are the real ones. No Redis, no Kafka.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from models.bundle import ModelBundle
from models.datasets import synthetic_sessions
from models.experiments import assignment_point, pick_arm
from models.rules import Catalogue, ServingRules, banned_mask
from models.train import TrainParams, train_model
from state.connection import UNAVAILABLE
from state.feedback import FeedbackRecorder, decode_list
from state.keys import ITEM_SEP, parse_counters
from state.sessions import Click, SessionUpdate, StoredSession
from stream.pipeline.collaborators import Commands, Lists, Policy
from stream.pipeline.processor import BatchProcessor, BatchResult

SHOP = "shop"
TOP_K = 10


# -- in-memory collaborators ---------------------------------------------------------------
@dataclass
class _Session:
    items: list[str] | bytes  # bytes: damaged in the store, they no longer decode
    event_ids: list[str]
    ts: float
    shown: str = ""  # the list shown last, as state.feedback encodes it ("" once consumed)
    arm: str | None = None  # the variant of the list consumed last


def _shown_by(s: _Session | None) -> str | None:
    """The arm a session names: its latest list's variant, else the consumed one's."""
    if s is None:
        return None
    return s.shown.split(ITEM_SEP)[0] if s.shown else s.arm


class MemorySessions:
    """The session log in dicts, by the rules of ``state.sessions.APPEND_LUA``: an event
    id applied before is not fresh; an item repeating the newest is not appended; a
    click consumes the list shown last, a hit when it holds the clicked item; the list's
    variant is the session's arm so far, else the arm a click gave the session when it
    had none. Commands: lists and counter increments."""

    def __init__(self, cap: int = 50) -> None:
        self.cap = cap
        self.sessions: dict[tuple[str, str], _Session] = {}
        self.counters: dict[str, Counter[str]] = {}  # counter key -> field -> total
        self.item_clicks: dict[str, Counter[str]] = {}  # tenants without a model
        self.unreachable = False
        # Sessions whose keys Redis refuses a command on, and with what (WRONGTYPE, OOM...).
        self.refused: dict[tuple[str, str], Exception] = {}

    async def append_clicks(
        self,
        clicks: Sequence[Click],
        count_for: Collection[str] = (),
        origins: Sequence[tuple[str, int]] | None = None,
        before: Sequence[list[str]] = (),
        arms: Sequence[str] | None = None,
    ) -> list[SessionUpdate]:
        for c in clicks:  # one refused command fails the whole round trip, as in Redis
            if (c.tenant, c.session_id) in self.refused:
                raise self.refused[(c.tenant, c.session_id)]
        await self.run(list(before))
        out = []
        for i, c in enumerate(clicks):
            key = (c.tenant, c.session_id)
            s = self.sessions.get(key)
            shown_by = _shown_by(s)
            if shown_by is None and arms and arms[i]:  # a session without an arm takes it
                if s is None:
                    s = self.sessions[key] = _Session([], [], c.ts)
                s.arm = shown_by = arms[i]
            if s is not None and c.event_id in s.event_ids:
                out.append(SessionUpdate(False, _joined(s), None, shown_by))
                continue
            if s is None:
                s = self.sessions[key] = _Session([], [], c.ts)
            items = _items(s)  # raises for a damaged session, as the Redis client would
            hit = s.shown if s.shown and c.item_id in decode_list(s.shown)[2] else None
            if s.shown:  # the consumed list's variant stays as the session's arm
                s.arm, s.shown = s.shown.split(ITEM_SEP)[0], ""
            if not items or items[-1] != c.item_id:
                items.append(c.item_id)
            s.items, s.ts = items[-self.cap :], c.ts
            s.event_ids.append(c.event_id)
            if c.tenant in count_for:
                self.item_clicks.setdefault(c.tenant, Counter())[c.item_id] += 1
            out.append(SessionUpdate(True, _joined(s), hit, shown_by))
        return out

    def store_lists_commands(self, lists: Lists) -> Commands:
        return [["LIST", tenant, sid, stored] for (tenant, sid), stored in lists.items()]

    async def run(self, commands: Commands) -> list[Any]:
        if self.unreachable:
            raise RedisConnectionError("Redis is away")
        for cmd in commands:
            if cmd[0] == "LIST":
                s = self.sessions.get((cmd[1], cmd[2]))
                if s is not None:  # an expired session is not brought back
                    s.shown = cmd[3]
            elif cmd[0] == "HINCRBY":
                self.counters.setdefault(cmd[1], Counter())[cmd[2]] += int(cmd[3])
            elif cmd[0] != "EXPIRE":
                raise ValueError(f"unknown command {cmd[0]}")
        return [None] * len(commands)

    async def session(self, tenant: str, session_id: str) -> StoredSession | None:
        s = self.sessions.get((tenant, session_id))
        if s is None:
            return None
        return StoredSession(_joined(s), s.event_ids[-1], s.ts, _shown_by(s))

    def damage(self, tenant: str, session_id: str) -> None:
        self.sessions[(tenant, session_id)] = _Session(b"\xff\xfe", [], 0.0)

    def totals(self, tenant: str) -> Counter[str]:
        """Every counter field of the tenant, summed over buckets."""
        out: Counter[str] = Counter()
        for key, fields in self.counters.items():
            if parse_counters(key)[0] == tenant:
                out.update(fields)
        return out


def _items(s: _Session) -> list[str]:
    if isinstance(s.items, bytes):
        joined = s.items.decode()
        return joined.split(ITEM_SEP) if joined else []
    return s.items


def _joined(s: _Session) -> str:
    return ITEM_SEP.join(_items(s))


@dataclass
class MemoryTenants:
    modes: dict[str, str] = field(default_factory=dict)
    rules: dict[str, ServingRules] = field(default_factory=dict)
    catalogues: dict[str, Catalogue] = field(default_factory=dict)
    popular_items: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    async def exists(self, tenant: str) -> bool:
        return tenant in self.modes

    async def create(self, tenant: str) -> None:
        self.modes.setdefault(tenant, "on")

    async def mode(self, tenant: str) -> str:
        return self.modes.get(tenant, "on")

    async def serving(
        self, tenant: str, bundle: ModelBundle | None
    ) -> tuple[ServingRules, Catalogue, np.ndarray | None]:
        rules = self.rules.get(tenant, ServingRules())
        catalogue = self.catalogues.get(tenant, Catalogue())
        mask = banned_mask(bundle.items, rules, catalogue) if bundle is not None else None
        return rules, catalogue, mask

    async def popular(self, tenant: str) -> list[tuple[str, float]]:
        return self.popular_items.get(tenant, [])


@dataclass
class MemoryModels:
    serving: dict[str, ModelBundle] = field(default_factory=dict)  # tenant -> in service
    arms: dict[tuple[str, str], ModelBundle] = field(default_factory=dict)

    async def get(self, tenant: str) -> ModelBundle | None:
        return self.serving.get(tenant)

    async def get_version(self, tenant: str, version: str) -> ModelBundle | None:
        current = self.serving.get(tenant)
        if current is not None and current.version == version:
            return current
        return self.arms.get((tenant, version))

    async def without_model(self, tenants: Collection[str]) -> list[str]:
        return [t for t in tenants if t not in self.serving]


@dataclass
class MemoryPolicies:
    policies: dict[str, Policy] = field(default_factory=dict)
    bandit: dict[str, dict[str, float]] = field(default_factory=dict)  # shares as computed

    async def get(self, tenant: str) -> Policy | None:
        policy = self.policies.get(tenant)
        return None if policy is None or policy["policy"] == "fixed" else policy

    def shares(self, tenant: str, policy: Policy) -> list[tuple[str, float]]:
        shares = self.bandit.get(tenant) if policy["policy"] == "bandit" else None
        return sorted((shares or policy["arms"]).items())

    def assign(self, tenant: str, session_id: str, shares: list[tuple[str, float]]) -> str:
        return pick_arm(assignment_point(tenant, session_id), shares)


# -- the world -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    sessions = synthetic_sessions(4000, 80, seed=3)
    model = train_model(sessions, TrainParams(epochs=2, n_clusters=4, n_neighbours=20, seed=1))
    return dataclasses.replace(model, version="v1")


@dataclass
class World:
    sessions: MemorySessions
    tenants: MemoryTenants
    models: MemoryModels
    policies: MemoryPolicies
    feedback: FeedbackRecorder | None
    processor: BatchProcessor
    offset: int = 0

    def run(self, clicks: Sequence[dict[str, Any] | bytes]) -> BatchResult:
        batch = []
        for c in clicks:
            value = c if isinstance(c, bytes) else orjson.dumps(c)
            batch.append(Msg(b"k", value, "clicks", 0, self.offset))
            self.offset += 1
        return asyncio.run(self.processor.process(batch))


@dataclass
class Msg:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


def world(
    bundle: ModelBundle | None,
    *,
    feedback: bool = True,
    sessions: MemorySessions | None = None,
    **options: Any,
) -> World:
    sessions, tenants = sessions or MemorySessions(), MemoryTenants(modes={SHOP: "on"})
    models, policies = MemoryModels(), MemoryPolicies()
    if bundle is not None:
        models.serving[SHOP] = bundle
    recorder = FeedbackRecorder(bucket_s=60) if feedback else None
    processor = BatchProcessor(
        sessions,
        models,
        tenants,
        top_k=TOP_K,
        policies=policies,
        feedback=recorder,
        **options,
    )
    return World(sessions, tenants, models, policies, recorder, processor)


def two_arms(w: World, bundle: ModelBundle, policy: str, arms: dict[str, float]) -> None:
    w.models.arms[(SHOP, "v2")] = dataclasses.replace(bundle, version="v2")
    w.policies.policies[SHOP] = {"policy": policy, "arms": arms}


_n = 0


def click(session: str, item: str, tenant: str = SHOP, event_id: str | None = None) -> dict:
    global _n
    _n += 1
    return {
        "tenant": tenant,
        "session_id": session,
        "item_id": item,
        "ts": time.time(),
        "event_id": event_id or f"e{_n}",
    }


def records(result: BatchResult) -> dict[str, dict[str, Any]]:
    """Each answered session's (latest) record."""
    return {o.session_id: orjson.loads(o.payload) for o in result.recommendations}


def dead(result: BatchResult) -> dict[int, str]:
    return {int(d.source.rsplit(":", 1)[1]): d.reason for d in result.dead_letters}


# -- arm stickiness ------------------------------------------------------------------------
def test_a_new_session_lands_on_the_arm_its_hash_point_falls_in(bundle: ModelBundle) -> None:
    w = world(bundle)
    two_arms(w, bundle, "ab", {"v1": 0.3, "v2": 0.7})
    sessions = [f"s{i}" for i in range(200)]
    served = records(w.run([click(s, bundle.item_list[0]) for s in sessions]))
    shares = [("v1", 0.3), ("v2", 0.7)]
    expected = {s: pick_arm(assignment_point(SHOP, s), shares) for s in sessions}
    assert {s: r["variant"] for s, r in served.items()} == expected
    assert set(expected.values()) == {"v1", "v2"}


def test_a_session_stays_on_its_arm_while_that_arm_has_a_share(bundle: ModelBundle) -> None:
    w = world(bundle)
    two_arms(w, bundle, "bandit", {"v1": 0.5, "v2": 0.5})
    old = [f"old{i}" for i in range(200)]
    item = bundle.item_list[0]
    first = {s: r["variant"] for s, r in records(w.run([click(s, item) for s in old])).items()}
    w.policies.bandit[SHOP] = {"v1": 0.1, "v2": 0.9}  # the bandit's shares move
    moved = [("v1", 0.1), ("v2", 0.9)]
    # Sessions whose hash point now falls in the other arm's slice: they must not move.
    would_move = [s for s in old if pick_arm(assignment_point(SHOP, s), moved) != first[s]]
    assert len(would_move) > 20
    new = [f"new{i}" for i in range(100)]
    second = records(w.run([click(s, bundle.item_list[1]) for s in old + new]))
    assert {s: second[s]["variant"] for s in old} == first
    assert {s: second[s]["variant"] for s in new} == {
        s: pick_arm(assignment_point(SHOP, s), moved) for s in new
    }
    # An arm without a share keeps nobody: its sessions go where their hash points fall.
    w.policies.bandit[SHOP] = {"v1": 0.0, "v2": 1.0}
    third = records(w.run([click(s, bundle.item_list[2]) for s in old]))
    assert {r["variant"] for r in third.values()} == {"v2"}


def test_a_click_delivered_again_after_a_crash_stays_on_its_arm(bundle: ModelBundle) -> None:
    w = world(bundle)
    two_arms(w, bundle, "bandit", {"v1": 0.5, "v2": 0.5})
    sessions, items = [f"s{i}" for i in range(200)], bundle.item_list
    first = {
        s: r["variant"] for s, r in records(w.run([click(s, items[0]) for s in sessions])).items()
    }
    # The second clicks consume the first lists; the worker dies before it writes the new
    # ones, and its successor is given the same clicks again while the shares have moved.
    again = [click(s, items[1], event_id=f"again-{s}") for s in sessions]
    w.run(again)
    successor = world(bundle, sessions=w.sessions)
    two_arms(successor, bundle, "bandit", {"v1": 0.5, "v2": 0.5})
    successor.policies.bandit[SHOP] = {"v1": 0.1, "v2": 0.9}
    moved = [("v1", 0.1), ("v2", 0.9)]
    assert sum(pick_arm(assignment_point(SHOP, s), moved) != first[s] for s in sessions) > 20
    redelivered = records(successor.run(again))
    assert {s: r["variant"] for s, r in redelivered.items()} == first


def test_a_session_keeps_its_arm_when_its_worker_stopped_before_writing_its_list(
    bundle: ModelBundle,
) -> None:
    w = world(bundle)
    two_arms(w, bundle, "bandit", {"v1": 0.5, "v2": 0.5})
    sessions, items = [f"s{i}" for i in range(200)], bundle.item_list
    # Each session's first clicks, all in one batch: none of them consumed a list, and
    # the latest list is still in the worker when it goes (killed, or its partitions
    # lost to the group) without writing it.
    answered = w.run([click(s, items[i]) for i in (0, 1) for s in sessions])
    first = {s: r["variant"] for s, r in records(answered).items()}
    successor = world(bundle, sessions=w.sessions)
    two_arms(successor, bundle, "bandit", {"v1": 0.5, "v2": 0.5})
    successor.policies.bandit[SHOP] = {"v1": 0.1, "v2": 0.9}
    moved = [("v1", 0.1), ("v2", 0.9)]
    assert sum(pick_arm(assignment_point(SHOP, s), moved) != first[s] for s in sessions) > 20
    later = records(successor.run([click(s, items[2]) for s in sessions]))
    assert {s: r["variant"] for s, r in later.items()} == first


def test_several_clicks_of_a_session_in_one_batch_are_served_by_its_arm(
    bundle: ModelBundle,
) -> None:
    w = world(bundle)
    two_arms(w, bundle, "bandit", {"v1": 0.5, "v2": 0.5})
    items, sessions = bundle.item_list, [f"s{i}" for i in range(100)]
    first = {
        s: r["variant"] for s, r in records(w.run([click(s, items[0]) for s in sessions])).items()
    }
    w.policies.bandit[SHOP] = {"v1": 0.1, "v2": 0.9}
    # Only a session's first click of the batch finds its list (a click consumes it).
    result = w.run([click(s, items[i]) for i in (1, 2, 3) for s in sessions])
    variants: dict[str, set[str]] = {}
    for o in result.recommendations:
        variants.setdefault(o.session_id, set()).add(orjson.loads(o.payload)["variant"])
    assert variants == {s: {v} for s, v in first.items()}


# -- hit attribution -----------------------------------------------------------------------
def test_a_click_on_an_item_of_the_last_list_counts_one_hit_for_the_arm_that_showed_it(
    bundle: ModelBundle,
) -> None:
    w = world(bundle)
    two_arms(w, bundle, "bandit", {"v1": 0.5, "v2": 0.5})
    sessions = [f"s{i}" for i in range(40)]
    shown = records(w.run([click(s, bundle.item_list[0]) for s in sessions]))
    assert {r["variant"] for r in shown.values()} == {"v1", "v2"}
    # v1 loses its share: its sessions are served by v2 from now on, but a click on a
    # list v1 showed is v1's hit.
    w.policies.bandit[SHOP] = {"v1": 0.0, "v2": 1.0}
    hitters, others = sessions[:30], sessions[30:]
    # Hitters click the 3rd item of their list; the others an item not in it.
    batch = [click(s, shown[s]["items"][2]["item_id"]) for s in hitters]
    batch += [click(s, _not_in(bundle, shown[s])) for s in others]
    result = w.run(batch)
    expected = Counter((SHOP, shown[s]["variant"]) for s in hitters)
    assert result.hits == dict(expected)
    assert {r["variant"] for r in records(result).values()} == {"v2"}
    # Counted once: the same clicks re-delivered count no hit again.
    assert w.run(batch).hits == {}
    asyncio.run(w.processor.flush_feedback())
    totals = w.sessions.totals(SHOP)
    for (_, variant), n in expected.items():
        assert totals[f"{variant}:h"] == n
        assert totals[f"{variant}:ps"] == 3 * n  # 1-based position of each hit
        assert totals[f"{variant}:p3"] == n


def test_a_list_is_judged_by_the_one_click_that_follows_it(bundle: ModelBundle) -> None:
    w = world(bundle)
    first = records(w.run([click("s", bundle.item_list[0])]))["s"]
    listed = [i["item_id"] for i in first["items"]]
    second = records(w.run([click("s", listed[0])]))["s"]
    # The next click is judged against the second list only.
    stale = next(i for i in listed[1:] if i not in {x["item_id"] for x in second["items"]})
    assert w.run([click("s", stale)]).hits == {}


def test_a_hit_inside_one_batch_is_judged_against_the_list_of_the_click_before(
    bundle: ModelBundle,
) -> None:
    w = world(bundle)
    # Which list will answer a first click on item 0 (a session's first list is the same
    # for any session with the same items).
    probe = records(w.run([click("probe", bundle.item_list[0])]))["probe"]
    batch = [click("s", bundle.item_list[0]), click("s", probe["items"][0]["item_id"])]
    assert w.run(batch).hits == {(SHOP, "v1"): 1}
    assert w.run(batch).hits == {}  # re-delivered: counted once


def _not_in(bundle: ModelBundle, record: dict[str, Any]) -> str:
    listed = {i["item_id"] for i in record["items"]}
    return next(i for i in reversed(bundle.item_list) if i not in listed)


# -- serving rules -------------------------------------------------------------------------
def test_banned_items_and_categories_never_appear(bundle: ModelBundle) -> None:
    items = bundle.item_list
    batch = [click(f"s{i}", items[i % len(items)]) for i in range(len(items))]
    free = world(bundle)
    shown_free = Counter(
        i["item_id"] for r in records(free.run(batch)).values() for i in r["items"]
    )
    # Ban the items served most often without rules, by each kind of rule.
    top = [item for item, _ in shown_free.most_common(6)]
    w = world(bundle)
    w.tenants.rules[SHOP] = ServingRules(
        blocklist=frozenset(top[:2]), exclude_categories=frozenset({"knives"})
    )
    w.tenants.catalogues[SHOP] = Catalogue(
        unavailable=frozenset(top[2:4]), category={top[4]: "knives", top[5]: "knives"}
    )
    answered = records(w.run(batch))
    assert len(answered) == len(items)
    shown = {i["item_id"] for r in answered.values() for i in r["items"]}
    assert not shown & set(top)
    assert all(len(r["items"]) == TOP_K for r in answered.values())  # refilled


def test_exclude_current_keeps_the_clicked_item_out_and_exclude_seen_the_whole_session(
    bundle: ModelBundle,
) -> None:
    items = bundle.item_list
    w = world(bundle)
    w.run([click("s", items[0]), click("s", items[1])])
    current = records(w.run([click("s", items[2])]))["s"]
    assert items[2] not in {i["item_id"] for i in current["items"]}
    w.tenants.rules[SHOP] = ServingRules(exclude="seen")
    seen = records(w.run([click("s", items[3])]))["s"]
    assert not {i["item_id"] for i in seen["items"]} & set(items[:4])


def test_without_a_model_the_popular_items_follow_the_rules(bundle: ModelBundle) -> None:
    w = world(None)
    w.tenants.popular_items[SHOP] = [(f"p{i}", 100.0 - i) for i in range(20)]
    w.tenants.rules[SHOP] = ServingRules(blocklist=frozenset({"p1"}))
    record = records(w.run([click("s", "p0")]))["s"]
    assert record["strategy"] == "popular" and record["model_version"] is None
    expected = [f"p{i}" for i in range(2, 2 + TOP_K)]  # p0: current, p1: blocked
    assert [i["item_id"] for i in record["items"]] == expected
    assert w.sessions.item_clicks[SHOP]["p0"] == 1  # counted for the popular list


# -- tenant modes --------------------------------------------------------------------------
def test_a_tenant_switched_off_is_recorded_but_not_answered(bundle: ModelBundle) -> None:
    w = world(bundle)
    w.tenants.modes["other"] = "on"
    w.models.serving["other"] = bundle
    w.tenants.modes[SHOP] = "off"
    items = bundle.item_list
    result = w.run([click("s", items[0]), click("s", items[1]), click("t", items[0], "other")])
    assert list(records(result)) == ["t"] and result.suppressed == 2
    assert not result.dead_letters
    assert w.sessions.sessions[(SHOP, "s")].items == items[:2]  # the session still grows
    w.tenants.modes[SHOP] = "on"
    assert list(records(w.run([click("s", items[2])]))) == ["s"]
    assert w.sessions.sessions[(SHOP, "s")].items == items[:3]


def test_a_frozen_tenant_is_served_and_recorded_as_when_on(bundle: ModelBundle) -> None:
    items = bundle.item_list
    on, frozen = world(bundle), world(bundle)
    frozen.tenants.modes[SHOP] = "freeze"
    batch = [click("s", items[0]), click("s", items[1])]
    a, b = records(on.run(batch))["s"], records(frozen.run(batch))["s"]
    assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
    assert frozen.sessions.sessions[(SHOP, "s")].items == items[:2]


def test_an_unknown_tenant_is_created_or_dead_lettered_as_configured(bundle: ModelBundle) -> None:
    created = world(bundle)
    assert records(created.run([click("s", "x", "newshop")]))["s"]["tenant"] == "newshop"
    assert created.tenants.modes["newshop"] == "on"
    refused = world(bundle, auto_create_tenants=False)
    result = refused.run([click("s", "x", "newshop"), click("s", bundle.item_list[0])])
    assert [r["tenant"] for r in records(result).values()] == [SHOP]
    assert dead(result)[0].startswith("unknown tenant: 'newshop' does not exist")
    assert "newshop" not in refused.tenants.modes


# -- per-record failures -------------------------------------------------------------------
def test_a_malformed_payload_is_dead_lettered_and_the_rest_published(
    bundle: ModelBundle,
) -> None:
    w = world(bundle)
    item = bundle.item_list[0]
    result = w.run([click("a", item), b"{not json", click("b", item), b'{"session_id":"c"}'])
    assert sorted(records(result)) == ["a", "b"]
    reasons = dead(result)
    assert set(reasons) == {1, 3}
    assert "not valid JSON" in reasons[1] and "item_id" in reasons[3]


def test_a_model_that_raises_dead_letters_its_tenants_records_only(bundle: ModelBundle) -> None:
    w = world(bundle)
    # A damaged model: its ranker's weights do not match its features.
    broken = dataclasses.replace(
        bundle, manifest={**bundle.manifest, "ranker": {"weights": [1.0], "features": ["x"]}}
    )
    w.tenants.modes["broken"] = "on"
    w.models.serving["broken"] = broken
    item = bundle.item_list[0]
    result = w.run([click("a", item), click("b", item, "broken"), click("c", item)])
    assert sorted(records(result)) == ["a", "c"]
    assert dead(result) == {1: "internal: InvalidModelError"}


def test_a_session_the_store_cannot_read_is_dead_lettered_and_the_rest_published(
    bundle: ModelBundle,
) -> None:
    w = world(bundle)
    w.sessions.damage(SHOP, "bad")
    item = bundle.item_list[0]
    result = w.run([click("a", item), click("bad", item), click("c", item)])
    assert sorted(records(result)) == ["a", "c"]
    assert dead(result) == {1: "session store: UnicodeDecodeError"}


def test_the_store_unreachable_stops_the_batch_and_keeps_the_feedback(
    bundle: ModelBundle,
) -> None:
    w = world(bundle)
    w.run([click("a", bundle.item_list[0])])
    assert w.feedback is not None and w.feedback.pending()
    w.sessions.unreachable = True
    with pytest.raises(RedisConnectionError):
        w.run([click("a", bundle.item_list[1])])
    assert w.feedback.pending()  # the lists and counts wait for the next round trip
    w.sessions.unreachable = False
    w.run([click("a", bundle.item_list[1])])
    assert w.sessions.totals(SHOP)["v1:r"] == 1


def test_a_session_key_redis_refuses_is_dead_lettered_and_the_rest_published(
    bundle: ModelBundle,
) -> None:
    w = world(bundle)
    wrong = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    w.sessions.refused[(SHOP, "bad")] = wrong
    item = bundle.item_list[0]
    result = w.run([click("a", item), click("bad", item), click("c", item)])
    assert sorted(records(result)) == ["a", "c"]
    assert dead(result) == {1: "session store: ResponseError"}


@pytest.mark.parametrize(
    "refusal",
    [
        OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        ReadOnlyError("READONLY You can't write against a read only replica."),
    ],
)
def test_redis_refusing_every_write_holds_the_batch_like_redis_away(
    bundle: ModelBundle, refusal: Exception
) -> None:
    """A full Redis, or a replica not yet promoted, refuses every session alike: that is
    Redis unavailable (the worker holds the batch and retries), not the records' fault."""
    w = world(bundle)
    w.run([click("a", bundle.item_list[0])])
    w.sessions.refused[(SHOP, "a")] = refusal
    with pytest.raises(type(refusal)) as raised:
        w.run([click("a", bundle.item_list[1])])
    assert isinstance(raised.value, UNAVAILABLE)
    assert w.feedback is not None and w.feedback.pending()


# -- memory --------------------------------------------------------------------------------
class BudgetModels:
    """A cache holding at most ``budget`` models, least recently used out: each load
    makes a new bundle, as the worker's cache does; ``peak`` is the most bundles it
    handed out that were still alive (held by anyone) when it loaded another."""

    def __init__(self, bundle: ModelBundle, budget: int) -> None:
        self._bundle, self._budget = bundle, budget
        self._held: OrderedDict[str, ModelBundle] = OrderedDict()
        self._handed: list[weakref.ref[ModelBundle]] = []
        self.loads = self.peak = 0

    async def get(self, tenant: str) -> ModelBundle | None:
        if tenant in self._held:
            self._held.move_to_end(tenant)
            return self._held[tenant]
        gc.collect()
        self.peak = max(self.peak, sum(r() is not None for r in self._handed))
        bundle = dataclasses.replace(self._bundle)
        self._handed.append(weakref.ref(bundle))
        self.loads += 1
        self._held[tenant] = bundle
        while len(self._held) > self._budget:
            self._held.popitem(last=False)
        return bundle

    async def get_version(self, tenant: str, version: str) -> ModelBundle | None:
        return await self.get(tenant)

    async def without_model(self, tenants: Collection[str]) -> list[str]:
        return []


def test_a_batch_over_more_tenants_than_the_budget_holds_keeps_no_more_alive(
    bundle: ModelBundle,
) -> None:
    w = world(None)
    models = BudgetModels(bundle, budget=3)
    w.processor._models = models
    tenants = [f"shop-{t}" for t in range(12)]
    for tenant in tenants:
        w.tenants.modes[tenant] = "on"
    item = bundle.item_list[0]
    result = w.run([click(f"s{t}", item, tenant) for t, tenant in enumerate(tenants)])
    assert len(result.recommendations) == len(tenants)
    assert {orjson.loads(o.payload)["model_version"] for o in result.recommendations} == {"v1"}
    assert models.loads == len(tenants)  # each loaded once
    # The budget's models and the one being ranked, not every model the batch touched.
    assert models.peak <= 3 + 1


# -- the record ----------------------------------------------------------------------------
def test_records_carry_the_models_ranking_with_scores_of_four_decimals(
    bundle: ModelBundle,
) -> None:
    """Digits past the fourth say nothing to a consumer (the list's order is the
    ranking) and cost the broker bytes that compress badly."""
    from models.ranking import recommend

    w = world(bundle)
    sessions = {f"s{i}": bundle.item_list[i % bundle.n_items] for i in range(20)}
    served = records(w.run([click(s, item) for s, item in sessions.items()]))
    for s, item in sessions.items():
        ranked = recommend(bundle, [item], len(served[s]["items"]))
        assert [e["item_id"] for e in served[s]["items"]] == ranked.ids
        scores = [e["score"] for e in served[s]["items"]]
        assert scores == pytest.approx(ranked.scores, abs=5e-5, rel=0)
        assert all(x == round(x, 4) for x in scores), scores


def test_a_flush_returns_only_once_a_flush_already_under_way_has_written_its_lists(
    bundle: ModelBundle,
) -> None:
    # A partition handed over must find its sessions' last lists in Redis: the handover's
    # flush may not return while the timer's flush still has them on the way.
    w = world(bundle)
    shown = records(w.run([click("s", bundle.item_list[0])]))["s"]
    gate = asyncio.Event()
    write = w.sessions.run

    async def slow(commands: Any) -> list[Any]:
        await gate.wait()
        return await write(commands)

    w.sessions.run = slow  # type: ignore[method-assign]

    async def both() -> bool:
        timer = asyncio.ensure_future(w.processor.flush_feedback())
        await asyncio.sleep(0)  # the timer's flush has taken the lists and waits on Redis
        handover = asyncio.ensure_future(w.processor.flush_feedback())
        await asyncio.sleep(0.05)
        early = handover.done()
        gate.set()
        await asyncio.gather(timer, handover)
        return early

    assert not asyncio.run(both()), "the handover's flush returned before the lists were written"
    assert w.sessions.sessions[(SHOP, "s")].shown is not None
    assert shown["variant"] == "v1"
