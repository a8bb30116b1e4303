"""The served model's candidate sources and learned ranking stage (issue 10).

At train time every source becomes plain arrays in the bundle (CSR lists, best first):

- ``transitions``: P(next = j | last click = i), counted once per training session;
- ``rules``: sequential rules, j up to ``rule_steps`` clicks after i, weight 1/distance,
  row-normalised;
- a session index for session-kNN: each training session's distinct items
  (``sessions_*``) and, per item, the most recent ``sample_size`` sessions holding it
  (``item_sessions_*``), oldest first;
- sequence continuations: what followed the same last 2 or 3 clicks, or the same whole
  prefix, in training (a variable-order Markov chain over exact contexts, as the hybrid's
  ``_Continuations``), keyed by a 64-bit hash of the context (``context_*``);
- the existing blended Word2Vec / co-occurrence / cluster neighbour lists;
- when items have categories (``item_category``, from ``--category-col`` or the tenant's
  catalogue), each category's most clicked items (``category_*``).

Row pointers are int32. The kernel reads at most ``per_source`` entries of a list, so
the trainer keeps no more than that many (a loaded model's pages are its memory).

At serve time ``served_kernel`` takes a whole batch in one compiled pass. Per session it
gathers candidates from the session's own items, the neighbour lists and rules of its
newest ``context`` clicks, the transitions of the last click, its sequence continuations,
the items of its session-kNN neighbours (V-SKNN's k nearest, voting with V-SKNN and
SKNN similarity) and the top of the last click's category, and computes ``FEATURES`` for
each; the category features (same category as the last click, the session's
recency-weighted share of the item's category) are 0 for items without one. Two stages,
as the hybrid: a fixed blend of the gathered source scores keeps the best
``candidates``, then a linear model over the features and their square roots orders
those. Its weights are fitted at train
time on next-click cases of the training log (``fit_ranker``) and stored as JSON in the
manifest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
from numba import njit

FEATURES = (
    "vsknn",
    "sknn",
    "transitions",
    "rules",
    "neighbours",
    "own_recency",
    "own_count",
    "is_current",
    "emb_last",
    "emb_session",
    "same_cluster",
    "popularity",
    "after_2",
    "after_3",
    "after_prefix",
    "after_prefix_long",
    "same_category",
    "category_share",
    "category_top",
)
N_FEATURES = len(FEATURES)
MAX_ITER = 60  # L-BFGS iterations of the ranker's fit
FEATURES_SHARE = 0.25  # about the part of the fit spent ranking its cases and scaling them
N_WEIGHTS = 2 * N_FEATURES  # raw features, then their square roots
# The source each feature belongs to; the ``strategy`` of a list is the source whose
# features contribute most to the score of its top item. Indices into STRATEGIES.
STRATEGIES = (
    "embedding",
    "cluster",
    "popular",
    "session_knn",
    "transitions",
    "rules",
    "own",
    "sequence",
    "category",
)
FEATURE_SOURCE = np.array([3, 3, 4, 5, 0, 6, 6, 6, 0, 0, 1, 2, 7, 7, 7, 7, 8, 8, 8], dtype=np.int64)
# Seeds of the context hashes: the last 2 clicks, the last 3, the whole prefix.
_SEEDS = np.array([2, 3, 0], dtype=np.uint64)
_FNV_PRIME = np.uint64(1099511628211)
_FNV_OFFSET = np.uint64(14695981039346656037)
# Used to pick the candidates the ranker is first fitted on, and by models too small to
# fit a ranker. Roughly the hybrid's fixed blend (models/hybrid.py).
BLEND = {
    "vsknn": 1.0,
    "sknn": 0.5,
    "transitions": 0.5,
    "rules": 0.3,
    "neighbours": 0.3,
    "own_recency": 0.6,
    "emb_session": 0.02,
    "popularity": 0.001,
    "after_2": 0.3,
    "after_prefix": 0.3,
    "category_top": 0.05,
}


def prior_weights() -> np.ndarray:
    """The blend over the features gathered before stage two (module docstring)."""
    w = blend_weights()[:N_FEATURES].copy()
    w[[FEATURES.index(name) for name in ("emb_last", "emb_session", "same_cluster")]] = 0.0
    w[FEATURES.index("popularity")] = 0.0
    return w


def blend_weights() -> np.ndarray:
    w = np.zeros(N_WEIGHTS, dtype=np.float64)
    for name, value in BLEND.items():
        w[FEATURES.index(name)] = value
    return w


# ---------------------------------------------------------------- train time: sources


def build_sources(
    codes: Sequence[np.ndarray],
    n: int,
    *,
    top: int,
    rule_steps: int,
    sample_size: int,
    index_from: int = 0,
) -> dict[str, np.ndarray]:
    """The CSR arrays of the module docstring from sessions as item rows (oldest first);
    the session-kNN index holds the sessions from ``index_from`` on."""
    indexed = [c for c in codes[index_from:] if len(c)]
    codes = [c for c in codes if len(c)]
    out: dict[str, np.ndarray] = {}
    trans = _transition_counts(codes, n)
    out["transitions_ptr"], out["transitions_idx"], out["transitions_w"] = _top_csr(
        _row_normalised(trans), top
    )
    rules = _sequential_rules(codes, n, rule_steps)
    out["rules_ptr"], out["rules_idx"], out["rules_w"] = _top_csr(_row_normalised(rules), top)
    # Distinct items per session, in order of first click.
    distinct = []
    for c in indexed:
        _, first = np.unique(c, return_index=True)
        distinct.append(c[np.sort(first)])
    lengths = np.array([len(d) for d in distinct], dtype=np.int64)
    items = np.concatenate(distinct).astype(np.int32) if distinct else np.zeros(0, np.int32)
    out["sessions_ptr"], out["sessions_items"] = _row_pointer(lengths), items
    # item -> its most recent ``sample_size`` sessions: the most recent ``sample_size`` of a
    # union of such lists are exactly the most recent of the full lists' union.
    session_of = np.repeat(np.arange(len(distinct), dtype=np.int64), lengths)
    order = np.lexsort((session_of, items))
    by_item, sess = items[order].astype(np.int64), session_of[order]
    starts = np.searchsorted(by_item, np.arange(n + 1))
    counts = np.diff(starts)
    rank_from_end = starts[by_item + 1] - 1 - np.arange(len(by_item))
    keep = rank_from_end < sample_size
    iptr = _row_pointer(np.minimum(counts, sample_size))
    out["item_sessions_ptr"], out["item_sessions_idx"] = iptr, sess[keep].astype(np.int32)
    out.update(_continuations(codes, n, top))
    return out


def category_lists(
    item_category: np.ndarray, popularity: np.ndarray, *, top: int
) -> dict[str, np.ndarray]:
    """Each category's ``top`` most clicked items, best first (``popularity``: item rows,
    most clicked first), as CSR over the category codes of ``item_category`` (-1: none)."""
    n_categories = int(item_category.max(initial=-1)) + 1
    ranked = popularity[item_category[popularity] >= 0]
    of = item_category[ranked]
    order = np.argsort(of, kind="stable")  # by category, most clicked first within one
    ranked, of = ranked[order], of[order]
    starts = np.searchsorted(of, np.arange(n_categories + 1))
    keep = np.arange(len(ranked)) - starts[of] < top
    ptr = np.zeros(n_categories + 1, dtype=np.int32)
    np.cumsum(np.bincount(of[keep], minlength=n_categories), out=ptr[1:])
    return {"category_ptr": ptr, "category_items": ranked[keep].astype(np.int32)}


def _continuations(codes: Sequence[np.ndarray], n: int, top: int) -> dict[str, np.ndarray]:
    """P(next | context) for the hashed contexts of every click after the first."""
    flat = np.concatenate(codes).astype(np.int64) if codes else np.zeros(0, np.int64)
    ptr = np.zeros(len(codes) + 1, dtype=np.int64)
    np.cumsum([len(c) for c in codes], out=ptr[1:])
    keys, targets = _context_pairs(flat, ptr)
    if len(keys):
        unique_keys, rows = np.unique(keys, return_inverse=True)
    else:
        unique_keys, rows = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    counts = sp.csr_matrix(
        (np.ones(len(rows)), (rows.ravel(), targets)), shape=(len(unique_keys), n)
    )
    cptr, cidx, cw = _top_csr(_row_normalised(counts), top)
    return {"context_keys": unique_keys, "context_ptr": cptr, "context_idx": cidx, "context_w": cw}


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


@njit(cache=True)
def _context_hash(codes, lo, hi, seed):  # pragma: no cover - compiled
    h = _FNV_OFFSET ^ seed
    for p in range(lo, hi):
        h = (h ^ np.uint64(codes[p] + 1)) * _FNV_PRIME
    return h


@njit(cache=True)
def _context_pairs(flat, ptr):  # pragma: no cover - compiled
    """(context hash, next item) for every click after the first of every session."""
    keys = np.empty(3 * flat.size, dtype=np.uint64)
    targets = np.empty(3 * flat.size, dtype=np.int64)
    count = 0
    for r in range(ptr.size - 1):
        lo, hi = ptr[r], ptr[r + 1]
        for i in range(lo + 1, hi):
            for which in range(3):
                start = lo if which == 2 else i - 2 - which
                if start < lo:
                    continue
                keys[count] = _context_hash(flat, start, i, _SEEDS[which])
                targets[count] = flat[i]
                count += 1
    return keys[:count], targets[:count]


@njit(cache=True, nogil=True)
def _context_row(keys, h):  # pragma: no cover - compiled
    q = np.searchsorted(keys, h)
    if q < keys.size and keys[q] == h:
        return q
    return -1


def _transition_counts(codes: Sequence[np.ndarray], n: int) -> sp.csr_matrix:
    a = np.concatenate([s[:-1] for s in codes]) if codes else np.zeros(0, dtype=np.int64)
    b = np.concatenate([s[1:] for s in codes]) if codes else np.zeros(0, dtype=np.int64)
    session = np.repeat(np.arange(len(codes)), [max(0, len(s) - 1) for s in codes])
    keys = np.unique((session * n + a) * n + b)  # once per session
    a, b = (keys // n) % n, keys % n
    return sp.csr_matrix((np.ones(len(a)), (a, b)), shape=(n, n))


def _sequential_rules(codes: Sequence[np.ndarray], n: int, steps: int) -> sp.csr_matrix:
    flat = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
    session = np.repeat(np.arange(len(codes)), [len(s) for s in codes])
    rows, cols, weights = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for gap in range(1, steps + 1):
        same = session[:-gap] == session[gap:]
        rows.append(flat[:-gap][same])
        cols.append(flat[gap:][same])
        weights.append(np.full(int(same.sum()), 1.0 / gap))
    return sp.csr_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )


def _row_normalised(m: sp.csr_matrix) -> sp.csr_matrix:
    m = m.tocsr()
    m.sum_duplicates()
    sums = np.asarray(m.sum(axis=1)).ravel()
    return (sp.diags(1.0 / np.maximum(sums, 1e-12)) @ m).tocsr()


def _top_csr(m: sp.csr_matrix, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``top`` largest entries, best first (ties by column)."""
    coo = m.tocoo()
    rows, cols, data = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
    order = np.lexsort((cols, -data, rows))
    rows, cols, data = rows[order], cols[order], data[order]
    starts = np.searchsorted(rows, np.arange(m.shape[0]))
    keep = (np.arange(len(rows)) - starts[rows]) < top
    ptr = _row_pointer(np.bincount(rows[keep], minlength=m.shape[0]))
    return ptr, cols[keep].astype(np.int32), data[keep].astype(np.float32)


