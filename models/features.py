"""The served model's one table of candidate sources and ranking features.

Everything else reads this table: the kernel (``models.kernel``: feature columns, the
stage-one prior, which source a list's top item came from), the ranker fit
(``models.fit``: one raw and one square-root weight per feature, started from the
blend), the bundle (``models.bundle``: which arrays a model holds, how they are checked,
the ranker weights by feature name) and the ablation (benchmarks/ablation.py).

``SOURCES`` are the candidate sources in the order of ``STRATEGIES`` (the ``strategy``
of a ranked list is the source whose features contribute most to its top item's score).
``LISTS`` are the CSR arrays the sources keep in a bundle: ``<name>_ptr`` (int32, one
row per ``rows``), ``<name>_idx`` (int32 rows of ``over``) and, when weighted,
``<name>_w`` (float32); ``context`` also keeps the sorted ``context_keys`` its rows
stand for. ``FEATURE_TABLE`` gives each feature its column (its position), its source,
its weight in the fixed blend (stage one, and the fit's start) and when it is computed:

- ``gather``: while candidates are gathered, for every candidate (so the blend of stage
  one can use it);
- ``pool``: only for the candidates kept for stage two (the blend of stage one ignores
  it);
- ``item``: a per-item value computed at train time by the feature's ``values``
  function and stored in the bundle as ``feature_<name>.npy`` (float32, one per item); the
  kernel copies it for the candidates kept for stage two.

How to add a feature
    The easiest is an ``item`` feature: append ``Feature(name, source, kind="item",
    values=fn)`` with ``fn(TrainData) -> float32 [items]``. Nothing else changes: the
    trainer stores the array, the bundle checks and loads it, the kernel fills the
    column, the fit weighs it. A feature that depends on the session is one entry
    here plus its computation in ``models.kernel.served_kernel`` (read its column as
    a module constant there, e.g. ``MY_FEATURE = column("my_feature")``).

How to add a source
    One ``Source`` entry (a new strategy name), its arrays as a ``SourceList`` entry (built at
    train time in ``models.sources.build_lists``, returned under the list's array names),
    its features as above, and the loop that gathers its candidates in the kernel (the
    list arrives in ``ServedModel`` under its name).

Appending keeps old bundles' weights meaningful: ranker weights are stored and loaded by
feature name (a feature the bundle does not know weighs 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class TrainData:
    """What an ``item`` feature's ``values`` function may read at train time."""

    codes: list[np.ndarray]  # training sessions as item rows, oldest click first
    counts: np.ndarray  # int64 [items]: clicks per item
    item_category: np.ndarray  # int32 [items], -1 for none


@dataclass(frozen=True)
class Source:
    name: str
    about: str


@dataclass(frozen=True)
class SourceList:
    name: str
    source: str
    rows: Literal["items", "sessions", "contexts", "categories"]
    over: Literal["items", "sessions"]
    weighted: bool
    about: str

    @property
    def arrays(self) -> tuple[str, ...]:
        names = (f"{self.name}_ptr", f"{self.name}_idx")
        names += (f"{self.name}_w",) if self.weighted else ()
        return (*names, "context_keys") if self.rows == "contexts" else names


@dataclass(frozen=True)
class Feature:
    name: str
    source: str
    blend: float = 0.0
    kind: Literal["gather", "pool", "item"] = "gather"
    about: str = ""
    values: Callable[[TrainData], np.ndarray] | None = None

    @property
    def array(self) -> str:
        """The bundle array of an ``item`` feature's values."""
        return f"feature_{self.name}"


def log_popularity(data: TrainData) -> np.ndarray:
    """log(1 + clicks) / log(1 + the most clicks)."""
    counts = data.counts
    return (np.log1p(counts) / np.log1p(max(1, int(counts.max(initial=0))))).astype(np.float32)


SOURCES = (
    Source("embedding", "the Word2Vec / co-occurrence / cluster neighbour lists"),
    Source("cluster", "the last click's KMeans cluster"),
    Source("popular", "the most clicked items"),
    Source("session_knn", "the items of the most similar training sessions"),
    Source("transitions", "P(next | last click)"),
    Source("rules", "sequential rules of the newest clicks"),
    Source("own", "the session's own items"),
    Source("sequence", "what followed the same last clicks in training"),
    Source("category", "the last click's category"),
)

LISTS = (
    SourceList("transitions", "transitions", "items", "items", True, "P(next = j | last = i)"),
    SourceList("rules", "rules", "items", "items", True, "j up to rule_steps after i, 1/distance"),
    SourceList("sessions", "session_knn", "sessions", "items", False, "a session's distinct items"),
    SourceList(
        "item_sessions", "session_knn", "items", "sessions", False, "an item's newest sessions"
    ),
    SourceList("context", "sequence", "contexts", "items", True, "P(next) per hashed context"),
    SourceList("category", "category", "categories", "items", False, "a category's most clicked"),
)

