"""The served model's serve-time pass: one compiled kernel ranks a whole batch.

Per session ``served_kernel`` gathers candidates from the session's own items, the
neighbour lists and rules of its newest ``context`` clicks, the transitions of the last
click, its sequence continuations, the items of its session-kNN neighbours (V-SKNN's k
nearest, voting with V-SKNN and SKNN similarity) and the top of the last click's
category, and computes the features of ``models.features`` for each; the category
features are 0 for items without one. Two stages: a fixed blend of the features known
while gathering keeps the best ``candidates``, then a linear model over every feature
and its square root orders those (its weights: ``models.fit``). Where the bundle has
boosted trees (``models.trees``), they reorder the linear stage's best ``rerank_top``.

The kernel takes three structures: ``ServedModel`` (a bundle's arrays, built once per
bundle by ``served_model``), ``RankConfig`` (the ranking parameters, weights and banned
items of a call) and ``Out`` / ``Scratch`` (what it writes). Feature columns are module
constants read off the table; numba compiles them in as constants.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np
from numba import njit

from models import features
from models.bundle import ModelBundle
from models.select import select_top
from models.sources import SEEDS, context_hash
from models.trees import TREE_ARRAYS, column_codes, empty_trees, rerank

_LAYOUT = features.LAYOUT
VSKNN = _LAYOUT.column("vsknn")
SKNN = _LAYOUT.column("sknn")
TRANSITIONS = _LAYOUT.column("transitions")
RULES = _LAYOUT.column("rules")
NEIGHBOURS = _LAYOUT.column("neighbours")
OWN_RECENCY = _LAYOUT.column("own_recency")
OWN_COUNT = _LAYOUT.column("own_count")
IS_CURRENT = _LAYOUT.column("is_current")
EMB_LAST = _LAYOUT.column("emb_last")
EMB_SESSION = _LAYOUT.column("emb_session")
SAME_CLUSTER = _LAYOUT.column("same_cluster")
# The continuations of the last 2 clicks, the last 3, the whole prefix (SEEDS' order).
AFTER = np.array([_LAYOUT.column(n) for n in ("after_2", "after_3", "after_prefix")])
AFTER_PREFIX_LONG = _LAYOUT.column("after_prefix_long")
SAME_CATEGORY = _LAYOUT.column("same_category")
CATEGORY_SHARE = _LAYOUT.column("category_share")
CATEGORY_TOP = _LAYOUT.column("category_top")
# numba's cache keeps a global's value from compile time and checks only this file's
# stamp: a key of the columns above tells a cache compiled for another table.
_COLUMNS_KEY = zlib.crc32(repr(_LAYOUT.names).encode())
UINT = np.uint64  # the kernel's index type (see served_kernel)

# The bundle's arrays the kernel reads: the lists of the table by name, then the rest.
ServedModel = NamedTuple(  # type: ignore[misc]
    "ServedModel",
    [
        ("neighbours", np.ndarray),
        ("neighbour_scores", np.ndarray),
        *((name, np.ndarray) for name in _LAYOUT.list_arrays),
        ("vectors", np.ndarray),
        ("clusters", np.ndarray),
        ("categories", np.ndarray),
        ("item_values", np.ndarray),  # float32 [item features, items]
        ("item_columns", np.ndarray),  # the column of each item feature
        ("feature_source", np.ndarray),
        ("n_sources", int),
        ("n_categories", int),  # above every item's category code
        ("context_start", np.ndarray),  # int64 [2**bits + 1]: context_buckets
        ("context_shift", int),  # 64 - bits
        # The boosted trees over the linear stage's best (``models.trees``; none: 0 rows).
        ("tree_feature", np.ndarray),
        ("tree_threshold", np.ndarray),
        ("tree_leaf", np.ndarray),
        ("tree_columns", np.ndarray),  # int64: the code of each column after the features
    ],
)


class RankConfig(NamedTuple):
    weight_by_age: np.ndarray  # float64 [context], age 0 = the newest click
    own_decay: float
    k_sessions: int
    sample_size: int
    per_source: int
    n_candidates: int
    prior: np.ndarray  # float64 [features]: the stage-one blend
    weights: np.ndarray  # float64 [2 * features]: raw, then square roots
    banned: np.ndarray  # bool [items]
    exclude_mode: int  # 0 none, 1 the current click, 2 every item of the session
    item_sources: bool = False  # also each listed item's main source, into Out.sources
    rerank_top: int = 0  # the linear stage's best this many reordered by the trees


class Out(NamedTuple):
    items: np.ndarray  # int64 [rows, k]
    scores: np.ndarray  # float64 [rows, k]
    feats: np.ndarray  # float64 [rows, k, features], or [0, 0, 0]: not wanted
    known: np.ndarray  # int64 [rows]
    strategy: np.ndarray  # int64 [rows]
    sources: np.ndarray  # int64 [rows, k] when RankConfig.item_sources, else unused


class Scratch(NamedTuple):
    stamp: np.ndarray
    excluded: np.ndarray
    votes: np.ndarray
    tag_base: int


def served_model(bundle: ModelBundle, layout: features.Layout | None = None) -> ServedModel:
    """The kernel's view of ``bundle`` (no copy of a list; the item features' values in
    one [features, items] array, a view when there is one)."""
    layout = layout or features.LAYOUT
    values = [np.asarray(bundle.arrays[f.array], dtype=np.float32) for f in layout.item_features]
    if len(values) == 1:
        item_values = values[0].reshape(1, -1)
    elif values:
        item_values = np.stack(values)
    else:
        item_values = np.zeros((0, bundle.n_items), dtype=np.float32)
    start, shift = context_buckets(np.asarray(bundle.arrays["context_keys"]))
    return ServedModel(
        np.asarray(bundle.neighbours),
        np.asarray(bundle.neighbour_scores),
        *(np.asarray(bundle.arrays[name]) for name in _LAYOUT.list_arrays),
        np.asarray(bundle.vectors),
        np.asarray(bundle.clusters),
        np.asarray(bundle.item_category),
        item_values,
        layout.item_columns,
        layout.feature_source,
        len(layout.sources),
        int(np.max(bundle.item_category, initial=-1)) + 1,
        start,
        shift,
        *(_read_only(bundle.arrays.get(name, empty)) for name, empty in _NO_TREES.items()),
        _read_only(_tree_columns(bundle)),
    )


def _tree_columns(bundle: ModelBundle) -> np.ndarray:
    """The codes of the columns the bundle's trees read after the features (none without
    trees; ``models.bundle`` checked a loaded bundle's)."""
    if TREE_ARRAYS[0] not in bundle.arrays:
        return np.zeros(0, dtype=np.int64)
    return column_codes(bundle.manifest["trees"]["columns"])


