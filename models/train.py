"""Sessions -> Word2Vec item embeddings -> KMeans clusters -> neighbour lists, candidate
sources (``models.sources``), item features (``models.features``) and a learned ranking
stage (``models.fit``) -> ModelBundle.

Everything the ranker needs per request is computed here, once: each item's best
``n_neighbours`` candidates with a blended score

    score(i, j) = w_cos * max(cos(i, j), 0) ** cos_power      (item2vec similarity)
                + w_cooc * P(j follows i)                      (co-occurrence counts)
                + w_cluster * [cluster(i) == cluster(j)]       (KMeans cluster boost)

so serving is a gather and a weighted sum (see ``models.kernel``). Candidates j for
item i are the items of i's own cluster closest by cosine plus every item that ever
followed i: comparing all n^2 pairs would take minutes at 40,000 items, while clusters
cut the work about n_clusters-fold and keep the tutorial's "similar items from the same
cluster" at the core.

The ranking stage is fitted on next-click cases of the training log itself: a model is
built on the older ``1 - fit_share`` of the sessions, cases are sampled from the newest
``fit_share`` and ranked by it, and the linear ranker learns which candidate was clicked;
the served model, built on every session, gets those weights. It never sees a validation
or test click. The two models share one Word2Vec run (``_word2vec``): it first trains on
the older sessions alone (the fit-time model's vectors: they must not have seen the
cases' next clicks, or the ranker learns to trust the embedding features too much and
scores lower on valid), then continues over every session for a quarter as many passes
(the served model's vectors). One run instead of two matters: Word2Vec's passes are
the costliest part of embedding.

A small log (under ``SMALL_LOG_CLICKS``) is embedded without Word2Vec (``_ppmi_vectors``):
a truncated SVD of its items' positive pointwise mutual information within the same
window, the matrix factorisation that skip-gram with negative sampling approximates
(Levy & Goldberg, 2014). On tenant-sized logs it ranks the newest sessions at least as well
as Word2Vec's passes, for a fraction of their cost.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from gensim.models import Word2Vec
from gensim.models.callbacks import CallbackAny2Vec
from scipy.sparse.linalg import svds
from sklearn.cluster import KMeans

from models import features
from models import trees as boosted
from models.bundle import ModelBundle
from models.datasets import Session, split_last_days
from models.errors import DataFormatError, InvalidSettingError
from models.evaluate import evaluate
from models.fit import MAX_ITER, fit_ranker
from models.ranking import RANKERS, RankParams, encode_sessions, rank_codes, recommend_batch
from models.seen import session_hashes
from models.sources import build_sources, category_lists

log = logging.getLogger(f"streamrec.{__name__}")

Progress = Callable[[str, float], None]
_BASE_SHARE = 0.1  # about the part of the ranker stage spent building the older model
# Passes over every session, as a share of ``epochs``, that continue the embeddings of
# the ranker's fit-time model into the served model's (``_word2vec``).
WARM_SHARE = 0.25
# Logs under this many clicks (a small tenant's) are embedded from their co-occurrences
# instead of by Word2Vec (``embedding_of``; with Word2Vec set by hand, half its passes at
# twice the learning rate: ``word2vec_schedule``), fit the ranker on half the candidates
# in half the iterations (``fit_candidates``, ``fit_iterations``) and cluster from one
# KMeans start (``kmeans_starts``): Word2Vec and the fit were most of such a tenant's
# retraining.
SMALL_LOG_CLICKS = 30_000
# How items are embedded: "auto" is "ppmi" for a small log, else "word2vec".
EMBEDDINGS = ("auto", "word2vec", "ppmi")
# Fewer older sessions or newer next-click cases than these: no ranker fit (fixed blend).
MIN_FIT_SESSIONS = 10
MIN_FIT_CASES = 50


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters, stored as given in the manifest.

    Defaults come from the grid searches in benchmarks/quality.md (e-shop last-30-days
    and YOOCHOOSE-100k splits). Co-occurrence carries most of the signal; the embedding
    term is small but lifts HR@20 on YOOCHOOSE.
    """

    # Word2Vec (skip-gram with negative sampling, as item2vec). Window 5 and 10
    # dimensions are the tutorial's. epochs=None picks by corpus size (``word2vec_schedule``).
    # ``embedding`` (one of EMBEDDINGS) may replace Word2Vec by the SVD of the items' PPMI,
    # which reads vector_size, window, ns_exponent, min_count and seed.
    embedding: str = "auto"
    vector_size: int = 10
    window: int = 5
    epochs: int | None = None
    negative: int = 5
    ns_exponent: float = 0.75
    sample: float = 1e-3
    alpha: float = 0.025
    min_count: int = 1
    # KMeans over the L2-normalised vectors.
    n_clusters: int = 10
    # Neighbour lists: see the module docstring for the blended score.
    n_neighbours: int = 50
    w_cos: float = 0.03
    cos_power: float = 4.0
    w_cooc: float = 1.0
    cooc_window: int = 5
    w_cluster: float = 0.005
    # Serving-time ranking (copied into the manifest's "ranking" section).
    context: int = 3  # 3 ranks as well as 5 (recency_decay makes older clicks count little)
    recency_decay: float = 0.3
    # Candidate sources and the ranking stage (models.kernel, models.fit).
    source_top: int = 100  # transitions / sequential rules kept per item
    rule_steps: int = 10
    k_sessions: int = 100
    # 100 ranks as well as 200 on valid (and 200 as well as 500), and costs less (quality.md)
    sample_size: int = 100
    per_source: int = 30
    index_sessions: int = 500_000  # most recent training sessions in the session-kNN index
    own_decay: float = 0.6
    ranker: str = "linear"  # "linear" (fitted) or "blend" (the table's fixed blend)
    fit_share: float = 0.2
    fit_cases: int = 10_000
    # Kept by the fixed blend for the ranker to order: 200 when serving (chosen on valid:
    # better on e-shop, whose 217 items all become candidates, equal on tmall and
    # yoochoose), 100 per case when fitting (a ranker fitted on 100 ranks 200 as well
    # on valid, at half the fit's time and memory; a small log's half: ``fit_candidates``).
    candidates: int = 200
    fit_candidates: int = 100
    l2: float = 1e-3
    # Boosted trees over the linear ranker's best ``rerank_top`` (``models.trees``; 0: none),
    # fitted on the ranker's fit cases plus prefixes of sessions the fit-time model was
    # trained on, ``tree_seen_share`` of the trees' cases (the sessions serving meets
    # verbatim). Logs under SMALL_LOG_CLICKS fit none.
    # (Chosen on valid and on its sessions seen verbatim in training: benchmarks/quality.md.)
    rerank_top: int = 50
    tree_count: int = 20
    tree_depth: int = 4
    tree_rate: float = 0.25
    tree_seen_share: float = 0.03
    seed: int = 42
    # One worker makes gensim deterministic for a fixed seed; more trade that for speed.
    workers: int = 1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def rank_params(self) -> RankParams:
        return RankParams(
            context=self.context,
            recency_decay=self.recency_decay,
            own_decay=self.own_decay,
            k_sessions=self.k_sessions,
            sample_size=self.sample_size,
            per_source=self.per_source,
            candidates=self.candidates,
            ranker=self.ranker,
            rerank_top=self.rerank_top,
        )


