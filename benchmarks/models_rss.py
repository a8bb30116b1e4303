"""Resident memory a process pays per loaded tenant model, after some traffic.

    .venv/bin/python benchmarks/models_rss.py [--tenants 30] [--sessions 1,100]

A quicker probe than ``tenants_scale.py`` (no broker, no trainer): trains ``--tenants``
synthetic tenants' models once into ``--bundles`` (``producers.synth``, 2,000 items,
2,000 sessions, seed = tenant number), then for each ``--sessions`` value, in a fresh
process: loads every model as the worker does (private copies, one warm-up ranking),
ranks that many sessions of 1-4 random items of the model per tenant (k 20, exclude
current), and prints the growth of VmRSS / RssAnon / RssFile per tenant. One session is
``tenants_scale.py``'s probe click; with more, the file-backed part grows toward the
bundle's size as rankings touch more of the mapped arrays.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path


def _rss_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1])
    return out


def measure(bundles: Path, tenants: int, sessions: int) -> None:
    from models.bundle import load_bundle
    from models.ranking import recommend, recommend_batch

    dirs = sorted(bundles.iterdir())[:tenants]
    warm = load_bundle(dirs[0], private=True)
    recommend(warm, [], 1)  # the compiled kernel, loaded once per process
    del warm
    before, held, rng = _rss_kb(), [], random.Random(0)
    for directory in dirs:
        bundle = load_bundle(directory, private=True)
        recommend(bundle, [], 1)  # as the worker's load does
        names = bundle.item_list
        batch = [[rng.choice(names) for _ in range(rng.randrange(1, 5))] for _ in range(sessions)]
        recommend_batch(bundle, batch, 20, exclude="current")
        del names, batch
        held.append(bundle)
    after = _rss_kb()
    print(
        f"{sessions:>5} sessions a tenant: "
        + ", ".join(f"{k} {(after[k] - before[k]) / len(dirs):,.0f} KB" for k in after)
        + f" a tenant ({len(dirs)} tenants)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=30)
    parser.add_argument("--sessions", default="1,100", help="sessions a tenant, comma-separated")
    parser.add_argument("--bundles", type=Path, default=Path("/tmp/streamrec-rss-bundles"))
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        measure(args.bundles, args.tenants, args.measure)
        return
    from models.bundle import save_bundle
    from models.datasets import build_sessions
    from models.train import TrainParams, train_model
    from producers.synth import SynthParams, generate_clicks

    for t in range(args.tenants):
        directory = args.bundles / f"shop-{t:04d}"
        if not (directory / "manifest.json").exists():
            clicks = generate_clicks(SynthParams(items=2000, sessions=2000, seed=t, days=6))
            sessions = [s.items for s in build_sessions(clicks)]
            save_bundle(train_model(sessions, TrainParams()), directory)
    for sessions in map(int, args.sessions.split(",")):
        subprocess.run(
            [sys.executable, __file__, "--tenants", str(args.tenants), "--measure", str(sessions)]
            + ["--bundles", str(args.bundles)],
            check=True,
        )


if __name__ == "__main__":
    main()
