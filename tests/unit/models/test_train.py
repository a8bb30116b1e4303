"""Training: reproducible with a fixed seed, and the bundle holds what ranking relies on."""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import synthetic_sessions
from models.errors import DataFormatError
from models.train import WARM_SHARE, TrainParams, _embed, train_model

SESSIONS = synthetic_sessions(4000, 120, seed=7)
FAST = TrainParams(epochs=3, n_clusters=6, n_neighbours=20, seed=11)


def test_same_seed_gives_identical_vectors_clusters_and_neighbours() -> None:
    a, b = train_model(SESSIONS, FAST), train_model(SESSIONS, FAST)
    assert a.items.tolist() == b.items.tolist()
    assert np.array_equal(a.vectors, b.vectors)
    assert np.array_equal(a.clusters, b.clusters)
    assert np.array_equal(a.neighbours, b.neighbours)
    assert np.array_equal(a.neighbour_scores, b.neighbour_scores)


def test_another_seed_gives_other_vectors() -> None:
    a = train_model(SESSIONS, FAST)
    b = train_model(SESSIONS, TrainParams(**{**FAST.__dict__, "seed": 12}))
    assert not np.allclose(a.vectors, b.vectors)


def test_bundle_shapes_and_invariants() -> None:
    bundle = train_model(SESSIONS, FAST)
    n = len({item for s in SESSIONS for item in s})
    assert bundle.items.shape == (n,) and bundle.items.dtype.kind == "U"
    assert bundle.vectors.shape == (n, FAST.vector_size) and bundle.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(bundle.vectors, axis=1), 1.0, atol=1e-5)
    assert bundle.clusters.dtype == np.int32 and set(bundle.clusters.tolist()) <= set(range(6))
    assert bundle.centroids.shape == (6, FAST.vector_size)
    assert bundle.neighbours.shape == (n, 20)
    assert not (bundle.neighbours == np.arange(n)[:, None]).any(), "an item is its own neighbour"
    assert all(len(set(row)) == len(row) for row in bundle.neighbours.tolist())
    assert (np.diff(bundle.neighbour_scores, axis=1) <= 0).all(), "neighbours not best first"
    assert sorted(bundle.popularity.tolist()) == list(range(n))
    counts: dict[str, int] = {}
    for s in SESSIONS:
        for item in s:
            counts[item] = counts.get(item, 0) + 1
    popular = [bundle.items[i] for i in bundle.popularity[:5]]
    assert [counts[x] for x in popular] == sorted(counts.values(), reverse=True)[:5]
    assert bundle.manifest["params"]["seed"] == 11
    assert bundle.manifest["counts"]["items"] == n


def test_cooccurrence_puts_the_usual_next_item_first() -> None:
    # "b" always follows "a" and the sessions never mix the two groups.
    sessions = [["a", "b"], ["c", "d"]] * 50 + [["a", "x"]] * 5
    bundle = train_model(sessions, TrainParams(epochs=2, n_clusters=2, n_neighbours=3))
    a = bundle.index("a")
    assert bundle.items[bundle.neighbours[a, 0]] == "b"


def test_progress_is_reported_per_stage() -> None:
    seen: list[tuple[str, float]] = []
    train_model(SESSIONS, FAST, progress=lambda stage, fraction: seen.append((stage, fraction)))
    stages = [stage for stage, _ in seen]
    assert stages.index("word2vec") < stages.index("kmeans") < stages.index("neighbours")
    assert ("word2vec", 1.0) in seen and ("neighbours", 1.0) in seen


def test_tiny_catalogues_and_empty_input() -> None:
    bundle = train_model([["a", "b"]], TrainParams(epochs=1, n_clusters=10))
    assert len(bundle.centroids) == 2 and bundle.neighbours.shape == (2, 1)
    with pytest.raises(DataFormatError):
        train_model([], FAST)


def test_the_fit_time_model_knows_only_the_older_sessions() -> None:
    """The ranker is fitted on a model of the older sessions: its items (and vectors) come
    from them alone, and Word2Vec's passes over them are counted apart."""
    sessions = [list(s) for s in SESSIONS] + [["only-new-1", "only-new-2"]] * 5
    cut = len(SESSIONS)
    served, older = _embed(sessions, cut, FAST, lambda stage, fraction: None)
    assert older is not None
    assert set(older.items) == {x for s in sessions[:cut] for x in s}
    assert {"only-new-1", "only-new-2"} <= set(served.items)
    assert served.epochs == {"older": FAST.epochs, "all": max(1, round(FAST.epochs * WARM_SHARE))}
    rows = [served.items.index(x) for x in older.items]
    assert not np.allclose(older.vectors, served.vectors[rows])  # the served run went on
