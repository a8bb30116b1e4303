"""Recommendation quality: streamrec against the baselines on both datasets.

Runs the two `streamrec evaluate` commands that BENCHMARKS.md quotes (so the table is
exactly what a user gets), then, through the Python API on the same cases, an
ablation of the streamrec ranker and the strongest baselines under other settings.
Prints Markdown.

Usage: .venv/bin/python benchmarks/quality.py [--yoochoose DIR] [--skip-extra]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from models.baselines import ItemKNN, SessionKNN
from models.datasets import build_sessions, eshop_path, read_clicks, split_last_days
from models.evaluate import Recommender, evaluate
from models.train import StreamrecModel, TrainParams

ROOT = Path(__file__).resolve().parents[1]
YOOCHOOSE = ROOT.parent / "shared" / "data" / "yoochoose-100k"
K = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yoochoose", type=Path, default=YOOCHOOSE)
    parser.add_argument("--skip-extra", action="store_true", help="Only the two CLI runs.")
    args = parser.parse_args()
    yc_train = args.yoochoose / "yoochoose-clicks-100k_train_full.txt"
    yc_test = args.yoochoose / "yoochoose-clicks-100k_test.txt"
    datasets = {
        "e-shop clothing 2008, test = last 30 days": [
            "--train",
            _rel(eshop_path()),
            "--split-days",
            "30",
        ],
        "YOOCHOOSE 100k, train_full / test": ["--train", _rel(yc_train), "--test", _rel(yc_test)],
    }
    for title, options in datasets.items():
        command = ["streamrec", "evaluate", *options, "--k", str(K)]
        print(f"### {title}\n\n```\n{' '.join(command)} --json OUT.json\n```\n")
        print(_table(_run_cli(command)))

    if args.skip_extra:
        return
    splits = {
        "e-shop": _sessions_split(eshop_path(), None),
        "YOOCHOOSE": _sessions_split(yc_train, yc_test),
    }
    base = TrainParams()
    variants: dict[str, Callable[[], Recommender]] = {
        "streamrec (defaults)": lambda: StreamrecModel(base),
        "co-occurrence only (w_cos=0, w_cluster=0)": lambda: StreamrecModel(
            replace(base, w_cos=0.0, w_cluster=0.0)
        ),
        "embedding only (w_cooc=0, w_cluster=0)": lambda: StreamrecModel(
            replace(base, w_cooc=0.0, w_cluster=0.0)
        ),
        "embedding + cluster boost (w_cooc=0)": lambda: StreamrecModel(replace(base, w_cooc=0.0)),
        "no recency weighting (recency_decay=1)": lambda: StreamrecModel(
            replace(base, recency_decay=1.0)
        ),
        "last item only (context=1)": lambda: StreamrecModel(replace(base, context=1)),
        "Word2Vec 5 epochs": lambda: StreamrecModel(replace(base, epochs=5)),
        "item_knn alpha=0.75 shrink=20": lambda: ItemKNN(alpha=0.75, shrink=20.0),
        "item_knn alpha=0.5 shrink=100": lambda: ItemKNN(alpha=0.5, shrink=100.0),
        "sknn k=500 sample=5000": lambda: SessionKNN(k=500, sample_size=5000),
    }
    print("### Ablation and other baseline settings (HR@20 / MRR@20)\n")
    print("| variant | " + " | ".join(splits) + " |")
    print("| --- |" + " --- |" * len(splits))
    scores: dict[str, list[str]] = {name: [] for name in variants}
    for train, test in splits.values():
        for name, metrics in evaluate(variants, train, test, k=K):
            scores[name].append(f"{metrics.hr:.4f} / {metrics.mrr:.4f}")
    for name, cells in scores.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(Path("..") / path.resolve().relative_to(ROOT.parent))


def _run_cli(command: list[str]) -> dict:  # type: ignore[type-arg]
    streamrec = str(Path(sys.executable).with_name("streamrec"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        subprocess.run(
            [streamrec, *command[1:], "--json", str(out)],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return json.loads(out.read_text())


def _table(report: dict) -> str:  # type: ignore[type-arg]
    models = report["models"]
    best_hr = max(m["hr"] for m in models.values())
    best_mrr = max(m["mrr"] for m in models.values())
    lines = [
        f"{report['cases']} cases.\n",
        "| model | HR@20 | MRR@20 | coverage@20 | mean popularity rank | train s | recs/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in models.items():
        hr = f"**{m['hr']:.4f}**" if m["hr"] == best_hr else f"{m['hr']:.4f}"
        mrr = f"**{m['mrr']:.4f}**" if m["mrr"] == best_mrr else f"{m['mrr']:.4f}"
        lines.append(
            f"| {name} | {hr} | {mrr} | {m['coverage']:.3f} | {m['popularity_rank']:.1f} "
            f"| {m['train_s']:.1f} | {m['recs_per_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def _sessions_split(
    train_path: Path, test_path: Path | None
) -> tuple[list[list[str]], list[list[str]]]:
    train = build_sessions(read_clicks(train_path))
    if test_path is None:
        train, test = split_last_days(train, 30)
    else:
        test = build_sessions(read_clicks(test_path))
    return [s.items for s in train], [s.items for s in test]


if __name__ == "__main__":
    main()
