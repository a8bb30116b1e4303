"""The served model (models.kernel, models.sources, models.fit): the kernel on a hand-made
bundle with known answers,
a deterministic ranker, serving rules that never let an excluded item through, and a
bundle that round-trips through disk and the registry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.bundle import ModelBundle, load_bundle, save_bundle
from models.datasets import synthetic_sessions
from models.errors import InvalidModelError
from models.features import LAYOUT
from models.kernel import _context_row, context_buckets
from models.ranking import (
    MIN_ROWS_PER_THREAD,
    STRATEGIES,
    RankParams,
    encode_sessions,
    rank_codes,
    recommend_batch,
    recommend_flat,
)
from models.registry import Registry
from models.select import select_top
from models.sources import build_sources, category_lists
from models.train import TrainParams, train_model

ITEMS = ["a", "b", "c", "d", "e"]
# b follows a in two sessions, c in one; d and e only ever appear together.
SESSIONS = [["a", "b"], ["a", "b"], ["a", "c"], ["d", "e"]]


def _hand_made(weights: dict[str, float], categories: list[int] | None = None) -> ModelBundle:
    n = len(ITEMS)
    index = {x: i for i, x in enumerate(ITEMS)}
    codes = [np.array([index[x] for x in s], dtype=np.int64) for s in SESSIONS]
    sources = build_sources(codes, n, top=10, rule_steps=3, sample_size=10)
    w = np.zeros(LAYOUT.n_weights)
    for name, value in weights.items():
        w[LAYOUT.column(name)] = value
    angle = np.arange(n, dtype=np.float32)
    item_category = np.array(categories or [-1] * n, dtype=np.int32)
    popularity = np.arange(n, dtype=np.int32)
    sources.update(category_lists(item_category, popularity, top=10))
    sources["feature_popularity"] = np.linspace(1.0, 0.0, n).astype(np.float32)
    return ModelBundle(
        version="hand",
        items=np.array(ITEMS),
        vectors=np.stack((np.cos(angle), np.sin(angle)), axis=1).astype(np.float32),
        clusters=np.array([0, 0, 0, 1, 1], dtype=np.int32),
        centroids=np.zeros((2, 2), dtype=np.float32),
        neighbours=np.array([[1], [2], [3], [4], [0]], dtype=np.int32),
        neighbour_scores=np.ones((n, 1), dtype=np.float32),
        popularity=popularity,
        item_category=item_category,
        arrays=sources,
        manifest={
            "ranking": {"context": 1},
            "ranker": {"features": list(LAYOUT.names), "weights": w.tolist()},
        },
    )


def _rank(bundle: ModelBundle, session: list[str], k: int, exclude: str = "none") -> list[str]:
    return recommend_batch(bundle, [session], k, exclude=exclude)[0].ids


def test_transitions_rank_by_how_often_the_next_item_followed() -> None:
    bundle = _hand_made({"transitions": 1.0})
    ptr, w = bundle.arrays["transitions_ptr"], bundle.arrays["transitions_w"]
    assert w[ptr[0] : ptr[1]].tolist() == [
        pytest.approx(2 / 3),
        pytest.approx(1 / 3),
    ]
    assert _rank(bundle, ["a"], 2) == ["b", "c"]


def test_own_items_by_recency_and_the_current_rule() -> None:
    bundle = _hand_made({"own_recency": 1.0})
    # Own items only score: newest first, then fill-in (cluster, then popular) at 0.
    assert _rank(bundle, ["c", "a", "b"], 3) == ["b", "a", "c"]
    assert _rank(bundle, ["c", "a", "b"], 2, exclude="current") == ["a", "c"]
    assert "b" not in _rank(bundle, ["c", "a", "b"], 5, exclude="current")
    assert not {"a", "b", "c"} & set(_rank(bundle, ["c", "a", "b"], 2, exclude="seen"))


def test_session_knn_votes_with_neighbour_similarity() -> None:
    bundle = _hand_made({"vsknn": 1.0})
    # The three sessions holding a are the neighbours (similarity 1 each): a 3, b 2, c 1.
    ranked = recommend_batch(bundle, [["a"]], 3, exclude="none")[0]
    assert ranked.ids == ["a", "b", "c"]
    assert ranked.scores == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert ranked.strategy == "session_knn"
    assert _rank(bundle, ["d"], 1, exclude="current") == ["e"]


def test_strategy_names_the_main_source_of_the_top_item() -> None:
    bundle = _hand_made({"transitions": 1.0, "own_recency": 0.1})
    assert recommend_batch(bundle, [["a"]], 1, exclude="none")[0].strategy == "transitions"
    assert recommend_batch(bundle, [["zzz"]], 1)[0].strategy == "popular"
    assert set(STRATEGIES) >= {"embedding", "cluster", "popular", "own", "session_knn"}


# a, c and e are one category, d another; b has none.
CATEGORIES = [0, -1, 0, 1, 0]


def test_a_category_lifts_the_candidate_that_shares_the_last_clicks() -> None:
    # Transitions alone rank b (2/3) above c (1/3); c shares a's category, b has none.
    plain = _hand_made({"transitions": 1.0}, CATEGORIES)
    assert _rank(plain, ["a"], 2, exclude="current") == ["b", "c"]
    bundle = _hand_made({"transitions": 0.1, "same_category": 1.0}, CATEGORIES)
    # e (a's category too) comes from the top of the category, with no transition.
    assert _rank(bundle, ["a"], 3, exclude="current") == ["c", "e", "b"]
    assert recommend_batch(bundle, [["a"]], 1, exclude="current")[0].strategy == "category"
    # No categories: the same weights leave the transitions' order.
    uncategorised = _hand_made({"transitions": 0.1, "same_category": 1.0})
    assert _rank(uncategorised, ["a"], 2, exclude="current") == ["b", "c"]


def test_the_category_share_is_the_sessions_recency_weighted_share() -> None:
    bundle = _hand_made({"own_recency": 1e-6, "category_share": 1.0}, CATEGORIES)
    feats = np.zeros((1, 5, LAYOUT.n_features))
    codes, ptr = encode_sessions(bundle, [["d", "a"]])  # a newest (weight 1), d 0.6
    items, *_ = rank_codes(
        bundle, codes, ptr, 5, RankParams.of(bundle), exclude="none", out_feats=feats
    )
    column = feats[0, :, LAYOUT.column("category_share")]
    share = dict(zip(items[0].tolist(), column.tolist(), strict=True))
    # a, c and e share the newest click's category, d the older one's; b has none.
    assert share == pytest.approx({0: 1 / 1.6, 2: 1 / 1.6, 4: 1 / 1.6, 3: 0.6 / 1.6, 1: 0.0})


def test_the_top_of_the_last_clicks_category_are_candidates() -> None:
    bundle = _hand_made({"category_top": 1.0}, CATEGORIES)
    ranked = recommend_batch(bundle, [["e"]], 3, exclude="none")[0]
    assert ranked.ids == ["a", "c", "e"]  # category 0, most clicked first
    assert ranked.scores == pytest.approx([1.0, 1 / 2, 1 / 3])


@pytest.fixture(scope="module")
def trained() -> ModelBundle:
    sessions = synthetic_sessions(8000, 200, seed=3)
    return train_model(sessions, TrainParams(epochs=2, n_clusters=4, n_neighbours=10, seed=7))


def test_ranker_is_fitted_and_deterministic_for_a_seed(trained: ModelBundle) -> None:
    ranker = trained.manifest["ranker"]
    assert ranker["kind"] == "linear" and ranker["fit"]["cases"] > 100
    sessions = synthetic_sessions(8000, 200, seed=3)
    again = train_model(sessions, TrainParams(epochs=2, n_clusters=4, n_neighbours=10, seed=7))
    assert again.manifest["ranker"]["weights"] == ranker["weights"]
    other = train_model(sessions, TrainParams(epochs=2, n_clusters=4, n_neighbours=10, seed=8))
    assert other.manifest["ranker"]["weights"] != ranker["weights"]


def test_the_learned_ranker_beats_the_fixed_blend_on_held_out_cases(trained: ModelBundle) -> None:
    test = synthetic_sessions(3000, 200, seed=4)
    cases = [(s[:i], s[i]) for s in test for i in range(1, len(s))]

    def hit_rate(params: RankParams | None) -> float:
        lists = recommend_batch(trained, [p for p, _ in cases], 20, params, exclude="none")
        return float(np.mean([t in r.ids for (_, t), r in zip(cases, lists, strict=True)]))

    assert hit_rate(None) > hit_rate(RankParams(ranker="blend"))


@pytest.mark.parametrize("threads", [2, 3])
def test_a_batch_ranked_by_several_threads_is_ranked_the_same(
    trained: ModelBundle, threads: int
) -> None:
    sessions = synthetic_sessions(3000, 200, seed=5)  # rows a thread: above the minimum
    codes, ptr = encode_sessions(trained, sessions)
    params = RankParams.of(trained)
    one = rank_codes(trained, codes, ptr, 20, params, exclude="current", threads=1)
    many = rank_codes(trained, codes, ptr, 20, params, exclude="current", threads=threads)
    assert len(sessions) >= threads * MIN_ROWS_PER_THREAD
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


@settings(max_examples=60, deadline=None)
@given(
    session=st.lists(st.sampled_from([f"i{n}" for n in range(40)] + ["unknown"]), max_size=8),
    banned_rows=st.sets(st.integers(0, 199), max_size=60),
    exclude=st.sampled_from(["none", "current", "seen"]),
    k=st.integers(1, 30),
)
def test_no_excluded_item_ever_gets_through(
    trained: ModelBundle, session: list[str], banned_rows: set[int], exclude: str, k: int
) -> None:
    banned = np.zeros(trained.n_items, dtype=np.bool_)
    banned[[r for r in banned_rows if r < trained.n_items]] = True
    [ranked] = recommend_flat(trained, session, [len(session)], k, banned=banned, exclude=exclude)
    ids = ranked.ids
    assert len(ids) == len(set(ids)) <= k
    assert not any(banned[trained.index(x)] for x in ids)
    if exclude == "seen":
        assert not set(ids) & set(session)
    if exclude == "current" and session:
        assert session[-1] not in ids
    assert ranked.strategy in STRATEGIES


def test_bundle_round_trips_through_disk_and_registry(trained: ModelBundle, tmp_path: Path) -> None:
    save_bundle(trained, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    sessions = synthetic_sessions(500, 200, seed=9)
    assert recommend_batch(loaded, sessions, 10) == recommend_batch(trained, sessions, 10)
    assert np.array_equal(loaded.ranker_weights, trained.ranker_weights)
    registry = Registry(tmp_path / "registry")
    version = registry.register("shop", trained)
    assert recommend_batch(registry.load("shop", version), sessions, 10) == recommend_batch(
        trained, sessions, 10
    )


@pytest.mark.parametrize("found,says", [(4, "older than"), (9, "newer than"), ("x", "not one")])
def test_a_bundle_of_another_format_is_refused_with_a_clear_message(
    trained: ModelBundle, tmp_path: Path, found: object, says: str
) -> None:
    save_bundle(trained, tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = found
    path.write_text(json.dumps(manifest))
    with pytest.raises(InvalidModelError, match=f"model bundle format {found!r} is {says}"):
        load_bundle(tmp_path / "b")


def test_a_row_pointer_of_another_dtype_is_refused(trained: ModelBundle, tmp_path: Path) -> None:
    """An int64 pointer: manifest and file agree, the bundle's own dtype check refuses it."""
    arrays = {**trained.arrays, "context_ptr": trained.arrays["context_ptr"].astype(np.int64)}
    wide = dataclasses.replace(trained, arrays=arrays)
    save_bundle(wide, tmp_path / "w")
    with pytest.raises(InvalidModelError, match="context_ptr must be int32"):
        load_bundle(tmp_path / "w")