def train_model(
    sessions: Sequence[Sequence[str]],
    params: TrainParams | None = None,
    progress: Progress | None = None,
    categories: Mapping[str, str] | None = None,
) -> ModelBundle:
    """Train a bundle (version "unregistered"; the registry names it). ``categories``
    (item -> category, where known) feed the ranker's category features."""
    params = params or TrainParams()
    if params.ranker not in RANKERS:
        choices = ", ".join(RANKERS)
        raise InvalidSettingError(f"unknown ranker {params.ranker!r}; choose one of {choices}")
    if params.embedding not in EMBEDDINGS:
        choices = ", ".join(EMBEDDINGS)
        raise InvalidSettingError(
            f"unknown embedding {params.embedding!r}; choose one of {choices}"
        )
    report = progress or (lambda stage, fraction: None)
    sessions = [list(s) for s in sessions if len(s) >= 1]
    if not sessions:
        raise DataFormatError("no sessions to train on (are all sessions a single click?)")
    started = time.perf_counter()
    # The ranker is fitted on a model of the older sessions (module docstring); with too
    # few of them there is no fit, and Word2Vec trains on every session from the start.
    cut = int(len(sessions) * (1 - params.fit_share)) if params.ranker == "linear" else 0
    n_cases = sum(len(s) - 1 for s in sessions[cut:])
    fits = params.ranker == "linear" and cut >= MIN_FIT_SESSIONS and n_cases >= MIN_FIT_CASES
    embedded, older = _embed(sessions, cut if fits else 0, params, report)
    categories = categories or {}
    bundle = _build(sessions, embedded, params, report, categories)
    ranker: dict[str, Any] = {"kind": params.ranker}
    trees: dict[str, Any] | None = None
    if params.ranker == "linear":
        report("ranker", 0.0)
        t = time.perf_counter()
        if fits and older is not None:
            weights, info, trees = _learn_ranker(
                sessions, cut, older, params, categories, lambda f: report("ranker", f)
            )
        else:
            weights = features.LAYOUT.blend_weights()
            info = {"cases": 0, "reason": "too few sessions to fit"}
        ranker.update(weights=weights.tolist(), fit=info, fit_s=time.perf_counter() - t)
        report("ranker", 1.0)
    manifest = bundle.manifest
    manifest["ranker"] = {"features": list(features.LAYOUT.names), **ranker}
    if trees is not None and len(trees["arrays"]["tree_leaf"]):
        bundle.arrays.update(trees.pop("arrays"))
        manifest["trees"] = {"features": list(features.LAYOUT.names), **trees}
    else:
        manifest["ranking"]["rerank_top"] = 0
    manifest["timings"]["total_s"] = time.perf_counter() - started
    return replace(bundle, session_hashes=session_hashes(sessions))


