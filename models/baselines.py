"""The classic session-based baselines, and streamrec itself, behind one small interface.

Each baseline is the plain textbook version that ``../shared/data/REFERENCE.md`` describes,
so the harness can be checked against its numbers:

- ``pop``: the most clicked training items.
- ``transitions``: the items that most often came right after the last click (counted
  once per training session).
- ``sr``: sequential rules (Ludewig and Jannach 2018): j after i up to 10 clicks later,
  weight 1/distance, read off the last click.
- ``item_knn``: cosine over session co-occurrence with the last click (Hidasi et al.
  2016; ``shrink`` adds their shrinkage term, 0 by default as in the reference).
- ``item2vec``: gensim skip-gram 64-d vectors, nearest by cosine to the last click.
- ``cluster_random``: the tutorial's method, random members of the last item's KMeans
  cluster (Word2Vec + KMeans with the tutorial's settings).
- ``sknn``: session kNN (Jannach and Ludewig 2017): the k training sessions most similar
  (cosine over item sets) among the ``sample_size`` most recent ones sharing an item.
- ``vsknn``: V-SKNN (Ludewig and Jannach 2018): as sknn, but the similarity is the
  session's items weighted linearly by position (i/n for the i-th of n clicks) summed
  over the items a neighbour shares.
- ``stan``: STAN (Garg et al. 2019): as sknn, but the session's items are weighted by
  exp((i - n) / lambda_1) in the cosine, and a neighbour votes for each of its items
  with exp(-|position - position of the most recent shared item| / lambda_3) times its
  similarity: what follows (or precedes) the matching click counts most. The paper's
  second factor, the neighbour's age in time, is left out (the -cgg sets have no
  timestamps; neighbours are already the most recent sessions sharing an item).

Models rank every item they know and may return items already in the session (the
literature protocol); the harness applies serving rules afterwards. Ties, and the tail of
lists a model has no evidence for, follow the order in which items first appear in
training: that is what the reference numbers were computed with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import scipy.sparse as sp
from numba import njit

from models.errors import InvalidSettingError
from models.evaluate import Recommender
from models.sources import sequential_rules, transition_counts
from models.train import StreamrecModel, TrainParams


class _Catalogue:
    """Item index (first appearance in training) shared by the baselines."""

    def fit_catalogue(self, sessions: Sequence[Sequence[str]]) -> None:
        index: dict[str, int] = {}
        for s in sessions:
            for item in s:
                if item not in index:
                    index[item] = len(index)
        self.index = index
        self.items = list(index)
        self.codes = [self.encode(s) for s in sessions]
        flat = np.concatenate(self.codes) if self.codes else np.zeros(0, dtype=np.int64)
        self.counts = np.bincount(flat, minlength=len(self.items)).astype(np.float64)

    def encode(self, prefix: Sequence[str]) -> np.ndarray:
        """Item rows of a session, items the model does not know dropped."""
        get = self.index.get
        return np.fromiter((i for i in map(get, prefix) if i is not None), dtype=np.int64, count=-1)

    def last_items(self, prefixes: Sequence[Sequence[str]]) -> np.ndarray:
        """The row of each prefix's last click, -1 when the model does not know it."""
        get = self.index.get
        return np.array([get(p[-1], -1) if len(p) else -1 for p in prefixes], dtype=np.int64)

    def binary_rows(self, sessions: Sequence[np.ndarray]) -> sp.csr_matrix:
        """One row per session, 1 for each item it contains."""
        lengths = [len(s) for s in sessions]
        rows = np.repeat(np.arange(len(sessions)), lengths)
        cols = np.concatenate(sessions) if sessions else np.zeros(0, dtype=np.int64)
        matrix = sp.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(sessions), len(self.items))
        )
        matrix.data[:] = 1.0  # repeated clicks count once
        return matrix

    def rows_of(self, matrix: sp.csr_matrix, last: np.ndarray) -> np.ndarray:
        """Dense rows ``matrix[last]``, zero where ``last`` is -1."""
        scores = matrix[np.maximum(last, 0)].toarray()
        scores[last < 0] = 0.0
        return scores

    def top_k(self, scores: np.ndarray, k: int) -> list[list[str]]:
        """Best ``k`` per row of a dense [rows, n_items] score matrix; ties by item row."""
        k = min(k, scores.shape[1])
        top = np.empty((scores.shape[0], k), dtype=np.int64)
        top_k_rows(np.ascontiguousarray(scores, dtype=np.float64), top)
        names = self.items
        return [[names[i] for i in row] for row in top.tolist()]


