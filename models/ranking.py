"""Ranking: a pure function of a ModelBundle and a session's items.

Ranking is the served model (``models.kernel``): candidates from the sources of the
table (``models.features``) scored by the linear ranking stage fitted at train time
(``RankParams.ranker`` "linear"), or by the table's fixed blend ("blend"). Items already
in the session are left out as ``exclude`` says. When the candidates run dry the newest
item's cluster fills in (most popular first), then the global most-popular list; a
session with no known item gets the popular list.

``recommend_batch`` does the whole batch with a few numpy calls and one compiled pass;
``recommend`` is the batch of one, so both always agree.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from models import features
from models.bundle import ModelBundle
from models.kernel import Out, RankConfig, Scratch, ServedModel, served_kernel, served_model

RANKERS = ("linear", "blend")
STRATEGIES = features.LAYOUT.strategies


@dataclass(frozen=True)
class RankParams:
    context: int = 3
    recency_decay: float = 0.3
    own_decay: float = 0.6  # the session's own items and its vector: weight per click of age
    k_sessions: int = 100  # session-kNN neighbours
    sample_size: int = 100  # ... among this many most recent sessions sharing an item
    per_source: int = 30  # entries read from each neighbour / rule / transition list
    candidates: int = 200  # kept by the fixed blend for the ranker to order
    ranker: str = "linear"
    # The linear stage's best this many reordered by the bundle's boosted trees (0: none;
    # ``models.trees``).
    rerank_top: int = 0

    @classmethod
    def of(cls, bundle: ModelBundle) -> RankParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in bundle.ranking.items() if k in known})


@dataclass(slots=True)
class Ranked:
    ids: list[str]  # best first
    scores: list[float]
    strategy: str  # which source filled the top of the list: one of STRATEGIES
    sources: list[str] | None = None  # each item's, by the same rule, when asked for
    encoded: bytes | None = None  # the items as its caller serialised them, if it did

    @property
    def items(self) -> list[tuple[str, float]]:
        return list(zip(self.ids, self.scores, strict=True))


def recommend(
    bundle: ModelBundle,
    session_items: Sequence[str],
    k: int,
    *,
    exclude: str = "seen",
    sources: bool = False,
) -> Ranked:
    """Top ``k`` items for a session (oldest click first)."""
    return recommend_batch(bundle, [session_items], k, exclude=exclude, sources=sources)[0]


def recommend_batch(
    bundle: ModelBundle,
    sessions: Sequence[Sequence[str]],
    k: int,
    params: RankParams | None = None,
    *,
    exclude: str = "seen",
    sources: bool = False,
) -> list[Ranked]:
    """``recommend`` for many sessions at once (same result per session)."""
    flat = list(itertools.chain.from_iterable(sessions))
    lengths = list(map(len, sessions))
    return recommend_flat(bundle, flat, lengths, k, params, exclude=exclude, sources=sources)


def encode_flat(
    bundle: ModelBundle, flat: Sequence[str], lengths: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Sessions given back to back as the kernel reads them: item codes (-1 for an item
    the model does not know) and the CSR pointer (session r is ``codes[ptr[r]:ptr[r+1]]``)."""
    codes = bundle.rows(flat)
    ptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    return codes, ptr