FEATURE_TABLE = (
    Feature("vsknn", "session_knn", 1.0, about="V-SKNN vote of the k nearest sessions"),
    Feature("sknn", "session_knn", 0.5, about="SKNN (cosine) vote of the same sessions"),
    Feature("transitions", "transitions", 0.5, about="P(j next) after the last click"),
    Feature("rules", "rules", 0.3, about="rule weight from the newest clicks, by age"),
    Feature("neighbours", "embedding", 0.3, about="neighbour score from the newest clicks"),
    Feature("own_recency", "own", 0.6, about="sum of own_decay ** age over j's clicks"),
    Feature("own_count", "own", about="log(1 + clicks of j in the session)"),
    Feature("is_current", "own", about="j is the last click"),
    Feature("emb_last", "embedding", kind="pool", about="cosine to the last click"),
    Feature("emb_session", "embedding", 0.02, "pool", "cosine to the session vector"),
    Feature("same_cluster", "cluster", kind="pool", about="same cluster as the last click"),
    Feature("popularity", "popular", 0.001, "item", "log popularity", values=log_popularity),
    Feature("after_2", "sequence", 0.3, about="P(j next) after the same last 2 clicks"),
    Feature("after_3", "sequence", about="P(j next) after the same last 3 clicks"),
    Feature("after_prefix", "sequence", 0.3, about="P(j next) after the same whole prefix"),
    Feature("after_prefix_long", "sequence", about="after_prefix * log(1 + clicks)"),
    Feature("same_category", "category", kind="pool", about="1: the last click's category"),
    Feature("category_share", "category", kind="pool", about="recency share of j's category"),
    Feature("category_top", "category", 0.05, about="1 / rank in the last click's category"),
)


@dataclass(frozen=True)
class Layout:
    """What the table means for arrays: derived once (``layout``)."""

    features: tuple[Feature, ...]
    sources: tuple[Source, ...]
    lists: tuple[SourceList, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_weights(self) -> int:
        return 2 * len(self.features)  # raw features, then their square roots

    @property
    def strategies(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources)

    def column(self, name: str) -> int:
        return self.names.index(name)

    @property
    def feature_source(self) -> np.ndarray:
        """Index into ``strategies`` of each feature's source."""
        return np.array([self.strategies.index(f.source) for f in self.features], dtype=np.int64)

    @property
    def item_features(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.kind == "item")

    @property
    def item_columns(self) -> np.ndarray:
        return np.array([self.column(f.name) for f in self.item_features], dtype=np.int64)

    @property
    def list_arrays(self) -> tuple[str, ...]:
        return tuple(name for lst in self.lists for name in lst.arrays)

    def blend_weights(self) -> np.ndarray:
        """The fixed blend: every weight of a raw feature its ``blend``, square roots 0."""
        w = np.zeros(self.n_weights, dtype=np.float64)
        w[: self.n_features] = [f.blend for f in self.features]
        return w

    def prior_weights(self) -> np.ndarray:
        """The blend over the features known before stage two (``gather``)."""
        return np.array(
            [f.blend if f.kind == "gather" else 0.0 for f in self.features], dtype=np.float64
        )

    def weights_by_name(self, names: list[str], weights: np.ndarray) -> np.ndarray:
        """Weights stored for features ``names`` (raw, then square roots) in this layout's
        columns; a feature not stored weighs 0, a stored one this layout lacks is dropped."""
        half = len(names)
        out = np.zeros(self.n_weights, dtype=np.float64)
        for f, name in enumerate(names):
            if name in self.names:
                c = self.column(name)
                out[c], out[self.n_features + c] = weights[f], weights[half + f]
        return out

    def markdown(self) -> str:
        """The table as the README shows it (``python -m models.features`` prints it)."""
        rows = [
            "| column | feature | source | blend | computed | what |",
            "| ---: | --- | --- | ---: | --- | --- |",
        ]
        for c, f in enumerate(self.features):
            rows.append(f"| {c} | `{f.name}` | `{f.source}` | {f.blend:g} | {f.kind} | {f.about} |")
        return "\n".join(rows) + "\n"


def layout(
    features: tuple[Feature, ...] = FEATURE_TABLE,
    sources: tuple[Source, ...] = SOURCES,
    lists: tuple[SourceList, ...] = LISTS,
) -> Layout:
    """The layout of a table; refuses names used twice or a source not in ``sources``."""
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ValueError("a feature name is used twice")
    known = {s.name for s in sources}
    for entry in (*features, *lists):
        if entry.source not in known:
            raise ValueError(f"{entry.name}: unknown source {entry.source!r}")
    for f in features:
        if (f.kind == "item") != (f.values is not None):
            raise ValueError(f"{f.name}: an item feature (and only one) has values")
    return Layout(tuple(features), tuple(sources), tuple(lists))


# The table in use. Read it as ``features.LAYOUT`` at call time (not bound at import), so
# a test can extend the table (``layout((*FEATURE_TABLE, extra))``) and see it everywhere.
LAYOUT = layout()


if __name__ == "__main__":
    print(LAYOUT.markdown(), end="")
