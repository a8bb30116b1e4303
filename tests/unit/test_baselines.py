"""Each baseline on toy data where the right answer is obvious, plus one shared contract."""

from __future__ import annotations

import pytest

from models.baselines import ClusterRandom, ItemKNN, Popular, SessionKNN, model_factories
from models.datasets import synthetic_sessions
from models.train import StreamrecModel, TrainParams

TOY = [["a", "b"], ["a", "b"], ["a", "b", "c"], ["c", "d"], ["d", "e"], ["e", "f"], ["f", "a"]] * 3


def test_popular_returns_the_most_clicked_unseen_items() -> None:
    model = Popular()
    model.fit([["a", "b"], ["a", "c"], ["a", "b"], ["d", "a"]])
    assert model.recommend_batch([["x"], ["a"]], 2) == [["a", "b"], ["b", "c"]]


def test_item_knn_recommends_what_co_occurs_with_the_last_item() -> None:
    model = ItemKNN(shrink=0.0)
    model.fit(TOY)
    assert model.recommend_batch([["a"]], 1) == [["b"]]
    assert model.recommend_batch([["c", "a"]], 1) == [["b"]]  # only the last item counts
    assert model.recommend_batch([["b", "a"]], 1)[0][0] != "b"  # seen items are excluded


def test_sknn_uses_only_the_most_recent_matching_sessions() -> None:
    old = [["a", "e"]] * 5
    recent = [["a", "d"]] * 2
    everything = SessionKNN(k=100, sample_size=1000)
    everything.fit(old + recent)
    assert everything.recommend_batch([["a"]], 1) == [["e"]]
    recent_only = SessionKNN(k=100, sample_size=2)
    recent_only.fit(old + recent)
    assert recent_only.recommend_batch([["a"]], 1) == [["d"]]


def test_sknn_weights_neighbours_by_cosine_similarity() -> None:
    model = SessionKNN(k=1)
    model.fit([["a", "b", "x"], ["a", "y", "z", "w", "v"]])
    # The query shares "a" with both; the shorter session is more similar, so only it counts.
    assert model.recommend_batch([["a", "b"]], 1) == [["x"]]


def test_cluster_random_stays_in_the_last_items_cluster_and_is_seeded() -> None:
    sessions = synthetic_sessions(3000, 80, seed=4)
    params = TrainParams(epochs=2, n_clusters=4, seed=9)
    a, b = ClusterRandom(params), ClusterRandom(params)
    a.fit(sessions)
    b.fit(sessions)
    prefixes = [s[:1] for s in sessions[:50]]
    assert a.recommend_batch(prefixes, 5) == b.recommend_batch(prefixes, 5)
    for prefix, items in zip(prefixes, a.recommend_batch(prefixes, 3), strict=True):
        cluster = a.cluster[a.index[prefix[-1]]]
        members = (a.cluster == cluster).sum() - 1
        in_cluster = [x for x in items if a.cluster[a.index[x]] == cluster]
        assert len(in_cluster) == min(3, members)


@pytest.mark.parametrize("name", list(model_factories()))
def test_every_model_keeps_the_ranking_contract(name: str) -> None:
    factories = model_factories(TrainParams(epochs=2, n_clusters=3))
    model = factories[name]()
    sessions = synthetic_sessions(2000, 40, seed=1)
    model.fit(sessions)
    prefixes = [["i1"], ["i1", "i2", "i3"], ["never-seen"], [], sessions[0]]
    for k in (1, 5, 45):
        for prefix, items in zip(prefixes, model.recommend_batch(prefixes, k), strict=True):
            assert len(items) == len(set(items)), "duplicates"
            assert not set(items) & set(prefix), "a clicked item was recommended"
            catalogue = len({x for s in sessions for x in s})
            assert len(items) == min(
                k, catalogue - len(set(prefix) & {x for s in sessions for x in s})
            )


def test_streamrec_adapter_matches_the_serving_ranker() -> None:
    from models.ranking import recommend

    model = StreamrecModel(TrainParams(epochs=2, n_clusters=3))
    model.fit(TOY)
    assert model.recommend_batch([["a"]], 3) == [recommend(model.bundle, ["a"], 3).item_ids()]