def encode_sessions(
    bundle: ModelBundle, sessions: Sequence[Sequence[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`encode_flat` of whole sessions."""
    flat = list(itertools.chain.from_iterable(sessions))
    return encode_flat(bundle, flat, [len(s) for s in sessions])


@dataclass
class Rows:
    """A batch's rankings as arrays: ``items`` (model rows, int64 [sessions, k]) and
    ``scores`` (float64, same shape), best first, a row ending in -1 (score -inf) when
    the session has fewer than ``k`` items to show; each row's strategy (``Ranked``) and,
    when asked for, each item's source."""

    items: np.ndarray
    scores: np.ndarray
    strategies: list[str]
    sources: list[list[str]] | None = None


def recommend_flat(
    bundle: ModelBundle,
    flat: Sequence[str],
    lengths: Sequence[int],
    k: int,
    params: RankParams | None = None,
    *,
    encode: Callable[[np.ndarray, np.ndarray], Sequence[bytes | None]] | None = None,
    **options: Any,
) -> list[Ranked]:
    """``recommend_batch`` for sessions given back to back: session r is the next
    ``lengths[r]`` items of ``flat``. The whole batch goes through C loops and one
    compiled kernel; Python touches each recommended item once. ``options``: those of
    ``rank_rows``; ``encode``: serialises the batch's rankings at once (given ``Rows``'
    item rows and scores), one ``Ranked.encoded`` per session."""
    rows = rank_rows(bundle, flat, lengths, k, params, **options)
    return ranked(bundle, rows, encode(rows.items, rows.scores) if encode is not None else None)


def ranked(
    bundle: ModelBundle, rows: Rows, encoded: Sequence[bytes | None] | None = None
) -> list[Ranked]:
    """Each row of ``rows`` as item ids and scores (Python objects), with its items as
    ``encoded`` gives them."""
    if not rows.items.shape[1] or not bundle.n_items:
        return [Ranked([], [], s, None if rows.sources is None else []) for s in rows.strategies]
    none = itertools.repeat(None)
    results = list(
        map(
            Ranked,
            bundle.ids(rows.items),
            rows.scores.tolist(),
            rows.strategies,
            rows.sources or none,
            encoded or none,
        )
    )
    # Rows with fewer than k items end at their first -1.
    for r in np.flatnonzero(rows.items[:, -1] < 0).tolist():
        n = rows.items[r].tolist().index(-1)
        result = results[r]
        result.ids, result.scores = result.ids[:n], result.scores[:n]
    return results


def rank_rows(
    bundle: ModelBundle,
    flat: Sequence[str],
    lengths: Sequence[int],
    k: int,
    params: RankParams | None = None,
    *,
    banned: np.ndarray | None = None,
    exclude: str = "seen",
    threads: int = 1,
    sources: bool = False,
    decimals: int | None = None,
) -> Rows:
    """``recommend_flat``'s rankings as arrays (item rows, no ids).

    ``banned``: a boolean per model item (``models.rules.banned_mask``), never returned;
    ``exclude``: which of the session's own items are left out, ``seen`` (all),
    ``current`` (the newest click) or ``none``; ``threads``: how many threads share a large
    batch (see ``rank_codes``); ``sources``: give each item's source (``Ranked.sources``:
    the top item's rule, ``cluster`` or ``popular`` for the items filling up a list);
    ``decimals``: scores rounded to as many (in one pass over the batch)."""
    if k <= 0 or not len(lengths):
        empty = np.empty((len(lengths), max(k, 0)))
        listed = [[] for _ in lengths] if sources else None
        return Rows(empty.astype(np.int64), empty, ["popular"] * len(lengths), listed)
    params = params or RankParams.of(bundle)
    codes, ptr = encode_flat(bundle, flat, lengths)
    items, scores, known, strategies, item_sources = rank_codes(
        bundle, codes, ptr, k, params, banned, exclude, threads=threads, sources=sources
    )
    if decimals is not None:
        scores = scores.round(decimals)
    # Rows with fewer than k candidates are filled up here.
    for r in np.flatnonzero(items[:, -1] < 0).tolist():
        row_items = items[r].tolist()
        n = row_items.index(-1)
        if not n:
            strategies[r] = "cluster" if known[r] else "popular"
        row = codes[ptr[r] : ptr[r + 1]].tolist()
        session = [c for c in row if c >= 0]
        skip = set(row_items[:n])
        if exclude == "seen":
            skip.update(session)
        elif exclude == "current" and row and row[-1] >= 0:
            skip.add(row[-1])
        # Padding ranks below every real candidate: 0, or the last score when a linear
        # ranker's scores went negative.
        pad = min(0.0, float(scores[r, n - 1])) if n else 0.0
        fill = _fill(bundle, session, skip, k - n, banned)
        items[r, n : n + len(fill)] = fill
        scores[r, n : n + len(fill)] = pad
        if item_sources is not None:
            item_sources[r].extend(_fill_sources(bundle, session, fill))
    return Rows(items, scores, strategies, item_sources)


def _fill_sources(bundle: ModelBundle, known: list[int], fill: list[int]) -> list[str]:
    """The source of each item ``_fill`` gave: ``cluster`` for the newest item's cluster
    (filled first, so any item of it came from there), else ``popular``."""
    if not known:
        return ["popular"] * len(fill)
    clusters = np.asarray(bundle.clusters)
    own = clusters[known[-1]]
    return ["cluster" if c == own else "popular" for c in clusters[fill].tolist()]


# Below this many sessions a thread costs more than it saves.
MIN_ROWS_PER_THREAD = 64
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(size: int) -> ThreadPoolExecutor:
    """A pool of ``size`` threads, made once per size and process (a forked child has
    none of its parent's threads)."""
    key = (os.getpid(), size)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(size, thread_name_prefix="streamrec-rank")
    return _POOLS[key]


class _Scratch(threading.local):
    """Per thread (kernels release the GIL): the kernel's item-sized scratch arrays."""

    def __init__(self) -> None:
        self.n = -1
        self.tag = 0


_SCRATCH = _Scratch()


def _scratch(n: int, rows: int) -> Scratch:
    """(stamp, excluded, votes, tag base) for a batch of ``rows`` sessions over ``n``
    items (``served_kernel``): fresh arrays when ``n`` changes, else the last ones."""
    s = _SCRATCH
    if s.n != n:
        s.n, s.tag = n, 0
        s.stamp = np.zeros(n, dtype=np.int64)
        s.excluded = np.zeros(n, dtype=np.int64)
        s.votes = np.zeros((n, 2), dtype=np.float64)
    base = s.tag
    s.tag += rows
    return Scratch(s.stamp, s.excluded, s.votes, base)


def rank_codes(
    bundle: ModelBundle,
    codes: np.ndarray,
    ptr: np.ndarray,
    k: int,
    params: RankParams,
    banned: np.ndarray | None = None,
    exclude: str = "seen",
    out_feats: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    threads: int = 1,
    sources: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[list[str]] | None]:
    """Best ``k`` candidates per session, as item rows and scores, how many of each
    session's items the model knows, the strategy (source) of each session's top item,
    and with ``sources`` each ranked item's source by the same rule (one list per
    session, as long as its real candidates; else None).

    Session r is ``codes[ptr[r]:ptr[r + 1]]``, item rows oldest first, -1 for items the
    model does not know. Rows are padded with item -1 / score -inf when a session has
    fewer than ``k`` candidates. ``out_feats`` ([rows, k, features of the table],
    float64), when given, receives the ranked items' features (to fit the ranker);
    ``weights`` and ``prior`` replace the ranker's and the stage-one blend's.

    With ``threads`` > 1 a batch of at least ``MIN_ROWS_PER_THREAD`` rows per thread is cut
    into that many slices ranked at once (the kernel releases the GIL; each thread has its
    own scratch): the same results, sooner when cores are free.
    """
    rows = ptr.size - 1
    if params.ranker not in RANKERS:
        raise ValueError(f"unknown ranker {params.ranker!r}; choose one of {', '.join(RANKERS)}")
    if banned is None or banned.shape[0] != bundle.n_items:
        banned = _no_ban(bundle.n_items)
    layout = features.LAYOUT
    blend, default_prior = _blends(layout)
    if weights is None:
        weights = bundle.ranker_weights if params.ranker == "linear" else blend
    context = max(1, params.context)
    config = RankConfig(
        params.recency_decay ** np.arange(context, dtype=np.float64),
        float(params.own_decay),
        int(params.k_sessions),
        int(params.sample_size),
        int(params.per_source),
        int(params.candidates),
        default_prior if prior is None else prior,
        weights,
        banned,
        _EXCLUDE_CODES[exclude],
        sources,
        int(params.rerank_top),
    )
    model = _served(bundle, layout)
    out = Out(
        np.empty((rows, k), dtype=np.int64),
        np.empty((rows, k), dtype=np.float64),
        out_feats if out_feats is not None else _NO_FEATS,
        np.empty(rows, dtype=np.int64),
        np.empty(rows, dtype=np.int64),
        np.empty((rows, k), dtype=np.int64) if sources else _NO_SOURCES,
    )

    def rank_slice(a: int, b: int) -> None:
        part = Out(
            out.items[a:b],
            out.scores[a:b],
            out.feats[a:b] if out.feats.shape[0] else out.feats,
            out.known[a:b],
            out.strategy[a:b],
            out.sources[a:b] if sources else out.sources,
        )
        batch = codes[ptr[a] : ptr[b]], ptr[a : b + 1] - ptr[a]
        served_kernel(model, config, *batch, part, _scratch(bundle.n_items, b - a))

    slices = max(1, min(threads, rows // MIN_ROWS_PER_THREAD))
    bounds = [rows * t // slices for t in range(slices + 1)]
    others = [_pool(slices - 1).submit(rank_slice, a, b) for a, b in itertools.pairwise(bounds[1:])]
    rank_slice(bounds[0], bounds[1])
    for done in others:
        done.result()
    names = layout.strategies
    strategies = [names[s] for s in out.strategy.tolist()]
    if not sources:
        return out.items, out.scores, out.known, strategies, None
    listed = [[names[s] for s in row if s >= 0] for row in out.sources.tolist()]
    return out.items, out.scores, out.known, strategies, listed


def _served(bundle: ModelBundle, layout: features.Layout) -> ServedModel:
    """The kernel's view of ``bundle``, made once per bundle (and table)."""
    made = bundle.derived.get("served")
    if made is None or made[0] is not layout:
        made = bundle.derived["served"] = (layout, served_model(bundle, layout))
    return made[1]


_BLENDS: dict[int, tuple[features.Layout, np.ndarray, np.ndarray]] = {}


def _blends(layout: features.Layout) -> tuple[np.ndarray, np.ndarray]:
    """The table's fixed blend and stage-one prior, made once per table."""
    made = _BLENDS.get(id(layout))
    if made is None or made[0] is not layout:
        made = _BLENDS[id(layout)] = (layout, layout.blend_weights(), layout.prior_weights())
    return made[1], made[2]


_NO_FEATS = np.zeros((0, 0, 0), dtype=np.float64)
_NO_SOURCES = np.zeros((0, 0), dtype=np.int64)
_EXCLUDE_CODES = {"none": 0, "current": 1, "seen": 2}
_NO_BAN: dict[int, np.ndarray] = {}


def _no_ban(n: int) -> np.ndarray:
    mask = _NO_BAN.get(n)
    if mask is None:
        mask = _NO_BAN[n] = np.zeros(n, dtype=np.bool_)
    return mask


def _fill(
    bundle: ModelBundle,
    known: list[int],
    exclude: set[int],
    count: int,
    banned: np.ndarray | None = None,
) -> list[int]:
    """Pad with the newest item's cluster (most popular first), then globally popular
    items, none of ``exclude`` or ``banned``."""
    pool: list[int] = []
    if known:
        popular, clusters = np.asarray(bundle.popularity), np.asarray(bundle.clusters)
        pool = popular[clusters[popular] == clusters[known[-1]]].tolist()
    out: list[int] = []
    for i in itertools.chain(pool, _chunks(bundle.popularity)):
        if i not in exclude and (banned is None or not banned[i]):
            exclude.add(i)
            out.append(i)
            if len(out) == count:
                break
    return out


def _chunks(rows: np.ndarray, size: int = 256):
    """``rows.tolist()`` a chunk at a time: a caller that stops early boxes few ints."""
    for start in range(0, len(rows), size):
        yield from rows[start : start + size].tolist()


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
    return list(zip(bundle.ids(best), cos[best].tolist(), strict=True))
