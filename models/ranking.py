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
_CHUNK = 256


@dataclass(frozen=True)
class RankParams:
    context: int = 3
    recency_decay: float = 0.3
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
    index = bundle._index
    seen = [[index[x] for x in s if x in index] for s in sessions]
    names = bundle.item_list
    results = []
    # Chunks of a few hundred rows keep the working arrays in cache: ~1.5x faster than
    # one big matrix for batches of thousands, and results do not depend on chunking.
    for lo in range(0, len(seen), _CHUNK):
        chunk = seen[lo : lo + _CHUNK]
        items, scores = _score_candidates(bundle, chunk, params)
        top_items, top_scores = _top_k(items, scores, k)
        found = (top_items >= 0).sum(axis=1).tolist()  # real candidates sort before the -1s
        for known, row_items, row_scores, n in zip(
            chunk, top_items.tolist(), top_scores.tolist(), found, strict=True
        ):
            top = list(zip(map(names.__getitem__, row_items[:n]), row_scores[:n], strict=True))
            strategy = "embedding" if top else ("cluster" if known else "popular")
            if n < k:
                top += _fill(bundle, known, set(row_items[:n]), k - n)
            results.append(Ranked(top, strategy))
    return results


def _score_candidates(
    bundle: ModelBundle, seen: list[list[int]], params: RankParams
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate items and summed scores per session, as fixed-width rows.

    Each of the newest ``context`` items contributes its neighbour list, weighted by
    recency. Rows hold up to context * m candidates; duplicates are merged (the first
    copy carries the sum) and everything that must not be recommended gets -inf, item -1.
    """
    n = bundle.n_items
    rows, L = len(seen), max(1, params.context)
    context = np.full((rows, L), -1, dtype=np.int64)  # newest item in the last column
    for row, known in enumerate(seen):
        if known:
            tail = known[-L:]
            context[row, L - len(tail) :] = tail
    valid = context >= 0
    weights = np.where(
        valid, params.recency_decay ** np.arange(L - 1, -1, -1, dtype=np.float64), 0.0
    )
    safe = np.where(valid, context, 0)
    neighbours, neighbour_scores = (
        np.asarray(bundle.neighbours),
        np.asarray(bundle.neighbour_scores),
    )
    width = L * neighbours.shape[1]
    items = neighbours[safe].reshape(rows, width).astype(np.int64)
    votes = (neighbour_scores[safe] * weights[:, :, None]).reshape(rows, width)
    items[~np.repeat(valid, neighbours.shape[1], axis=1)] = n  # sentinel: sorts last, dropped below
    # Sort each row by (item, slot), so a run of one item sums in the same order for any
    # batch, and add each run into its first slot. One int64 sort of item * width + slot
    # is much faster than a stable argsort plus two gathers.
    keys = np.sort(items * width + np.arange(width), axis=1)
    items, slots = np.divmod(keys, width)
    votes = np.take_along_axis(votes, slots, axis=1)
    first = np.ones_like(items, dtype=bool)
    first[:, 1:] = items[:, 1:] != items[:, :-1]
    starts = np.flatnonzero(first)
    total = np.full(items.size, -np.inf)
    if starts.size:
        total[starts] = np.add.reduceat(votes.ravel(), starts)
    total = total.reshape(rows, width)
    keep = first & (items < n)
    # Items already in the session (not only its context) are never recommended.
    row_of = np.broadcast_to(np.arange(rows)[:, None], items.shape)
    seen_keys = np.sort(
        np.fromiter((r * n + i for r, known in enumerate(seen) for i in known), dtype=np.int64)
    )
    if seen_keys.size:
        # Candidate keys come out sorted (by row, then item), so a binary search beats np.isin.
        keys = row_of[keep] * n + items[keep]
        found = seen_keys[np.minimum(np.searchsorted(seen_keys, keys), seen_keys.size - 1)] == keys
        keep[keep] = ~found
    if params.session_weight and keep.any():
        vectors = np.asarray(bundle.vectors)
        session_vec = np.einsum("rl,rld->rd", weights, vectors[safe])
        session_vec /= np.maximum(np.linalg.norm(session_vec, axis=1, keepdims=True), 1e-12)
        total[keep] += params.session_weight * np.einsum(
            "pd,pd->p", vectors[items[keep]], session_vec[row_of[keep]]
        )
    total[~keep] = -np.inf
    items[~keep] = -1
    return items, total


def _top_k(items: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row by score (ties by item index), computed row by row, so a session's
    result never depends on the rest of its batch."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        items, scores = (
            np.take_along_axis(items, part, axis=1),
            np.take_along_axis(scores, part, axis=1),
        )
    order = np.lexsort((items, -scores), axis=1)
    return np.take_along_axis(items, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _fill(
    bundle: ModelBundle, known: list[int], taken: set[int], count: int
) -> list[tuple[str, float]]:
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