def test_lists_are_kept_no_longer_than_serving_reads(trained: ModelBundle) -> None:
    per_source = trained.ranking["per_source"]
    assert trained.neighbours.shape[1] <= per_source
    for name in ("transitions", "rules", "context"):
        ptr = trained.arrays[f"{name}_ptr"]
        assert ptr.dtype == np.int32 and np.diff(ptr).max() <= per_source


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        # Few distinct values: ties at the threshold are the common case here.
        st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=60),
        st.lists(st.floats(0.0, 1.0), min_size=1, max_size=300),
    ),
    st.integers(1, 310),
)
def test_select_keeps_the_largest_with_ties_to_the_earlier_position(
    values: list[float], limit: int
) -> None:
    out = np.empty(len(values), dtype=np.int64)
    buf = np.empty((2, len(values)), dtype=np.float64)
    count = select_top(np.array(values), limit, out, buf)
    # The reference: a stable sort by value, descending, keeps the earlier of equals.
    expected = sorted(sorted(range(len(values)), key=lambda q: -values[q])[:limit])
    assert out[:count].tolist() == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 2**64 - 1), max_size=400, unique=True),
    st.lists(st.integers(0, 2**64 - 1), max_size=50),
)
def test_context_buckets_find_each_key_where_a_binary_search_does(
    keys: list[int], others: list[int]
) -> None:
    sorted_keys = np.array(sorted(keys), dtype=np.uint64)
    start, shift = context_buckets(sorted_keys)
    # The keys themselves, their neighbours (a bucket's edges) and any other value.
    probes = {
        *keys,
        *others,
        *(min(k + 1, 2**64 - 1) for k in keys),
        *(max(k - 1, 0) for k in keys),
    }
    for h in map(np.uint64, probes):
        q = int(np.searchsorted(sorted_keys, h))
        expected = q if q < sorted_keys.size and sorted_keys[q] == h else -1
        assert _context_row(sorted_keys, start, shift, h) == expected
