"""Small tenants' retraining: CPU and the tenant's own gate hold-out, on synthetic tenants
and on tenant-sized slices of real logs.

    .venv/bin/python benchmarks/tenant_slices.py [--clicks 10000] [--slices 8]

Each tenant goes through ``models.gate.retrain`` as the trainer runs it (train on the
older 80 %, score on the newest 20 %), single-threaded: 12 tenants of
``producers.synth`` (2,000 sessions, 2,000 items) and the newest ``--slices`` runs of
consecutive sessions of about ``--clicks`` clicks of yoochoose-100k, tmall-cgg,
yoochoose-cgg (from ../shared/data) and the shipped e-shop file. A first tenant warms the
compiled kernels and is not counted. Prints HR@20 / MRR@20 (mean over a set's tenants)
and process CPU seconds a tenant.

``--out FILE`` keeps every tenant's HR@20 / MRR@20 (JSON); ``--compare BASE`` then prints,
per set, the mean paired difference against a run saved by another tree (deterministic:
seeds fixed, one thread), with its standard error:

    PYTHONPATH=$BASE .venv/bin/python benchmarks/tenant_slices.py --out base.json
    .venv/bin/python benchmarks/tenant_slices.py --out branch.json --compare base.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from models import gate
from models.datasets import Session, build_sessions, eshop_path, read_clicks
from models.datasets.sessions import item_categories
from models.train import TrainParams
from producers.synth import SynthParams, generate_clicks

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
# A set's tenants (each its sessions) and their items' categories, where known.
Tenants = tuple[list[list[Session]], dict[str, str] | None]
CGG = {"session_col": "session_id", "item_col": "item_id", "order_col": "position"}


def slices(sessions: list[Session], clicks: int, most: int) -> list[list[Session]]:
    """The newest ``most`` runs of consecutive sessions of at least ``clicks`` clicks."""
    out: list[list[Session]] = []
    run: list[Session] = []
    n = 0
    for s in reversed(sessions):
        run.append(s)
        n += len(s.items)
        if n >= clicks:
            out.append(run[::-1])
            run, n = [], 0
            if len(out) == most:
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=10_000, help="clicks a slice")
    parser.add_argument("--slices", type=int, default=8, help="slices a real log")
    parser.add_argument("--out", type=Path, help="write each tenant's HR@20 / MRR@20 here")
    parser.add_argument("--compare", type=Path, help="a base run's --out: paired differences")
    args = parser.parse_args()
    threadpool_limits(1)
    synth = [
        build_sessions(
            generate_clicks(
                SynthParams(items=2000, sessions=2000, seed=s, days=6, start_ts=1.7e9 - 7 * 86400)
            )
        )
        for s in range(100, 112)
    ]
    sets: dict[str, tuple[list[list[Session]], dict[str, str] | None]] = {
        "synthetic": (synth, None)
    }
    yc = read_clicks(DATA / "yoochoose-100k" / "yoochoose-clicks-100k_train_full.txt", "yoochoose")
    sets["yoochoose-100k"] = (slices(build_sessions(yc), args.clicks, args.slices), None)
    for name in ("tmall-cgg", "yoochoose-cgg"):
        c = read_clicks(DATA / name / "train.csv.gz", "csv", category_col="category", **CGG)
        sets[name] = (slices(build_sessions(c), args.clicks, args.slices), item_categories(c))
    es = read_clicks(eshop_path())
    sets["e-shop"] = (slices(build_sessions(es), args.clicks, args.slices), item_categories(es))
    params, policy = TrainParams(), gate.GatePolicy()
    gate.retrain(synth[0], None, params, policy)  # compiles or loads the kernels
    total_cpu, total_n = 0.0, 0
    print("| set | tenants | HR@20 | MRR@20 | CPU a tenant |\n| --- | ---: | ---: | ---: | ---: |")
    scores: dict[str, list[tuple[float, float]]] = {}
    for name, (tenants, categories) in sets.items():
        hr = mrr = 0.0
        scores[name] = []
        started = time.process_time()
        for sessions in tenants:
            _, decision = gate.retrain(sessions, None, params, policy, categories=categories)
            assert decision.candidate is not None
            hr, mrr = hr + decision.candidate.hr, mrr + decision.candidate.mrr
            scores[name].append((decision.candidate.hr, decision.candidate.mrr))
        cpu = time.process_time() - started
        total_cpu, total_n = total_cpu + cpu, total_n + len(tenants)
        n = max(1, len(tenants))
        print(f"| {name} | {len(tenants)} | {hr / n:.4f} | {mrr / n:.4f} | {cpu / n:.3f} s |")
    print(f"\nretrain: {total_cpu / max(1, total_n):.3f} s CPU a tenant ({total_n} tenants)")
    if args.out:
        args.out.write_text(json.dumps(scores))
    if args.compare:
        compare(json.loads(args.compare.read_text()), scores)


def compare(base: dict[str, list[list[float]]], new: dict[str, list[tuple[float, float]]]) -> None:
    """Per set: base -> new HR@20 and MRR@20, mean paired difference ± its standard error."""
    print("\n| set | HR@20 | MRR@20 |\n| --- | --- | --- |")
    for name, rows in new.items():
        old = base.get(name, [])
        if len(old) != len(rows):
            print(f"| {name} | not comparable: {len(old)} base tenants, {len(rows)} here | |")
            continue
        cells = []
        for m in (0, 1):
            diffs = [r[m] - o[m] for r, o in zip(rows, old, strict=True)]
            se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
            before = statistics.fmean(o[m] for o in old)
            after = statistics.fmean(r[m] for r in rows)
            cells.append(f"{before:.4f} -> {after:.4f} ({statistics.fmean(diffs):+.4f} ± {se:.4f})")
        print(f"| {name} ({len(rows)}) | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
