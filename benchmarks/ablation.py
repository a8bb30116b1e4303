"""Ablation of the served model on the valid and test splits of three sets (literature
protocol, HR@20 / MRR@20).

Per set one bundle is trained as ``streamrec evaluate`` trains the model it scores on
test: tmall-cgg and yoochoose-cgg on ``train`` with item categories (valid, test and
test-novel are ranked by that bundle), yoochoose-100k on ``train_full`` for test and on
all but its last day for valid (that day). Each row then ranks the same cases:

- the served model (the learned ranker), and where it has boosted trees, the same model
  with them switched off;
- the ranker replaced by the table's fixed blend;
- each candidate source of the feature table removed in turn: its features weigh 0 in
  the ranker and in the first stage's blend (no refit).

Splits: ``valid``, ``test``, ``test-novel`` (-cgg sets), and the valid sessions that occur
verbatim in the training sessions (``valid-seen``) or do not (``valid-novel``): valid's
analogue of ``test`` against ``test-novel``, which repeat training sessions far more often.

``name=value`` arguments override ``TrainParams`` (a refit, e.g. to compare settings on
valid); ``--tree-param name=value`` passes an extra LightGBM parameter to the trees'
fit; ``--fit-without a,b`` fits the ranker with those features held at 0 (their
weights stay 0: the model ranks as one without them); ``--rows served`` ranks the first
row only. Prints a Markdown table; ``--json``
keeps the figures.

Usage: .venv/bin/python benchmarks/ablation.py [--sets tmall-cgg,yoochoose-cgg,yoochoose-100k]
           [--splits valid,test,test-novel] [--rows all|served] [--json OUT] [name=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from served_valid import DATA, overrides, training_and_valid

from models import train as train_module
from models.bundle import ModelBundle
from models.datasets import Session, build_sessions, read_clicks
from models.evaluate import iter_cases
from models.features import LAYOUT
from models.ranking import RankParams, encode_sessions, rank_codes
from models.train import TrainParams, train_model

SETS = {"tmall-cgg": "tmall", "yoochoose-cgg": "ycgg", "yoochoose-100k": "yoochoose"}
CGG_COLUMNS = {"session_col": "session_id", "item_col": "item_id", "order_col": "position"}


def variants(bundle: ModelBundle, rows: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(row label, ranker weights, first-stage blend) of each row of the table."""
    out = [("served model, learned ranker", bundle.ranker_weights, LAYOUT.prior_weights())]
    if rows == "served":
        return out
    out.append(
        ("ranker replaced by the fixed blend", LAYOUT.blend_weights(), LAYOUT.prior_weights())
    )
    n = LAYOUT.n_features
    for source, name in enumerate(LAYOUT.strategies):
        off = LAYOUT.feature_source == source
        if not off.any():
            continue
        weights = bundle.ranker_weights.copy()
        weights[:n][off] = 0.0
        weights[n:][off] = 0.0
        prior = LAYOUT.prior_weights()
        prior[off] = 0.0
        names = ", ".join(f for f, o in zip(LAYOUT.names, off, strict=True) if o)
        out.append((f"without {name} ({names})", weights, prior))
    return out


def score(
    bundle: ModelBundle, sessions: list[list[str]], rows: str
) -> dict[str, tuple[float, float]]:
    """HR@20 and MRR@20 of every row on the next-click cases of ``sessions``."""
    cases = list(iter_cases(sessions))
    codes, ptr = encode_sessions(bundle, [c.prefix for c in cases])
    targets = bundle.rows([c.target for c in cases])
    targets[targets < 0] = -2  # never matches
    trained = RankParams.of(bundle)
    out = {}
    rankings = [(label, w, p, trained) for label, w, p in variants(bundle, rows)]
    if trained.rerank_top > 0:  # the same model with its boosted trees switched off
        label, weights, prior, _ = rankings[0]
        off = replace(trained, rerank_top=0)
        rankings.insert(1, (f"{label}, boosted trees off", weights, prior, off))
    for label, weights, prior, params in rankings:
        items, *_ = rank_codes(
            bundle, codes, ptr, 20, params, exclude="none", weights=weights, prior=prior
        )
        hit = items == targets[:, None]
        rank = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)
        mrr = float(np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0).mean())
        out[label] = (float(hit.any(axis=1).mean()), mrr)
    return out


def _items(sessions: list[Session]) -> list[list[str]]:
    return [s.items for s in sessions]


def _read(path: Path, fmt: str, **columns: str) -> list[list[str]]:
    clicks = read_clicks(path, fmt, **columns)
    return _items(build_sessions(clicks, min_length=2, collapse_repeats=False))


