"""The trainer job against the real broker: reads the click log, gates, promotes, and
the worker switches; frozen and switched-off tenants are left alone."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis as AsyncRedis

from models.datasets import build_sessions, read_clicks, sessionize
from models.gate import GatePolicy
from models.registry import Registry
from models.train import TrainParams, train_model
from state.control import put_items
from stream.config import Settings
from stream.control.tenants import TenantControl
from stream.dev.stack import EmbeddedStack
from stream.dev.testing import WorkerProcess, produce
from stream.events import ClickEvent
from stream.kafka.click_log import read_click_log
from stream.kafka.topics import ensure_topics
from stream.retrain.job import TenantOutcome, run_once
from tests.integration.helpers import RecsCollector, make_config


def test_trainer_promotes_a_better_model_and_skips_frozen_and_off_tenants(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    sessions = sessionize(read_clicks(eshop_csv, fmt="eshop"))[:1500]
    registry = Registry(tmp_path / "models")
    on, frozen, off = unique_name("on"), unique_name("frozen"), unique_name("off")
    weak = train_model(sessions[:60], TrainParams(epochs=1, seed=2))
    for tenant in (on, frozen):
        registry.promote(tenant, registry.register(tenant, weak, {}))
    # Through the admin path (registry first, then the Redis cache), as the CLI does: a
    # mode written only to Redis is a cache entry the worker's start-up refill replaces.
    control = TenantControl(Settings(redis_url=stack.redis_url, model_dir=str(tmp_path / "models")))
    control.create(off)
    control.set_mode(frozen, "freeze")
    control.set_mode(off, "off")

    cfg = make_config(stack, unique_name, tmp_path, tmp_path / "models")
    cfg.extra_env["STREAMREC_MODEL_CHECK_INTERVAL_S"] = "60"  # only the notice is fast
    start = time.time() - 3600
    clicks = [
        ClickEvent(t, f"{t}-{n}", item, start + n + j / 100, event_id=f"{t}-{n}-{j}")
        for t in (on, frozen, off)
        for n, s in enumerate(sessions)
        for j, item in enumerate(s)
    ]
    produce(stack.broker, cfg.clicks, [(c.session_id.encode(), c.to_json()) for c in clicks])
    settings = Settings(
        broker=stack.broker,
        redis_url=stack.redis_url,
        model_dir=str(tmp_path / "models"),
        clicks_topic=cfg.clicks,
    )

    collector = RecsCollector(stack.broker, cfg.recs)
    collector.start()
    try:
        with WorkerProcess(cfg) as worker:
            assert collector.wait_for(len(clicks) * 2 // 3, timeout=120), worker.log()[-3000:]
            outcomes = run_once(
                settings,
                window_s=86400,
                params=TrainParams(epochs=5, seed=3),
                policy=GatePolicy(),
                tenants=[on, frozen, off],
            ).outcomes
            promoted_at = time.time()
            by_tenant = {o.tenant: o for o in outcomes}
            assert set(by_tenant) == {on, frozen, off}
            assert by_tenant[on].decision.action == "promoted", by_tenant[on].decision.reason
            assert by_tenant[frozen].decision.action == "skipped"
            assert by_tenant[off].decision.action == "skipped"
            new_version = by_tenant[on].version
            assert registry.current_version(on) == new_version != "v1"
            assert registry.current_version(frozen) == "v1"
            assert registry.current_version(off) is None

            # The worker serves the new version within 5 s of the promotion.
            probe = [
                ClickEvent(on, f"probe-{i}", sessions[0][0], time.time(), event_id=f"p{i}")
                for i in range(40)
            ]
            for chunk in range(4):
                produce(
                    stack.broker,
                    cfg.clicks,
                    [(c.session_id.encode(), c.to_json()) for c in probe[chunk * 10 :][:10]],
                )
                time.sleep(1.0)
            assert collector.wait_for(len(clicks) * 2 // 3 + 40, timeout=30)
            served = [(ts, v) for ts, v in collector.versions if v == new_version]
            assert served and min(ts for ts, _ in served) - promoted_at < 5.0
    finally:
        collector.stop_flag.set()
        collector.join(5)

    manifest = registry.load(on).manifest
    gate = manifest["gate"]
    assert gate["decision"] == "promoted" and gate["candidate"]["hr"] > gate["current"]["hr"]
    assert manifest["data_window"]["sessions"] > 0


def test_parallel_reading_keeps_every_click_in_order(
    stack: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("clicks")
    ensure_topics(stack.broker, [topic], 4)
    tenants = [unique_name("shop") for _ in range(3)]
    now = time.time()
    expected: dict[str, dict[str, list[str]]] = {t: {} for t in tenants}
    records = []
    for n in range(150):
        for t in tenants:
            sid = f"{t}-s{n}"
            items = [f"i{(n * 7 + j * 13) % 97}-{j}" for j in range(2 + n % 5)]
            expected[t][sid] = items
            # One timestamp for the whole session: only the log order orders its clicks.
            records += [(sid.encode(), ClickEvent(t, sid, i, now - 60).to_json()) for i in items]
    extra = unique_name("other")
    records += [
        (b"x", b"not json"),  # skipped: invalid
        (b"old", ClickEvent(tenants[0], "old", "a", now - 7200).to_json()),  # before since
        (b"old", ClickEvent(tenants[0], "old", "b", now - 7200).to_json()),
        (b"o", ClickEvent(extra, "o", "a", now - 60).to_json()),  # not a wanted tenant
        (b"o", ClickEvent(extra, "o", "b", now - 60).to_json()),
    ]
    produce(stack.broker, topic, records)

    clicks = sum(len(v) for s in expected.values() for v in s.values())
    for jobs in (1, 2, 3):
        logs = read_click_log(stack.broker, topic, now - 3600, tenants, jobs=jobs)
        assert sorted(logs) == sorted(tenants)
        assert sum(len(c) for c in logs.values()) == clicks, jobs
        for t in tenants:
            got = {s.session_id: s.items for s in build_sessions(logs[t])}
            assert got == expected[t], (jobs, t)
    everyone = read_click_log(stack.broker, topic, now - 3600, jobs=2)
    assert sorted(everyone) == sorted([*tenants, extra])


def test_the_trainer_takes_item_categories_from_the_tenants_catalogue(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    """Categories written through the catalogue reach the trained model (its category
    codes and the ranker's category features); a tenant without a catalogue has none."""
    with_catalogue, without = unique_name("cat"), unique_name("plain")
    topic = unique_name("clicks")
    ensure_topics(stack.broker, [topic], 1)
    # Items i0..i39 in 4 categories; sessions walk within a category, so it predicts.
    category = {f"i{n}": f"c{n % 4}" for n in range(40)}
    now = time.time() - 3600
    records = []
    for t in (with_catalogue, without):
        for s in range(300):
            items = [f"i{(s * 7 + 4 * j) % 40}" for j in range(2 + s % 4)]
            for j, item in enumerate(items):
                event = ClickEvent(t, f"{t}-{s}", item, now + s + j / 10, event_id=f"{t}{s}-{j}")
                records.append((event.session_id.encode(), event.to_json()))
    produce(stack.broker, topic, records)

    async def write_catalogue() -> None:
        client = AsyncRedis.from_url(stack.redis_url)
        try:
            entries = {item: {"available": True, "category": c} for item, c in category.items()}
            entries["i0"] = {"available": True}  # an entry without a category
            await put_items(client, with_catalogue, entries)
        finally:
            await client.aclose()

    asyncio.run(write_catalogue())
    settings = Settings(
        broker=stack.broker,
        redis_url=stack.redis_url,
        model_dir=str(tmp_path / "models"),
        clicks_topic=topic,
    )
    outcomes = run_once(
        settings,
        window_s=86400,
        params=TrainParams(epochs=2, seed=3),
        policy=GatePolicy(min_sessions=50),
        tenants=[with_catalogue, without],
    ).outcomes
    assert all(o.version for o in outcomes), [o.describe() for o in outcomes]
    registry = Registry(tmp_path / "models")
    model = registry.load(
        with_catalogue, next(o.version for o in outcomes if o.tenant == with_catalogue)
    )
    assert model.manifest["counts"]["categories"] == 4
    codes = dict(zip(model.item_list, model.item_category.tolist(), strict=True))
    assert codes["i0"] == -1
    for a in codes:
        for b in codes:
            if "i0" not in (a, b):
                assert (codes[a] == codes[b]) == (category[a] == category[b])
    plain = registry.load(without, next(o.version for o in outcomes if o.tenant == without))
    assert plain.manifest["counts"]["categories"] == 0 and (plain.item_category == -1).all()


def _clicks(tenant: str, batch: list[list[str]], t0: float) -> list[ClickEvent]:
    """One click a second from ``t0`` in session order, ten milliseconds apart inside one."""
    return [
        ClickEvent(tenant, f"{tenant}-{t0}-{n}", item, t0 + n + j / 100)
        for n, s in enumerate(batch)
        for j, item in enumerate(s)
    ]


def _gate_pass(
    stack: EmbeddedStack,
    tmp_path: Path,
    topic: str,
    trained_on: list[list[str]],
    start: float,
    log: list[ClickEvent],
    tenants: list[str],
) -> dict[str, TenantOutcome]:
    """Each tenant's v1 from `streamrec train` on an export of ``trained_on`` (clicks from
    ``start``), then ``log`` on the click log and one trainer pass: its outcomes by tenant."""
    env = {
        "STREAMREC_MODEL_DIR": str(tmp_path / "models"),
        "STREAMREC_REDIS_URL": stack.redis_url,
        "PATH": "/usr/bin:/bin",
    }
    for tenant in tenants:
        export = tmp_path / f"{tenant}.csv"
        export.write_text(
            "session,item,ts\n"
            + "".join(
                f"{c.session_id},{c.item_id},{c.ts}\n" for c in _clicks(tenant, trained_on, start)
            )
        )
        trained = subprocess.run(
            [sys.executable, "-m", "stream", "train", str(export), "--format", "csv"]
            + ["--session-col", "session", "--item-col", "item", "--time-col", "ts"]
            + ["--tenant", tenant, "--epochs", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert trained.returncode == 0, trained.stderr[-2000:]
    produce(stack.broker, topic, [(c.session_id.encode(), c.to_json()) for c in log])
    settings = Settings(
        broker=stack.broker,
        redis_url=stack.redis_url,
        model_dir=str(tmp_path / "models"),
        clicks_topic=topic,
    )
    report = run_once(
        settings,
        window_s=86400,
        params=TrainParams(epochs=2, seed=3),
        policy=GatePolicy(),
        tenants=tenants,
    )
    return {o.tenant: o for o in report.outcomes}


def test_the_gate_judges_on_sessions_the_model_in_service_was_not_trained_on(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    """v1 comes from `streamrec train` on an export of the click log: every session in the
    log up to then. The gate compares on the sessions after it only; a tenant with none
    is not judged (not KEPT on sessions v1 learnt by heart)."""
    sessions = [s for s in sessionize(read_clicks(eshop_csv, fmt="eshop")) if len(set(s)) > 1]
    old, new = sessions[:800], sessions[800:860]
    fresh, stale, topic = unique_name("fresh"), unique_name("stale"), unique_name("clicks")
    ensure_topics(stack.broker, [topic], 2)
    start = time.time() - 7200

    log = _clicks(fresh, old, start) + _clicks(stale, old, start)
    log += _clicks(fresh, new, start + 3600)  # after v1 was trained: fresh
    by_tenant = _gate_pass(stack, tmp_path, topic, old, start, log, [fresh, stale])
    judged = by_tenant[fresh].decision
    assert judged.action in ("promoted", "kept"), judged.reason
    # The newest 20 % would be 172 sessions, 112 of them learnt by v1.
    assert judged.holdout_sessions == len(new), judged
    assert judged.train_sessions == len(old)
    unjudged = by_tenant[stale]
    assert unjudged.decision.action == "unjudged", unjudged.describe()
    assert "no fresh sessions to judge" in unjudged.describe()
    registry = Registry(tmp_path / "models")
    assert [v.version for v in registry.versions(stale)] == ["v1"]
    assert registry.current_version(stale) == "v1"
    # The candidate records what it was trained up to: the next pass judges it on later
    # sessions only.
    window = registry.manifest(fresh, by_tenant[fresh].version)["data_window"]
    assert start + 799 <= window["trained_to"] < start + 3600


def test_the_gate_does_not_judge_on_a_replay_of_what_the_model_in_service_learnt(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    """v1 comes from `streamrec train` on a file; the file is then replayed, so its
    sessions reach the click log with new ids and times after v1's training data. The
    gate holds out only the sessions v1 has not seen verbatim; a tenant whose window
    holds nothing but the replay is not judged."""
    sessions = [s for s in sessionize(read_clicks(eshop_csv, fmt="eshop")) if len(set(s)) > 1]
    old = sessions[:800]
    learnt = {tuple(s) for s in old}
    new = [s for s in sessions[800:900] if tuple(s) not in learnt][:60]
    mixed, replayed, topic = unique_name("mixed"), unique_name("replayed"), unique_name("clicks")
    ensure_topics(stack.broker, [topic], 2)
    start = time.time() - 7200

    # The replay, stamped an hour after the file's last click, then new sessions.
    log = _clicks(mixed, old, start + 3600) + _clicks(replayed, old, start + 3600)
    log += _clicks(mixed, new, start + 5000)
    by_tenant = _gate_pass(stack, tmp_path, topic, old, start, log, [mixed, replayed])
    judged = by_tenant[mixed].decision
    assert judged.action in ("promoted", "kept"), judged.reason
    # The newest 20 % would be 172 sessions, 112 of them replays of v1's training data.
    assert judged.holdout_sessions == len(new), judged
    assert judged.train_sessions == len(old)
    unjudged = by_tenant[replayed]
    assert unjudged.decision.action == "unjudged", unjudged.describe()
    assert "no fresh sessions to judge" in unjudged.describe()
    registry = Registry(tmp_path / "models")
    assert [v.version for v in registry.versions(replayed)] == ["v1"]
