"""STAN's two decay widths chosen on the validation splits (quality.md, "STAN").

    .venv/bin/python benchmarks/stan_valid.py [--sets tmall,ycgg,yoochoose,eshop]

For each set, STAN (``models.baselines.STAN``) is fitted on the training split and scores
every validation case (literature protocol, HR@20 / MRR@20) with lambda_1 and lambda_3
at 0.5, 1 and 2 times the mean training session length. The rule, fixed before running:
the pair of factors with the best mean of HR@20 + MRR@20 over the sets becomes the
default of every set (the factors, not the absolute widths).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from served_valid import DATA, training_and_valid

from models.baselines import STAN
from models.evaluate import iter_cases, rank_metrics

FACTORS = (0.5, 1.0, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="tmall,ycgg,yoochoose,eshop")
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args()
    totals: dict[tuple[float, float], list[float]] = {}
    for which in args.sets.split(","):
        train, valid, _ = training_and_valid(which, args.data)
        train_items = [s.items for s in train]
        cases = list(iter_cases([s.items for s in valid]))
        prefixes, targets = [c.prefix for c in cases], [c.target for c in cases]
        mean = float(np.mean([len(s) for s in train_items]))
        for f1, f3 in itertools.product(FACTORS, FACTORS):
            model = STAN(lambda_1=f1 * mean, lambda_3=f3 * mean)
            model.fit(train_items)
            recs = []
            for lo in range(0, len(prefixes), 500):
                recs += model.recommend_batch(prefixes[lo : lo + 500], 20)
            hr, mrr = rank_metrics(recs, targets, 20)
            totals.setdefault((f1, f3), []).append(hr + mrr)
            print(f"{which:9s} lambda_1 {f1} x {mean:.2f}  lambda_3 {f3} x {mean:.2f}  "
                  f"HR@20 {hr:.4f}  MRR@20 {mrr:.4f}", flush=True)  # fmt: skip
    best = max(totals, key=lambda f: float(np.mean(totals[f])))
    for f, v in sorted(totals.items()):
        print(f"factors {f}: mean HR+MRR {np.mean(v):.4f}{'  <- best' if f == best else ''}")


if __name__ == "__main__":
    main()