def run_set(
    name: str, splits: list[str], params: TrainParams, rows: str, data: str
) -> dict[str, dict[str, tuple[float, float]]]:
    """{split: {row: (HR@20, MRR@20)}} for one set."""
    short = SETS[name]
    folder = Path(data) / name
    train, valid, categories = training_and_valid(short, data)
    results: dict[str, dict[str, tuple[float, float]]] = {}

    def fit(sessions: list[list[str]]) -> ModelBundle:
        t = time.perf_counter()
        bundle = train_model(sessions, params, categories=categories or None)
        print(
            f"  {name}: trained on {len(sessions):,} sessions in {time.perf_counter() - t:.0f} s",
            file=sys.stderr,
        )
        return bundle

    seen = {tuple(s.items) for s in train}
    parts = {
        "valid": _items(valid),
        "valid-seen": [s.items for s in valid if tuple(s.items) in seen],
        "valid-novel": [s.items for s in valid if tuple(s.items) not in seen],
    }
    if short == "yoochoose":
        valid_splits = [s for s in splits if s in parts]
        if valid_splits:
            bundle = fit(_items(train))
            for split in valid_splits:
                results[split] = score(bundle, parts[split], rows)
        tests = [s for s in splits if s == "test"]
        if tests:
            everything = _read(folder / "yoochoose-clicks-100k_train_full.txt", "auto")
            test = _read(folder / "yoochoose-clicks-100k_test.txt", "auto")
            results["test"] = score(fit(everything), test, rows)
        return results
    bundle = fit(_items(train))
    for split in splits:
        sessions = (
            parts[split]
            if split in parts
            else _read(folder / f"{split}.csv.gz", "csv", **CGG_COLUMNS)
        )
        results[split] = score(bundle, sessions, rows)
    return results


def fit_without(names: list[str]) -> None:
    """Make the trainer fit its ranker and its trees with the features ``names`` held at
    0 (the trees' seen cases too, which the ranker's fit does not rank)."""
    columns = [LAYOUT.column(name) for name in names]
    fit = train_module.fit_ranker
    top_cases = train_module.boosted.top_cases

    def masked_top_cases(feats, *args, **kwargs):  # type: ignore[no-untyped-def]
        feats[..., columns] = 0.0
        return top_cases(feats, *args, **kwargs)

    def masked(rank_features, targets, **kwargs):  # type: ignore[no-untyped-def]
        def zeroed() -> tuple[np.ndarray, np.ndarray]:
            items, feats = rank_features()
            feats[..., columns] = 0.0
            return items, feats

        return fit(zeroed, targets, **kwargs)

    train_module.fit_ranker = masked  # type: ignore[assignment]
    train_module.boosted.top_cases = masked_top_cases  # type: ignore[attr-defined]


def tree_params(pairs: list[str]) -> None:
    """Make the trees' fit pass extra LightGBM parameters (``name=value``, the value read
    as JSON when it parses, else as text), e.g. ``lambda_l2=10``."""
    import lightgbm as lgb

    extra: dict[str, object] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            extra[name] = json.loads(value)
        except ValueError:
            extra[name] = value
    train = lgb.train

    def with_extra(params, *args, **kwargs):  # type: ignore[no-untyped-def]
        return train({**params, **extra}, *args, **kwargs)

    lgb.train = with_extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--splits", default="valid,test,test-novel")
    parser.add_argument("--rows", default="all", choices=("all", "served"))
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--fit-without", default="", help="features held at 0 in the fit")
    parser.add_argument(
        "--tree-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra LightGBM parameter for the trees' fit (repeatable)",
    )
    parser.add_argument("train", nargs="*", help="TrainParams overrides, name=value")
    args = parser.parse_args()
    tree_params(args.tree_param)
    params = TrainParams(**overrides(TrainParams(), args.train))
    if args.fit_without:
        fit_without(args.fit_without.split(","))
    splits = [s for s in args.splits.split(",") if s]
    columns: list[str] = []
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for name in [s for s in args.sets.split(",") if s]:
        if name not in SETS:
            parser.error(f"unknown set {name!r}; choose from {', '.join(SETS)}")
        for split, rows in run_set(name, splits, params, args.rows, args.data).items():
            column = f"{name} {split}"
            columns.append(column)
            for label, figures in rows.items():
                table.setdefault(label, {})[column] = figures
    print("| variant | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for label, figures in table.items():
        cells = [f"{figures[c][0] * 100:.2f} / {figures[c][1] * 100:.2f}" for c in columns]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