@njit(cache=True, nogil=True)
def top_k_rows(scores, out):  # pragma: no cover - compiled; checked through the baselines' tests
    """Best ``out.shape[1]`` columns per row by (score desc, column asc), one pass, no sort."""
    k = out.shape[1]
    best = np.empty(k, dtype=np.float64)
    for r in range(scores.shape[0]):
        kept = 0
        for j in range(scores.shape[1]):
            s = scores[r, j]
            if kept == k and not s > best[k - 1]:
                continue  # columns come in ascending order: a tie never displaces
            pos = min(kept, k - 1)
            while pos > 0 and s > best[pos - 1]:
                best[pos] = best[pos - 1]
                out[r, pos] = out[r, pos - 1]
                pos -= 1
            best[pos] = s
            out[r, pos] = j
            kept = min(kept + 1, k)


class Popular(_Catalogue):
    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.fit_catalogue(sessions)

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        return self.top_k(np.tile(self.counts, (len(prefixes), 1)), k)


class Transitions(_Catalogue):
    """Most frequent next item after the last click, counted once per training session."""

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.fit_catalogue(sessions)
        self.follows = transition_counts(self.codes, len(self.items), per_session=True)

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        return self.top_k(self.rows_of(self.follows, self.last_items(prefixes)), k)


class SequentialRules(_Catalogue):
    """SR (Ludewig and Jannach 2018), read off the last click."""

    def __init__(self, steps: int = 10) -> None:
        self.steps = steps

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.fit_catalogue(sessions)
        self.rules = sequential_rules(self.codes, len(self.items), self.steps)

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        return self.top_k(self.rows_of(self.rules, self.last_items(prefixes)), k)


class ClusterRandom(_Catalogue):
    """The tutorial: ``k`` random items from the last clicked item's cluster."""

    def __init__(self, params: TrainParams | None = None) -> None:
        # The tutorial's model: window 5, 10 dimensions, 10 clusters; no neighbour lists.
        self.params = replace(params or TrainParams(), n_neighbours=0)
        self.rng = np.random.default_rng(self.params.seed)

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        from models.train import train_model

        self.fit_catalogue(sessions)
        bundle = train_model(sessions, self.params)
        self.cluster = np.full(len(self.items), -1)
        for item, cluster in zip(bundle.item_list, bundle.clusters.tolist(), strict=True):
            self.cluster[self.index[item]] = cluster

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        last = self.last_items(prefixes)
        scores = np.zeros((len(prefixes), len(self.items)))
        for row, item in enumerate(last.tolist()):
            if item >= 0 and self.cluster[item] >= 0:
                members = self.cluster == self.cluster[item]
                scores[row, members] = 1.0 + self.rng.random(int(members.sum()))
        return self.top_k(scores, k)


class ItemKNN(_Catalogue):
    """sim(i, j) = |sessions with i and j| / (|i|^alpha * |j|^(1-alpha) + shrink), j != i."""

    def __init__(self, alpha: float = 0.5, shrink: float = 0.0) -> None:
        self.alpha, self.shrink = alpha, shrink

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.fit_catalogue(sessions)
        x = self.binary_rows(self.codes)
        cooc = (x.T @ x).tocsr()
        cooc.setdiag(0)
        cooc.eliminate_zeros()
        support = np.asarray(x.sum(axis=0)).ravel()
        coo = cooc.tocoo()
        denominator = (
            support[coo.row] ** self.alpha * support[coo.col] ** (1 - self.alpha) + self.shrink
        )
        self.sim = sp.csr_matrix((coo.data / denominator, (coo.row, coo.col)), shape=cooc.shape)

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        return self.top_k(self.rows_of(self.sim, self.last_items(prefixes)), k)


