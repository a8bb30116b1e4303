"""Ranking: a pure function of a ModelBundle and a session's items.

A session's newest ``context`` known items each vote for their precomputed neighbours,
weighted ``recency_decay ** age`` (age 0 = the newest click), optionally plus the
cosine between a candidate and the recency-weighted session vector. Items already in
the session are never returned. When the neighbour lists run dry the newest item's
cluster fills in (most popular first), then the global most-popular list; a session
with no known item gets the popular list.

``recommend_batch`` does the whole batch with a few numpy calls; ``recommend`` is the
batch of one, so both always agree.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields
import numpy as np

from models.bundle import ModelBundle

STRATEGIES = ("embedding", "cluster", "popular")


@dataclass(frozen=True)
class RankParams:
    context: int = 5
    recency_decay: float = 0.6
    session_weight: float = 0.0

    @classmethod
    def of(cls, bundle: ModelBundle) -> RankParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in bundle.ranking.items() if k in known})


@dataclass
class Ranked:
    items: list[tuple[str, float]]  # (item id, score), best first
    strategy: str  # which source filled the top of the list: one of STRATEGIES

    def item_ids(self) -> list[str]:
        return [item for item, _ in self.items]


def recommend(bundle: ModelBundle, session_items: Sequence[str], k: int) -> Ranked:
    """Top ``k`` items for a session (oldest click first)."""
    return recommend_batch(bundle, [session_items], k)[0]


def recommend_batch(
    bundle: ModelBundle, sessions: Sequence[Sequence[str]], k: int, params: RankParams | None = None
) -> list[Ranked]:
    """``recommend`` for many sessions at once (same result per session)."""
    if k <= 0 or not sessions:
        return [Ranked([], "popular") for _ in sessions]
    params = params or RankParams.of(bundle)
    n, L = bundle.n_items, max(1, params.context)
    seen = [_known(bundle, s) for s in sessions]
    context = np.full((len(sessions), L), -1, dtype=np.int64)  # newest item in the last column
    for row, known in enumerate(seen):
        tail = known[-L:]
        if tail:
            context[row, L - len(tail) :] = tail
    cand_row, cand_item, cand_score = _score_candidates(bundle, context, params)
    # Drop candidates already in the session (the context only covers its newest items).
    seen_keys = np.fromiter(
        (row * n + i for row, known in enumerate(seen) for i in known), dtype=np.int64
    )
    keep = ~np.isin(cand_row * n + cand_item, seen_keys)
    cand_row, cand_item, cand_score = cand_row[keep], cand_item[keep], cand_score[keep]
    # Best first within each row; ties by item index so the order is reproducible.
    order = np.lexsort((cand_item, -cand_score, cand_row))
    cand_row, cand_item, cand_score = cand_row[order], cand_item[order], cand_score[order]
    starts = np.searchsorted(cand_row, np.arange(len(sessions) + 1))
    names = bundle.item_list
    results = []
    for row, known in enumerate(seen):
        lo, hi = starts[row], min(starts[row + 1], starts[row] + k)
        top = [(names[i], float(s)) for i, s in zip(cand_item[lo:hi].tolist(), cand_score[lo:hi].tolist())]
        strategy = "embedding" if top else ("cluster" if known else "popular")
        if len(top) < k:
            top += _fill(bundle, known, set(cand_item[lo:hi].tolist()), k - len(top))
        results.append(Ranked(top, strategy))
    return results


def _known(bundle: ModelBundle, items: Sequence[str]) -> list[int]:
    rows = (bundle.index(item) for item in items)
    return [i for i in rows if i is not None]


def _score_candidates(
    bundle: ModelBundle, context: np.ndarray, params: RankParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum each context item's weighted neighbour scores into (row, item, score) triples."""
    n_rows, L = context.shape
    valid = context >= 0
    age = np.arange(L - 1, -1, -1, dtype=np.float64)
    weights = np.where(valid, params.recency_decay**age, 0.0)  # [rows, L]
    safe = np.where(valid, context, 0)
    nbrs = np.asarray(bundle.neighbours)[safe]  # [rows, L, m]
    votes = np.asarray(bundle.neighbour_scores)[safe] * weights[:, :, None]
    m = nbrs.shape[2]
    rows = np.broadcast_to(np.arange(n_rows)[:, None, None], nbrs.shape)
    mask = np.broadcast_to(valid[:, :, None], nbrs.shape)
    keys = rows[mask].astype(np.int64) * bundle.n_items + nbrs[mask]
    unique, inverse = np.unique(keys, return_inverse=True)
    total = np.bincount(inverse.ravel(), weights=votes[mask], minlength=len(unique))
    cand_row, cand_item = unique // bundle.n_items, unique % bundle.n_items
    if params.session_weight and m and len(unique):
        vectors = np.asarray(bundle.vectors)
        session_vec = np.einsum("rl,rld->rd", weights, vectors[safe])
        session_vec /= np.maximum(np.linalg.norm(session_vec, axis=1, keepdims=True), 1e-12)
        total += params.session_weight * np.einsum("pd,pd->p", vectors[cand_item], session_vec[cand_row])
    return cand_row, cand_item, total


def _fill(bundle: ModelBundle, known: list[int], taken: set[int], count: int) -> list[tuple[str, float]]:
    """Pad with the newest item's cluster (most popular first), then globally popular items."""
    exclude = taken | set(known)
    pool: list[int] = []
    if known:
        popular, clusters = np.asarray(bundle.popularity), np.asarray(bundle.clusters)
        pool = popular[clusters[popular] == clusters[known[-1]]].tolist()
    out: list[int] = []
    for i in itertools.chain(pool, bundle.popularity_list):
        if i not in exclude:
            exclude.add(i)
            out.append(i)
            if len(out) == count:
                break
    names = bundle.item_list
    return [(names[i], 0.0) for i in out]


def similar_items(
    bundle: ModelBundle, item_id: str, k: int = 5, same_cluster: bool = True
) -> list[tuple[str, float]]:
    """The ``k`` items closest to ``item_id`` by cosine, from its own cluster by default."""
    i = bundle.index(item_id)
    if i is None:
        return []
    vectors = np.asarray(bundle.vectors)
    cos = vectors @ vectors[i]
    pool = np.arange(bundle.n_items)
    if same_cluster:
        clusters = np.asarray(bundle.clusters)
        pool = pool[clusters == clusters[i]]
    pool = pool[pool != i]
    best = pool[np.lexsort((pool, -cos[pool]))][:k]
    return [(bundle.item_list[j], float(cos[j])) for j in best.tolist()]
