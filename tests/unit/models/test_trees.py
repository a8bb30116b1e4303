"""The boosted trees over the linear ranker (models/trees.py): exported trees walked as
LightGBM predicts, the rerank changing the order only within the linear top, the
columns after the features the same in the fit and the walk, a removed candidate
leaving the others' order, and the trees through a bundle's save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models import features
from models.bundle import load_bundle, save_bundle
from models.errors import InvalidModelError
from models.trees import (
    COLUMNS,
    GAP_COLUMNS,
    MAX_DEPTH,
    MIN_CASES,
    TREE_ARRAYS,
    column_codes,
    empty_trees,
    export,
    fit_trees,
    rerank,
    top_cases,
    tree_sums,
)

lgb = pytest.importorskip("lightgbm")


def _groups(seed: int, groups: int = 300, c: int = 12, cols: int = 6):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(groups, c, cols))
    rows[..., 1] = np.round(rows[..., 1])  # a column with many ties at split points
    rows[..., 2] = np.maximum(rows[..., 2], 0.0)  # and one mostly zero
    utility = rows[..., 0] * rows[..., 1] + np.sin(3 * rows[..., 3]) + rng.normal(size=(groups, c))
    labels = (utility == utility.max(axis=1, keepdims=True)).astype(np.float64)
    return rows, labels


@pytest.mark.parametrize("depth", [2, 4])
def test_exported_trees_walk_to_lightgbms_own_prediction(depth: int) -> None:
    rows, labels = _groups(1)
    flat = rows.reshape(-1, rows.shape[-1])
    data = lgb.Dataset(flat, label=labels.reshape(-1), group=np.full(len(rows), rows.shape[1]))
    params = {
        "objective": "lambdarank",
        "num_leaves": 2**depth,
        "max_depth": depth,
        "min_data_in_leaf": 5,
        "num_threads": 1,
        "verbose": -1,
    }
    booster = lgb.train(params, data, num_boost_round=25)
    trees = export(booster, depth)
    assert trees["tree_feature"].shape == (25, 2**depth - 1)
    # Rows never seen in the fit, and rows exactly at the trees' thresholds.
    probe = np.random.default_rng(2).normal(size=(500, rows.shape[-1]))
    used = trees["tree_threshold"][np.isfinite(trees["tree_threshold"])]
    probe[:50, 0] = used[:50] if used.size >= 50 else probe[:50, 0]
    probe[50:100, 1] = np.round(probe[50:100, 1])
    want = booster.predict(probe)
    got = tree_sums(*(trees[name] for name in TREE_ARRAYS), np.ascontiguousarray(probe.T), 500)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_a_shallower_tree_fills_every_leaf_under_it() -> None:
    rows, labels = _groups(3, groups=40, c=5)
    data = lgb.Dataset(rows.reshape(-1, rows.shape[-1]), label=labels.reshape(-1), group=[5] * 40)
    params = {"objective": "lambdarank", "num_leaves": 3, "num_threads": 1, "verbose": -1}
    booster = lgb.train(params, data, num_boost_round=3)
    trees = export(booster, 4)  # trees of 3 leaves placed in complete trees of depth 4
    probe = np.random.default_rng(4).normal(size=(200, rows.shape[-1]))
    got = tree_sums(*(trees[n] for n in TREE_ARRAYS), np.ascontiguousarray(probe.T), 200)
    np.testing.assert_allclose(got, booster.predict(probe), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="deeper"):
        export(lgb.train({**params, "num_leaves": 16}, data, num_boost_round=2), 2)


def _walked(feature, threshold, leaf, x):
    """The trees' sum of each column of ``x``, walked node by node (the reference)."""
    inner = feature.shape[1]
    out = np.zeros(x.shape[1])
    for i in range(x.shape[1]):
        for t in range(feature.shape[0]):
            at = 0
            while at < inner:
                at = 2 * at + 1 + int(x[feature[t, at], i] > threshold[t, at])
            out[i] += leaf[t, at - inner]
    return out