def _learn_ranker(
    sessions: list[list[str]],
    cut: int,
    embedded: _Embedded,
    params: TrainParams,
    categories: Mapping[str, str],
    progress: Callable[[float], None],
) -> tuple[np.ndarray, dict, dict[str, Any] | None]:
    """Weights of the linear ranking stage (module docstring) from a model of
    ``sessions[:cut]`` (embedded as ``embedded``), fitted on next-click cases of the
    newer sessions, and the boosted trees over its best (``TrainParams.rerank_top``; None
    for a small log). ``progress`` hears the fraction done."""
    older, newer = sessions[:cut], sessions[cut:]
    cases = [(s[:i], s[i]) for s in newer for i in range(1, len(s))]
    rng = np.random.default_rng(params.seed)
    if len(cases) > params.fit_cases:
        keep = np.sort(rng.choice(len(cases), params.fit_cases, replace=False))
        cases = [cases[i] for i in keep.tolist()]
    base = _build(older, embedded, params, lambda stage, fraction: None, categories)
    progress(_BASE_SHARE)
    codes, ptr = encode_sessions(base, [prefix for prefix, _ in cases])
    targets = base.rows([t for _, t in cases])
    targets[targets < 0] = -2  # never matches
    n_clicks = sum(map(len, sessions))
    k = fit_candidates(n_clicks, params)  # each case's candidates, as a list
    iterations = fit_iterations(n_clicks)
    rank_params = replace(params.rank_params(), candidates=k)

    ranked: list[tuple[np.ndarray, np.ndarray]] = []

    def candidates_of(codes: np.ndarray, ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats = np.zeros((len(ptr) - 1, k, features.LAYOUT.n_features), dtype=np.float64)
        items, *_ = rank_codes(
            base,
            codes,
            ptr,
            k,
            rank_params,
            exclude="none",
            out_feats=feats,
            weights=features.LAYOUT.blend_weights(),
        )
        return items, feats

    def rank_features() -> tuple[np.ndarray, np.ndarray]:
        ranked.append(candidates_of(codes, ptr))  # kept for the trees
        return ranked[-1]

    weights, info = fit_ranker(
        rank_features,
        targets,
        l2=params.l2,
        max_iter=iterations,
        progress=lambda f: progress(_BASE_SHARE + (1 - _BASE_SHARE) * f),
    )
    sizes = {"sampled": len(cases), "candidates": k, "max_iter": iterations}
    info = {**info, "sessions": len(older), **sizes}
    if n_clicks < SMALL_LOG_CLICKS or params.rerank_top <= 1 or not ranked:
        return weights, info, None
    t = time.perf_counter()
    items, feats = ranked.pop()
    names = boosted.COLUMNS
    rows, labels = boosted.top_cases(feats, items, targets, weights, params.rerank_top, names)
    del items, feats
    # Prefixes of sessions the fit-time model was trained on, as many as make
    # ``tree_seen_share`` of the trees' cases.
    # Case p is click i + 1 of an older session after its first i, counted session by
    # session: only the picked cases are made.
    share = min(max(params.tree_seen_share, 0.0), 0.9)
    lengths = np.array([max(0, len(s) - 1) for s in older], dtype=np.int64)
    ends = np.cumsum(lengths)
    n_seen = min(int(ends[-1]) if ends.size else 0, round(len(cases) * share / (1.0 - share)))
    if n_seen:
        pick = np.sort(rng.choice(int(ends[-1]), n_seen, replace=False))
        which = np.searchsorted(ends, pick, side="right")
        at = pick - (ends[which] - lengths[which]) + 1
        picked = zip(which.tolist(), at.tolist(), strict=True)
        seen = [(older[w][:i], older[w][i]) for w, i in picked]
        seen_codes, seen_ptr = encode_sessions(base, [prefix for prefix, _ in seen])
        seen_targets = base.rows([target for _, target in seen])
        seen_targets[seen_targets < 0] = -2  # never matches
        seen_items, seen_feats = candidates_of(seen_codes, seen_ptr)
        more, more_labels = boosted.top_cases(
            seen_feats, seen_items, seen_targets, weights, params.rerank_top, names
        )
        rows = np.concatenate([rows, more])
        labels = np.concatenate([labels, more_labels])
    arrays, fitted = boosted.fit_trees(
        rows,
        labels,
        n_trees=params.tree_count,
        depth=params.tree_depth,
        learning_rate=params.tree_rate,
        seed=params.seed,
    )
    trees = {
        "arrays": arrays,
        "columns": list(names),
        "fit": {**fitted, "seen_cases": n_seen},
        "top": params.rerank_top,
        "depth": params.tree_depth,
        "trees_s": time.perf_counter() - t,
    }
    return weights, info, trees


def fit_iterations(n_clicks: int) -> int | None:
    """L-BFGS iterations of the ranker's fit at most, for a log of ``n_clicks``: 30 for a
    small log, whose fit starts from the fixed blend and ranks its tenants' own hold-out
    as well after 30 (BENCHMARKS.md); a large log's is fitted to the optimum (None),
    or its rankings would follow the fit's rounding (``models.fit``)."""
    return MAX_ITER // 2 if n_clicks < SMALL_LOG_CLICKS else None


def fit_candidates(n_clicks: int, params: TrainParams) -> int:
    """Candidates per case the ranker is fitted on, for a log of ``n_clicks``: a small
    log's half of ``fit_candidates``. The fit's cost is per case and candidate; a small
    log's ranker ranks its newest sessions as well from half, a large log's does not."""
    if n_clicks < SMALL_LOG_CLICKS:
        return max(1, params.fit_candidates // 2)
    return params.fit_candidates


@dataclass(frozen=True)
class _Embedded:
    """Word2Vec items (its order: most clicked first), vectors and KMeans clusters."""

    items: list[str]
    vectors: np.ndarray
    clusters: np.ndarray
    centroids: np.ndarray
    epochs: dict[str, int]  # Word2Vec passes: over the older sessions, then over all
    alpha: float  # Word2Vec's starting learning rate (``word2vec_schedule``)
    timings: dict[str, float]
    method: str = "word2vec"  # or "ppmi" (``embedding_of``)


def _embed(
    sessions: list[list[str]], cut: int, params: TrainParams, report: Progress
) -> tuple[_Embedded, _Embedded | None]:
    """The items of ``sessions`` embedded and clustered, and (``cut`` > 0) the items of
    ``sessions[:cut]`` as the ranker's fit-time model sees them (``_word2vec``)."""
    n_clicks = sum(map(len, sessions))
    method = embedding_of(n_clicks, params)
    starts = kmeans_starts(n_clicks)
    stage = "word2vec" if method == "word2vec" else "embedding"
    report(stage, 0.0)
    t = time.perf_counter()
    if method == "word2vec":
        w2v, older_vectors, passes, alpha = _word2vec(sessions, cut, params, report)
        items, raw = list(w2v.wv.index_to_key), w2v.wv.vectors
    else:
        items, raw, older_vectors = _ppmi_embedding(sessions, cut, params)
        passes, alpha = {"older": 0, "all": 0}, 0.0
        report(stage, 1.0)
    vectors = _l2_normalise(raw.astype(np.float32))
    timings = {f"{stage}_s": time.perf_counter() - t}
    report("kmeans", 0.0)
    t = time.perf_counter()
    clusters, centroids = _kmeans(vectors, params, starts)
    older = None
    if older_vectors is not None:
        present = set(itertools.chain.from_iterable(sessions[:cut]))
        keep = np.array([i for i, item in enumerate(items) if item in present], dtype=np.int64)
        if len(keep):
            sub = _l2_normalise(older_vectors[keep])
            older = _Embedded(
                [items[i] for i in keep.tolist()],
                sub,
                *_kmeans(sub, params, starts),
                {},
                alpha,
                {},
                method,
            )
    timings["kmeans_s"] = time.perf_counter() - t
    report("kmeans", 1.0)
    embedded = _Embedded(items, vectors, clusters, centroids, passes, alpha, timings, method)
    return embedded, older


def embedding_of(n_clicks: int, params: TrainParams) -> str:
    """How a log of ``n_clicks`` is embedded: ``params.embedding``, where "auto" is "ppmi"
    under ``SMALL_LOG_CLICKS`` (module docstring) and "word2vec" from there on."""
    if params.embedding != "auto":
        return params.embedding
    return "ppmi" if n_clicks < SMALL_LOG_CLICKS else "word2vec"


def _ppmi_embedding(
    sessions: list[list[str]], cut: int, params: TrainParams
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(items, most clicked first; their vectors; with 0 < ``cut`` < len(sessions) the
    vectors ``sessions[:cut]`` alone give them, the ranker's fit-time model's)."""
    flat = list(itertools.chain.from_iterable(sessions))
    names, first, counts = np.unique(
        np.asarray(flat, dtype=str), return_index=True, return_counts=True
    )
    keep = counts >= params.min_count
    if not keep.any():
        raise DataFormatError(f"no item occurs at least min_count={params.min_count} times")
    # Most clicked first, ties in order of first click (as Word2Vec's vocabulary).
    order = np.lexsort((first[keep], -counts[keep]))
    items = names[keep][order].tolist()
    index = {item: i for i, item in enumerate(items)}
    vectors = _ppmi_vectors(sessions, index, params)
    older = _ppmi_vectors(sessions[:cut], index, params) if 0 < cut < len(sessions) else None
    return items, vectors, older


def _build(
    sessions: list[list[str]],
    embedded: _Embedded,
    params: TrainParams,
    report: Progress,
    categories: Mapping[str, str],
) -> ModelBundle:
    """Every array of the bundle from ``sessions`` and their embedded items (others are
    left out); the ranker weights are set apart."""
    started = time.perf_counter()
    timings = dict(embedded.timings)
    items = np.asarray(embedded.items, dtype=str)
    n = len(items)
    vectors, clusters, centroids = embedded.vectors, embedded.clusters, embedded.centroids

    report("neighbours", 0.0)
    t = time.perf_counter()
    index = {item: i for i, item in enumerate(embedded.items)}
    codes = [np.fromiter((index[x] for x in s if x in index), dtype=np.int64) for s in sessions]
    follows = _follow_probabilities(sessions, index, params.cooc_window)
    # The served kernel reads no more than ``per_source`` entries of any list: longer
    # lists would be pages every loaded model maps and never uses.
    cap = params.per_source
    width = min(params.n_neighbours, cap)
    neighbours, scores = _neighbour_lists(vectors, clusters, follows, width, params, report)
    timings["neighbours_s"] = time.perf_counter() - t

    report("sources", 0.0)
    t = time.perf_counter()
    recent = sessions[-params.index_sessions :] if params.index_sessions > 0 else sessions
    sources = build_sources(
        codes,
        n,
        top=min(params.source_top, cap),
        rule_steps=params.rule_steps,
        sample_size=params.sample_size,
        index_from=len(sessions) - len(recent),
    )
    counts = np.bincount(np.concatenate(codes), minlength=n) if codes else np.zeros(n, np.int64)

    # Category codes in order of first appearance among the items (-1: not known).
    codes_of: dict[str, int] = {}
    item_category = np.fromiter(
        (
            codes_of.setdefault(categories[x], len(codes_of)) if x in categories else -1
            for x in embedded.items
        ),
        dtype=np.int32,
        count=n,
    )
    # Stable sort: equally popular items keep Word2Vec's (frequency) order.
    popularity = np.argsort(-counts, kind="stable").astype(np.int32)
    sources.update(category_lists(item_category, popularity, top=cap or n))
    data = features.TrainData(codes, counts, item_category)
    for feature in features.LAYOUT.item_features:
        assert feature.values is not None  # layout() checks it
        sources[feature.array] = np.asarray(feature.values(data), dtype=np.float32)
    timings["sources_s"] = time.perf_counter() - t
    report("sources", 1.0)
    manifest = {
        "params": asdict(params),
        "embedding": embedded.method,
        # Passes over the older sessions, then over every session (``_word2vec``).
        "word2vec_epochs": embedded.epochs,
        "word2vec_alpha": embedded.alpha,
        "ranking": asdict(params.rank_params()),
        "counts": {
            "items": n,
            "sessions": len(sessions),
            "clicks": int(sum(map(len, sessions))),
            "categories": len(codes_of),
        },
        "timings": {**timings, "build_s": time.perf_counter() - started},
    }
    return ModelBundle(
        version="unregistered",
        items=items,
        vectors=vectors,
        clusters=clusters,
        centroids=centroids,
        neighbours=neighbours,
        neighbour_scores=scores,
        popularity=popularity,
        item_category=item_category,
        arrays=sources,
        manifest=manifest,
    )


class _EpochProgress(CallbackAny2Vec):  # type: ignore[misc]
    def __init__(self, epochs: int, report: Progress) -> None:
        self.epochs, self.done, self.report = epochs, 0, report

    def on_epoch_end(self, model: Word2Vec) -> None:
        self.done += 1
        self.report("word2vec", self.done / self.epochs)


def auto_epochs(n_clicks: int) -> int:
    """Passes over the clicks: 20 for small logs (they need them: HR@20 on YOOCHOOSE-100k
    is higher than with 5), falling to 5 at ~600k clicks, where each item is already seen
    often enough and 20 passes would cost minutes."""
    return int(np.clip(np.ceil(3_000_000 / max(1, n_clicks)), 5, 20))


def word2vec_schedule(n_clicks: int, params: TrainParams) -> tuple[int, float]:
    """(passes over the older sessions, starting learning rate) for a log of ``n_clicks``.

    A small log takes half of ``auto_epochs``'s passes at twice the rate: as much
    training in total, at half the cost, and on tenant-sized slices of real logs it ranks
    their newest sessions as well (fewer passes still, at a higher rate, ranked worse).
    Passes set by hand are kept."""
    if params.epochs:
        return params.epochs, params.alpha
    epochs = auto_epochs(n_clicks)
    if n_clicks < SMALL_LOG_CLICKS:
        return max(1, epochs // 2), 2 * params.alpha
    return epochs, params.alpha


def _word2vec(
    sessions: list[list[str]], cut: int, params: TrainParams, report: Progress
) -> tuple[Word2Vec, np.ndarray | None, dict[str, int], float]:
    """Word2Vec over ``sessions``; with ``cut`` > 0, first over ``sessions[:cut]`` alone,
    whose vectors are returned as well (the ranker's fit-time model: they never saw the
    newer sessions its cases come from), then ``WARM_SHARE`` as many passes over every
    session continue from them: ~0.6 of the passes of two runs from scratch. The
    vocabulary (and so the negative sampling table) is every session's."""
    epochs, alpha = word2vec_schedule(sum(map(len, sessions)), params)
    model = Word2Vec(
        vector_size=params.vector_size,
        window=params.window,
        min_count=params.min_count,
        sg=1,  # skip-gram: the item2vec setting, better than CBOW for rare items
        negative=params.negative,
        ns_exponent=params.ns_exponent,
        sample=params.sample,
        alpha=alpha,
        seed=params.seed,
        workers=params.workers,
    )
    model.build_vocab(sessions)
    if len(model.wv) == 0:
        raise DataFormatError(f"no item occurs at least min_count={params.min_count} times")
    older_vectors = None
    if 0 < cut < len(sessions):
        warm = max(1, round(epochs * WARM_SHARE))
        callbacks = [_EpochProgress(epochs + warm, report)]
        model.train(sessions[:cut], total_examples=cut, epochs=epochs, callbacks=callbacks)
        older_vectors = model.wv.vectors.copy()
        # gensim warns that the learning rate goes up again: that is the point here.
        quiet = logging.getLogger("gensim.models.word2vec")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            model.train(sessions, total_examples=len(sessions), epochs=warm, callbacks=callbacks)
        finally:
            quiet.setLevel(level)
        return model, older_vectors, {"older": epochs, "all": warm}, alpha
    model.train(
        sessions,
        total_examples=model.corpus_count,
        epochs=epochs,
        callbacks=[_EpochProgress(epochs, report)],
    )
    return model, None, {"older": 0, "all": epochs}, alpha


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def kmeans_starts(n_clicks: int) -> int:
    """KMeans starts (the best one kept) for a log of ``n_clicks``: one for a small log,
    whose clusters feed only a small boost and the fallback lists; on the small tenants'
    own hold-out one start ranks as well as three (BENCHMARKS.md)."""
    return 1 if n_clicks < SMALL_LOG_CLICKS else 3


def _kmeans(vectors: np.ndarray, params: TrainParams, starts: int) -> tuple[np.ndarray, np.ndarray]:
    n_clusters = max(1, min(params.n_clusters, len(vectors)))
    km = KMeans(n_clusters=n_clusters, n_init=starts, random_state=params.seed)
    labels = km.fit_predict(vectors)
    return labels.astype(np.int32), km.cluster_centers_.astype(np.float32)


def _follow_probabilities(
    sessions: list[list[str]], index: dict[str, int], window: int
) -> sp.csr_matrix:
    """P(j | i): how often j follows i within ``window`` clicks (1/distance weighted).

    Forward-only because the task is predicting the *next* click; nearer clicks say more.
    """
    n = len(index)
    src, dst, gap = _pairs_within(sessions, index, window)
    counts = sp.csr_matrix((1.0 / gap, (src, dst)), shape=(n, n))
    counts.sum_duplicates()
    row_sums = np.asarray(counts.sum(axis=1)).ravel()
    inverse = sp.diags(1.0 / np.maximum(row_sums, 1e-12))
    return (inverse @ counts).tocsr().astype(np.float32)


def _pairs_within(
    sessions: list[list[str]], index: dict[str, int], window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) for every click of item j that follows one of item i by at most
    ``window`` clicks of the same session (i != j; items not in ``index`` left out)."""
    codes = np.fromiter(
        (index.get(item, -1) for s in sessions for item in s),
        dtype=np.int64,
        count=sum(map(len, sessions)),
    )
    session_of = np.repeat(np.arange(len(sessions)), [len(s) for s in sessions])
    rows, cols, gaps = [], [], []
    for gap in range(1, max(1, window) + 1):
        src, dst = codes[:-gap], codes[gap:]
        ok = (session_of[:-gap] == session_of[gap:]) & (src >= 0) & (dst >= 0) & (src != dst)
        rows.append(src[ok])
        cols.append(dst[ok])
        gaps.append(np.full(int(ok.sum()), float(gap)))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(gaps)


def _ppmi_vectors(
    sessions: list[list[str]], index: dict[str, int], params: TrainParams
) -> np.ndarray:
    """Item vectors (rows of ``index``): the truncated SVD, U * sqrt(S), of the items'
    positive pointwise mutual information within ``window`` clicks either way, the
    context counts smoothed by ``ns_exponent`` as Word2Vec's negative sampling is."""
    n, dim = len(index), params.vector_size
    src, dst, _ = _pairs_within(sessions, index, params.window)
    rows, cols = np.concatenate((src, dst)), np.concatenate((dst, src))
    pairs = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr().tocoo()
    total = pairs.data.sum()
    seen = np.bincount(pairs.row, weights=pairs.data, minlength=n)
    context = seen**params.ns_exponent
    context *= total / max(context.sum(), 1e-12)
    pmi = np.log(pairs.data * total / (seen[pairs.row] * context[pairs.col]))
    positive = pmi > 0
    ppmi = sp.csr_matrix((pmi[positive], (pairs.row[positive], pairs.col[positive])), shape=(n, n))
    rng = np.random.default_rng(params.seed)
    start = rng.standard_normal(n)
    vectors = np.zeros((n, dim))
    k = min(dim, n - 2)  # ARPACK finds fewer singular vectors than the matrix's side
    if k >= 1 and ppmi.nnz:
        u, singular, _ = svds(ppmi, k=k, v0=start, random_state=params.seed)
        vectors[:, :k] = u * np.sqrt(singular)
    # An item in no pair would be the zero vector (all in one cluster, cosine 0 with
    # every item): a tiny seeded random one places it as Word2Vec's random start does.
    return vectors + 1e-3 * rng.standard_normal((n, dim))


def _neighbour_lists(
    vectors: np.ndarray,
    clusters: np.ndarray,
    follows: sp.csr_matrix,
    width: int,
    params: TrainParams,
    report: Progress,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``width`` items per item by the blended score (module docstring)."""
    n = len(vectors)
    m = max(0, min(width, n - 1))
    if m == 0:
        return np.zeros((n, 0), dtype=np.int32), np.zeros((n, 0), dtype=np.float32)
    # Candidate pairs: in-cluster cosine neighbours, plus all observed "j followed i" pairs.
    rows, cols = _cluster_cosine_pairs(vectors, clusters, m, report)
    follows = follows.tocoo()
    rows = np.concatenate((rows, follows.row.astype(np.int64)))
    cols = np.concatenate((cols, follows.col.astype(np.int64)))
    p_follow = np.concatenate((np.zeros(len(rows) - follows.nnz), follows.data.astype(np.float64)))
    keys, inverse = np.unique(rows * n + cols, return_inverse=True)
    p_follow = np.bincount(inverse.ravel(), weights=p_follow, minlength=len(keys))
    rows, cols = keys // n, keys % n
    cos = np.einsum("pd,pd->p", vectors[rows], vectors[cols], dtype=np.float64)
    score = (
        params.w_cos * np.clip(cos, 0.0, None) ** params.cos_power
        + params.w_cooc * p_follow
        + params.w_cluster * (clusters[rows] == clusters[cols])
    )
    # Best m per row: sort by (row, -score, item) and take each row's first m. The pairs
    # come out of np.unique sorted by (row, item), so a stable sort on two keys is enough.
    order = np.lexsort((-score, rows))
    rows, cols, score = rows[order], cols[order], score[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - starts[rows]
    take = rank < m
    neighbours = np.zeros((n, m), dtype=np.int32)
    scores = np.zeros((n, m), dtype=np.float32)
    neighbours[rows[take], rank[take]] = cols[take]
    scores[rows[take], rank[take]] = score[take]
    # A row can be short only when its cluster is tiny and it has few followers: pad it
    # with the globally nearest items at score 0, which rank below every real candidate.
    short = np.flatnonzero(np.bincount(rows[take], minlength=n) < m)
    for i in short.tolist():
        have = set(cols[take][rows[take] == i].tolist())
        extra = [
            j for j in np.argsort(-(vectors @ vectors[i])).tolist() if j != i and j not in have
        ]
        count = len(have)
        neighbours[i, count:] = extra[: m - count]
    report("neighbours", 1.0)
    return neighbours, scores


def _cluster_cosine_pairs(
    vectors: np.ndarray, clusters: np.ndarray, m: int, report: Progress, block: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) pairs: each item's ``m`` most cosine-similar items of its own cluster."""
    rows, cols = [], []
    n_clusters = int(clusters.max()) + 1
    for c in range(n_clusters):
        members = np.flatnonzero(clusters == c)
        keep = min(m, len(members) - 1)
        if keep <= 0:
            continue
        for lo in range(0, len(members), block):
            part = members[lo : lo + block]
            cos = vectors[part] @ vectors[members].T
            cos[np.arange(len(part)), np.arange(lo, lo + len(part))] = -np.inf  # not itself
            top = np.argpartition(-cos, keep - 1, axis=1)[:, :keep]
            rows.append(np.repeat(part, keep))
            cols.append(members[top].ravel())
        report("neighbours", 0.8 * (c + 1) / n_clusters)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


class StreamrecModel:
    """streamrec's model as an ``models.evaluate.Recommender``: train_model + recommend_batch."""

    def __init__(
        self, params: TrainParams | None = None, categories: Mapping[str, str] | None = None
    ) -> None:
        self.params = params or TrainParams()
        self.categories = categories

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.bundle = train_model(sessions, self.params, categories=self.categories)

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        # The literature protocol: session items allowed; the harness applies serving rules.
        return [r.ids for r in recommend_batch(self.bundle, prefixes, k, exclude="none")]


def holdout_metrics(
    sessions: Sequence[Session],
    days: float,
    params: TrainParams,
    k: int = 20,
    categories: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Offline metrics for a model trained with ``params``: fit on all but the last ``days``
    days, score next-item prediction on those days (what ``streamrec evaluate`` does)."""
    train, test = split_last_days(sessions, days)
    [(_, m)] = evaluate(
        {"streamrec": lambda: StreamrecModel(params, categories)},
        [s.items for s in train],
        [s.items for s in test],
        k=k,
    )
    return {
        f"hr@{k}": m.hr,
        f"mrr@{k}": m.mrr,
        f"coverage@{k}": m.coverage,
        "cases": m.cases,
        "holdout_days": days,
    }