def _row_pointer(lengths: np.ndarray) -> np.ndarray:
    """CSR row pointer (int32: half the bytes of int64 in every loaded model; a model
    would need over 2**31 list entries, 8 GB of indices alone, to overflow it)."""
    total = int(np.sum(lengths))
    if total >= 2**31:
        raise ValueError(f"{total} list entries do not fit an int32 row pointer")
    ptr = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=ptr[1:])
    return ptr


# ---------------------------------------------------------------- serve time: the kernel


@njit(cache=True, nogil=True)
def _touch(j, tag, stamp, slot, feats, cand, found):  # pragma: no cover - compiled
    """Make item j a candidate of row ``tag`` (features zeroed) if it is not one yet.
    Features live in candidate order (``slot[j]``), so the rows in use stay in cache."""
    if stamp[j] != tag:
        stamp[j] = tag
        slot[j] = found
        for f in range(feats.shape[1]):  # a slice assignment costs more at this size
            feats[found, f] = 0.0
        cand[found] = j
        found += 1
    return found


@njit(cache=True, nogil=True)
def _kth_largest(values, rank, bufs):  # pragma: no cover - compiled
    """The ``rank``-th largest (0 = the largest) of ``values``: quickselect whose passes
    have no data-dependent branch (each value is written to both ends of the next
    buffer, and only one end's count moves), so it costs the same on any input order.
    ``bufs``: [2, >= len(values)] scratch."""
    n = values.size
    src = values
    which = 0
    while True:
        pivot = src[n >> 1]
        dst = bufs[which]
        above = 0
        below = 0
        for i in range(n):
            x = src[i]
            dst[above] = x
            dst[n - 1 - below] = x
            above += x > pivot
            below += x < pivot
        if rank < above:
            n = above
            src = dst[:n]
        elif rank < n - below:
            return pivot
        else:
            rank -= n - below
            src = dst[n - below : n]
            n = below
        which = 1 - which


