"""Ranking contract: at most k items, none already seen, no duplicates, batch == single."""

from __future__ import annotations

import numpy as np
import pytest

from models.bundle import ModelBundle
from models.datasets import synthetic_sessions
from models.ranking import Ranked, RankParams, recommend, recommend_batch, similar_items
from models.train import TrainParams, train_model


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    sessions = synthetic_sessions(6000, 150, seed=5)
    return train_model(sessions, TrainParams(epochs=3, n_clusters=5, n_neighbours=15, seed=1))


def _random_sessions(bundle: ModelBundle, count: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    names = bundle.item_list + ["unknown-1", "unknown-2"]
    return [list(rng.choice(names, size=rng.integers(1, 12))) for _ in range(count)]


@pytest.mark.parametrize("k", [1, 5, 20, 149, 400])
def test_never_seen_items_never_more_than_k_no_duplicates(bundle: ModelBundle, k: int) -> None:
    sessions = _random_sessions(bundle, 300, k)
    for session, ranked in zip(sessions, recommend_batch(bundle, sessions, k), strict=True):
        ids = ranked.item_ids()
        assert len(ids) <= k
        assert len(set(ids)) == len(ids)
        assert not set(ids) & set(session)
        known = {x for x in session if bundle.index(x) is not None}
        assert len(ids) == min(k, bundle.n_items - len(known)), "the list should be filled up to k"
        scores = [s for _, s in ranked.items]
        assert scores == sorted(scores, reverse=True)


def test_batch_equals_one_by_one(bundle: ModelBundle) -> None:
    sessions = _random_sessions(bundle, 600, 99)  # more than one internal chunk
    assert recommend_batch(bundle, sessions, 10) == [recommend(bundle, s, 10) for s in sessions]


def test_unknown_items_fall_back_to_popular(bundle: ModelBundle) -> None:
    ranked = recommend(bundle, ["never-seen"], 5)
    assert ranked.strategy == "popular"
    assert ranked.item_ids() == [bundle.item_list[i] for i in bundle.popularity[:5]]
    assert recommend(bundle, [], 3).strategy == "popular"


def test_an_unknown_ranker_is_refused_in_one_line(bundle: ModelBundle) -> None:
    with pytest.raises(
        ValueError, match=r"^unknown ranker 'neighbours'; choose one of linear, blend$"
    ):
        recommend_batch(bundle, [[bundle.item_list[0]]], 5, RankParams(ranker="neighbours"))


def test_empty_and_zero_k(bundle: ModelBundle) -> None:
    assert recommend_batch(bundle, [], 5) == []
    assert recommend(bundle, ["x"], 0) == Ranked([], [], "popular")


def test_similar_items_within_cluster_by_cosine(bundle: ModelBundle) -> None:
    item = bundle.item_list[3]
    rows = similar_items(bundle, item, k=5)
    cluster = bundle.clusters[3]
    others = [j for j in range(bundle.n_items) if bundle.clusters[j] == cluster and j != 3]
    expected = sorted(others, key=lambda j: -float(bundle.vectors[j] @ bundle.vectors[3]))[:5]
    assert [x for x, _ in rows] == [bundle.item_list[j] for j in expected]
    assert all(bundle.clusters[bundle.index(x)] == cluster for x, _ in rows)
    assert [s for _, s in rows] == sorted((s for _, s in rows), reverse=True)
    assert similar_items(bundle, "never-seen") == []
