"""Serve-time ablation of the served model (test split, or valid, literature protocol).

One bundle is trained on the set's training split (``train_full`` for yoochoose-100k;
``train`` with item categories for the -cgg sets); then each source's features (and its
share of the first-stage blend) are switched off at serve time, without refitting the
ranker, and the ranker is replaced by the fixed blend. Prints a Markdown table
(HR@20 / MRR@20).

Usage: .venv/bin/python benchmarks/served_ablation.py [--set yoochoose-100k|tmall-cgg|yoochoose-cgg]
           [--split test|valid] [--data ../shared/data]

``--split valid`` ranks the -cgg sets' validation cases instead (the same bundle).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from models.datasets import build_sessions, item_categories, read_clicks
from models.evaluate import iter_cases
from models.features import LAYOUT
from models.ranking import RankParams, encode_sessions, rank_codes
from models.train import TrainParams, train_model

CGG_COLUMNS = {
    "session_col": "session_id",
    "item_col": "item_id",
    "order_col": "position",
    "category_col": "category",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", default="yoochoose-100k", choices=("yoochoose-100k", "tmall-cgg", "yoochoose-cgg")
    )
    parser.add_argument("--split", default="test", choices=("test", "valid"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    if args.split == "valid" and args.set == "yoochoose-100k":
        parser.error("--split valid: only the -cgg sets have a validation file")
    folder = args.data / args.set
    categories: dict[str, str] = {}

    def sessions(name: str, *, train: bool = False) -> list[list[str]]:
        if args.set == "yoochoose-100k":
            clicks = read_clicks(folder / name, "yoochoose")
        else:
            clicks = read_clicks(folder / name, "csv", **CGG_COLUMNS)
            if train:  # as `streamrec evaluate`: the training file's categories only
                categories.update(item_categories(clicks))
        return [s.items for s in build_sessions(clicks, 2, collapse_repeats=False)]

    cgg = args.set != "yoochoose-100k"
    train = sessions("train.csv.gz" if cgg else "yoochoose-clicks-100k_train_full.txt", train=True)
    test = sessions(f"{args.split}.csv.gz" if cgg else "yoochoose-clicks-100k_test.txt")
    bundle = train_model(train, TrainParams(), categories=categories)
    cases = list(iter_cases(test))
    codes, ptr = encode_sessions(bundle, [c.prefix for c in cases])
    targets = bundle.rows([c.target for c in cases])
    targets[targets < 0] = -2  # never matches
    params = RankParams.of(bundle)

    def metrics(weights: np.ndarray, prior: np.ndarray | None) -> str:
        items, *_ = rank_codes(
            bundle, codes, ptr, 20, params, exclude="none", weights=weights, prior=prior
        )
        hit = items == targets[:, None]
        rank = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)
        mrr = np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0).mean()
        return f"{hit.any(axis=1).mean():.4f} | {mrr:.4f}"

    print("| variant | HR@20 | MRR@20 |\n| --- | ---: | ---: |")
    print(f"| served model, learned ranker | {metrics(bundle.ranker_weights, None)} |")
    print(f"| ranker replaced by the fixed blend | {metrics(LAYOUT.blend_weights(), None)} |")
    n = LAYOUT.n_features
    for source, name in enumerate(LAYOUT.strategies):
        off = LAYOUT.feature_source == source
        weights = bundle.ranker_weights.copy()
        weights[:n][off] = 0.0
        weights[n:][off] = 0.0
        prior = LAYOUT.prior_weights()
        prior[off] = 0.0
        names = ", ".join(f for f, o in zip(LAYOUT.names, off, strict=True) if o)
        print(f"| without {name} ({names}) | {metrics(weights, prior)} |")


if __name__ == "__main__":
    main()
