"""Boosted trees over the linear ranker's best candidates: fitted at train time
(``models.train``), stored as plain arrays in the bundle, walked by the serving kernel.

The trainer ranks the linear ranker's fit cases with the fitted weights, keeps each
case's best ``top`` and fits LightGBM's lambdarank on them: every feature of the table
and the ``COLUMNS`` after them are the columns, the clicked candidate is the one
relevant item. Serving (``rerank``) orders a session's best ``top`` by the linear score
anew by the trees' sum; the rest keep their linear order below them.

No column compares a candidate with the others (``COLUMNS``: the candidate's linear
score), so a candidate's sum depends on itself alone: removing a candidate (a rule, an
unavailable item) leaves the others' order as it was. The bundle names the columns its
trees were fitted with, and the walk fills each by its code (``column_codes``); trees of
an older bundle read the linear score and its gap to the best of the candidates
(``GAP_COLUMNS``), which the walk still computes for them.

The trees are exported complete, ``depth`` levels each (a leaf above the last level
becomes a split that always goes left, its value copied to every leaf under it): one
array of split columns, one of thresholds (``int32`` / ``float64`` [trees, 2^depth - 1],
node n's children at 2n + 1 and 2n + 2) and one of leaf values ([trees, 2^depth]), at
most ``MAX_DEPTH`` levels. The kernel finds every candidate's leaves as QuickScorer
(Lucchese et al., SIGIR 2015) does, without walking: a candidate starts with every
leaf of a tree reachable (one bit each, leaf 0 the lowest); each split it goes right at
clears the leaves of the split's left subtree; its exit leaf is then the leftmost left,
the lowest bit. Each split tests all candidates in one loop over one column of
features (no data-dependent branch, vectorised), and the sums add the trees in order, as
a walk would.

Fit cases may include prefixes of sessions the fit-time model was trained on
(``seen_share``): serving meets sessions that repeat training sessions verbatim, where
the memorising features (the prefix's continuations) decide, and trees that never saw
such cases learn to discount them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from models.select import select_top

TREE_ARRAYS = ("tree_feature", "tree_threshold", "tree_leaf")
# Columns the walk can put after the table's features, a name's code being its place:
# the candidate's linear score, and its gap to the best linear score of the candidates.
KNOWN_COLUMNS = ("score", "gap")
# The columns the trainer fits the trees with, after the table's features.
COLUMNS = ("score",)
# The columns of trees from a bundle that does not name them.
GAP_COLUMNS = ("score", "gap")
# At least this many fit cases with their click in the best ``top``: else no trees.
MIN_CASES = 200
# A tree's leaves are bits of one 64-bit mask when the kernel finds them.
MAX_DEPTH = 6
# The lowest set bit's index: a de Bruijn sequence's top six bits after the multiply.
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_BIT_INDEX = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _BIT_INDEX[((1 << _bit) * int(_DE_BRUIJN) % 2**64) >> 58] = _bit


def linear_scores(feats: np.ndarray, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The linear ranker's score of each candidate ([cases, candidates]; -inf where the
    candidate is padding), as the kernel computes it: raw features, then square roots."""
    nf = feats.shape[-1]
    raw = feats.reshape(-1, nf)
    scores = raw @ weights[:nf] + np.sqrt(np.maximum(raw, 0.0)) @ weights[nf : 2 * nf]
    scores = scores.reshape(items.shape)
    return np.where(items >= 0, scores, -np.inf)


def column_codes(names: object) -> np.ndarray:
    """The walk's code of each of the trees' column ``names`` (``KNOWN_COLUMNS``);
    ValueError for a name it does not know or one given twice."""
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ValueError("the trees' columns must be a list of names")
    unknown = [n for n in names if n not in KNOWN_COLUMNS]
    if unknown:
        raise ValueError(f"the trees read columns this streamrec does not know: {unknown}")
    if len(set(names)) != len(names):
        raise ValueError(f"the trees' columns repeat a name: {list(names)}")
    return np.array([KNOWN_COLUMNS.index(n) for n in names], dtype=np.int64)


