"""Validation-split sweep of the served model's settings (tmall-cgg and yoochoose-cgg
valid, yoochoose-100k last day of ``train_full``, the shipped e-shop data's 30 days before
its last 30; the literature protocol, HR@20 / MRR@20). The -cgg sets train with their
item categories (``--no-categories`` without).

One bundle is trained with the given ``TrainParams`` overrides (the ranker refitted with
them); its validation cases are then ranked with the trained settings and with each
serve-time variant (``RankParams`` overrides, no refit).

Usage: .venv/bin/python benchmarks/served_valid.py tmall|ycgg|yoochoose|eshop [name=value ...]
           [--serve name=value[,name=value] ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from models.datasets import (
    Session,
    build_sessions,
    eshop_path,
    item_categories,
    read_clicks,
    split_last_days,
)
from models.evaluate import iter_cases
from models.ranking import RankParams, encode_sessions, rank_codes
from models.train import TrainParams, train_model

DATA = "/work/shared/data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=("tmall", "ycgg", "yoochoose", "eshop"))
    parser.add_argument("train", nargs="*", help="TrainParams overrides, name=value")
    parser.add_argument("--serve", nargs="*", default=[], help="RankParams variants")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--no-categories", action="store_true", help="-cgg sets without them")
    args = parser.parse_args()

    train_over = overrides(TrainParams(), args.train)
    train, valid, categories = training_and_valid(args.set, args.data, args.no_categories)
    started = time.perf_counter()
    bundle = train_model(
        [s.items for s in train], TrainParams(**train_over), categories=categories or None
    )
    took = time.perf_counter() - started
    with_categories = f", {len(set(categories.values()))} categories" if categories else ""
    print(f"{args.set} trained with {train_over or 'defaults'}{with_categories} in {took:.0f} s")
    cases = list(iter_cases([s.items for s in valid]))
    codes, ptr = encode_sessions(bundle, [c.prefix for c in cases])
    targets = bundle.rows([c.target for c in cases])
    targets[targets < 0] = -2  # never matches
    trained = RankParams.of(bundle)
    for spec in ["", *args.serve]:
        params = dataclasses.replace(trained, **overrides(trained, spec.split(",") if spec else []))
        items, *_ = rank_codes(bundle, codes, ptr, 20, params, exclude="none")
        hit = items == targets[:, None]
        rank = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)
        mrr = np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0).mean()
        print(
            f"  serve {spec or 'as trained'}: HR@20 {hit.any(axis=1).mean():.4f}  MRR@20 {mrr:.4f}"
        )


def _sessions(path: str, fmt: str, cols: dict[str, str]) -> list[Session]:
    """As ``streamrec evaluate`` reads them: repeats kept, one-click sessions dropped."""
    return build_sessions(read_clicks(path, fmt, **cols), min_length=2, collapse_repeats=False)


def training_and_valid(
    which: str, data: str, no_categories: bool = False
) -> tuple[list[Session], list[Session], dict[str, str]]:
    """The set's training and validation sessions, and its item categories (-cgg sets)."""
    categories: dict[str, str] = {}
    if which in ("tmall", "ycgg"):
        where = f"{data}/{'tmall' if which == 'tmall' else 'yoochoose'}-cgg"
        cols = {"session_col": "session_id", "item_col": "item_id", "order_col": "position"}
        clicks = read_clicks(f"{where}/train.csv.gz", "csv", category_col="category", **cols)
        train = build_sessions(clicks, min_length=2, collapse_repeats=False)
        valid = _sessions(f"{where}/valid.csv.gz", "csv", cols)
        if not no_categories:
            categories = item_categories(clicks)
    elif which == "eshop":  # as `streamrec evaluate --split-days 30 --valid-days 30`
        rest, _test = split_last_days(_sessions(str(eshop_path()), "eshop", {}), 30)
        train, valid = split_last_days(rest, 30)
    else:
        path = f"{data}/yoochoose-100k/yoochoose-clicks-100k_train_full.txt"
        train, valid = split_last_days(_sessions(path, "auto", {}), 1)
    return train, valid, categories


def overrides(defaults: object, pairs: list[str]) -> dict[str, object]:
    """``name=value`` pairs as keyword overrides of a dataclass's fields (typed alike)."""
    out: dict[str, object] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not hasattr(defaults, name):
            raise SystemExit(f"unknown setting {name!r}")
        out[name] = type(getattr(defaults, name))(value)
    return out


if __name__ == "__main__":
    main()