@pytest.mark.parametrize("depth", range(1, MAX_DEPTH + 1))
def test_the_leaves_found_by_masks_are_the_walks_own(depth: int) -> None:
    rng = np.random.default_rng(depth)
    inner = 2**depth - 1
    for _ in range(20):
        n_trees, columns, rows = rng.integers(1, 6), rng.integers(1, 8), rng.integers(1, 60)
        feature = rng.integers(0, columns, (n_trees, inner)).astype(np.int32)
        # Thresholds and values on a coarse grid (ties at the splits), some splits that
        # always go left.
        threshold = np.round(rng.normal(size=(n_trees, inner)), 1)
        threshold[rng.random((n_trees, inner)) < 0.3] = np.inf
        leaf = rng.normal(size=(n_trees, inner + 1))
        x = np.round(rng.normal(size=(columns, rows)), 1)
        got = tree_sums(feature, threshold, leaf, x, rows)
        np.testing.assert_array_equal(got, _walked(feature, threshold, leaf, x))


def test_trees_deeper_than_a_mask_holds_are_refused() -> None:
    rows, labels = _groups(7, groups=MIN_CASES + 10, c=4)
    with pytest.raises(ValueError, match="levels"):
        fit_trees(rows, labels, n_trees=2, depth=MAX_DEPTH + 1, learning_rate=0.2, seed=1)


def _fitted(nf: int, depth: int = 3, extra: int = len(COLUMNS)):
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(400, 10, nf + extra))
    # Every column matters, the last one (the linear score or its gap, in the walk) too.
    utility = rows[..., 0] + rows[..., -1] * rows[..., 1]
    labels = (utility == utility.max(axis=1, keepdims=True)).astype(np.float64)
    arrays, info = fit_trees(rows, labels, n_trees=10, depth=depth, learning_rate=0.2, seed=1)
    assert info["trees"] == 10
    return arrays


@pytest.mark.parametrize("names", [COLUMNS, GAP_COLUMNS])
def test_rerank_reorders_only_the_linear_top(names: tuple[str, ...]) -> None:
    nf = 5
    trees = _fitted(nf, extra=len(names))
    codes = column_codes(names)
    rng = np.random.default_rng(6)
    for _ in range(50):
        n_pool = int(rng.integers(2, 40))
        top = int(rng.integers(2, 20))
        pool_feats = rng.normal(size=(nf, n_pool))
        score = rng.normal(size=n_pool)
        score[rng.integers(0, n_pool)] = score[0]  # a tie
        before = score.copy()
        x = np.empty((nf + len(names), top))
        bufs = np.empty((2, n_pool))
        rerank(*(trees[n] for n in TREE_ARRAYS), codes, top, pool_feats, score, n_pool, x, bufs)
        m = min(top, n_pool)
        order_before = np.lexsort((np.arange(n_pool), -before))
        order_after = np.lexsort((np.arange(n_pool), -score))
        # The same candidates make the top; the rest keep their scores and order.
        assert set(order_after[:m]) == set(order_before[:m])
        rest = order_before[m:]
        np.testing.assert_array_equal(score[rest], before[rest])
        np.testing.assert_array_equal(order_after[m:], rest)
        # Within the top, the order is the trees' sum's.
        chosen = order_before[:m]
        made = {"score": before[chosen], "gap": before[chosen].max() - before[chosen]}
        cols = np.vstack([pool_feats[:, chosen], *(made[n] for n in names)])
        sums = tree_sums(*(trees[n] for n in TREE_ARRAYS), np.ascontiguousarray(cols), m)
        np.testing.assert_allclose(
            score[chosen] - score[chosen].min(), sums - sums.min(), rtol=0, atol=1e-9
        )


def test_no_trees_or_top_of_one_changes_nothing() -> None:
    nf = 4
    score = np.array([0.3, 0.9, 0.1])
    feats = np.ones((nf, 3))
    codes = column_codes(COLUMNS)
    for trees, top in ((empty_trees(3), 50), (_fitted(nf), 1)):
        got = score.copy()
        x, bufs = np.empty((nf + len(COLUMNS), 50)), np.empty((2, 3))
        rerank(*(trees[n] for n in TREE_ARRAYS), codes, top, feats, got, 3, x, bufs)
        np.testing.assert_array_equal(got, score)


def test_column_codes_refuse_unknown_or_repeated_names() -> None:
    assert column_codes(COLUMNS).dtype == np.int64
    np.testing.assert_array_equal(column_codes(["gap", "score"]), [1, 0])
    for bad in (["score", "nope"], ["score", "score"], "score", [1]):
        with pytest.raises(ValueError):
            column_codes(bad)


