"""The served model's candidate sources, built at train time as plain arrays.

Each source of ``models.features.LISTS`` becomes CSR arrays in the bundle (best first;
row pointers int32, so a loaded model's pages are half an int64's):

- ``transitions``: P(next = j | last click = i), counted once per training session;
- ``rules``: sequential rules, j up to ``rule_steps`` clicks after i, weight 1/distance,
  row-normalised;
- a session index for session-kNN: each training session's distinct items
  (``sessions``) and, per item, the most recent ``sample_size`` sessions holding it
  (``item_sessions``), oldest first;
- sequence continuations: what followed the same last 2 or 3 clicks, or the same whole
  prefix, in training (a variable-order Markov chain over exact contexts), keyed by a
  64-bit hash of the context (``context_keys``);
- when items have categories, each category's most clicked items (``category``).

The kernel reads at most ``per_source`` entries of a list, so the trainer keeps no more
than that many. The count matrices (``transition_counts``, ``sequential_rules``) are the
baselines' too (``models.baselines``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from numba import njit

# Seeds of the context hashes: the last 2 clicks, the last 3, the whole prefix.
SEEDS = np.array([2, 3, 0], dtype=np.uint64)
_FNV_PRIME = np.uint64(1099511628211)
_FNV_OFFSET = np.uint64(14695981039346656037)


def build_sources(
    codes: Sequence[np.ndarray],
    n: int,
    *,
    top: int,
    rule_steps: int,
    sample_size: int,
    index_from: int = 0,
) -> dict[str, np.ndarray]:
    """The arrays of ``models.features.LISTS`` but ``category`` (``category_lists``), by
    name, from sessions as item rows (oldest first); the session-kNN index holds the
    sessions from ``index_from`` on."""
    indexed = [c for c in codes[index_from:] if len(c)]
    codes = [c for c in codes if len(c)]
    out: dict[str, np.ndarray] = {}
    trans = transition_counts(codes, n, per_session=True)
    out["transitions_ptr"], out["transitions_idx"], out["transitions_w"] = _top_csr(
        _row_normalised(trans), top
    )
    rules = sequential_rules(codes, n, rule_steps)
    out["rules_ptr"], out["rules_idx"], out["rules_w"] = _top_csr(_row_normalised(rules), top)
    # Distinct items per session, in order of first click: the first (session, item)
    # pairs in log order, found for every session at once.
    flat = np.concatenate(indexed).astype(np.int64) if indexed else np.zeros(0, np.int64)
    clicked_in = np.repeat(np.arange(len(indexed), dtype=np.int64), [len(c) for c in indexed])
    first = np.sort(np.unique(clicked_in * n + flat, return_index=True)[1])
    items, session_of = flat[first].astype(np.int32), clicked_in[first]
    lengths = np.bincount(session_of, minlength=len(indexed))
    out["sessions_ptr"], out["sessions_idx"] = _row_pointer(lengths), items
    # item -> its most recent ``sample_size`` sessions: the most recent ``sample_size`` of a
    # union of such lists are exactly the most recent of the full lists' union.
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
    return {"category_ptr": ptr, "category_idx": ranked[keep].astype(np.int32)}


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


@njit(cache=True)
def context_hash(codes, lo, hi, seed):  # pragma: no cover - compiled
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
                keys[count] = context_hash(flat, start, i, SEEDS[which])
                targets[count] = flat[i]
                count += 1
    return keys[:count], targets[:count]


def transition_counts(codes: Sequence[np.ndarray], n: int, *, per_session: bool) -> sp.csr_matrix:
    """[n, n] counts of "b came right after a"; ``per_session`` counts a pair once a session."""
    a = np.concatenate([s[:-1] for s in codes]) if codes else np.zeros(0, dtype=np.int64)
    b = np.concatenate([s[1:] for s in codes]) if codes else np.zeros(0, dtype=np.int64)
    if per_session:
        session = np.repeat(np.arange(len(codes)), [max(0, len(s) - 1) for s in codes])
        keys = np.unique((session * n + a) * n + b)
        a, b = (keys // n) % n, keys % n
    return sp.csr_matrix((np.ones(len(a)), (a, b)), shape=(n, n))


def sequential_rules(codes: Sequence[np.ndarray], n: int, steps: int = 10) -> sp.csr_matrix:
    """[n, n] rule weights: j after i within ``steps`` clicks, weight 1/distance."""
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
