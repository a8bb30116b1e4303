"""Ranking cost of the served model per session, in one process (no broker, no Redis).

    .venv/bin/python benchmarks/served_speed.py [--model-dir M] [--threads 1,2] [--whole]
        [--set eshop|tmall-cgg] [--no-categories] [--uniform] [--serve name=value[,...] ...]
        [--without feature[,feature]] [--tree NAME=REF [--pairs N]]

Trains the default model on the shipped e-shop data (or loads tenant ``default`` from
``--model-dir``; or ``--set tmall-cgg``: trains on ``../shared/data/tmall-cgg/train``
with its item categories unless ``--no-categories``, prefixes from its test split),
draws 20,000 session prefixes from that data (seeded) and ranks them
in batches of ``--batch`` with the serving default ``exclude="current"``. Reports, per
thread count, the best of ``--rounds`` rounds: CPU time per session (process time, all
threads: the steadier figure on a shared machine) and sessions per second (wall clock).
``--whole`` times ``recommend_flat`` instead of the kernel alone: the ids looked up,
ranked, and the results' ids and scores as Python lists, as the worker does.
``--uniform``: sessions of 1-10 clicks drawn uniformly from the catalogue instead (what
``worker_throughput.py`` sends). ``--serve``: ranking-setting variants timed one after
the other on the same model (``RankParams`` overrides, e.g. ``sample_size=100``; the
first line is always the model's own settings), to see where the kernel's time goes.
``--tree main=main`` compares this checkout with another commit side by side: the
model is trained once (or read from ``--model-dir``), then ``--pairs`` times a process
ranks with that commit's ``models`` package and one with this checkout's, alternating
(this script in both, so the sessions and the timing are the same); each prints its
best of ``--rounds``, and the last lines give each pair's ratio (this / NAME) and their
median.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from git_tree import export
from served_valid import overrides

from models.bundle import ModelBundle
from models.datasets import eshop_path, item_categories, read_clicks, sessionize
from models.ranking import RankParams, encode_flat, rank_codes, recommend_flat
from models.registry import Registry
from models.train import TrainParams, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="registry with tenant 'default'")
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--whole", action="store_true", help="time recommend_flat (ids in, ids out)"
    )
    parser.add_argument("--set", default="eshop", choices=("eshop", "tmall-cgg"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--no-categories", action="store_true")
    parser.add_argument("--uniform", action="store_true", help="random sessions of 1-10 clicks")
    parser.add_argument("--serve", nargs="*", default=[], help="RankParams variants")
    parser.add_argument("--without", default="", help="also time with these features at 0")
    parser.add_argument(
        "--tree",
        metavar="NAME=REF",
        help="also time the models package of git commit REF, alternating with this one",
    )
    parser.add_argument("--pairs", type=int, default=3, help="with --tree: process pairs")
    parser.add_argument(
        "--save-model", type=Path, metavar="DIR", help="train, save as tenant 'default', stop"
    )
    args = parser.parse_args()
    if args.tree:
        side_by_side(args)
        return

    categories: dict[str, str] = {}
    if args.set == "tmall-cgg":
        cols = {"session_col": "session_id", "item_col": "item_id", "order_col": "position"}
        train = read_clicks(
            args.data / "tmall-cgg/train.csv.gz", "csv", category_col="category", **cols
        )
        categories = {} if args.no_categories else item_categories(train)
        train_sessions = sessionize(train)
        data = sessionize(read_clicks(args.data / "tmall-cgg/test.csv.gz", "csv", **cols))
    else:
        data = train_sessions = sessionize(read_clicks(eshop_path(), fmt="eshop"))
    if args.model_dir:
        bundle = Registry(args.model_dir).load("default")
    else:
        bundle = train_model(train_sessions, TrainParams(), categories=categories or None)
    if args.save_model:
        registry = Registry(args.save_model)
        registry.promote("default", registry.register("default", bundle))
        print(f"{bundle.n_items} items saved as tenant 'default' in {args.save_model}")
        return
    rng = random.Random(1)
    prefixes = []
    items = list(bundle.items)
    for _ in range(args.sessions):
        if args.uniform:
            prefixes.append([rng.choice(items) for _ in range(rng.randrange(1, 11))])
            continue
        session = rng.choice(data)
        prefixes.append(session[: rng.randrange(1, len(session) + 1)])
    codes, ptr = encode_flat(bundle, [i for p in prefixes for i in p], list(map(len, prefixes)))
    trained = RankParams.of(bundle)
    # Compiled (or loaded from numba's cache) before any round is timed.
    rank_all(bundle, prefixes[: args.batch], codes, ptr, trained, args.batch, 1, args.whole)
    what = "recommend_flat" if args.whole else "rank_codes"
    print(f"{bundle.n_items} items, {len(prefixes):,} prefixes, batches of {args.batch}, {what}")
    models = {"": bundle}
    if args.without:
        models[f"without {args.without}: "] = without(bundle, args.without.split(","))
    for spec in ["", *args.serve]:
        pairs = spec.split(",") if spec else []
        params = dataclasses.replace(trained, **overrides(trained, pairs))
        label = f"{spec or 'as trained'}: " if args.serve else ""
        for threads in map(int, args.threads.split(",")):
            cpu: dict[str, list[float]] = {name: [] for name in models}
            wall: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, model in models.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    rank_all(model, prefixes, codes, ptr, params, args.batch, threads, args.whole)
                    cpu[name].append(time.process_time() - c0)
                    wall[name].append(time.perf_counter() - w0)
            for name in models:
                print(
                    f"{label}{name}threads {threads}: "
                    f"{1e6 * min(cpu[name]) / len(prefixes):.1f} us CPU per "
                    f"session, {len(prefixes) / min(wall[name]):,.0f} sessions/s"
                )


def side_by_side(args: argparse.Namespace) -> None:
    """This script run alternately on another commit's models package and on this
    checkout's (``--tree``), the pairs' ratios printed at the end."""
    name, _, ref = args.tree.partition("=")
    home = Path(tempfile.mkdtemp(prefix="streamrec-served-speed-"))
    other = export(ref or name, home / name, packages=("models",))
    model_dir = args.model_dir
    if model_dir is None:
        model_dir = home / "models"
        subprocess.run(
            [sys.executable, __file__, "--save-model", str(model_dir), *forwarded(args)],
            check=True,
        )
    command = [
        sys.executable, __file__, *forwarded(args), "--model-dir", str(model_dir),
        "--threads", args.threads, "--rounds", str(args.rounds),
        "--sessions", str(args.sessions), "--batch", str(args.batch),
    ]  # fmt: skip
    ratios: list[float] = []
    for pair in range(args.pairs):
        cpu = {}
        for label, path in ((name, other), ("this", None)):
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
            if path is not None:
                env["PYTHONPATH"] = str(path)
            text = subprocess.run(
                command, env=env, capture_output=True, text=True, check=True
            ).stdout
            cpu[label] = float(re.findall(r"([0-9.]+) us CPU per session", text)[0])
            print(f"pair {pair + 1}, {label}: {text.strip().splitlines()[-1]}", flush=True)
        ratios.append(cpu["this"] / cpu[name])
        print(f"pair {pair + 1}: this / {name} = {ratios[-1]:.3f}", flush=True)
    print(f"median of {len(ratios)} pairs, CPU per session this / {name}: "
          f"{statistics.median(ratios):.3f}")  # fmt: skip


def forwarded(args: argparse.Namespace) -> list[str]:
    """The options that choose the model and the sessions, for a child process."""
    out = ["--set", args.set, "--data", str(args.data)]
    out += ["--no-categories"] * args.no_categories + ["--uniform"] * args.uniform
    return out + ["--whole"] * args.whole


def without(bundle: ModelBundle, names: list[str]) -> ModelBundle:
    """``bundle`` as if fitted without the features ``names`` (they weigh 0)."""
    ranker = dict(bundle.manifest["ranker"])
    fitted, weights = list(ranker["features"]), list(ranker["weights"])
    half = len(fitted)
    keep = [f for f, name in enumerate(fitted) if name not in names]
    ranker["features"] = [fitted[f] for f in keep]
    ranker["weights"] = [weights[f] for f in keep] + [weights[half + f] for f in keep]
    return dataclasses.replace(bundle, manifest={**bundle.manifest, "ranker": ranker})


def rank_all(bundle, prefixes, codes, ptr, params, batch, threads, whole) -> None:  # type: ignore[no-untyped-def]
    for s in range(0, len(prefixes), batch):
        e = min(s + batch, len(prefixes))
        rows = ptr[s : e + 1] - ptr[s]
        # threads=1 is left out so that trees from before the option run this.
        more = {"threads": threads} if threads != 1 else {}
        if whole:
            flat = [i for p in prefixes[s:e] for i in p]
            lengths = [len(p) for p in prefixes[s:e]]
            recommend_flat(bundle, flat, lengths, 20, params, exclude="current", **more)
            continue
        rank_codes(bundle, codes[ptr[s] : ptr[e]], rows, 20, params, exclude="current", **more)


if __name__ == "__main__":
    main()