def test_top_cases_keeps_the_linear_best_with_the_click() -> None:
    nf = features.LAYOUT.n_features
    rng = np.random.default_rng(7)
    feats = rng.random((6, 8, nf))
    items = np.tile(np.arange(8), (6, 1))
    items[5, 3:] = -1  # too few real candidates: left out
    weights = np.zeros(2 * nf)
    weights[0] = 1.0
    order = np.argsort(-feats[..., 0], axis=1, kind="stable")
    targets = order[:, 1].copy()
    targets[2] = order[2, 6]  # not in the best 4: left out
    rows, labels = top_cases(feats, items, targets, weights, 4, ("gap", "score"))
    assert rows.shape == (4, 4, nf + 2)
    np.testing.assert_array_equal(labels, np.tile([0.0, 1.0, 0.0, 0.0], (4, 1)))
    kept = [0, 1, 3, 4]
    score = rows[..., nf + 1]
    np.testing.assert_allclose(score, np.sort(feats[kept, :, 0], axis=1)[:, ::-1][:, :4])
    np.testing.assert_allclose(rows[..., nf], score[:, :1] - score)
    assert top_cases(feats, items, targets, weights, 4)[0].shape == (4, 4, nf + len(COLUMNS))


def _trained_with_trees(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...] = COLUMNS):
    import models.train as train_module
    from models.datasets import synthetic_sessions

    monkeypatch.setattr(train_module, "SMALL_LOG_CLICKS", 0)  # trees on a small log too
    monkeypatch.setattr("models.trees.MIN_CASES", 20)
    monkeypatch.setattr("models.trees.COLUMNS", names)
    params = train_module.TrainParams(
        epochs=1, n_clusters=2, n_neighbours=8, rerank_top=10, tree_count=8, tree_depth=3,
        tree_seen_share=0.3,
    )  # fmt: skip
    return train_module.train_model(synthetic_sessions(4000, 40, seed=3), params)


