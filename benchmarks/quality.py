"""Recommendation quality: the served model against every baseline on four sets.

Runs the `streamrec evaluate` commands that BENCHMARKS.md and benchmarks/quality.md quote
(literature protocol and serving protocol with --exclude current, test splits). The
served model's ablation (each source removed, the fixed blend instead of the learned
ranker) is benchmarks/ablation.py. Prints Markdown; keeps each JSON report in --out.

Usage: .venv/bin/python benchmarks/quality.py [--sets tmall,yoochoose-cgg,yoochoose-100k,eshop]
       [--protocols next-item,serving] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("..") / "shared" / "data"
K = 20
MODELS = "streamrec,pop,transitions,sr,item_knn,item2vec,cluster_random,sknn,vsknn,stan"
CGG = [
    "--format",
    "csv",
    "--session-col",
    "session_id",
    "--item-col",
    "item_id",
    "--order-col",
    "position",
    "--category-col",
    "category",
]


def _cgg(name: str) -> list[str]:
    folder = DATA / name
    return [
        "--train",
        str(folder / "train.csv.gz"),
        "--valid",
        str(folder / "valid.csv.gz"),
        "--test",
        str(folder / "test.csv.gz"),
        *CGG,
    ]


SETS: dict[str, tuple[str, list[str]]] = {
    "tmall": ("tmall-cgg: train / valid / test", _cgg("tmall-cgg")),
    "yoochoose-cgg": ("yoochoose-cgg: train / valid / test", _cgg("yoochoose-cgg")),
    "yoochoose-100k": (
        "yoochoose-100k: train_full (last day = valid) / test",
        [
            "--train",
            str(DATA / "yoochoose-100k" / "yoochoose-clicks-100k_train_full.txt"),
            "--valid-days",
            "1",
            "--test",
            str(DATA / "yoochoose-100k" / "yoochoose-clicks-100k_test.txt"),
        ],
    ),
    "eshop": (
        "e-shop clothing 2008: test = last 30 days, valid = the 30 days before",
        [
            "--train",
            "models/datasets/eshop-clothing-2008.csv.gz",
            "--split-days",
            "30",
            "--valid-days",
            "30",
        ],
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--protocols", default="next-item,serving")
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/streamrec-quality"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for key in [s for s in args.sets.split(",") if s]:
        title, options = SETS[key]
        for protocol in [p for p in args.protocols.split(",") if p]:
            command = ["streamrec", "evaluate", *options, "--models", args.models, "--k", str(K)]
            command += ["--protocol", protocol]
            if protocol == "serving":
                command += ["--exclude", "current"]
            out = args.out / f"{key}-{protocol}.json"
            print(f"### {title}, {protocol}\n\n```\n{' '.join(command)} --json OUT.json\n```\n")
            _run_cli(command, out)
            print(_table(json.loads(out.read_text())), flush=True)


def _run_cli(command: list[str], out: Path) -> None:
    streamrec = str(Path(sys.executable).with_name("streamrec"))
    subprocess.run(
        [streamrec, *command[1:], "--json", str(out)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _table(report: dict) -> str:  # type: ignore[type-arg]
    models = report["models"]
    best_hr = max(m["hr"] for m in models.values())
    best_mrr = max(m["mrr"] for m in models.values())
    lines = [
        f"{report['cases']} cases, protocol {report['protocol']}"
        + (f" (exclude {report['exclude']})" if report["protocol"] == "serving" else "")
        + (f"; tuned on {report['tuned_on']}" if report.get("tuned_on") else "")
        + ".\n",
        "| model | HR@20 | MRR@20 | coverage@20 | mean popularity rank | train s | recs/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in models.items():
        hr = f"**{m['hr']:.4f}**" if m["hr"] == best_hr else f"{m['hr']:.4f}"
        mrr = f"**{m['mrr']:.4f}**" if m["mrr"] == best_mrr else f"{m['mrr']:.4f}"
        label = name
        if m.get("settings", {}).get("ranker"):
            label += f" (ranker chosen on valid: {m['settings']['ranker']})"
        lines.append(
            f"| {label} | {hr} | {mrr} | {m['coverage']:.3f} | {m['popularity_rank']:.1f} "
            f"| {m['train_s']:.1f} | {m['recs_per_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