class Item2Vec(_Catalogue):
    """Skip-gram item vectors (gensim), the items nearest by cosine to the last click."""

    def __init__(self, vector_size: int = 64, seed: int = 42) -> None:
        self.vector_size, self.seed = vector_size, seed

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        from gensim.models import Word2Vec

        from models.train import auto_epochs

        self.fit_catalogue(sessions)
        clicks = int(sum(map(len, sessions)))
        w2v = Word2Vec(
            [list(s) for s in sessions],
            vector_size=self.vector_size,
            window=5,
            min_count=1,
            sg=1,
            epochs=auto_epochs(clicks),
            seed=self.seed,
            workers=1,
        )
        vectors = np.stack([w2v.wv[item] for item in self.items]).astype(np.float64)
        self.vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        last = self.last_items(prefixes)
        scores = self.vectors[np.maximum(last, 0)] @ self.vectors.T
        scores[np.arange(len(last)), np.maximum(last, 0)] = -np.inf  # not the item itself
        scores[last < 0] = 0.0
        return self.top_k(scores, k)


class SessionKNN(_Catalogue):
    """SKNN (``weighting="cosine"``) and V-SKNN (``weighting="position"``).

    Neighbour candidates are the ``sample_size`` most recent training sessions that share
    an item with the current one (sessions arrive oldest first, see models.datasets);
    the ``k`` most similar vote for their items with their similarity.
    """

    def __init__(
        self,
        k: int = 100,
        sample_size: int = 1000,
        weighting: str = "cosine",
    ) -> None:
        if weighting not in ("cosine", "position"):
            raise InvalidSettingError(f"unknown weighting {weighting!r}")
        self.k, self.sample_size, self.weighting = k, sample_size, weighting

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.fit_catalogue(sessions)
        self.sessions = self.binary_rows(self.codes)
        self.by_item = self.sessions.T.tocsr()  # item -> sessions, ascending (oldest first)
        self.lengths = np.asarray(self.sessions.sum(axis=1)).ravel()

    def neighbour_weights(self, prefixes: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """[prefixes, training sessions]: each prefix's k neighbours and their similarity."""
        rows, cols, sims = [], [], []
        for row, prefix in enumerate(prefixes):
            codes = self.encode(prefix)
            if not len(codes):
                continue
            # Weight of each distinct item: its latest position i (1-based) over n.
            weight = dict(
                zip(codes.tolist(), (np.arange(len(codes)) + 1) / len(codes), strict=True)
            )
            items = np.fromiter(weight, dtype=np.int64, count=len(weight))
            w = self._click_weights(
                np.fromiter(weight.values(), dtype=np.float64, count=len(weight)), len(codes)
            )
            sub = self.by_item[items]
            neighbours = np.unique(sub.indices)
            if len(neighbours) > self.sample_size:
                neighbours = neighbours[-self.sample_size :]
            sim = np.asarray(sub[:, neighbours].T @ w).ravel()
            if self.weighting == "cosine":
                sim = sim / np.sqrt(len(items) * self.lengths[neighbours])
            if len(sim) > self.k:
                best = np.argpartition(-sim, self.k - 1)[: self.k]
                neighbours, sim = neighbours[best], sim[best]
            rows.append(np.full(len(sim), row))
            cols.append(neighbours)
            sims.append(sim)
        if not rows:
            return sp.csr_matrix((len(prefixes), self.sessions.shape[0]))
        return sp.csr_matrix(
            (np.concatenate(sims), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(prefixes), self.sessions.shape[0]),
        )

    def _click_weights(self, latest: np.ndarray, n: int) -> np.ndarray:
        """Weight of each distinct click in the similarity (``latest``: its latest
        position over ``n``): i/n for V-SKNN, 1 for SKNN."""
        return latest if self.weighting == "position" else np.ones(len(latest))

    def scores(self, prefixes: Sequence[Sequence[str]]) -> np.ndarray:
        return np.asarray((self.neighbour_weights(prefixes) @ self.sessions).todense())

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        return self.top_k(self.scores(prefixes), k)


class STAN(SessionKNN):
    """STAN (Garg et al. 2019; module docstring). ``lambda_1`` / ``lambda_3`` default to
    half the mean training session length and the mean length: the best factors of
    0.5 / 1 / 2 on the four validation splits (benchmarks/stan_valid.py, quality.md)."""

    def __init__(
        self,
        k: int = 100,
        sample_size: int = 1000,
        lambda_1: float | None = None,
        lambda_3: float | None = None,
    ) -> None:
        super().__init__(k, sample_size)  # the cosine, with the click weights below
        self.lambdas = (lambda_1, lambda_3)

    def _click_weights(self, latest: np.ndarray, n: int) -> np.ndarray:
        return np.exp((latest - 1.0) * n / self.lambda_1)  # exp((i - n) / lambda_1)

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        super().fit(sessions)
        mean = float(np.mean([len(c) for c in self.codes])) if self.codes else 1.0
        self.lambda_1 = self.lambdas[0] or 0.5 * mean
        self.lambda_3 = self.lambdas[1] or mean
        self.flat = np.concatenate(self.codes) if self.codes else np.zeros(0, dtype=np.int64)
        self.ptr = np.zeros(len(self.codes) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in self.codes], out=self.ptr[1:])

    def scores(self, prefixes: Sequence[Sequence[str]]) -> np.ndarray:
        neighbours = self.neighbour_weights(prefixes)
        recency = np.zeros(len(self.items), dtype=np.int64)
        dist = np.full(len(self.items), -1, dtype=np.int64)
        out = np.zeros((len(prefixes), len(self.items)), dtype=np.float64)
        for row, prefix in enumerate(prefixes):
            codes = self.encode(prefix)
            lo, hi = neighbours.indptr[row], neighbours.indptr[row + 1]
            if not len(codes) or lo == hi:
                continue
            np.maximum.at(recency, codes, np.arange(1, len(codes) + 1))  # latest position
            _stan_votes(
                self.flat, self.ptr, neighbours.indices[lo:hi], neighbours.data[lo:hi],
                recency, self.lambda_3, dist, out[row],
            )  # fmt: skip
            recency[codes] = 0
        return out


