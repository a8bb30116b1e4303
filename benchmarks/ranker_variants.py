"""Offline: other transforms of the linear ranker's features, fitted and scored on valid.

    .venv/bin/python benchmarks/ranker_variants.py tmall|ycgg|yoochoose|eshop [variant ...]

Trains the served model on the set's training split (as ``served_valid.py``), keeps the
cases and candidate features its ranker is fitted on, and ranks the validation split's
cases with every one of their candidates' features (``rank_codes(out_feats=...)``; the
candidates are the fixed blend's, so they do not depend on the ranker). Each variant is
a set of columns built from the raw features; it is fitted exactly as the shipped ranker
(softmax over each case's candidates, features scaled, L2 1e-3, L-BFGS) and scored on the
validation candidates: HR@20 / MRR@20 (literature protocol; a next click outside the
candidates is a miss). ``base`` (each feature and its square root) is the shipped
ranker and reproduces ``served_valid.py``'s figure. The trained model's features are
cached in ``--cache`` (a second run only fits).
"""

from __future__ import annotations

import argparse
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from served_valid import DATA, training_and_valid

import models.train as train_module
from models.evaluate import iter_cases
from models.features import LAYOUT
from models.fit import fit_scaled
from models.ranking import RankParams, encode_sessions, rank_codes
from models.train import TrainParams, train_model

NF = LAYOUT.n_features
AT = {name: i for i, name in enumerate(LAYOUT.names)}
Columns = Callable[[np.ndarray], list[np.ndarray]]


def base(raw: np.ndarray) -> list[np.ndarray]:
    return [raw, np.sqrt(np.maximum(raw, 0.0))]


def times(feature: str) -> Columns:
    return lambda raw: [*base(raw), raw * raw[..., AT[feature] : AT[feature] + 1]]


VARIANTS: dict[str, Columns] = {
    "base": base,
    "square": lambda raw: [*base(raw), raw * raw],
    "nonzero": lambda raw: [*base(raw), (raw != 0).astype(np.float32)],
    "log": lambda raw: [*base(raw), np.log1p(10.0 * np.maximum(raw, 0.0))],
    "of_case_max": lambda raw: [*base(raw), raw / np.maximum(raw.max(axis=1, keepdims=True), 1e-9)],
    "x_is_current": times("is_current"),
    "x_own_recency": times("own_recency"),
    "x_vsknn": times("vsknn"),
}


def design(raw: np.ndarray, columns: Columns) -> np.ndarray:
    return np.concatenate(columns(raw), axis=-1).astype(np.float32)


def capture(which: str, data: str) -> dict:
    """The fit's cases and the validation candidates of a freshly trained model."""
    kept: dict[str, np.ndarray] = {}
    shipped = train_module.fit_ranker

    def keep(rank_features, targets, *, l2):  # type: ignore[no-untyped-def]
        items, feats = rank_features()
        kept.update(items=items, feats=feats.astype(np.float32), targets=targets.copy())
        return shipped(lambda: (items, feats), targets, l2=l2)

    train_module.fit_ranker = keep  # type: ignore[assignment]
    try:
        train, valid, categories = training_and_valid(which, data)
        bundle = train_model([s.items for s in train], TrainParams(), categories=categories or None)
    finally:
        train_module.fit_ranker = shipped  # type: ignore[assignment]
    cases = list(iter_cases([s.items for s in valid]))
    codes, ptr = encode_sessions(bundle, [c.prefix for c in cases])
    targets = bundle.rows([c.target for c in cases])
    targets[targets < 0] = -2  # never matches
    params = RankParams.of(bundle)
    feats = np.zeros((len(cases), params.candidates, NF), dtype=np.float64)
    items, *_ = rank_codes(
        bundle, codes, ptr, params.candidates, params, exclude="none", out_feats=feats
    )
    return {"fit": kept, "items": items, "feats": feats.astype(np.float32), "targets": targets}


def fit(fit_cases: dict, columns: Columns, l2: float = 1e-3) -> np.ndarray:
    """As ``models.fit.fit_ranker``, over ``columns`` of the raw features."""
    where = fit_cases["items"] == fit_cases["targets"][:, None]
    found = where.any(axis=1)
    mask = fit_cases["items"][found] >= 0
    x = design(fit_cases["feats"][found], columns)
    start = np.zeros(x.shape[-1])
    start[: 2 * NF] = LAYOUT.blend_weights()
    return fit_scaled(x, mask, where[found].argmax(axis=1), start, l2)[0]


def score(d: dict, columns: Columns, w: np.ndarray) -> tuple[float, float]:
    """HR@20 and MRR@20 of the candidates ordered by ``w`` (ties: lower item first)."""
    items, targets = d["items"], d["targets"]
    x = design(d["feats"], columns)
    s = (x.reshape(-1, x.shape[-1]) @ w.astype(np.float32)).reshape(items.shape)
    s = np.where(items >= 0, s.astype(np.float64), -np.inf)
    at = items == targets[:, None]
    found = at.any(axis=1)
    mine = np.where(found, s[np.arange(len(targets)), at.argmax(axis=1)], np.inf)[:, None]
    ahead = (s > mine) | ((s == mine) & (items < targets[:, None]) & (items >= 0))
    rank = ahead.sum(axis=1)
    hit = found & (rank < 20)
    return float(hit.mean()), float(np.where(hit, 1.0 / (rank + 1), 0.0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=("tmall", "ycgg", "yoochoose", "eshop"))
    parser.add_argument("variants", nargs="*", help=f"of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/streamrec-ranker-variants"))
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(
            f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}"
        )
    path = args.cache / f"{args.set}.pkl"
    if path.exists():
        d = pickle.loads(path.read_bytes())
    else:
        d = capture(args.set, args.data)
        args.cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(d, protocol=4))
    recall = (d["items"] == d["targets"][:, None]).any(axis=1).mean()
    print(
        f"{args.set}: {len(d['targets']):,} valid cases, "
        f"next click among the candidates {recall:.4f}"
    )
    for name in args.variants or VARIANTS:
        t = time.perf_counter()
        w = fit(d["fit"], VARIANTS[name])
        hr, mrr = score(d, VARIANTS[name], w)
        print(
            f"  {name:14s} HR@20 {hr:.4f}  MRR@20 {mrr:.4f}  "
            f"({len(w)} weights, fit {time.perf_counter() - t:.0f} s)"
        )


if __name__ == "__main__":
    main()
