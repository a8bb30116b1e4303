from __future__ import annotations

import gc
import hashlib
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import pytest

from models.bundle import load_bundle, save_bundle
from models.datasets import Session, build_sessions, read_clicks
from models.gate import GatePolicy, gate, retrain, split_holdout, trained_until
from models.train import TrainParams, train_model
from stream.retrain import job
from stream.retrain.job import TenantOutcome

PARAMS = TrainParams(epochs=5, seed=5)


@pytest.fixture(scope="module")
def eshop_split(eshop_csv: Path) -> tuple[list[list[str]], list[list[str]]]:
    sessions = build_sessions(read_clicks(eshop_csv, fmt="eshop"))[-5000:]
    train, holdout = split_holdout(sessions, 0.2)
    return [s.items for s in train], [s.items for s in holdout]


def test_split_holdout_takes_the_newest_sessions() -> None:
    sessions = [
        Session(f"s{i}", ["a", "b"], float(t), float(t)) for i, t in enumerate([5, 1, 4, 2, 3])
    ]
    older, newest = split_holdout(sessions, 0.4)
    assert [s.start for s in older] == [1, 2, 3] and [s.start for s in newest] == [4, 5]


def test_gate_rejects_a_candidate_trained_on_shuffled_sessions(eshop_split) -> None:
    train, holdout = eshop_split
    current = train_model(train, PARAMS)
    items = [i for s in train for i in s]
    random.Random(1).shuffle(items)
    shuffled, pos = [], 0
    for s in train:  # same session lengths, items scattered: the sequences carry no signal
        shuffled.append(items[pos : pos + len(s)])
        pos += len(s)
    candidate = train_model(shuffled, PARAMS)
    decision = gate(candidate, current, holdout, GatePolicy())
    assert decision.action == "kept", decision.reason
    assert decision.candidate.hr < decision.current.hr


def test_gate_promotes_a_better_candidate_and_a_first_model(eshop_split) -> None:
    train, holdout = eshop_split
    weak = train_model(train[:100], TrainParams(epochs=1, seed=5))
    strong = train_model(train, PARAMS)
    decision = gate(strong, weak, holdout, GatePolicy())
    assert decision.action == "promoted" and decision.candidate.hr > decision.current.hr
    assert gate(weak, None, holdout, GatePolicy()).action == "promoted"
    # A negative margin lets a slightly worse candidate through; the default does not.
    lower = GatePolicy(margin=-1.0)
    assert gate(weak, strong, holdout, lower).action == "promoted"
    assert gate(weak, strong, holdout, GatePolicy()).action == "kept"


def test_the_same_model_again_is_not_promoted(eshop_split) -> None:
    """No churn: a candidate equal to the version in service does not pass the default
    (positive) margin."""
    train, holdout = eshop_split
    model = train_model(train, PARAMS)
    decision = gate(model, model, holdout, GatePolicy())
    assert decision.action == "kept" and decision.candidate == decision.current
    assert gate(model, model, holdout, GatePolicy(margin=0.0)).action == "promoted"


def test_retrain_skips_tenants_with_too_little_data() -> None:
    sessions = [Session(f"s{i}", ["a", "b"], float(i), float(i)) for i in range(5)]
    bundle, decision = retrain(sessions, None, PARAMS, GatePolicy(min_sessions=20))
    assert bundle is None and decision.action == "skipped"


def test_the_holdout_is_only_sessions_the_model_in_service_cannot_have_seen() -> None:
    sessions = [Session(f"s{t}", ["a", "b"], float(t), float(t) + 0.5) for t in range(10)]
    # Nothing known about the model in service: the newest share.
    older, newest = split_holdout(sessions, 0.4, after=None)
    assert [s.start for s in newest] == [6, 7, 8, 9]
    # It was trained on clicks up to t=7.5: sessions starting at or before that are
    # no hold-out (they go to the candidate's training part instead).
    older, newest = split_holdout(sessions, 0.4, after=7.5)
    assert [s.start for s in newest] == [8, 9]
    assert [s.start for s in older] == list(range(8))
    # Trained long before: the newest share as usual.
    assert [s.start for s in split_holdout(sessions, 0.4, after=-1.0)[1]] == [6, 7, 8, 9]
    # Trained on all of them: nothing is fresh.
    older, newest = split_holdout(sessions, 0.4, after=9.5)
    assert newest == [] and len(older) == 10