@njit(cache=True, nogil=True)
def _stan_votes(flat, ptr, sessions, sims, recency, lambda_3, dist, out):  # pragma: no cover
    """Each neighbour's items, weighted by their distance to its occurrence of the
    session's most recent item, times its similarity; an item that repeats counts once,
    at its nearest occurrence. ``dist``: scratch per item, -1 between calls."""
    for t in range(len(sessions)):
        lo, hi = ptr[sessions[t]], ptr[sessions[t] + 1]
        anchor, best = lo, 0
        for q in range(lo, hi):
            if recency[flat[q]] > best:  # the first occurrence of the most recent item
                best = recency[flat[q]]
                anchor = q
        for q in range(lo, hi):
            d = abs(q - anchor)
            if dist[flat[q]] < 0 or d < dist[flat[q]]:
                dist[flat[q]] = d
        for q in range(lo, hi):
            j = flat[q]
            if dist[j] >= 0:
                out[j] += sims[t] * np.exp(-dist[j] / lambda_3)
                dist[j] = -1


def model_factories(
    params: TrainParams | None = None, categories: dict[str, str] | None = None
) -> dict[str, Callable[[], Recommender]]:
    """Every model the harness knows, by the name ``--models`` uses; ``categories``
    (item -> category, when the data has them) feed the models that use them."""
    params = params or TrainParams()
    return {
        "streamrec": lambda: StreamrecModel(params, categories),
        "pop": Popular,
        "transitions": Transitions,
        "sr": SequentialRules,
        "item_knn": ItemKNN,
        "item2vec": lambda: Item2Vec(seed=params.seed),
        "cluster_random": lambda: ClusterRandom(TrainParams(seed=params.seed)),
        "sknn": SessionKNN,
        "vsknn": lambda: SessionKNN(weighting="position"),
        "stan": STAN,
    }