def columns(feats: np.ndarray, scores: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """The trees' columns for candidates of one group each row ([groups, c, features] and
    [groups, c] scores): the features, then ``names``."""
    made = {"score": scores, "gap": scores.max(axis=1, keepdims=True) - scores}
    return np.concatenate([feats, *(made[n][..., None] for n in names)], axis=-1)


def top_cases(
    feats: np.ndarray,
    items: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    top: int,
    names: tuple[str, ...] = COLUMNS,
) -> tuple[np.ndarray, np.ndarray]:
    """Each case's best ``top`` by the linear ranker as the trees' rows ([cases, top,
    features + ``names``]) and labels (1 for the clicked candidate), for the cases whose
    click is among them and that have ``top`` real candidates."""
    scores = linear_scores(feats, items, weights)
    top = min(top, scores.shape[1])
    # Best first, ties to the earlier candidate (the kernel's stage-two order is by score).
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    kept_items = np.take_along_axis(items, order, axis=1)
    labels = (kept_items == targets[:, None]).astype(np.float64)
    usable = labels.any(axis=1) & (kept_items >= 0).all(axis=1)
    order = order[usable]
    kept_scores = np.take_along_axis(scores[usable], order, axis=1)
    kept_feats = np.take_along_axis(feats[usable], order[..., None], axis=1)
    return columns(kept_feats, kept_scores, names), labels[usable]


def fit_trees(
    rows: np.ndarray,
    labels: np.ndarray,
    *,
    n_trees: int,
    depth: int,
    learning_rate: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """LightGBM lambdarank over groups of candidates (``rows`` [groups, c, columns],
    ``labels`` [groups, c]), one thread, deterministic; its trees as complete arrays
    (module docstring), or no trees (empty arrays) with too few groups."""
    import lightgbm as lgb  # only the trainer needs it

    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"trees of depth {depth}: from 1 to {MAX_DEPTH} levels")
    groups, c, n_cols = rows.shape
    info: dict[str, Any] = {"groups": int(groups), "candidates": int(c)}
    if groups < MIN_CASES:
        return empty_trees(depth), {**info, "reason": "too few cases"}
    data = lgb.Dataset(
        rows.reshape(-1, n_cols),
        label=labels.reshape(-1),
        group=np.full(groups, c),
        params={"max_bin": 255, "verbose": -1},
        free_raw_data=True,
    )
    params = {
        "objective": "lambdarank",
        "num_leaves": 2**depth,
        "max_depth": depth,
        "learning_rate": learning_rate,
        "num_threads": 1,
        "deterministic": True,
        "force_row_wise": True,
        "seed": seed,
        "verbose": -1,
    }
    booster = lgb.train(params, data, num_boost_round=n_trees)
    return export(booster, depth), {**info, "trees": booster.num_trees()}


def empty_trees(depth: int) -> dict[str, np.ndarray]:
    inner, leaves = 2**depth - 1, 2**depth
    return {
        "tree_feature": np.zeros((0, inner), dtype=np.int32),
        "tree_threshold": np.zeros((0, inner), dtype=np.float64),
        "tree_leaf": np.zeros((0, leaves), dtype=np.float64),
    }


def export(booster: Any, depth: int) -> dict[str, np.ndarray]:
    """A LightGBM booster's trees as complete trees ``depth`` levels deep (module
    docstring). A tree deeper than ``depth``, or a split other than ``x <= threshold``
    on a column without missing values, is refused."""
    out = empty_trees(depth)
    trees = booster.dump_model()["tree_info"]
    inner, leaves = 2**depth - 1, 2**depth
    feature = np.zeros((len(trees), inner), dtype=np.int32)
    threshold = np.full((len(trees), inner), np.inf, dtype=np.float64)
    leaf = np.zeros((len(trees), leaves), dtype=np.float64)

    def place(t: int, node: dict, at: int, level: int) -> None:
        if "leaf_value" in node:
            # A leaf above the last level: every split under it goes left (x <= inf), and
            # its value fills every leaf it covers.
            span = 2 ** (depth - level)
            first = (at + 1) * span - 1 - inner
            leaf[t, first : first + span] = node["leaf_value"]
            return
        if level >= depth:
            raise ValueError(f"tree {t} is deeper than {depth} levels")
        if node["decision_type"] != "<=" or node.get("missing_type", "None") not in ("None",):
            raise ValueError(f"tree {t}: split {node['decision_type']} / {node['missing_type']}")
        feature[t, at] = node["split_feature"]
        threshold[t, at] = node["threshold"]
        place(t, node["left_child"], 2 * at + 1, level + 1)
        place(t, node["right_child"], 2 * at + 2, level + 1)

    for t, tree in enumerate(trees):
        place(t, tree["tree_structure"], 0, 0)
    out.update(tree_feature=feature, tree_threshold=threshold, tree_leaf=leaf)
    return out


@njit(cache=True, nogil=True)
def tree_sums(feature, threshold, leaf, x, n):  # pragma: no cover - compiled
    """The trees' sum for rows 0..n-1 of ``x`` ([columns, rows]), found as QuickScorer
    does (module docstring): each split tests every row at once, a row's reachable
    leaves are bits of a mask, and its exit leaf is the lowest bit left."""
    inner = feature.shape[1]
    n_leaves = inner + 1
    full = np.uint64((1 << n_leaves) - 1) if n_leaves < 64 else ~np.uint64(0)
    # keep[at]: the leaves still reachable once split ``at`` sends a row right (the
    # leaves of its left subtree cleared).
    keep = np.empty(inner, dtype=np.uint64)
    for at in range(inner):
        level = 0
        while (1 << (level + 1)) - 1 <= at:
            level += 1
        span = n_leaves >> (level + 1)  # leaves under each child
        first = (at - ((1 << level) - 1)) * 2 * span
        keep[at] = full & ~(np.uint64((1 << span) - 1) << np.uint64(first))
    out = np.zeros(n, dtype=np.float64)
    mask = np.empty(n, dtype=np.uint64)
    for t in range(feature.shape[0]):
        for i in range(n):
            mask[i] = full
        for at in range(inner):
            cut = threshold[t, at]
            if cut == np.inf:  # a split that always goes left
                continue
            column = x[feature[t, at]]
            k = keep[at]
            for i in range(n):
                mask[i] &= k if column[i] > cut else full
        for i in range(n):
            m = mask[i]
            lowest = m & (~m + np.uint64(1))
            out[i] += leaf[t, _BIT_INDEX[(lowest * _DE_BRUIJN) >> np.uint64(58)]]
    return out


@njit(cache=True, nogil=True)
def rerank(
    feature, threshold, leaf, codes, top, pool_feats, score, n_pool, x, bufs
):  # pragma: no cover - compiled
    """Reorder the best ``top`` of the ``n_pool`` candidates by their linear ``score`` by
    the trees' sum (module docstring): their scores become the ``top``-th best linear
    score plus their trees' sum above the lowest one's (and a hair, so that they stay
    above every other candidate); the others' are kept. ``pool_feats`` [features,
    candidates]; ``codes``: the columns after the features (``column_codes``); ``x``:
    [features + columns, >= top] and ``bufs``: [2, >= n_pool] scratch."""
    if feature.shape[0] == 0 or top <= 1 or n_pool <= 1:
        return
    nf = pool_feats.shape[0]
    m = min(top, n_pool)
    # The best m positions, ties to the earlier one; the floor is the lowest of them.
    chosen = np.empty(m, dtype=np.int64)
    kept = select_top(score[:n_pool], m, chosen, bufs)
    floor = np.inf
    best = -np.inf
    for i in range(kept):
        floor = min(floor, score[chosen[i]])
        best = max(best, score[chosen[i]])
    for i in range(kept):
        c = chosen[i]
        for f in range(nf):
            x[f, i] = pool_feats[f, c]
        for e in range(codes.size):  # KNOWN_COLUMNS
            x[nf + e, i] = score[c] if codes[e] == 0 else best - score[c]
    sums = tree_sums(feature, threshold, leaf, x, kept)
    low = np.inf
    for i in range(kept):
        low = min(low, sums[i])
    lift = 1e-9 * max(1.0, abs(floor))
    for i in range(kept):
        score[chosen[i]] = floor + lift + (sums[i] - low)
