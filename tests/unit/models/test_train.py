"""Training: reproducible with a fixed seed, and the bundle holds what ranking relies on."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from models import train as training
from models.datasets import synthetic_sessions
from models.errors import DataFormatError, InvalidSettingError
from models.fit import GRADIENT_TOL, MAX_ITER
from models.train import (
    EMBEDDINGS,
    SMALL_LOG_CLICKS,
    WARM_SHARE,
    TrainParams,
    _embed,
    auto_epochs,
    train_model,
    word2vec_schedule,
)

SESSIONS = synthetic_sessions(4000, 120, seed=7)
FAST = TrainParams(epochs=3, n_clusters=6, n_neighbours=20, seed=11)
# Word2Vec itself on a log small enough to be embedded without it by default.
W2V = replace(FAST, embedding="word2vec")


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
    train_model(SESSIONS, W2V, progress=lambda stage, fraction: seen.append((stage, fraction)))
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
    served, older = _embed(sessions, cut, W2V, lambda stage, fraction: None)
    assert older is not None
    assert set(older.items) == {x for s in sessions[:cut] for x in s}
    assert {"only-new-1", "only-new-2"} <= set(served.items)
    assert served.epochs == {"older": FAST.epochs, "all": max(1, round(FAST.epochs * WARM_SHARE))}
    rows = [served.items.index(x) for x in older.items]
    assert not np.allclose(older.vectors, served.vectors[rows])  # the served run went on


def test_a_small_log_takes_half_the_passes_at_twice_the_learning_rate() -> None:
    """Word2Vec's cost is per click and pass; a small tenant's log gets as much training
    in half the passes, and a log above the threshold keeps the full schedule."""
    params = TrainParams()
    small, large = SMALL_LOG_CLICKS - 1, SMALL_LOG_CLICKS
    assert word2vec_schedule(small, params) == (auto_epochs(small) // 2, 2 * params.alpha)
    assert word2vec_schedule(large, params) == (auto_epochs(large), params.alpha)
    # Passes set by hand are taken as given.
    assert word2vec_schedule(small, TrainParams(epochs=7)) == (7, params.alpha)
    bundle = train_model(SESSIONS, TrainParams(n_clusters=6, n_neighbours=20, embedding="word2vec"))
    clicks = sum(map(len, SESSIONS))
    assert clicks < SMALL_LOG_CLICKS
    passes = bundle.manifest["word2vec_epochs"]
    assert passes["older"] == auto_epochs(clicks) // 2
    assert bundle.manifest["word2vec_alpha"] == 2 * params.alpha


def test_a_small_logs_ranker_is_fitted_on_half_the_candidates() -> None:
    """The fit's cost is per case and candidate; a small log's ranker ranks as well from
    half of them, and a log above the threshold keeps them all."""
    params = TrainParams(n_clusters=6, n_neighbours=20)
    small = train_model(SESSIONS, params)
    assert small.manifest["ranker"]["fit"]["candidates"] == params.fit_candidates // 2
    many = [[f"{x}-{copy}" for x in s] for copy in range(8) for s in SESSIONS]
    assert sum(map(len, many)) >= SMALL_LOG_CLICKS
    large = train_model(many, replace(params, epochs=1))
    assert large.manifest["ranker"]["fit"]["candidates"] == params.fit_candidates


def test_a_small_logs_ranker_is_fitted_in_half_the_iterations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small log's fit stops after half of L-BFGS's iterations; a large log's runs to the
    optimum, Newton steps until the gradient is at its noise."""
    from scipy import optimize

    calls: list[int] = []
    minimize = optimize.minimize

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs["options"]["maxiter"])  # type: ignore[index]
        return minimize(*args, **kwargs)

    monkeypatch.setattr(optimize, "minimize", spy)
    params = TrainParams(n_clusters=6, n_neighbours=20)
    small = train_model(SESSIONS, params)
    many = [[f"{x}-{copy}" for x in s] for copy in range(8) for s in SESSIONS]
    large = train_model(many, replace(params, epochs=1))
    assert calls == [MAX_ITER // 2]  # the large log's fit takes Newton steps instead
    assert small.manifest["ranker"]["fit"]["max_iter"] == MAX_ITER // 2
    fitted = large.manifest["ranker"]["fit"]
    assert fitted["max_iter"] is None
    assert fitted["gradient"] < GRADIENT_TOL


def test_a_small_log_is_clustered_from_one_kmeans_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each KMeans start is a whole clustering; a small log's clusters rank its newest
    sessions as well from one start as from three, and a log above the threshold keeps
    three."""
    starts: list[int] = []
    real = training.KMeans

    def recording(**kwargs: object) -> object:
        starts.append(int(kwargs["n_init"]))  # type: ignore[call-overload]
        return real(**kwargs)

    monkeypatch.setattr(training, "KMeans", recording)
    train_model(SESSIONS, TrainParams(n_clusters=6, n_neighbours=20))
    assert starts == [1, 1]  # the served model's and the fit-time model's
    starts.clear()
    many = [[f"{x}-{copy}" for x in s] for copy in range(8) for s in SESSIONS]
    train_model(many, TrainParams(epochs=1, n_clusters=6, n_neighbours=20))
    assert starts == [3, 3]


def test_a_small_logs_training_warns_of_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Its higher learning rate is the schedule's choice, not a mistake to warn about."""
    with caplog.at_level(logging.WARNING):
        train_model(SESSIONS, TrainParams(n_clusters=6, n_neighbours=20, embedding="word2vec"))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def _no_word2vec(*args: object, **kwargs: object) -> None:
    raise AssertionError("Word2Vec ran")


def test_a_small_log_is_embedded_from_its_cooccurrences_without_word2vec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under SMALL_LOG_CLICKS the vectors are a truncated SVD of the items' positive PMI
    within the window: cheaper than Word2Vec's passes, and they rank a small tenant's
    newest sessions at least as well. Items that click together end up close."""
    monkeypatch.setattr(training, "Word2Vec", _no_word2vec)
    groups = [[f"a{i}" for i in range(6)], [f"b{i}" for i in range(6)]]
    rng = np.random.default_rng(3)
    sessions = [list(rng.choice(groups[n % 2], 4, replace=False)) for n in range(400)]
    bundle = train_model(sessions, TrainParams(n_clusters=2, n_neighbours=3, seed=5))
    assert bundle.manifest["embedding"] == "ppmi"
    assert bundle.manifest["word2vec_epochs"] == {"older": 0, "all": 0}
    assert bundle.vectors.shape == (12, TrainParams().vector_size)
    assert np.allclose(np.linalg.norm(bundle.vectors, axis=1), 1.0, atol=1e-5)
    cos = bundle.vectors @ bundle.vectors.T
    group = np.array([x.startswith("a") for x in bundle.items.tolist()])
    same = group[:, None] == group[None, :]
    assert cos[same].min() > cos[~same].max()
    assert len(set(bundle.clusters[group].tolist()) & set(bundle.clusters[~group].tolist())) == 0
    again = train_model(sessions, TrainParams(n_clusters=2, n_neighbours=3, seed=5))
    assert np.array_equal(bundle.vectors, again.vectors)


def test_the_small_logs_fit_time_vectors_come_from_the_older_sessions_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(training, "Word2Vec", _no_word2vec)
    sessions = [list(s) for s in SESSIONS] + [["only-new-1", "only-new-2"]] * 5
    cut = len(SESSIONS)
    served, older = _embed(sessions, cut, FAST, lambda stage, fraction: None)
    assert older is not None
    assert set(older.items) == {x for s in sessions[:cut] for x in s}
    assert {"only-new-1", "only-new-2"} <= set(served.items)
    assert served.epochs == {"older": 0, "all": 0}
    alone, _ = _embed(sessions[:cut], 0, FAST, lambda stage, fraction: None)
    rows = [alone.items.index(x) for x in older.items]
    assert np.allclose(np.abs(older.vectors @ alone.vectors[rows].T).diagonal(), 1.0, atol=1e-4)


def test_large_logs_and_a_setting_keep_word2vec() -> None:
    many = [[f"{x}-{copy}" for x in s] for copy in range(8) for s in SESSIONS]
    assert sum(map(len, many)) >= SMALL_LOG_CLICKS
    large = train_model(many, TrainParams(epochs=1, n_clusters=6, n_neighbours=20))
    assert large.manifest["embedding"] == "word2vec"
    small = train_model(SESSIONS, W2V)
    assert small.manifest["embedding"] == "word2vec"
    assert small.manifest["word2vec_epochs"]["older"] == W2V.epochs
    assert set(EMBEDDINGS) == {"auto", "word2vec", "ppmi"}
    with pytest.raises(InvalidSettingError, match="embedding"):
        train_model(SESSIONS, replace(FAST, embedding="glove"))


def test_ppmi_keeps_min_count_and_tiny_catalogues() -> None:
    sessions = [["a", "b", "c"]] * 5 + [["rare", "a"]]
    bundle = train_model(sessions, TrainParams(min_count=2, n_clusters=2, embedding="ppmi"))
    assert sorted(bundle.items.tolist()) == ["a", "b", "c"]
    tiny = train_model([["a", "b"]], TrainParams(n_clusters=10, embedding="ppmi"))
    assert tiny.vectors.shape == (2, TrainParams().vector_size)
    with pytest.raises(DataFormatError, match="min_count"):
        train_model([["a", "b"]], TrainParams(min_count=3, embedding="ppmi"))


def test_ppmi_gives_finite_vectors_for_any_small_log() -> None:
    """Tiny and sparse logs (few items, few pairs, single clicks) still embed: the SVD
    asks for no more singular vectors than the catalogue allows."""
    rng = np.random.default_rng(0)
    params = TrainParams(embedding="ppmi")
    for _ in range(60):
        n, m = int(rng.integers(2, 40)), int(rng.integers(1, 60))
        sessions = [
            [f"i{x}" for x in rng.integers(0, n, int(rng.integers(1, 6)))] for _ in range(m)
        ]
        served, older = _embed(sessions, int(rng.integers(0, m + 1)), params, lambda s, f: None)
        assert served.vectors.shape == (len(served.items), params.vector_size)
        assert np.isfinite(served.vectors).all()
        assert older is None or np.isfinite(older.vectors).all()
