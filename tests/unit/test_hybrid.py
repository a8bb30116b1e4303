"""The hybrid model: its sources on hand-made sessions, determinism, tuning on valid only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.datasets import synthetic_sessions
from models.hybrid import FEATURES, HybridModel, HybridParams, _Sources

SMALL = HybridParams(vector_size=8, n_clusters=3, fit_cases=400, tune_cases=200)


def _features(sessions: list[list[str]], prefix: list[str], **params: object) -> dict[str, dict]:
    sources = _Sources(replace(SMALL, **params), {"a": "x", "b": "x", "c": "y", "d": "y"})
    sources.fit(sessions)
    feats = sources.features([prefix])
    return {
        name: {item: float(feats[f, 0, sources.index[item]]) for item in sources.items}
        for f, name in enumerate(FEATURES)
    }


def test_sources_score_hand_made_sessions() -> None:
    sessions = [["a", "b", "c"], ["a", "b", "d"], ["c", "b", "c"], ["b", "d"]]
    f = _features(sessions, ["a", "b"])
    # After the whole prefix a, b came c once and d once.
    assert f["after_prefix"]["c"] == pytest.approx(0.5) and f["after_prefix"]["d"] == 0.5
    # After b (last click): c twice, d twice -> 1/2 each; a never.
    assert f["transitions"]["c"] == pytest.approx(0.5) and f["transitions"]["a"] == 0.0
    # Own items: b is the current item (weight 1), a one click older (own_decay).
    assert f["own_recency"]["b"] == pytest.approx(1.0)
    assert f["own_recency"]["a"] == pytest.approx(SMALL.own_decay)
    assert f["is_current"] == {"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.0}
    # The last click b is in category x, as is a.
    assert f["same_category"] == {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}
    assert max(f["vsknn"].values()) == pytest.approx(1.0)  # scaled to the best item


def test_a_removed_source_contributes_nothing() -> None:
    sessions = [["a", "b", "c"], ["a", "b", "d"], ["c", "b", "c"], ["b", "d"]]
    f = _features(sessions, ["a", "b"], without=("sequence", "own"))
    for name in ("after_2", "after_3", "after_prefix", "own_recency", "own_count", "is_current"):
        assert set(f[name].values()) == {0.0}


def test_hybrid_is_deterministic_for_a_seed_and_keeps_the_contract() -> None:
    sessions = synthetic_sessions(4000, 60, seed=3)
    prefixes = [s[: max(1, len(s) // 2)] for s in sessions[:100]] + [["never-seen"], []]
    a, b = HybridModel(SMALL), HybridModel(SMALL)
    a.fit(sessions)
    b.fit(sessions)
    assert a.weights is not None and np.array_equal(a.weights, b.weights)
    lists = a.recommend_batch(prefixes, 10)
    assert lists == b.recommend_batch(prefixes, 10)
    for items in lists:
        assert len(items) == 10 and len(set(items)) == 10


def test_the_hybrid_follows_a_strong_sequence() -> None:
    # Every session is p -> q -> r: after p, q must come first.
    sessions = [["p", "q", "r"]] * 30 + [["q", "s"], ["s", "t"], ["t", "p"]] * 5
    model = HybridModel(SMALL)
    model.fit(sessions)
    assert model.recommend_batch([["p"], ["p", "q"]], 1) == [["q"], ["r"]]


def test_tune_uses_the_validation_split_and_reports_the_choice() -> None:
    sessions = synthetic_sessions(4000, 60, seed=3)
    valid = synthetic_sessions(600, 60, seed=8)
    model = HybridModel(SMALL)
    model.tune(sessions, valid)
    model.fit(sessions)  # already fitted on these sessions by tune: kept as is
    report = model.report()
    assert report["ranker"] in ("linear", "blend")
    assert set(report["tuning"]) == {"linear", "blend"}
    assert report["tuning"]["linear"]["cases"] <= SMALL.tune_cases
