"""The classic session-based baselines, and streamrec itself, behind one small interface.

- ``pop``: the most clicked training items.
- ``cluster_random``: the tutorial's method, random members of the last item's KMeans
  cluster (Word2Vec + KMeans with the tutorial's settings).
- ``item_knn``: items that co-occur in training sessions with the last item, cosine
  (Hidasi et al. 2016, with their shrinkage term).
- ``sknn``: session-based kNN (Jannach & Ludewig 2017): the k training sessions most
  similar (cosine over item sets) to the current one, drawn from the most recent
  sessions that share an item with it; items score by the summed similarity.

Every model returns ``k`` items, never one already in the session, and fills up with
popular items where its own evidence runs out, so the comparison is about ranking.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from models.evaluate import Recommender
from models.train import StreamrecModel, TrainParams, train_model


class _Catalogue:
    """Item index and popularity shared by the baselines."""

    def fit_catalogue(self, sessions: Sequence[Sequence[str]]) -> None:
        counts = Counter(item for s in sessions for item in s)
        self.items = [item for item, _ in counts.most_common()]  # most popular first
        self.index = {item: i for i, item in enumerate(self.items)}
        # A tiny popularity bonus: breaks ties and fills short lists with popular items.
        n = len(self.items)
        self.tie_break = (n - np.arange(n)) / (n + 1.0) * 1e-9

    def known(self, prefix: Sequence[str]) -> list[int]:
        return [self.index[x] for x in prefix if x in self.index]

    def binary_rows(self, sessions: Sequence[Sequence[int]]) -> sp.csr_matrix:
        """One row per session, 1 for each item it contains."""
        rows = np.repeat(np.arange(len(sessions)), [len(s) for s in sessions])
        cols = np.fromiter((i for s in sessions for i in s), dtype=np.int64, count=len(rows))
        matrix = sp.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(sessions), len(self.items))
        )
        matrix.data[:] = 1.0  # repeated clicks count once
        return matrix

    def top_k(self, scores: np.ndarray, seen: Sequence[Sequence[int]], k: int) -> list[list[str]]:
        """Best ``k`` per row of a dense [rows, n_items] score matrix, seen items excluded."""
        scores = scores + self.tie_break
        for row, known in enumerate(seen):
            scores[row, known] = -np.inf
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        best = np.take_along_axis(scores, top, axis=1)
        return [
            [self.items[i] for i, s in zip(r, b, strict=True) if s > -np.inf]
            for r, b in zip(top.tolist(), best.tolist(), strict=True)
        ]


class Popular(_Catalogue):
    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.fit_catalogue(sessions)

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        seen = [self.known(p) for p in prefixes]
        return self.top_k(np.zeros((len(prefixes), len(self.items))), seen, k)


class ClusterRandom(_Catalogue):
    """The tutorial: ``k`` random items from the last clicked item's cluster."""

    def __init__(self, params: TrainParams | None = None) -> None:
        # The tutorial's model: window 5, 10 dimensions, 10 clusters; no neighbour lists.
        self.params = replace(params or TrainParams(), n_neighbours=0)
        self.rng = np.random.default_rng(self.params.seed)

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.fit_catalogue(sessions)
        bundle = train_model(sessions, self.params)
        self.cluster = np.full(len(self.items), -1)
        for item, cluster in zip(bundle.item_list, bundle.clusters.tolist(), strict=True):
            self.cluster[self.index[item]] = cluster

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        seen = [self.known(p) for p in prefixes]
        scores = np.zeros((len(prefixes), len(self.items)))
        for row, known in enumerate(seen):
            if known and self.cluster[known[-1]] >= 0:
                members = self.cluster == self.cluster[known[-1]]
                scores[row, members] = 1.0 + self.rng.random(int(members.sum()))
        return self.top_k(scores, seen, k)


class ItemKNN(_Catalogue):
    """sim(i, j) = |sessions with i and j| / (|i|^alpha * |j|^(1-alpha) + shrink)."""

    def __init__(self, alpha: float = 0.5, shrink: float = 20.0) -> None:
        self.alpha, self.shrink = alpha, shrink

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        self.fit_catalogue(sessions)
        x = self.binary_rows([self.known(s) for s in sessions])
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
        seen = [self.known(p) for p in prefixes]
        last = [known[-1] if known else -1 for known in seen]
        scores = self.sim[np.maximum(last, 0)].toarray()
        scores[np.asarray(last) < 0] = 0.0
        return self.top_k(scores, seen, k)


class SessionKNN(_Catalogue):
    """SKNN: neighbours among the ``sample_size`` most recent sessions sharing an item."""

    def __init__(self, k: int = 100, sample_size: int = 1000) -> None:
        self.k, self.sample_size = k, sample_size

    def fit(self, sessions: Sequence[Sequence[str]]) -> None:
        # Sessions arrive ordered by start time (see models.datasets): higher row = more recent.
        self.fit_catalogue(sessions)
        self.sessions = self.binary_rows([self.known(s) for s in sessions])
        self.lengths = np.asarray(self.sessions.sum(axis=1)).ravel()

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        seen = [self.known(p) for p in prefixes]
        queries = self.binary_rows(seen)
        overlap = (queries @ self.sessions.T).tocsr()  # shared items per (query, session)
        q_len = np.asarray(queries.sum(axis=1)).ravel()
        rows, cols, sims = [], [], []
        for row in range(len(prefixes)):
            lo, hi = overlap.indptr[row], overlap.indptr[row + 1]
            neighbours, shared = overlap.indices[lo:hi], overlap.data[lo:hi]
            if len(neighbours) > self.sample_size:
                recent = np.argsort(neighbours)[-self.sample_size :]
                neighbours, shared = neighbours[recent], shared[recent]
            sim = shared / np.sqrt(q_len[row] * self.lengths[neighbours])
            if len(sim) > self.k:
                best = np.argpartition(-sim, self.k - 1)[: self.k]
                neighbours, sim = neighbours[best], sim[best]
            rows.append(np.full(len(sim), row))
            cols.append(neighbours)
            sims.append(sim)
        weights = sp.csr_matrix(
            (np.concatenate(sims), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(prefixes), self.sessions.shape[0]),
        )
        return self.top_k((weights @ self.sessions).toarray(), seen, k)


def model_factories(params: TrainParams | None = None) -> dict[str, Callable[[], Recommender]]:
    """Every model the harness knows, by the name ``--models`` uses."""
    params = params or TrainParams()
    return {
        "streamrec": lambda: StreamrecModel(params),
        "pop": Popular,
        "cluster_random": lambda: ClusterRandom(TrainParams(seed=params.seed)),
        "item_knn": ItemKNN,
        "sknn": SessionKNN,
    }