@njit(cache=True, nogil=True)
def _select(values, limit, out, bufs):  # pragma: no cover - compiled
    """Write into ``out`` the positions of the ``limit`` largest ``values``, ties going to
    the earlier position; returns how many. O(len) expected; ``bufs`` is [2, len] scratch
    at least."""
    m = values.size
    if m <= limit:
        for q in range(m):
            out[q] = q
        return m
    threshold = _kth_largest(values, limit - 1, bufs)
    above = 0
    for q in range(m):
        above += values[q] > threshold
    ties = limit - above
    count = 0
    q = 0
    while count < limit:
        x = values[q]
        take = (x > threshold) | ((x == threshold) & (ties > 0))
        out[count] = q
        count += take
        ties -= (x == threshold) & take
        q += 1
    return count


@njit(cache=True, nogil=True)
def served_kernel(
    codes,
    ptr,
    weight_by_age,
    own_decay,
    neighbours,
    neighbour_scores,
    tr_ptr,
    tr_idx,
    tr_w,
    ru_ptr,
    ru_idx,
    ru_w,
    s_ptr,
    s_items,
    is_ptr,
    is_idx,
    c_keys,
    c_ptr,
    c_idx,
    c_w,
    cat_ptr,
    cat_items,
    k_sessions,
    sample_size,
    per_source,
    n_candidates,
    prior,
    vectors,
    clusters,
    categories,
    log_pop,
    weights,
    banned,
    exclude_mode,
    out_items,
    out_scores,
    out_feats,
    known,
    strategy,
    stamp,
    excluded,
    votes,
    tag_base,
):  # pragma: no cover - compiled; checked against hand-made bundles in the tests
    """Rank every session of the batch (module docstring). Session r is
    ``codes[ptr[r]:ptr[r+1]]`` (item rows oldest first, -1 unknown). Writes the best
    ``k`` by (score desc, item asc) into out_items / out_scores (padded -1 / -inf), the
    candidates' features into out_feats when it has rows, how many known clicks each
    session has, and the index into STRATEGIES of the top item's main source.

    ``stamp`` and ``excluded`` (int64 per item, below ``tag_base + 1`` everywhere) and
    ``votes`` ([items, 2], zero) are scratch the caller keeps between batches, so a small
    batch does not pay for clearing item-sized arrays; the kernel leaves ``votes`` zero
    and its stamps at most ``tag_base + rows``."""
    n, m = neighbours.shape
    nf = N_FEATURES
    k = out_items.shape[1]
    context = weight_by_age.size
    feats = np.empty((n, nf), dtype=np.float64)  # a row is zeroed when first touched
    slot = np.empty(n, dtype=np.int64)
    cand = np.empty(n, dtype=np.int64)
    newest = np.empty(context, dtype=np.int64)
    known_codes = np.empty(max(1, codes.size), dtype=np.int64)
    dist = np.empty(n, dtype=np.int64)
    dist_w = np.empty(n, dtype=np.float64)
    heads = np.empty(n, dtype=np.int64)
    head_s = np.empty(n, dtype=np.int64)  # the session at each live list's head
    head_lo = np.empty(n, dtype=np.int64)
    head_w = np.empty(n, dtype=np.float64)
    sample = np.empty(max(1, sample_size), dtype=np.int64)
    s_vsim = np.empty(max(1, sample_size), dtype=np.float64)
    s_count = np.empty(max(1, sample_size), dtype=np.float64)
    pool = np.empty(n, dtype=np.int64)
    pool_prior = np.empty(n, dtype=np.float64)
    pool_pos = np.empty(n, dtype=np.int64)
    select_buf = np.empty((2, max(n, sample_size, 1)), dtype=np.float64)
    top = np.empty(max(1, k_sessions), dtype=np.int64)
    session_vec = np.empty(vectors.shape[1], dtype=np.float64)
    voted = np.empty(n + 1, dtype=np.int64)  # + 1: written before it is known to be new
    only = np.empty(n, dtype=np.int64)
    prior_f = np.flatnonzero(prior[:nf] != 0.0)
    prior_s = np.empty(nf, dtype=np.float64)  # the prior with the votes' scaling folded in
    contribution = np.empty(len(STRATEGIES), dtype=np.float64)
    n_prior = prior_f.size
    w_raw = weights[:nf]
    w_sqrt = weights[nf : 2 * nf]
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
            new = stamp[i] != tag
            found = _touch(i, tag, stamp, slot, feats, cand, found)
            if new:  # first (newest) occurrence: V-SKNN weight of its latest position
                dist[n_dist] = i
                dist_w[n_dist] = (n_known - age) / n_known
                n_dist += 1
            feats[slot[i], 5] += own_decay**age
            feats[slot[i], 6] += 1.0
            session_vec += own_decay**age * vectors[i]
            recency_total += own_decay**age
            if age == 0:
                last = i
                feats[slot[i], 7] = 1.0
            if used < context:
                newest[used] = i
                used += 1
            age += 1
        for d in range(n_dist):
            i = dist[d]
            feats[slot[i], 6] = np.log1p(feats[slot[i], 6])
        # Neighbour lists and sequential rules of the newest clicks, oldest vote first.
        for a in range(used - 1, -1, -1):
            i = newest[a]
            w = weight_by_age[a]
            for q in range(min(m, per_source)):
                j = neighbours[i, q]
                found = _touch(j, tag, stamp, slot, feats, cand, found)
                feats[slot[j], 4] += w * neighbour_scores[i, q]
            for q in range(ru_ptr[i], min(ru_ptr[i + 1], ru_ptr[i] + per_source)):
                j = ru_idx[q]
                found = _touch(j, tag, stamp, slot, feats, cand, found)
                feats[slot[j], 3] += w * ru_w[q]
        for q in range(tr_ptr[last], min(tr_ptr[last + 1], tr_ptr[last] + per_source)):
            j = tr_idx[q]
            found = _touch(j, tag, stamp, slot, feats, cand, found)
            feats[slot[j], 2] = tr_w[q]
        # The most clicked items of the last click's category, scored by their rank there.
        cat = categories[last]
        if 0 <= cat < cat_ptr.size - 1:
            start = cat_ptr[cat]
            for q in range(start, min(cat_ptr[cat + 1], start + per_source)):
                j = cat_items[q]
                found = _touch(j, tag, stamp, slot, feats, cand, found)
                feats[slot[j], 18] = 1.0 / (1.0 + q - start)
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
            row = _context_row(c_keys, _context_hash(known_codes, start, n_seen, _SEEDS[which]))
            if row < 0:
                continue
            for q in range(c_ptr[row], min(c_ptr[row + 1], c_ptr[row] + per_source)):
                j = c_idx[q]
                found = _touch(j, tag, stamp, slot, feats, cand, found)
                feats[slot[j], 12 + which] = c_w[q]
                if which == 2:
                    feats[slot[j], 15] = c_w[q] * long_weight
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
            n_top = _select(s_vsim[:n_chosen], k_sessions, top, select_buf)
            for t in range(n_top):
                s = sample[top[t]]
                v = s_vsim[top[t]]
                cosine = s_count[top[t]] / np.sqrt(n_dist * (s_ptr[s + 1] - s_ptr[s]))
                for q in range(s_ptr[s], s_ptr[s + 1]):
                    j = s_items[q]
                    # Written always, kept only on j's first vote (votes are > 0): no
                    # branch to mispredict in the hottest loop.
                    voted[n_voted] = j
                    n_voted += votes[j, 0] == 0.0
                    votes[j, 0] += v
                    votes[j, 1] += cosine
            for e in range(n_voted):
                j = voted[e]
                best_v = max(best_v, votes[j, 0])
                best_c = max(best_c, votes[j, 1])
        # Both votes are scaled to a maximum of 1; only the rows read are divided, the
        # pool's before stage two, the others as the prior reads them.
        div_v = best_v if best_v > 0.0 else 1.0
        div_c = best_c if best_c > 0.0 else 1.0
        prior_s[:] = prior[:nf]
        prior_s[0] /= div_v
        prior_s[1] /= div_c
        # Voted items another source gathered take their votes in their rows; the others
        # have only the two votes, so their prior needs no row: one is made only for
        # those that reach the pool (most voted items never do).
        n_only = 0
        for e in range(n_voted):
            j = voted[e]
            if stamp[j] == tag:
                feats[slot[j], 0] = votes[j, 0]
                feats[slot[j], 1] = votes[j, 1]
            elif excluded[j] != tag and not banned[j]:
                only[n_only] = j
                n_only += 1
        norm = np.sqrt(np.sum(session_vec * session_vec))
        if norm > 1e-12:
            session_vec /= norm
        # Stage one: the allowed candidates' fixed-blend prior; the best n_candidates go
        # on (ties in gathering order: the other sources' items, then the voted-only ones
        # in voting order; both depend on the session alone). Stage two scores those with
        # every feature and the ranker.
        n_pool = 0
        for c in range(found):
            j = cand[c]
            if excluded[j] == tag or banned[j]:
                continue
            pr = 0.0
            row_j = slot[j]
            for t in range(n_prior):
                f = prior_f[t]
                pr += prior_s[f] * feats[row_j, f]
            pool[n_pool] = j
            pool_prior[n_pool] = pr
            n_pool += 1
        for e in range(n_only):
            j = only[e]
            pool[n_pool] = j
            pool_prior[n_pool] = prior_s[0] * votes[j, 0] + prior_s[1] * votes[j, 1]
            n_pool += 1
        if n_pool > n_candidates:
            # Positions come back increasing, so the pool compacts in place.
            n_pool = _select(pool_prior[:n_pool], n_candidates, pool_pos, select_buf)
            for c in range(n_pool):
                pool[c] = pool[pool_pos[c]]
        for c in range(n_pool):
            j = pool[c]
            if stamp[j] != tag:  # voted only: its row now
                found = _touch(j, tag, stamp, slot, feats, cand, found)
                feats[slot[j], 0] = votes[j, 0]
                feats[slot[j], 1] = votes[j, 1]
        for e in range(n_voted):  # zero again for the next session
            votes[voted[e], 0] = 0.0
            votes[voted[e], 1] = 0.0
        kept = 0
        for c in range(n_pool):
            j = pool[c]
            feats[slot[j], 0] /= div_v
            feats[slot[j], 1] /= div_c
            e_last = 0.0
            e_sess = 0.0
            for x in range(vectors.shape[1]):
                e_last += vectors[j, x] * vectors[last, x]
                e_sess += vectors[j, x] * session_vec[x]
            feats[slot[j], 8] = e_last
            feats[slot[j], 9] = e_sess
            feats[slot[j], 10] = 1.0 if clusters[j] == clusters[last] else 0.0
            feats[slot[j], 11] = log_pop[j]
            cat = categories[j]
            if cat >= 0:
                feats[slot[j], 16] = 1.0 if cat == categories[last] else 0.0
                share = 0.0
                for d in range(n_dist):
                    i = dist[d]
                    if categories[i] == cat:
                        share += feats[slot[i], 5]
                feats[slot[j], 17] = share / recency_total
            s = 0.0
            for f in range(nf):
                x = feats[slot[j], f]
                s += w_raw[f] * x
                if x > 0.0:
                    s += w_sqrt[f] * np.sqrt(x)
            kept = push_top(out_scores, out_items, r, kept, k, s, j)
        if kept > 0:
            j = out_items[r, 0]
            contribution[:] = 0.0
            for f in range(nf):
                x = feats[slot[j], f]
                part = w_raw[f] * x
                if x > 0.0:
                    part += w_sqrt[f] * np.sqrt(x)
                contribution[FEATURE_SOURCE[f]] += part
            strategy[r] = np.argmax(contribution)
        if out_feats.shape[0] > 0:
            for c in range(kept):
                out_feats[r, c, :] = feats[slot[out_items[r, c]], :]