_NO_TREES = empty_trees(1)
assert tuple(_NO_TREES) == TREE_ARRAYS


def _read_only(arr: np.ndarray) -> np.ndarray:
    """A read-only view: the trees' arrays have one type for the kernel whether the bundle
    was loaded (mapped files are read-only), trained in this process, or has no trees,
    so none of them compiles the kernel again."""
    view = np.asarray(arr).view()
    view.flags.writeable = False
    return view


# Context keys per bucket, about: a bucket's keys share a cache line or two.
_KEYS_PER_BUCKET = 8


def context_buckets(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Where the sorted hash ``keys`` of each top-bits bucket start: bucket b (the keys
    whose top ``bits`` bits are b, ``key >> (64 - bits)``) is ``keys[start[b]:start[b + 1]]``.
    The hashes are uniform, so a lookup reads a few neighbouring keys, not a binary
    search's scattered ones."""
    bits = max(1, int(np.ceil(np.log2(max(2.0, keys.size / _KEYS_PER_BUCKET)))))
    shift = 64 - bits
    bounds = np.arange(1 << bits, dtype=np.uint64) << np.uint64(shift)
    start = np.append(np.searchsorted(keys, bounds), keys.size).astype(np.int64)
    return start, shift


@njit(cache=True, nogil=True, inline="always")
def _context_row(keys, start, shift, h):  # pragma: no cover - compiled
    """The row of hash ``h`` in the sorted ``keys`` (-1: absent), through
    ``context_buckets``' table ``start`` and its ``shift``."""
    b = h >> np.uint64(shift)
    q = start[b]
    end = start[b + np.uint64(1)]
    while q < end and keys[q] < h:
        q += 1
    return q if q < end and keys[q] == h else -1


@njit(cache=True)
def _compiled_columns_key():  # pragma: no cover - compiled
    return _COLUMNS_KEY


def _drop_stale_cache() -> None:
    """Recompile, and cache anew, the kernels a cache holds for another table's columns."""
    if _compiled_columns_key() == _COLUMNS_KEY:
        return
    for kernel in (_compiled_columns_key, served_kernel):
        cache = getattr(kernel, "_cache", None)  # numba's on-disk index (not public API)
        if cache is not None:
            cache.flush()  # the next call compiles afresh and caches the new code
        kernel.recompile()


@njit(cache=True, nogil=True, inline="always")
def push_top(
    out_scores: np.ndarray, out_items: np.ndarray, r: int, kept: int, k: int, s: float, j: int
) -> int:
    """Insert item ``j`` scored ``s`` into row ``r``'s top ``k`` (``kept`` filled so far;
    scores descending, ties to the lower item id); returns the new fill."""
    last = k - 1
    if kept == k and not (
        s > out_scores[r, last] or (s == out_scores[r, last] and j < out_items[r, last])
    ):
        return kept
    pos = min(kept, last)
    while pos > 0 and (
        s > out_scores[r, pos - 1] or (s == out_scores[r, pos - 1] and j < out_items[r, pos - 1])
    ):
        out_scores[r, pos] = out_scores[r, pos - 1]
        out_items[r, pos] = out_items[r, pos - 1]
        pos -= 1
    out_scores[r, pos] = s
    out_items[r, pos] = j
    return min(kept + 1, k)


@njit(cache=True, nogil=True)
def _main_source(feats, c, w_raw, w_sqrt, feature_source, contribution):  # pragma: no cover
    """The index of the source whose features contribute most to the score of the
    candidate whose features are column ``c`` of ``feats`` ([features, candidates];
    ``contribution``: [sources] scratch)."""
    contribution[:] = 0.0
    for f in range(w_raw.size):
        x = feats[f, c]
        part = w_raw[f] * x
        if x > 0.0:
            part += w_sqrt[f] * np.sqrt(x)
        contribution[feature_source[f]] += part
    return np.argmax(contribution)


@njit(cache=True, nogil=True)
def served_kernel(model, config, codes, ptr, out, scratch):  # pragma: no cover - compiled
    """Rank every session of the batch (module docstring). Session r is
    ``codes[ptr[r]:ptr[r+1]]`` (item rows oldest first, -1 unknown); ``model`` is a
    ``ServedModel``, ``config`` a ``RankConfig``, ``out`` an ``Out``, ``scratch`` a
    ``Scratch``. Writes the best ``k`` by (score desc, item asc) into out.items /
    out.scores (padded -1 / -inf), the candidates' features into out.feats when it has
    rows, how many known clicks each session has, and the index into the strategies of
    the top item's main source; with ``config.item_sources``, every listed item's into
    out.sources (padded -1).

    The scratch's ``stamp`` and ``excluded`` (int64 per item, below ``tag_base + 1``
    everywhere) and ``votes`` ([items, 2], zero) are kept by the caller between batches,
    so a small batch does not pay for clearing item-sized arrays; the kernel leaves
    ``votes`` zero and its stamps at most ``tag_base + rows``. (Tested on hand-made
    bundles and against the pinned rankings of tests/fixtures/served_v4.)"""
    neighbours, neighbour_scores = model.neighbours, model.neighbour_scores
    tr_ptr, tr_idx, tr_w = model.transitions_ptr, model.transitions_idx, model.transitions_w
    ru_ptr, ru_idx, ru_w = model.rules_ptr, model.rules_idx, model.rules_w
    s_ptr, s_items = model.sessions_ptr, model.sessions_idx
    is_ptr, is_idx = model.item_sessions_ptr, model.item_sessions_idx
    c_keys, c_ptr = model.context_keys, model.context_ptr
    c_start, c_shift = model.context_start, model.context_shift
    c_idx, c_w = model.context_idx, model.context_w
    cat_ptr, cat_items = model.category_ptr, model.category_idx
    vectors, clusters, categories = model.vectors, model.clusters, model.categories
    item_values, item_cols = model.item_values, model.item_columns
    feature_source = model.feature_source
    weight_by_age, own_decay = config.weight_by_age, config.own_decay
    k_sessions, sample_size = config.k_sessions, config.sample_size
    per_source, n_candidates = config.per_source, config.n_candidates
    prior, weights, banned = config.prior, config.weights, config.banned
    exclude_mode = config.exclude_mode
    item_sources = config.item_sources
    out_items, out_scores, out_feats = out.items, out.scores, out.feats
    known, strategy, sources = out.known, out.strategy, out.sources
    stamp, excluded = scratch.stamp, scratch.excluded
    votes, tag_base = scratch.votes, scratch.tag_base
    n, m = neighbours.shape
    nf = weights.size // 2
    k = out_items.shape[1]
    context = weight_by_age.size
    longest = 0
    for r in range(ptr.size - 1):
        longest = max(longest, ptr[r + 1] - ptr[r])
    # Candidates are made where they are found (a few lines each, not a call: a call's
    # array arguments cost two atomic reference counts each, at every candidate). A
    # gathered candidate's features live in column ``slot[j]`` of ``feats`` (one row per
    # feature, so stage one reads each feature's values in a run), in order of finding:
    # at most the session's items and ``per_source`` of each list read. Zero when a
    # session starts, zeroed after it; column ``rows`` stays zero (see stage two).
    rows = min(n, longest + (2 * context + 5) * max(0, per_source))
    feats = np.zeros((nf, rows + 1), dtype=np.float64)
    zero_col = UINT(rows)
    # Item rows and columns are kept unsigned (``UINT``): numba checks a signed index
    # for a negative value to wrap, a compare and a select at every read and write.
    slot = np.empty(n, dtype=UINT)
    cand = np.empty(max(1, rows), dtype=UINT)
    newest = np.empty(context, dtype=np.int64)
    known_codes = np.empty(max(1, codes.size), dtype=np.int64)
    distinct = max(1, min(n, longest))  # a session's distinct items at most
    dist = np.empty(distinct, dtype=np.int64)
    dist_w = np.empty(distinct, dtype=np.float64)
    heads = np.empty(distinct, dtype=np.int64)
    head_s = np.empty(distinct, dtype=np.int64)  # the session at each live list's head
    head_lo = np.empty(distinct, dtype=np.int64)
    head_w = np.empty(distinct, dtype=np.float64)
    sample = np.empty(max(1, sample_size), dtype=np.int64)
    s_vsim = np.empty(max(1, sample_size), dtype=np.float64)
    s_count = np.empty(max(1, sample_size), dtype=np.float64)
    pool = np.empty(n, dtype=UINT)
    pool_prior = np.empty(n, dtype=np.float64)
    pool_pos = np.empty(n, dtype=np.int64)
    pool_row = np.empty(n, dtype=UINT)
    row_prior = np.empty(rows + 1, dtype=np.float64)
    # Stage two's candidates' features, one row per feature, candidate c in column c.
    pool_feats = np.empty((nf, max(1, min(n, n_candidates))), dtype=np.float64)
    rerank_top = config.rerank_top if model.tree_leaf.shape[0] > 0 else 0
    tree_codes = model.tree_columns
    tree_x = np.empty((nf + tree_codes.size, max(1, rerank_top)), dtype=np.float64)
    score = np.empty(n, dtype=np.float64)
    dim = vectors.shape[1]
    pool_vecs = np.empty((dim, pool_feats.shape[1]), dtype=vectors.dtype)
    e_last = np.empty(pool_feats.shape[1], dtype=np.float64)
    e_session = np.empty(pool_feats.shape[1], dtype=np.float64)
    select_buf = np.empty((2, max(n, sample_size, 1)), dtype=np.float64)
    top = np.empty(max(1, k_sessions), dtype=np.int64)
    t_lo = np.empty(max(1, k_sessions), dtype=UINT)
    t_hi = np.empty(max(1, k_sessions), dtype=UINT)
    t_cos = np.empty(max(1, k_sessions), dtype=np.float64)
    t_first = np.empty(max(1, k_sessions), dtype=np.int64)
    session_vec = np.empty(vectors.shape[1], dtype=np.float64)
    voted = np.empty(n + 1, dtype=UINT)  # + 1: written before it is known to be new
    only = np.empty(n, dtype=UINT)
    category_share = np.zeros(max(1, model.n_categories), dtype=np.float64)
    prior_f = np.flatnonzero(prior[:nf] != 0.0)
    prior_s = np.empty(nf, dtype=np.float64)  # the prior with the votes' scaling folded in
    contribution = np.empty(model.n_sources, dtype=np.float64)
    n_prior = prior_f.size
    w_raw = weights[:nf]
    w_sqrt = weights[nf : 2 * nf]
    scored_f = np.flatnonzero((w_raw != 0.0) | (w_sqrt != 0.0))
    n_scored = scored_f.size
    for r in range(ptr.size - 1):
        tag = tag_base + r + 1
        lo, hi = ptr[r], ptr[r + 1]
        n_known = 0
        for p in range(lo, hi):
            if codes[p] >= 0:
                n_known += 1
        known[r] = n_known
        strategy[r] = 2
        for c in range(k):
            out_items[r, c] = -1
            out_scores[r, c] = -np.inf
            if item_sources:
                sources[r, c] = -1
        if n_known == 0:
            continue
        found = 0
        n_seen = 0
        used = 0
        age = 0
        n_dist = 0
        last = -1
        session_vec[:] = 0.0
        recency_total = 0.0
        for p in range(hi - 1, lo - 1, -1):
            i = codes[p]
            if i < 0:
                continue
            if exclude_mode == 2 or (exclude_mode == 1 and p == hi - 1):
                excluded[i] = tag
            if stamp[i] != tag:  # first (newest) occurrence: V-SKNN weight of its latest
                stamp[i] = tag  # position; a new candidate (see the note on feats)
                slot[i] = found
                cand[found] = i
                found += 1
                dist[n_dist] = i
                dist_w[n_dist] = (n_known - age) / n_known
                n_dist += 1
            w_age = own_decay**age
            feats[OWN_RECENCY, slot[i]] += w_age
            feats[OWN_COUNT, slot[i]] += 1.0
            for x in range(session_vec.size):  # no temporary array per click
                session_vec[x] += w_age * vectors[i, x]
            recency_total += w_age
            if age == 0:
                last = i
                feats[IS_CURRENT, slot[i]] = 1.0
            if used < context:
                newest[used] = i
                used += 1
            age += 1
        for d in range(n_dist):
            s = slot[dist[d]]
            feats[OWN_COUNT, s] = np.log1p(feats[OWN_COUNT, s])
        # Neighbour lists and sequential rules of the newest clicks, oldest vote first.
        for a in range(used - 1, -1, -1):
            i = newest[a]
            w = weight_by_age[a]
            for q in range(min(m, per_source)):
                j = UINT(neighbours[i, q])
                if stamp[j] != tag:  # a new candidate (see the note on feats)
                    stamp[j] = tag
                    slot[j] = found
                    cand[found] = j
                    found += 1
                s = slot[j]
                feats[NEIGHBOURS, s] += w * neighbour_scores[i, q]
            for q in range(ru_ptr[i], min(ru_ptr[i + 1], ru_ptr[i] + per_source)):
                j = UINT(ru_idx[q])
                if stamp[j] != tag:  # a new candidate (see the note on feats)
                    stamp[j] = tag
                    slot[j] = found
                    cand[found] = j
                    found += 1
                s = slot[j]
                feats[RULES, s] += w * ru_w[q]
        for q in range(tr_ptr[last], min(tr_ptr[last + 1], tr_ptr[last] + per_source)):
            j = UINT(tr_idx[q])
            if stamp[j] != tag:  # a new candidate (see the note on feats)
                stamp[j] = tag
                slot[j] = found
                cand[found] = j
                found += 1
            s = slot[j]
            feats[TRANSITIONS, s] = tr_w[q]
        # The most clicked items of the last click's category, scored by their rank there.
        cat = categories[last]
        if 0 <= cat < cat_ptr.size - 1:
            start = cat_ptr[cat]
            for q in range(start, min(cat_ptr[cat + 1], start + per_source)):
                j = UINT(cat_items[q])
                if stamp[j] != tag:  # a new candidate (see the note on feats)
                    stamp[j] = tag
                    slot[j] = found
                    cand[found] = j
                    found += 1
                s = slot[j]
                feats[CATEGORY_TOP, s] = 1.0 / (1.0 + q - start)
        # Sequence continuations over the known clicks (oldest first).
        for p in range(lo, hi):
            if codes[p] >= 0:
                known_codes[n_seen] = codes[p]
                n_seen += 1
        long_weight = np.log1p(n_seen)
        for which in range(3):
            start = 0 if which == 2 else n_seen - 2 - which
            if start < 0:
                continue
            h = context_hash(known_codes, start, n_seen, SEEDS[which])
            row = _context_row(c_keys, c_start, c_shift, h)
            if row < 0:
                continue
            for q in range(c_ptr[row], min(c_ptr[row + 1], c_ptr[row] + per_source)):
                j = UINT(c_idx[q])
                if stamp[j] != tag:  # a new candidate (see the note on feats)
                    stamp[j] = tag
                    slot[j] = found
                    cand[found] = j
                    found += 1
                s = slot[j]
                feats[AFTER[which], s] = c_w[q]
                if which == 2:
                    feats[AFTER_PREFIX_LONG, s] = c_w[q] * long_weight
        # Session kNN: the most recent sample_size training sessions sharing an item, by
        # a merge of the items' session lists from their newest ends (each list is
        # ascending, so a session's every shared item comes up in the same step).
        # Exhausted lists are dropped in place (order kept, so the sums are the same), and
        # a last live list is copied: most prefixes are short, so this is the common end.
        n_live = 0
        newest_s = -1
        for d in range(n_dist):
            i = dist[d]
            if is_ptr[i + 1] > is_ptr[i]:
                heads[n_live] = is_ptr[i + 1] - 1
                head_lo[n_live] = is_ptr[i]
                head_s[n_live] = is_idx[is_ptr[i + 1] - 1]
                head_w[n_live] = dist_w[d]
                newest_s = max(newest_s, head_s[n_live])
                n_live += 1
        n_chosen = 0
        while n_chosen < sample_size and n_live > 1:
            v = 0.0
            shared = 0.0
            next_s = -1
            ended = False
            for d in range(n_live):
                # No branch on the data: every list steps by 0 or 1 and re-reads its head
                # (the sums get the same terms: + 0.0 changes nothing).
                step = head_s[d] == newest_s
                v += head_w[d] * step
                shared += step
                h = heads[d] - step
                heads[d] = h
                lo_d = head_lo[d]
                hs = is_idx[max(h, lo_d)] if h >= lo_d else -1  # session rows are >= 0
                ended |= h < lo_d
                head_s[d] = hs
                next_s = max(next_s, hs)
            if ended:  # rare: drop the ended lists, order kept
                kept_live = 0
                for d in range(n_live):
                    if head_s[d] >= 0:
                        heads[kept_live] = heads[d]
                        head_lo[kept_live] = head_lo[d]
                        head_s[kept_live] = head_s[d]
                        head_w[kept_live] = head_w[d]
                        kept_live += 1
                n_live = kept_live
            sample[n_chosen] = newest_s
            s_vsim[n_chosen] = v
            s_count[n_chosen] = shared
            n_chosen += 1
            newest_s = next_s
        if n_live == 1:
            h = heads[0]
            while n_chosen < sample_size and h >= head_lo[0]:
                sample[n_chosen] = is_idx[h]
                s_vsim[n_chosen] = head_w[0]
                s_count[n_chosen] = 1.0
                n_chosen += 1
                h -= 1
        best_v = 0.0
        best_c = 0.0
        n_voted = 0
        if n_chosen > 0:
            # The k most similar by V-SKNN's position weights vote twice: with that
            # similarity (vsknn) and with SKNN's cosine (sknn). One pass over their items;
            # SKNN's own top k would cost a second one for little (chosen on valid).
            # Ties go to the newest session.
            n_top = select_top(s_vsim[:n_chosen], k_sessions, top, select_buf)
            # Where each voter's items are, first for all of them: the reads of session
            # rows scattered over the index then wait on memory together, not in turn.
            for t in range(n_top):
                s = sample[top[t]]
                a = s_ptr[s]
                b = s_ptr[s + 1]
                t_lo[t] = a
                t_hi[t] = b
                t_cos[t] = s_count[top[t]] / np.sqrt(n_dist * (b - a))
                t_first[t] = s_items[min(a, s_items.size - 1)]  # brought into cache
            for t in range(n_top):
                v = s_vsim[top[t]]
                cosine = t_cos[t]
                for q in range(t_lo[t], t_hi[t]):
                    j = UINT(s_items[q])
                    # Written always, kept only on j's first vote (votes are > 0): no
                    # branch to mispredict in the hottest loop.
                    voted[UINT(n_voted)] = j
                    n_voted += votes[j, 0] == 0.0
                    votes[j, 0] += v
                    votes[j, 1] += cosine
            for e in range(n_voted):
                j = voted[e]
                best_v = max(best_v, votes[j, 0])
                best_c = max(best_c, votes[j, 1])
        # Both votes are scaled to a maximum of 1, in stage two; stage one folds the
        # scaling into its prior's weights.
        div_v = best_v if best_v > 0.0 else 1.0
        div_c = best_c if best_c > 0.0 else 1.0
        for f in range(nf):
            prior_s[f] = prior[f]
        prior_s[VSKNN] /= div_v
        prior_s[SKNN] /= div_c
        # Voted items another source gathered take their votes in their columns; the
        # others have only the two votes, so they need no column (most voted items never
        # reach stage two).
        n_only = 0
        for e in range(n_voted):
            j = voted[e]
            if stamp[j] == tag:
                feats[VSKNN, slot[j]] = votes[j, 0]
                feats[SKNN, slot[j]] = votes[j, 1]
            elif excluded[j] != tag and not banned[j]:
                only[n_only] = j
                n_only += 1
        norm2 = 0.0  # np.sum's order, without its temporary array
        for x in range(session_vec.size):
            norm2 += session_vec[x] * session_vec[x]
        norm = np.sqrt(norm2)
        if norm > 1e-12:
            for x in range(session_vec.size):
                session_vec[x] /= norm
        # Stage one: the allowed candidates' fixed-blend prior; the best n_candidates go
        # on (ties in gathering order: the other sources' items, then the voted-only ones
        # in voting order; both depend on the session alone). Stage two scores those with
        # every feature and the ranker.
        # Each sum runs over its terms in the same order as one candidate at a time, but
        # the candidates advance together: independent chains the CPU overlaps. Stage
        # one sums every gathered column (a few are then left out) to read them in runs.
        for c in range(found):
            row_prior[c] = 0.0
        for t in range(n_prior):
            f = prior_f[t]
            w = prior_s[f]
            for c in range(found):
                row_prior[c] += w * feats[f, c]
        n_pool = 0
        for c in range(found):
            j = cand[c]
            pool[n_pool] = j
            pool_prior[n_pool] = row_prior[c]
            n_pool += (excluded[j] != tag) & (not banned[j])
        for e in range(n_only):
            j = only[e]
            pool[n_pool] = j
            pool_prior[n_pool] = prior_s[VSKNN] * votes[j, 0] + prior_s[SKNN] * votes[j, 1]
            n_pool += 1
        if n_pool > n_candidates:
            # Positions come back increasing, so the pool compacts in place.
            n_pool = select_top(pool_prior[:n_pool], n_candidates, pool_pos, select_buf)
            for c in range(n_pool):
                pool[c] = pool[pool_pos[c]]
        # Stage two's features: a gathered candidate's column copied, a voted-only one's
        # from the zero column ``rows`` and its votes. From here on ``slot`` gives a
        # candidate's column in pool_feats.
        for d in range(n_dist):
            i = dist[d]
            if categories[i] >= 0:
                category_share[categories[i]] += feats[OWN_RECENCY, slot[i]]
        for c in range(n_pool):
            j = pool[c]
            pool_row[c] = slot[j] if stamp[j] == tag else zero_col
        for f in range(nf):
            gathered = False  # a feature no gathered candidate has (most pool ones) is 0
            for c in range(found):
                gathered |= feats[f, c] != 0.0
            if gathered:
                for c in range(n_pool):
                    pool_feats[f, c] = feats[f, pool_row[c]]
            else:
                for c in range(n_pool):
                    pool_feats[f, c] = 0.0
        for c in range(n_pool):
            j = pool[c]
            slot[j] = c
            if pool_row[c] == zero_col:
                pool_feats[VSKNN, c] = votes[j, 0]
                pool_feats[SKNN, c] = votes[j, 1]
        for e in range(n_voted):  # zero again for the next session
            votes[voted[e], 0] = 0.0
            votes[voted[e], 1] = 0.0
        for c in range(n_pool):  # loops of their own: a division each runs in parallel
            pool_feats[VSKNN, c] /= div_v
        for c in range(n_pool):
            pool_feats[SKNN, c] /= div_c
        # The copied columns of pool features are 0: only those that are not are set.
        for c in range(n_pool):
            j = pool[c]
            pool_feats[SAME_CLUSTER, c] = 1.0 if clusters[j] == clusters[last] else 0.0
            for g in range(item_cols.size):
                pool_feats[item_cols[g], c] = item_values[g, j]
            cat = categories[j]
            if cat >= 0:
                pool_feats[SAME_CATEGORY, c] = 1.0 if cat == categories[last] else 0.0
                pool_feats[CATEGORY_SHARE, c] = category_share[cat] / recency_total
            # The candidate's vector into column c (one row per dimension): every
            # candidate's row read in one pass, so that their cache misses overlap.
            for x in range(dim):
                pool_vecs[x, c] = vectors[j, x]
        # The embedding sums of every candidate in step, one dimension at a time: each
        # sum keeps its order, and the candidates are independent lanes (vectorised).
        for c in range(n_pool):
            e_last[c] = 0.0
            e_session[c] = 0.0
            score[c] = 0.0
        for x in range(dim):
            u = vectors[last, x]
            for c in range(n_pool):
                e_last[c] += pool_vecs[x, c] * u
        for x in range(dim):
            u_s = session_vec[x]
            for c in range(n_pool):
                e_session[c] += pool_vecs[x, c] * u_s
        for c in range(n_pool):
            pool_feats[EMB_LAST, c] = e_last[c]
            pool_feats[EMB_SESSION, c] = e_session[c]
        for d in range(n_dist):
            i = dist[d]
            if categories[i] >= 0:
                category_share[categories[i]] = 0.0
        # A feature weighing 0, or 0 for every candidate (a source that found nothing),
        # adds 0 to every score: left out. The square root's term is added as 0 where the
        # feature is not positive (no branch to mispredict).
        for t in range(n_scored):
            f = scored_f[t]
            wr = w_raw[f]
            ws = w_sqrt[f]
            nonzero = False
            for c in range(n_pool):
                nonzero |= pool_feats[f, c] != 0.0
            if not nonzero:
                continue
            for c in range(n_pool):
                x = pool_feats[f, c]
                score[c] += wr * x
                score[c] += ws * np.sqrt(x) if x > 0.0 else 0.0
        if rerank_top > 1:
            rerank(
                model.tree_feature,
                model.tree_threshold,
                model.tree_leaf,
                tree_codes,
                rerank_top,
                pool_feats,
                score,
                n_pool,
                tree_x,
                select_buf,
            )
        kept = 0
        for c in range(n_pool):
            kept = push_top(out_scores, out_items, r, kept, k, score[c], np.int64(pool[c]))
        if kept > 0:
            strategy[r] = _main_source(
                pool_feats, slot[out_items[r, 0]], w_raw, w_sqrt, feature_source, contribution
            )
        if item_sources:
            for c in range(kept):
                sources[r, c] = _main_source(
                    pool_feats, slot[out_items[r, c]], w_raw, w_sqrt, feature_source, contribution
                )
        if out_feats.shape[0] > 0:
            for c in range(kept):
                at = slot[out_items[r, c]]
                for f in range(nf):
                    out_feats[r, c, f] = pool_feats[f, at]
        for f in range(nf):  # zero again for the next session
            for c in range(found):
                feats[f, c] = 0.0


_drop_stale_cache()
