"""Offline evaluation: next-item prediction over every prefix of every test session.

A test session of n clicks gives n-1 cases: clicks 1..i predict click i+1. Every model
sees the same cases; a target never seen in training is simply a miss. Two protocols:

- ``next-item``: the literature protocol (``../shared/data/REFERENCE.md``, SR-GNN,
  session-rec): nothing is filtered, so a model may recommend items already in the
  session, the current one included. Published numbers use it.
- ``serving``: the same cases with a tenant's serving rule applied after ranking
  (``exclude``: ``none``, ``current`` = never the item being looked at, ``seen`` = no
  item of the session), so the report shows what the rule costs.

``evaluate`` is a generator (one result per model, as each finishes) with no printing or
files, so the CLI, the benchmarks and the tests all drive the same code.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from models.errors import InvalidSettingError

PROTOCOLS = ("next-item", "serving")
EXCLUDES = ("none", "current", "seen")


class Recommender(Protocol):
    """What the harness needs from a model: learn from sessions, rank for many prefixes.

    A model may also define ``tune(train, valid)``: the harness calls it before ``fit``
    when a validation split is given, and only then (test never reaches it).
    """

    def fit(self, sessions: Sequence[Sequence[str]]) -> None: ...

    def recommend_batch(self, prefixes: Sequence[Sequence[str]], k: int) -> list[list[str]]: ...


@dataclass(frozen=True)
class Case:
    prefix: Sequence[str]  # clicks so far, oldest first
    target: str  # the click that came next


@dataclass(frozen=True)
class Metrics:
    cases: int
    hr: float  # HR@k = Recall@k with one relevant item per case
    mrr: float  # MRR@k: 1/rank of the target, 0 when it is not in the top k
    coverage: float  # share of the training catalogue that appears in some list
    popularity_rank: float  # mean training-popularity rank of recommended items (1 = most popular)
    train_s: float
    recs_per_s: float
    settings: dict[str, Any] | None = None  # what a model chose (``model.report()``), if any

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["settings"] is None:
            del out["settings"]
        return out


def iter_cases(sessions: Iterable[Sequence[str]]) -> Iterator[Case]:
    """Every prefix of every session of at least two clicks (repeats kept)."""
    for session in sessions:
        for i in range(1, len(session)):
            yield Case(session[:i], session[i])


def excluded_items(prefix: Sequence[str], exclude: str) -> set[str]:
    """What the serving rule ``exclude`` forbids for a session with these clicks."""
    if exclude == "none" or not prefix:
        return set()
    if exclude == "current":
        return {prefix[-1]}
    if exclude == "seen":
        return set(prefix)
    raise InvalidSettingError(
        f"unknown exclude rule {exclude!r}; choose one of {', '.join(EXCLUDES)}"
    )


def apply_exclude(
    lists: Sequence[Sequence[str]], prefixes: Sequence[Sequence[str]], exclude: str, k: int
) -> list[list[str]]:
    """Drop what ``exclude`` forbids from each ranked list (after ranking), keep ``k``."""
    out = []
    for items, prefix in zip(lists, prefixes, strict=True):
        banned = excluded_items(prefix, exclude)
        out.append([x for x in items if x not in banned][:k])
    return out


def rank_metrics(
    recommended: Sequence[Sequence[str]], targets: Sequence[str], k: int
) -> tuple[float, float]:
    """(HR@k, MRR@k) of ranked lists against one target each."""
    if not targets:
        return 0.0, 0.0
    hits, reciprocal = 0, 0.0
    for items, target in zip(recommended, targets, strict=True):
        top = list(items[:k])
        if target in top:
            hits += 1
            reciprocal += 1.0 / (top.index(target) + 1)
    return hits / len(targets), reciprocal / len(targets)


def evaluate(
    models: dict[str, Callable[[], Recommender]],
    train: Sequence[Sequence[str]],
    test: Sequence[Sequence[str]],
    k: int = 20,
    batch_size: int = 1000,
    *,
    protocol: str = "next-item",
    exclude: str = "current",
    valid: Sequence[Sequence[str]] | None = None,
    tune_train: Sequence[Sequence[str]] | None = None,
) -> Iterator[tuple[str, Metrics]]:
    """Fit each model on ``train`` (tuning on ``valid`` when given) and score it on every
    case of ``test`` under ``protocol``; yield as each ends. Tuning fits on ``tune_train``
    (default ``train``) when ``valid`` lies inside ``train``."""
    if protocol not in PROTOCOLS:
        raise InvalidSettingError(
            f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}"
        )
    rule = exclude if protocol == "serving" else "none"
    excluded_items([], rule)  # reject an unknown rule before any model is fitted
    cases = list(iter_cases(test))
    counts = Counter(item for s in train for item in s)
    popularity_rank = {item: rank for rank, (item, _) in enumerate(counts.most_common(), start=1)}
    targets = [c.target for c in cases]
    for name, make in models.items():
        model = make()
        started = time.perf_counter()
        tune = getattr(model, "tune", None)
        if valid is not None and callable(tune):
            tune(tune_train if tune_train is not None else train, valid)
        model.fit(train)
        train_s = time.perf_counter() - started
        recommended: list[list[str]] = []
        started = time.perf_counter()
        for lo in range(0, len(cases), batch_size):
            prefixes = [c.prefix for c in cases[lo : lo + batch_size]]
            if rule == "none":
                recommended += model.recommend_batch(prefixes, k)
                continue
            # Ask for enough extra items that the filter still leaves k.
            extra = 1 if rule == "current" else max(len(set(p)) for p in prefixes)
            lists = model.recommend_batch(prefixes, k + extra)
            recommended += apply_exclude(lists, prefixes, rule, k)
        rank_s = time.perf_counter() - started
        hr, mrr = rank_metrics(recommended, targets, k)
        shown = [item for items in recommended for item in items[:k]]
        yield (
            name,
            Metrics(
                cases=len(cases),
                hr=hr,
                mrr=mrr,
                coverage=len(set(shown)) / max(1, len(counts)),
                popularity_rank=float(
                    np.mean([popularity_rank.get(i, len(counts) + 1) for i in shown])
                )
                if shown
                else 0.0,
                train_s=train_s,
                recs_per_s=len(cases) / rank_s if rank_s > 0 else float("inf"),
                settings=model.report() if callable(getattr(model, "report", None)) else None,
            ),
        )