# ---------------------------------------------------------------- train time: the ranker


def fit_ranker(
    rank_features: Callable[[], tuple[np.ndarray, np.ndarray]],
    targets: np.ndarray,
    *,
    l2: float,
    progress: Callable[[float], None] = lambda fraction: None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Softmax over each case's candidates with the next click as the label (L2,
    L-BFGS). ``rank_features()`` returns, for the cases of ``targets``, the candidates
    serving would score (items [cases, c], -1 padded) and their features [cases, c, F].
    Deterministic: no random choice here. The fixed blend when too few cases hold
    their next click among the candidates. ``progress`` hears the fraction done."""
    items, feats = rank_features()
    progress(FEATURES_SHARE)
    where = items == targets[:, None]
    found = where.any(axis=1)
    info: dict[str, float] = {"cases": float(found.sum())}
    info["recall"] = float(found.mean()) if len(found) else 0.0
    if found.sum() < 20:
        return blend_weights(), info
    # float32 throughout, in one array: the fit's time was mostly copies of [cases,
    # candidates, features] float64 arrays.
    raw = feats[found].astype(np.float32)
    mask = items[found] >= 0
    y = where[found].argmax(axis=1)
    nf = raw.shape[-1]
    x = np.empty((*raw.shape[:-1], 2 * nf), dtype=np.float32)
    x[..., :nf] = raw
    np.sqrt(np.maximum(raw, 0.0), out=x[..., nf:])
    steps = itertools.count(1)  # L-BFGS iterations, of at most MAX_ITER

    def step(_: np.ndarray) -> None:
        progress(FEATURES_SHARE + (1 - FEATURES_SHARE) * min(1.0, next(steps) / MAX_ITER))

    return fit_scaled(x, mask, y, blend_weights(), l2, step), info


def fit_scaled(
    x: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    l2: float,
    step: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    """Weights over the columns of ``x`` ([cases, candidates, columns] float32, scaled in
    place to unit spread for the fit; ``mask``: real candidates, ``y``: the clicked one),
    from ``start``; both in the columns' own units."""
    scale = np.maximum(x[mask].std(axis=0, dtype=np.float64), 1e-6)
    x /= scale.astype(np.float32)
    return _softmax_fit(x, mask, y, start * scale, l2, step) / scale


def _softmax_fit(
    x: np.ndarray,
    mask: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    l2: float,
    step: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    rows = np.arange(len(y))
    penalty = np.where(mask, 0.0, -1e9)
    flat = x.reshape(-1, x.shape[-1])  # two matrix-vector products per step (BLAS)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = (flat @ w.astype(np.float32)).reshape(mask.shape).astype(np.float64) + penalty
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        z = e.sum(axis=1, keepdims=True)
        value = -(s[rows, y] - np.log(z[:, 0])).mean() + l2 * (w @ w)
        grad_s = e / z
        grad_s[rows, y] -= 1.0
        grad = grad_s.astype(np.float32).ravel() @ flat / len(y) + 2 * l2 * w
        return float(value), grad.astype(np.float64)

    from scipy.optimize import minimize  # training only: kept off the worker's start-up

    fit = minimize(
        loss, start, jac=True, method="L-BFGS-B", options={"maxiter": MAX_ITER}, callback=step
    )
    return np.asarray(fit.x, dtype=np.float64)