def test_what_a_model_was_trained_up_to_comes_from_its_manifest() -> None:
    # The trainer records the last click its candidate was trained on.
    assert trained_until({"data_window": {"from": 1.0, "to": 9.0, "trained_to": 7.0}}) == 7.0
    # A trainer bundle from before that: its window's end bounds what it saw.
    assert trained_until({"data_window": {"from": 1.0, "to": 9.0}}) == 9.0
    # `streamrec train`: the last click of its file.
    assert trained_until({"data": {"source": "x.csv", "to_ts": 5.0}}) == 5.0
    # Unknown (a bundle that records neither, or a damaged value).
    assert trained_until({}) is None
    assert trained_until({"data": {"to_ts": "soon"}, "data_window": None}) is None


def test_no_fresh_sessions_to_judge_is_its_own_decision(eshop_split) -> None:
    train, _ = eshop_split
    sessions = [
        Session(f"s{n}", items, float(n), float(n) + 1) for n, items in enumerate(train[:300])
    ]
    current = train_model([s.items for s in sessions], PARAMS)
    current = replace(current, manifest={**current.manifest, "data": {"to_ts": 301.0}})
    bundle, decision = retrain(sessions, current, PARAMS, GatePolicy())
    assert bundle is None and decision.action == "unjudged", decision
    assert "no fresh sessions to judge" in TenantOutcome("t", decision, None).describe()
    # New sessions after its training data: judged on those only.
    learnt = {tuple(s.items) for s in sessions}
    unseen = [s for s in train[300:] if tuple(s) not in learnt][:20]
    later = [Session(f"n{n}", s, 400.0 + n, 401.0 + n) for n, s in enumerate(unseen)]
    bundle, decision = retrain(sessions + later, current, PARAMS, GatePolicy())
    assert bundle is not None and decision.action in ("promoted", "kept")
    assert decision.holdout_sessions == 20 and decision.train_sessions == 300
    # No model in service: every session is fresh, the first model is promoted.
    bundle, decision = retrain(sessions, None, PARAMS, GatePolicy())
    assert decision.action == "promoted" and decision.holdout_sessions == 60


def test_a_model_records_the_sessions_it_was_trained_on(tmp_path: Path, eshop_split) -> None:
    train, _ = eshop_split
    bundle = train_model(train[:300] + train[:5], PARAMS)
    hashes = bundle.session_hashes
    assert hashes is not None and hashes.dtype == "uint64"
    assert len(hashes) == len({tuple(s) for s in train[:300]})
    assert (hashes[1:] > hashes[:-1]).all()  # sorted, each once
    # Stable across processes and versions: a digest of the ids, not Python's hash().
    digest = hashlib.blake2b("\x1f".join(train[0]).encode(), digest_size=8).digest()
    assert int.from_bytes(digest, "little") in set(hashes.tolist())
    save_bundle(bundle, tmp_path / "b")
    assert (load_bundle(tmp_path / "b").session_hashes == hashes).all()
    # A bundle without them (written before they were recorded) loads without them.
    save_bundle(replace(bundle, session_hashes=None), tmp_path / "old")
    assert not (tmp_path / "old" / "session_hashes.npy").exists()
    assert load_bundle(tmp_path / "old").session_hashes is None


def test_a_replay_of_the_training_sessions_is_not_fresh(eshop_split) -> None:
    train, _ = eshop_split
    learnt = [s for s in train[:300] if len(s) > 1]
    current = train_model(learnt, PARAMS)
    current = replace(current, manifest={**current.manifest, "data": {"to_ts": 301.0}})
    # The same sessions sent again later, with new ids and times: fresh by time only.
    replay = [Session(f"r{n}", s, 400.0 + n, 401.0 + n) for n, s in enumerate(learnt)]
    bundle, decision = retrain(replay, current, PARAMS, GatePolicy())
    assert bundle is None and decision.action == "unjudged", decision
    assert "no fresh sessions to judge" in TenantOutcome("t", decision, None).describe()
    # With sessions it never saw among them: judged on those only.
    seen = {tuple(s) for s in learnt}
    unseen = [s for s in train[300:] if len(s) > 1 and tuple(s) not in seen][:20]
    new = [Session(f"n{n}", s, 2000.0 + n, 2001.0 + n) for n, s in enumerate(unseen)]
    bundle, decision = retrain(replay + new, current, PARAMS, GatePolicy())
    assert bundle is not None and decision.action in ("promoted", "kept"), decision
    assert decision.holdout_sessions == len(new)
    assert decision.train_sessions == len(replay)
    # A model that does not record its sessions: the time rule alone.
    plain = replace(current, session_hashes=None)
    bundle, decision = retrain(replay, plain, PARAMS, GatePolicy())
    assert decision.action in ("promoted", "kept") and decision.holdout_sessions > 0


