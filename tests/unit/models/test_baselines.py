"""Each baseline on toy data where the right answer is known, plus one shared contract."""

from __future__ import annotations

import numpy as np
import pytest

from models.baselines import (
    STAN,
    ClusterRandom,
    ItemKNN,
    Popular,
    SequentialRules,
    SessionKNN,
    Transitions,
    model_factories,
)
from models.datasets import synthetic_sessions
from models.train import StreamrecModel, TrainParams

TOY = [["a", "b"], ["a", "b"], ["a", "b", "c"], ["c", "d"], ["d", "e"], ["e", "f"], ["f", "a"]] * 3


def test_popular_ranks_by_clicks_ties_in_order_of_first_appearance() -> None:
    model = Popular()
    model.fit([["a", "b"], ["a", "c"], ["a", "b"], ["d", "a"]])
    # a: 4, b: 2, c: 1, d: 1 (c appeared first); session items are allowed (literature).
    assert model.recommend_batch([["x"], ["a"]], 4) == [["a", "b", "c", "d"]] * 2


def test_transitions_count_each_pair_once_per_session() -> None:
    model = Transitions()
    # a->a three times in one session counts once; a->b in two sessions counts twice.
    model.fit([["a", "a", "a", "a"], ["a", "b"], ["c", "a", "b"]])
    assert model.recommend_batch([["q", "a"]], 2) == [["b", "a"]]
    assert model.recommend_batch([["a", "c"]], 1) == [["a"]]  # only the last click counts


def test_sequential_rules_weight_by_distance() -> None:
    model = SequentialRules(steps=2)
    # After a: b at distance 1 (weight 1) once; c at distance 2 (0.5) twice -> b 1, c 1+0.5?
    model.fit([["a", "b", "c"], ["a", "x", "c"], ["a", "y", "c"]])
    # b: 1, x: 1, y: 1, c: 3 * 0.5 = 1.5 -> c first, then b, x, y by first appearance.
    assert model.recommend_batch([["a"]], 4) == [["c", "b", "x", "y"]]


def test_item_knn_is_cosine_of_co_occurrence_with_the_last_item() -> None:
    model = ItemKNN()
    model.fit(TOY)
    assert model.recommend_batch([["a"]], 1) == [["b"]]
    assert model.recommend_batch([["c", "a"]], 1) == [["b"]]  # only the last item counts
    assert "a" not in model.recommend_batch([["a"]], 3)[0]  # an item is not its own neighbour


def test_sknn_uses_only_the_most_recent_matching_sessions() -> None:
    old = [["a", "e"]] * 5
    recent = [["a", "d"]] * 2
    everything = SessionKNN(k=100, sample_size=1000)
    everything.fit(old + recent)
    assert everything.recommend_batch([["a"]], 2) == [["a", "e"]]
    recent_only = SessionKNN(k=100, sample_size=2)
    recent_only.fit(old + recent)
    assert recent_only.recommend_batch([["a"]], 2) == [["a", "d"]]


def test_sknn_weights_neighbours_by_cosine_similarity() -> None:
    model = SessionKNN(k=1)
    model.fit([["a", "b", "x"], ["a", "y", "z", "w", "v"]])
    # The query shares "a" with both; the shorter session is more similar, so only it counts.
    assert model.recommend_batch([["a", "b"]], 3) == [["a", "b", "x"]]


def test_vsknn_weights_the_sessions_items_by_position() -> None:
    model = SessionKNN(k=1, weighting="position")
    model.fit([["a", "x"], ["b", "y"]])
    # Query b then a: a (position 2 of 2, weight 1) beats b (1/2), so the a-session wins.
    assert model.recommend_batch([["b", "a"]], 2) == [["a", "x"]]
    assert model.recommend_batch([["a", "b"]], 2) == [["b", "y"]]
    cosine = SessionKNN(k=1)
    cosine.fit([["a", "x"], ["b", "y"]])
    # Plain cosine cannot tell them apart: the tie goes to the first found session.
    assert cosine.recommend_batch([["b", "a"]], 2) == cosine.recommend_batch([["a", "b"]], 2)


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
        members = (a.cluster == cluster).sum()
        in_cluster = [x for x in items if a.cluster[a.index[x]] == cluster]
        assert len(in_cluster) == min(3, members)


@pytest.mark.parametrize("name", list(model_factories()))
def test_every_model_keeps_the_ranking_contract(name: str) -> None:
    factories = model_factories(TrainParams(epochs=2, n_clusters=3))
    model = factories[name]()
    sessions = synthetic_sessions(2000, 40, seed=1)
    model.fit(sessions)
    catalogue = {x for s in sessions for x in s}
    prefixes = [["i1"], ["i1", "i2", "i3"], ["never-seen"], [], sessions[0]]
    for k in (1, 5, 45):
        for items in model.recommend_batch(prefixes, k):
            assert len(items) == len(set(items)), "duplicates"
            assert set(items) <= catalogue
            if name != "streamrec":  # the served model never repeats session items
                assert len(items) == min(k, len(catalogue))


def test_streamrec_adapter_matches_the_serving_ranker() -> None:
    from models.ranking import recommend

    model = StreamrecModel(TrainParams(epochs=2, n_clusters=3))
    model.fit(TOY)
    # The harness's literature protocol: session items allowed (serving rules come after).
    expected = recommend(model.bundle, ["a"], 3, exclude="none").item_ids()
    assert model.recommend_batch([["a"]], 3) == [expected]


def test_stan_weights_a_neighbours_items_by_their_distance_to_the_shared_click() -> None:
    model = STAN(k=1, lambda_1=1.0, lambda_3=1.0)
    model.fit([["a", "b", "c", "d", "e"]])
    # c is shared: it weighs 1, b and d e^-1, a and e e^-2 (ties: first appearance).
    assert model.recommend_batch([["c"]], 5) == [["c", "b", "d", "a", "e"]]
    # The most recent shared click is the anchor: after e then a, the items near a lead.
    assert model.recommend_batch([["e", "a"]], 3) == [["a", "b", "c"]]
    vsknn = SessionKNN(k=1, weighting="position")
    vsknn.fit([["a", "b", "c", "d", "e"]])
    assert vsknn.recommend_batch([["c"]], 5) == [["a", "b", "c", "d", "e"]]


def test_stan_counts_a_repeated_item_once_at_its_nearest_occurrence() -> None:
    model = STAN(k=1, lambda_1=1.0, lambda_3=1.0)
    model.fit([["x", "a", "y", "z", "x"]])
    scores = model.scores([["a"]])[0]
    index = model.index
    # x is 1 step before a and 3 after it: it takes e^-1 once, not e^-1 + e^-3.
    assert scores[index["x"]] == pytest.approx(scores[index["y"]])
    assert scores[index["z"]] == pytest.approx(scores[index["a"]] * np.exp(-2.0))


def test_stan_weights_the_sessions_recent_clicks_more() -> None:
    model = STAN(k=1, lambda_1=1.0, lambda_3=1.0)
    model.fit([["a", "x"], ["b", "y"]])
    # Query b then a: a weighs 1, b e^-1, so the a-session is the neighbour.
    assert model.recommend_batch([["b", "a"]], 2) == [["a", "x"]]
    assert model.recommend_batch([["a", "b"]], 2) == [["b", "y"]]
