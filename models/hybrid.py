"""The hybrid recommender: candidates from several sources, a learned linear ranking stage.

Per session prefix, every item gets one score per source:

- ``vsknn`` / ``sknn``: session neighbours (position-weighted and cosine similarity) among
  the most recent training sessions that share an item,
- ``transitions``: P(next = j | last click = i), counted once per training session,
- ``rules``: sequential rules (j up to 10 clicks after i, weight 1/distance) of the last
  click, row-normalised,
- ``item_knn``: cosine of session co-occurrence with the last click,
- ``own``: the session's own items, recency-weighted (people return to what they
  consider), how often they were clicked, and whether one is the current item,
- ``embedding``: Word2Vec cosine to the last click and to a recency-weighted session
  vector, and whether the item shares the last click's KMeans cluster,
- ``popular``: log popularity.

The ``n_candidates`` best items by a fixed blend of those scores are the candidates; a
linear ranking stage (softmax over each case's candidates, L2, L-BFGS) re-orders them. It
is fitted on next-click cases of the training log itself: sources are built on the older
``1 - fit_share`` of the training sessions, cases drawn from the newest ``fit_share``, then
the sources are rebuilt on everything. So it retrains with every model and never sees a
test (or validation) click. ``ranker="blend"`` keeps the fixed blend (the ablation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from models.baselines import (
    ItemKNN,
    SessionKNN,
    _Catalogue,
    sequential_rules,
    top_k_rows,
    transition_counts,
)

SOURCES = (
    "vsknn",
    "sknn",
    "transitions",
    "sequence",
    "rules",
    "item_knn",
    "own",
    "embedding",
    "category",
    "popular",
)
FEATURES = (
    "vsknn",
    "sknn",
    "transitions",
    "after_2",
    "after_3",
    "after_prefix",
    "after_prefix_long",
    "rules",
    "item_knn",
    "own_recency",
    "own_count",
    "is_current",
    "emb_last",
    "emb_session",
    "same_cluster",
    "same_category",
    "category_share",
    "popularity",
)
# Which features each source contributes (for the ablation "source removed").
SOURCE_FEATURES = {
    "vsknn": ("vsknn",),
    "sknn": ("sknn",),
    "transitions": ("transitions",),
    "sequence": ("after_2", "after_3", "after_prefix", "after_prefix_long"),
    "rules": ("rules",),
    "item_knn": ("item_knn",),
    "own": ("own_recency", "own_count", "is_current"),
    "embedding": ("emb_last", "emb_session", "same_cluster"),
    "category": ("same_category", "category_share"),
    "popular": ("popularity",),
}


@dataclass(frozen=True)
class HybridParams:
    k_neighbours: int = 100
    sample_size: int = 1000
    own_decay: float = 0.6  # weight of an own item per click of age
    session_decay: float = 0.6  # session vector: weight per click of age
    n_candidates: int = 100
    ranker: str = "linear"  # "linear" (learned) or "blend" (the fixed blend only)
    fit_share: float = 0.2
    fit_cases: int = 15000
    tune_cases: int = 6000
    l2: float = 1e-3
    vector_size: int = 32
    n_clusters: int = 50
    seed: int = 42
    without: tuple[str, ...] = ()  # sources switched off (ablation)
    blend: dict[str, float] = field(
        default_factory=lambda: {
            "vsknn": 1.0,
            "sknn": 0.5,
            "transitions": 0.5,
            "after_2": 0.3,
            "after_prefix": 0.3,
            "rules": 0.3,
            "item_knn": 0.1,
            "own_recency": 0.6,
            "emb_session": 0.02,
            "same_category": 0.02,
            "popularity": 0.001,
        }
    )


class _Sources(_Catalogue):
    """Every source fitted on one set of training sessions; dense scores per batch."""

    def __init__(self, params: HybridParams, categories: dict[str, str] | None = None) -> None:
        self.params = params
        self.categories = categories or {}

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        p = self.params
        self.fit_catalogue(sessions)
        n = len(self.items)
        codes: dict[str, int] = {}
        # -1: unknown category, never a match.
        self.category = np.array(
            [
                codes.setdefault(self.categories[x], len(codes)) if x in self.categories else -1
                for x in self.items
            ],
            dtype=np.int64,
        )
        self.n_categories = max(1, len(codes))
        self.knn = SessionKNN(p.k_neighbours, p.sample_size)
        self.knn.fit(sessions)
        counts = transition_counts(self.codes, n, per_session=True)
        self.transitions = _row_normalised(counts)
        self.rules = _row_normalised(sequential_rules(self.codes, n))
        self.after = {order: _Continuations(self.codes, n, order) for order in ("2", "3", "prefix")}
        iknn = ItemKNN()
        iknn.fit(sessions)
        self.item_knn = iknn.sim
        self.log_pop = np.log1p(self.counts) / np.log1p(max(1.0, self.counts.max()))
        if "embedding" in p.without:
            self.vectors = np.zeros((n, 1), dtype=np.float32)
            self.cluster = np.zeros(n, dtype=np.int64)
        else:
            self.vectors, self.cluster = _embed(sessions, self.items, p)

    def features(self, prefixes: Sequence[Sequence[str]]) -> np.ndarray:
        """[len(FEATURES), len(prefixes), n_items] float32 (one contiguous plane a feature)."""
        p = self.params
        b, n = len(prefixes), len(self.items)
        # One buffer reused across batches: fresh pages cost more than the arithmetic.
        shape = (len(FEATURES), b, n)
        buffer = getattr(self, "_buffer", None)
        if buffer is None or buffer.size < np.prod(shape):
            buffer = self._buffer = np.zeros(int(np.prod(shape)), dtype=np.float32)
        out = buffer[: int(np.prod(shape))].reshape(shape)
        out[:] = 0.0
        col = {name: i for i, name in enumerate(FEATURES)}
        codes = [self.encode(x) for x in prefixes]
        last = np.array([c[-1] if len(c) else -1 for c in codes], dtype=np.int64)
        has = last >= 0
        if not has.any():
            out[col["popularity"]] = self.log_pop
            return out
        vw, cw = self._knn_weights(codes)
        out[col["vsknn"]] = _max_normalised((vw @ self.knn.sessions).toarray())
        out[col["sknn"]] = _max_normalised((cw @ self.knn.sessions).toarray())
        out[col["transitions"]] = self.rows_of(self.transitions, last)
        out[col["rules"]] = self.rows_of(self.rules, last)
        for order, table in self.after.items():
            out[col[f"after_{order}"]] = table.scores(codes)
        # A longer whole-prefix match is stronger evidence than a short one (a back-off
        # model's confidence): let the ranker weigh it by the prefix's length.
        lengths = np.log1p(np.array([len(c) for c in codes], dtype=np.float32))
        out[col["after_prefix_long"]] = out[col["after_prefix"]] * lengths[:, None]
        out[col["item_knn"]] = self.rows_of(self.item_knn, last)
        rows, cols, recency = [], [], []
        for r, c in enumerate(codes):
            rows.append(np.full(len(c), r))
            cols.append(c)
            recency.append(p.own_decay ** np.arange(len(c) - 1, -1, -1, dtype=np.float64))
        rr, cc = np.concatenate(rows), np.concatenate(cols)
        own = sp.csr_matrix((np.concatenate(recency), (rr, cc)), shape=(b, n)).toarray()
        count = sp.csr_matrix((np.ones(len(rr)), (rr, cc)), shape=(b, n)).toarray()
        out[col["own_recency"]] = own
        out[col["own_count"]] = np.log1p(count)
        out[col["is_current"], has, last[has]] = 1.0
        vec = self.vectors
        last_vec = vec[np.maximum(last, 0)] * has[:, None]
        out[col["emb_last"]] = last_vec @ vec.T
        session_vec = np.zeros_like(last_vec)
        for r, c in enumerate(codes):
            if len(c):
                w = p.session_decay ** np.arange(len(c) - 1, -1, -1)
                session_vec[r] = w @ vec[c]
        session_vec /= np.maximum(np.linalg.norm(session_vec, axis=1, keepdims=True), 1e-12)
        out[col["emb_session"]] = session_vec @ vec.T
        out[col["same_cluster"]] = (
            self.cluster[None, :] == self.cluster[np.maximum(last, 0)][:, None]
        ) & has[:, None]
        if (self.category >= 0).any():
            cat = self.category
            last_cat = cat[np.maximum(last, 0)]
            out[col["same_category"]] = (cat[None, :] == last_cat[:, None]) & (
                (last_cat >= 0) & has
            )[:, None]
            share = np.zeros((b, self.n_categories + 1))
            for r, c in enumerate(codes):
                if len(c):
                    w = p.own_decay ** np.arange(len(c) - 1, -1, -1)
                    np.add.at(share[r], cat[c], w / w.sum())  # -1 lands in the spare column
            out[col["category_share"]] = share[:, cat]
            out[col["category_share"]][:, cat < 0] = 0.0
        out[col["popularity"]] = self.log_pop
        for source in p.without:
            for name in SOURCE_FEATURES[source]:
                out[col[name]] = 0.0
        return out

    def _knn_weights(self, codes: list[np.ndarray]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Neighbour weights of V-SKNN and SKNN from one shared candidate search."""
        knn = self.knn
        rows, v_cols, v_sims, c_cols, c_sims, c_rows = [], [], [], [], [], []
        for r, c in enumerate(codes):
            if not len(c):
                continue
            weight = dict(zip(c.tolist(), (np.arange(len(c)) + 1) / len(c), strict=True))
            items = np.fromiter(weight, dtype=np.int64, count=len(weight))
            w = np.fromiter(weight.values(), dtype=np.float64, count=len(weight))
            sub = knn.by_item[items]
            neighbours = np.unique(sub.indices)
            if len(neighbours) > knn.sample_size:
                neighbours = neighbours[-knn.sample_size :]
            block = sub[:, neighbours].T
            for sim, cols_out, sims_out, rows_out in (
                (np.asarray(block @ w).ravel(), v_cols, v_sims, rows),
                (
                    np.asarray(block.sum(axis=1)).ravel()
                    / np.sqrt(len(items) * knn.lengths[neighbours]),
                    c_cols,
                    c_sims,
                    c_rows,
                ),
            ):
                chosen = neighbours
                if len(sim) > knn.k:
                    best = np.argpartition(-sim, knn.k - 1)[: knn.k]
                    chosen, sim = neighbours[best], sim[best]
                rows_out.append(np.full(len(sim), r))
                cols_out.append(chosen)
                sims_out.append(sim)
        shape = (len(codes), knn.sessions.shape[0])

        def matrix(r: list[np.ndarray], c: list[np.ndarray], v: list[np.ndarray]) -> sp.csr_matrix:
            if not r:
                return sp.csr_matrix(shape)
            return sp.csr_matrix(
                (np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=shape
            )

        return matrix(rows, v_cols, v_sims), matrix(c_rows, c_cols, c_sims)


class HybridModel:
    """``models.evaluate.Recommender``: sources + learned ranking stage (module docstring)."""

    def __init__(
        self,
        params: HybridParams | None = None,
        seed: int | None = None,
        categories: dict[str, str] | None = None,
    ) -> None:
        params = params or HybridParams()
        self.params = replace(params, seed=seed) if seed is not None else params
        self.categories = categories or {}
        self.weights: np.ndarray | None = None
        self.tuning: dict[str, dict[str, float]] = {}
        self._fitted_on: object = None

    def settings(self) -> dict[str, Any]:
        return asdict(self.params)

    def report(self) -> dict[str, Any]:
        """The ranking stage in use, what tuning measured, and the learned weights."""
        out: dict[str, Any] = {"ranker": self.params.ranker, "tuning": self.tuning}
        if self.weights is not None and self.params.ranker == "linear":
            names = [f"{t}:{f}" for t in ("raw", "sqrt", "rank") for f in FEATURES] + ["position"]
            out["weights"] = dict(
                zip(names, (self.weights / self.scale).round(4).tolist(), strict=True)
            )
        return out

    def tune(self, train: Sequence[Sequence[str]], valid: Sequence[Sequence[str]]) -> None:
        """Choose the ranking stage (learned or fixed blend) by HR@20 + MRR@20 on up to
        ``tune_cases`` cases of ``valid``; the model stays fitted on ``train``."""
        from models.evaluate import iter_cases, rank_metrics

        self._fit(train, learn=True)
        cases = list(iter_cases(valid))
        if len(cases) > self.params.tune_cases:
            rng = np.random.default_rng(self.params.seed)
            keep = np.sort(rng.choice(len(cases), self.params.tune_cases, replace=False))
            cases = [cases[i] for i in keep.tolist()]
        prefixes, targets = [c.prefix for c in cases], [c.target for c in cases]
        for ranker in ("linear", "blend"):
            self.params = replace(self.params, ranker=ranker)
            hr, mrr = rank_metrics(self.recommend_batch(prefixes, 20), targets, 20)
            self.tuning[ranker] = {"hr@20": hr, "mrr@20": mrr, "cases": len(cases)}
        best = max(self.tuning, key=lambda r: self.tuning[r]["hr@20"] + self.tuning[r]["mrr@20"])
        self.params = replace(self.params, ranker=best)

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        if self._fitted_on is sessions:  # tune() already fitted on exactly these sessions
            return
        self._fit(sessions, learn=self.params.ranker == "linear")

    def _fit(self, sessions: Sequence[Sequence[str]], *, learn: bool) -> None:
        p = self.params
        blend = np.array([p.blend.get(name, 0.0) for name in FEATURES], dtype=np.float32)
        self.blend = blend
        self.weights = None
        if learn:
            cut = int(len(sessions) * (1 - p.fit_share))
            older, newer = sessions[:cut], sessions[cut:]
            base = _Sources(p, self.categories)
            base.fit(older)
            prefixes, targets = _sample_cases(newer, p.fit_cases, p.seed)
            self.weights, self.scale = _fit_ranker(base, prefixes, targets, blend, p)
        self.sources = _Sources(p, self.categories)
        self.sources.fit(sessions)
        self._fitted_on = sessions

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        out: list[list[str]] = []
        step = max(1, 4_000_000 // max(1, len(self.sources.items)))
        for lo in range(0, len(prefixes), step):
            out += self._rank(prefixes[lo : lo + step], k)
        return out

    def _rank(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        feats = self.sources.features(prefixes)
        cand, prior = _candidates(feats, self.blend, max(k, self.params.n_candidates))
        if self.weights is None or self.params.ranker == "blend":
            scores = np.take_along_axis(prior, cand, axis=1)
        else:
            scores = _transform(_gather(feats, cand), self.scale) @ self.weights
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(cand, order, axis=1)
        names = self.sources.items
        return [[names[i] for i in row] for row in top.tolist()]


def _candidates(feats: np.ndarray, blend: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``c`` items per row by the fixed blend, best first (ties by item row), and
    the blend's scores."""
    prior = np.tensordot(blend.astype(np.float64), feats, axes=1)
    c = min(c, prior.shape[1])
    top = np.empty((prior.shape[0], c), dtype=np.int64)
    top_k_rows(prior, top)
    return top, prior


def _gather(feats: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """[rows, candidates, features] from [features, rows, items]."""
    rows = np.arange(cand.shape[0])[:, None]
    return np.moveaxis(feats[:, rows, cand], 0, -1)


N_TRANSFORMED = 3 * len(FEATURES) + 1


def _transform(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Features the linear ranker sees, from [cases, candidates, features] in candidate
    order: raw, square root (a cheap bend), 1 / (1 + rank of the candidate by that
    feature within its case), and log of the candidate's position; divided by ``scale``."""
    x = x.astype(np.float64)
    rank = np.argsort(np.argsort(-x, axis=1, kind="stable"), axis=1, kind="stable")
    position = np.broadcast_to(
        np.log1p(np.arange(x.shape[1], dtype=np.float64))[None, :, None], (*x.shape[:2], 1)
    )
    parts = (x, np.sqrt(np.clip(x, 0.0, None)), 1.0 / (1.0 + rank), position)
    return np.concatenate(parts, axis=-1) / scale


def _sample_cases(
    sessions: Sequence[Sequence[str]], limit: int, seed: int
) -> tuple[list[Sequence[str]], list[str]]:
    prefixes: list[Sequence[str]] = []
    targets: list[str] = []
    for s in sessions:
        for i in range(1, len(s)):
            prefixes.append(s[:i])
            targets.append(s[i])
    if len(prefixes) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(prefixes), limit, replace=False))
        prefixes = [prefixes[i] for i in keep.tolist()]
        targets = [targets[i] for i in keep.tolist()]
    return prefixes, targets


def _fit_ranker(
    base: _Sources,
    prefixes: list[Sequence[str]],
    targets: list[str],
    blend: np.ndarray,
    p: HybridParams,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over each case's candidates, the next click as the label."""
    blocks, labels = [], []
    step = max(1, 4_000_000 // max(1, len(base.items)))
    c = p.n_candidates
    for lo in range(0, len(prefixes), step):
        feats = base.features(prefixes[lo : lo + step])
        cand, _ = _candidates(feats, blend, c)
        target = np.array([base.index.get(t, -1) for t in targets[lo : lo + step]])
        where = cand == target[:, None]
        found = where.any(axis=1)
        if not found.any():
            continue
        blocks.append(_gather(feats, cand)[found])
        labels.append(where[found].argmax(axis=1))
    width = N_TRANSFORMED
    if not blocks:
        return np.zeros(width), np.ones(width)
    x_raw = np.concatenate(blocks)  # [cases, c, f]
    y = np.concatenate(labels)
    scale = np.ones(width)
    flat = _transform(x_raw[: min(len(x_raw), 2000)], scale).reshape(-1, width)
    scale = np.maximum(flat.std(axis=0), 1e-6)
    # float32 halves the memory of the largest array; L-BFGS keeps its state in float64.
    x = _transform(x_raw, scale).astype(np.float32)
    del x_raw
    rows = np.arange(len(y))

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = (x @ w.astype(np.float32)).astype(np.float64)
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        z = e.sum(axis=1, keepdims=True)
        prob = e / z
        value = -(s[rows, y] - np.log(z[:, 0])).mean() + p.l2 * (w @ w)
        grad_s = prob
        grad_s[rows, y] -= 1.0
        grad = np.einsum("nc,ncf->f", grad_s.astype(np.float32), x) / len(y) + 2 * p.l2 * w
        return float(value), grad.astype(np.float64)

    start = np.zeros(width)
    start[: len(FEATURES)] = blend * scale[: len(FEATURES)]
    fit = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 300})
    return fit.x, scale


class _Continuations:
    """What followed the same last ``order`` clicks (or the same whole prefix) in
    training: P(next = j | context), a variable-order Markov chain over exact contexts."""

    def __init__(self, codes: Sequence[np.ndarray], n: int, order: str) -> None:
        self.length = None if order == "prefix" else int(order)
        contexts: dict[tuple[int, ...], int] = {}
        rows, cols = [], []
        for s in codes:
            values = s.tolist()
            for i in range(1, len(values)):
                if self.length is not None and i < self.length:
                    continue
                key = tuple(values[:i] if self.length is None else values[i - self.length : i])
                rows.append(contexts.setdefault(key, len(contexts)))
                cols.append(values[i])
        self.contexts = contexts
        counts = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(max(1, len(contexts)), n))
        self.table = _row_normalised(counts)

    def scores(self, codes: Sequence[np.ndarray]) -> np.ndarray:
        rows = np.full(len(codes), -1, dtype=np.int64)
        for r, c in enumerate(codes):
            values = c.tolist()
            if self.length is not None:
                if len(values) < self.length:
                    continue
                values = values[-self.length :]
            rows[r] = self.contexts.get(tuple(values), -1)
        out = self.table[np.maximum(rows, 0)].toarray()
        out[rows < 0] = 0.0
        return out


def _row_normalised(m: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(m.sum(axis=1)).ravel()
    return (sp.diags(1.0 / np.maximum(sums, 1e-12)) @ m).tocsr()


def _max_normalised(scores: np.ndarray) -> np.ndarray:
    top = scores.max(axis=1, keepdims=True)
    return scores / np.maximum(top, 1e-12)


def _embed(
    sessions: Sequence[Sequence[str]], items: list[str], p: HybridParams
) -> tuple[np.ndarray, np.ndarray]:
    from gensim.models import Word2Vec
    from sklearn.cluster import KMeans

    from models.train import auto_epochs

    w2v = Word2Vec(
        [list(s) for s in sessions],
        vector_size=p.vector_size,
        window=5,
        min_count=1,
        sg=1,
        epochs=min(10, auto_epochs(int(sum(map(len, sessions))))),
        seed=p.seed,
        workers=1,
    )
    vectors = np.stack([w2v.wv[item] for item in items]).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    n_clusters = max(1, min(p.n_clusters, len(items)))
    km = KMeans(n_clusters=n_clusters, n_init=1, random_state=p.seed)
    return vectors, km.fit_predict(vectors).astype(np.int64)