def test_partitions_are_split_among_readers_once_each_and_evenly() -> None:
    from stream.kafka.click_log import _split_partitions

    ranges = {0: (0, 900), 1: (100, 200), 2: (0, 500), 3: (50, 450), 4: (0, 10)}
    groups = _split_partitions(ranges, 2)
    assert sorted(p for g in groups for p in g) == sorted(ranges)
    assert all(g[p] == ranges[p] for g in groups for p in g)
    loads = sorted(sum(e - s for s, e in g.values()) for g in groups)
    assert loads == [910, 1000]
    assert _split_partitions(ranges, 1) == [ranges]
    assert len(_split_partitions(ranges, 8)) == 5  # no reader without a partition
    assert _split_partitions({}, 2) == []


def test_each_decision_reads_as_one_line_with_its_reason() -> None:
    from models.gate import GateDecision
    from stream.retrain.job import TenantOutcome

    kept = GateDecision("kept", "HR@20 0.2 vs 0.3 in service", current_version="v1")
    lines = [
        TenantOutcome("a", GateDecision("promoted", "first model"), "v1").describe(),
        TenantOutcome("b", kept, "v2").describe(),
        TenantOutcome("c", GateDecision("skipped", "tenant is frozen"), None).describe(),
        TenantOutcome("d", GateDecision("failed", "block damaged"), None).describe(),
    ]
    assert lines == [
        "tenant a: PROMOTED v1: first model",
        "tenant b: KEPT v1 (v2 registered, not promoted): HR@20 0.2 vs 0.3 in service",
        "tenant c: SKIPPED: tenant is frozen",
        "tenant d: FAILED, the version in service stays in service: block damaged",
    ]


def _trained(settings: object, tenant: str, clicks: object, *args: object) -> TenantOutcome:
    """A tenant's training, as a pass sees it: promoted, its clicks counted."""
    from models.gate import GateDecision

    return TenantOutcome(tenant, GateDecision("promoted", f"{len(clicks)} clicks"), "v1")  # type: ignore[arg-type]


def test_a_damaged_block_in_the_click_archive_fails_only_its_tenant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    from models.click_archive import archive_dir, write_segment
    from stream.config import Settings

    settings = Settings(redis_url="redis://127.0.0.1:1/0", model_dir=str(tmp_path / "models"))
    now = time.time()
    rows = [(o, f"t{o % 3}", f"s{o}", f"i{o}", now - 100 + o) for o in range(30)]
    path = write_segment(
        archive_dir(settings.registry_dir), 0, 0, 30,
        *([r[k] for r in rows] for k in (1, 2, 3, 4, 0)),
    )  # fmt: skip
    data = bytearray(path.read_bytes())
    data[data.index(b"i4")] ^= 0x01  # an item id of t1's (4 % 3 == 1)
    path.write_bytes(bytes(data))
    monkeypatch.setattr(job, "_retrain_tenant", _trained)
    with caplog.at_level("ERROR", logger="streamrec"):
        report = job.run_once(
            settings, window_s=3600, params=PARAMS, policy=GatePolicy(), now=now,
            archived={0: 30},
        )  # fmt: skip
    got = {o.tenant: (o.decision.action, o.decision.reason) for o in report.outcomes}
    assert got["t0"] == got["t2"] == ("promoted", "10 clicks")
    assert got["t1"][0] == "failed" and "tenant t1" in got["t1"][1] and str(path) in got["t1"][1]
    assert f"{path}" in caplog.text and "failing this pass for it: t1" in caplog.text


def test_with_redis_away_the_modes_come_from_the_registry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from models.registry import Registry
    from stream.config import Settings
    from stream.retrain.job import _modes

    Registry(tmp_path / "models").set_mode("shop", "freeze")
    settings = Settings(redis_url="redis://127.0.0.1:1/0", model_dir=str(tmp_path / "models"))
    with caplog.at_level("WARNING", logger="streamrec"):
        assert _modes(settings) == {"shop": "freeze"}  # a frozen tenant stays frozen
    assert "from the registry only" in caplog.text