def test_a_trained_bundles_trees_rank_after_a_round_trip(tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    from models.ranking import RankParams, recommend_batch

    bundle = _trained_with_trees(monkeypatch)
    trees = bundle.manifest["trees"]
    assert trees["fit"]["seen_cases"] > 0 and trees["fit"]["trees"] == 8
    assert bundle.arrays["tree_feature"].shape == (8, 7)
    save_bundle(bundle, tmp_path / "m")
    loaded = load_bundle(tmp_path / "m")
    for name in TREE_ARRAYS:
        np.testing.assert_array_equal(loaded.arrays[name], bundle.arrays[name])
        assert loaded.arrays[name].dtype == bundle.arrays[name].dtype
    items = bundle.item_list
    prefixes = [[items[i % len(items)], items[(i * 7) % len(items)]] for i in range(60)]
    params = RankParams.of(loaded)
    assert params.rerank_top == 10
    with_trees = recommend_batch(loaded, prefixes, 20, params, exclude="none")
    assert [r.ids for r in with_trees] == [
        r.ids for r in recommend_batch(bundle, prefixes, 20, params, exclude="none")
    ]
    # Trees off: the linear order; the trees move items only within its best 10.
    off = recommend_batch(loaded, prefixes, 20, replace(params, rerank_top=0), exclude="none")
    moved = 0
    for a, b in zip(with_trees, off, strict=True):
        assert set(a.ids[:10]) == set(b.ids[:10]) and a.ids[10:] == b.ids[10:]
        moved += a.ids != b.ids
    assert moved > 0
    # A bundle without the arrays ranks as one with them switched off.
    bare = {k: v for k, v in loaded.arrays.items() if k not in TREE_ARRAYS}
    without = replace(loaded, arrays=bare)
    got = recommend_batch(without, prefixes, 20, params, exclude="none")
    assert [r.ids for r in got] == [r.ids for r in off]
    assert [r.scores for r in got] == [r.scores for r in off]


def test_bad_trees_in_a_bundle_are_refused(tmp_path, monkeypatch) -> None:
    bundle = _trained_with_trees(monkeypatch)
    save_bundle(bundle, tmp_path / "m")
    # Trees fitted on another table's columns are refused, and so is an index out of range.
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["trees"]["features"] = ["other"]
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidModelError, match="other features"):
        load_bundle(tmp_path / "m")
    # Columns after the features that this streamrec does not know, or none named.
    for columns, message in ((["score", "nope"], "does not know"), (None, "list of names")):
        manifest["trees"]["features"] = list(features.LAYOUT.names)
        manifest["trees"]["columns"] = columns
        (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(InvalidModelError, match=message):
            load_bundle(tmp_path / "m")
    # A split on a column beyond the features and the named columns.
    nf = features.LAYOUT.n_features
    bundle.arrays["tree_feature"] = bundle.arrays["tree_feature"] + nf + len(COLUMNS)
    save_bundle(bundle, tmp_path / "n")
    with pytest.raises(InvalidModelError, match="out of range"):
        load_bundle(tmp_path / "n")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["trees"]["columns"] = list(COLUMNS[:-1])  # one column fewer than fitted
    bundle.arrays["tree_feature"][0, 0] = nf + len(COLUMNS) - 1
    save_bundle(bundle, tmp_path / "o")
    (tmp_path / "o" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidModelError, match="out of range"):
        load_bundle(tmp_path / "o", verify_checksums=False)
    inner = 2 ** (MAX_DEPTH + 1) - 1  # deeper than the kernel's leaf masks hold
    bundle.arrays["tree_feature"] = np.zeros((1, inner), dtype=np.int32)
    bundle.arrays["tree_threshold"] = np.zeros((1, inner))
    bundle.arrays["tree_leaf"] = np.zeros((1, inner + 1))
    save_bundle(bundle, tmp_path / "d")
    with pytest.raises(InvalidModelError, match="levels deep"):
        load_bundle(tmp_path / "d")


def test_the_kernel_sees_one_type_of_tree_arrays_with_or_without_trees(monkeypatch) -> None:
    from dataclasses import replace

    from numba import typeof

    from models.kernel import served_model

    bundle = _trained_with_trees(monkeypatch)
    bare = replace(bundle, arrays={k: v for k, v in bundle.arrays.items() if k not in TREE_ARRAYS})
    with_trees, without = served_model(bundle), served_model(bare)
    for name in (*TREE_ARRAYS, "tree_columns"):
        assert typeof(getattr(with_trees, name)) == typeof(getattr(without, name))
    assert without.tree_leaf.shape[0] == 0 and with_trees.tree_leaf.shape[0] == 8
    np.testing.assert_array_equal(with_trees.tree_columns, column_codes(COLUMNS))


def _prefixes(bundle, n: int = 60) -> list[list[str]]:
    """Prefixes of 1 to 6 clicks, some repeating an item, some with an item the model
    does not know."""
    items = bundle.item_list
    out = []
    for i in range(n):
        prefix = [items[(i * (q + 3) + q * q) % len(items)] for q in range(1 + i % 6)]
        if i % 4 == 1:
            prefix.append(prefix[0])
        if i % 5 == 2:
            prefix.insert(1, "not-an-item")
        out.append(prefix)
    return out


@pytest.mark.parametrize("names", [COLUMNS, GAP_COLUMNS])
def test_the_walk_reads_the_columns_the_trees_were_fitted_with(
    tmp_path, monkeypatch, names: tuple[str, ...]
) -> None:
    """The kernel's columns after the features are the trainer's (``top_cases``'): trees
    that split on each of them rank a session's best as their sums, after the bundle's
    round trip."""
    from dataclasses import replace

    from models.ranking import RankParams, encode_sessions, rank_codes
    from models.trees import columns

    bundle = _trained_with_trees(monkeypatch, names)
    assert bundle.manifest["trees"]["columns"] == list(names)
    nf = features.LAYOUT.n_features
    prefixes = _prefixes(bundle)
    codes, ptr = encode_sessions(bundle, prefixes)
    params = RankParams.of(bundle)
    top = params.rerank_top
    k = 3 * top
    feats = np.zeros((len(prefixes), k, nf))
    linear = replace(params, rerank_top=0)
    items, scores, *_ = rank_codes(bundle, codes, ptr, k, linear, exclude="none", out_feats=feats)
    rows = columns(feats[:, :top], scores[:, :top], names)
    # Each named column split on at its median over these prefixes, by a tree of its own.
    arrays = {n: bundle.arrays[n].copy() for n in TREE_ARRAYS}
    for e in range(len(names)):
        values = rows[..., nf + e][np.isfinite(rows[..., nf + e])]
        arrays["tree_feature"][e, 0] = nf + e
        arrays["tree_threshold"][e, 0] = np.median(values)
        arrays["tree_leaf"][e, : arrays["tree_leaf"].shape[1] // 2] += 0.3 * (e + 1)
    save_bundle(replace(bundle, arrays={**bundle.arrays, **arrays}), tmp_path / "m")
    loaded = load_bundle(tmp_path / "m")
    assert loaded.manifest["trees"]["columns"] == list(names)
    got_items, got_scores, *_ = rank_codes(loaded, codes, ptr, k, params, exclude="none")
    flat = np.ascontiguousarray(rows.reshape(-1, rows.shape[-1]).T)
    sums = tree_sums(*(arrays[n] for n in TREE_ARRAYS), flat, flat.shape[1])
    sums = sums.reshape(len(prefixes), top)
    checked = 0
    for r in range(len(prefixes)):
        if not np.isfinite(scores[r, top]):
            continue  # fewer candidates than the best ``top``
        sum_of = dict(zip(items[r, :top].tolist(), sums[r].tolist(), strict=True))
        assert set(got_items[r, :top].tolist()) == set(sum_of)
        want = np.array([sum_of[i] for i in got_items[r, :top].tolist()])
        got = got_scores[r, :top]
        np.testing.assert_allclose(got - got.min(), want - want.min(), rtol=0, atol=1e-9)
        checked += 1
    assert checked >= len(prefixes) // 2


@pytest.mark.parametrize("names", [COLUMNS, GAP_COLUMNS])
def test_an_unavailable_best_item_leaves_the_others_order(monkeypatch, names) -> None:
    """Trees without a column that compares a candidate with the others: banning a
    session's best item leaves the order of the items that stay; trees with the gap to
    the best (format-6 bundles) reorder some."""
    from models.ranking import RankParams, encode_sessions, rank_codes

    bundle = _trained_with_trees(monkeypatch, names)
    params = RankParams.of(bundle)
    assert params.rerank_top == 10
    prefixes = _prefixes(bundle)
    reordered = 0
    for prefix in prefixes:
        codes, ptr = encode_sessions(bundle, [prefix])
        before = rank_codes(bundle, codes, ptr, 10, params, exclude="none")[0][0].tolist()
        banned = np.zeros(bundle.n_items, dtype=np.bool_)
        banned[before[0]] = True
        after = rank_codes(bundle, codes, ptr, 10, params, banned, exclude="none")[0][0]
        stayed = [i for i in after.tolist() if i in before]
        assert before[0] not in stayed and len(stayed) >= 8
        reordered += stayed != [i for i in before if i in stayed]
        if "gap" not in names:  # every other item stays, in its order
            assert stayed == before[1:], (before, after)
    assert (reordered > 0) == ("gap" in names)


def test_a_format_6_bundles_trees_are_served_as_before(tmp_path, monkeypatch) -> None:
    """A format-6 bundle does not name its trees' columns: they read the linear score and
    its gap to the best, as when it was written."""
    from models.ranking import RankParams, recommend_batch

    bundle = _trained_with_trees(monkeypatch, GAP_COLUMNS)
    save_bundle(bundle, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["format_version"] = 6
    del manifest["trees"]["columns"]
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_bundle(tmp_path / "m")
    assert loaded.manifest["trees"]["columns"] == list(GAP_COLUMNS)
    prefixes = _prefixes(bundle)
    params = RankParams.of(loaded)
    want = recommend_batch(bundle, prefixes, 20, params, exclude="none")
    got = recommend_batch(loaded, prefixes, 20, params, exclude="none")
    assert [(r.ids, r.scores) for r in got] == [(r.ids, r.scores) for r in want]
    # Saved again, it is a bundle of this format that names them.
    save_bundle(loaded, tmp_path / "n")
    again = json.loads((tmp_path / "n" / "manifest.json").read_text())
    assert again["trees"]["columns"] == list(GAP_COLUMNS) and again["format_version"] > 6
    # A bundle of this format must name them.
    manifest["format_version"] = again["format_version"]
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidModelError, match="list of names"):
        load_bundle(tmp_path / "m")