def test_a_failed_pass_does_not_end_the_periodic_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import stream.retrain.job
    from models.errors import StreamrecError
    from stream.cli import main

    class Stop(Exception):
        pass

    calls = []

    def run_once(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise StreamrecError("cannot reach the broker")
        raise Stop  # the second pass came: the loop went on

    monkeypatch.setattr(stream.retrain.job, "run_once", run_once)
    monkeypatch.setenv("STREAMREC_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STREAMREC_REDIS_URL", "redis://127.0.0.1:1/0")
    with caplog.at_level("ERROR", logger="streamrec"), pytest.raises(Stop):
        main(["trainer", "--every", "1s", "--rollout-check", "1s"])
    assert len(calls) == 2
    assert "this pass failed: cannot reach the broker" in caplog.text
    # With --once the same failure is the command's one-line error.
    calls.clear()
    with pytest.raises(SystemExit) as exit_:
        main(["trainer", "--once"])
    assert exit_.value.code == 1 and calls == [1]


def test_a_pass_counts_the_tenants_with_no_fresh_sessions_to_judge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import stream.retrain.job
    from models.gate import GateDecision
    from stream.cli import main
    from stream.retrain.job import PassReport

    outcomes = [
        TenantOutcome("a", GateDecision("unjudged", "none fresh", current_version="v1"), None),
        TenantOutcome("b", GateDecision("promoted", "first model"), "v1"),
    ]
    report = PassReport(outcomes, clicks=10, read_s=0.1, train_s=0.2)
    monkeypatch.setattr(stream.retrain.job, "run_once", lambda *a, **k: report)
    monkeypatch.setattr("stream.retrain.rollout.look_at_rollouts", lambda settings: [])
    monkeypatch.setenv("STREAMREC_MODEL_DIR", str(tmp_path / "models"))
    with pytest.raises(SystemExit) as exit_:
        main(["trainer", "--once"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    assert "1 promoted, 0 kept, 1 with no fresh sessions to judge, 0 skipped" in out, out


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("freeze", "is freeze"),
        ("experiment", "runs an A/B test over v1, v2"),
    ],
)
def test_a_candidate_is_not_promoted_over_a_change_made_while_it_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, why: str
) -> None:
    """The pass read the tenant's mode and policy before training: an operator who froze
    the tenant, or started an experiment, meanwhile is not overridden by the promotion."""
    import stream.retrain.job as job
    from models.datasets import synthetic_sessions
    from models.gate import GateDecision
    from models.policy_file import read_policy, write_policy
    from models.registry import Registry
    from stream.config import Settings

    registry = Registry(tmp_path / "models")
    bundle = train_model(synthetic_sessions(300, 30, seed=1), TrainParams(epochs=1, n_clusters=2))
    for _ in range(2):
        registry.register("shop", bundle, {})
    registry.promote("shop", "v1")
    experiment = {"policy": "ab", "arms": {"v1": 0.9, "v2": 0.1}, "control": "v1",
                  "candidate": "v2"}  # fmt: skip

    def trained_while_the_operator_acted(*args: object, **kwargs: object) -> tuple:
        if change == "freeze":
            registry.set_mode("shop", "freeze")
        else:
            write_policy(registry, "shop", experiment)
        return bundle, GateDecision("promoted", "better", current_version="v1")

    monkeypatch.setattr(job, "retrain", trained_while_the_operator_acted)
    monkeypatch.setattr(job, "build_sessions", lambda clicks: [])
    monkeypatch.setattr(job, "log_positions", lambda clicks: {0: 10})
    settings = Settings(redis_url="redis://127.0.0.1:1/0", model_dir=str(registry.root))
    outcome = job._retrain_tenant(settings, "shop", [], PARAMS, GatePolicy(), (0.0, 1.0))
    assert registry.current_version("shop") == "v1"  # v3 registered, not put in service
    assert outcome.version == "v3" and outcome.decision.action == "kept", outcome
    assert why in outcome.decision.reason
    assert read_policy(registry, "shop") == (experiment if change == "experiment" else None)


def test_a_training_process_leaves_the_inherited_objects_out_of_garbage_collection() -> None:
    """A forked training process inherits the trainer's heap (the read log among it):
    scanning it at every full collection is CPU spent per tenant for nothing."""
    with ProcessPoolExecutor(
        max_workers=1, mp_context=get_context("fork"), initializer=job._training_process
    ) as pool:
        assert pool.submit(gc.get_freeze_count).result() > 0
