"""A worker's first start on a large model, by the state of numba's cache.

Every start is a fresh interpreter that imports what the worker's warm-up imports, loads
the model as the worker does (verified private copy, mapped) and warms it
(``stream.pipeline.model_cache.warm``: arrays paged in, one ranking, which compiles the
kernels or loads them from the cache). The caches, each new for each repeat:

- empty: what a first start did before ``streamrec warm``;
- filled by that start (a restart);
- filled by ``streamrec warm`` (scripts/setup.sh, the image's build), timed too;
- the same with NUMBA_CPU_NAME=generic for both, as the Docker image runs.

With ``--passes`` the empty-cache start also lists numba's compile of each kernel
signature (inclusive: the functions compiled for it count in it) and its time by
compiler pass, summed over the signatures (numba's ``numba:compile`` and
``numba:run_pass`` events).

With ``--trees name=path,...`` only the empty cache's first start is timed, for each
checkout's code in turn (alternated, each repeat), on the same model: compile times side
by side.

Usage: .venv/bin/python benchmarks/first_start.py [--model-dir DIR --tenant T]
       [--clicks 1000000] [--items 40000] [--repeats 2] [--passes]
       [--trees before=/path/to/checkout,now=.]
Without --model-dir, a model of ``--items`` items is trained on seeded synthetic clicks
first (as benchmarks/model_scale.py makes its model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A worker's warm-up, in a fresh interpreter whose NUMBA_CACHE_DIR is the cache tried.
_PROBE = """
import collections, json, sys, time
started = time.perf_counter()
from numba.core import event
import models
from models.kernels import kernel_count
from models.registry import Registry
from stream.pipeline.model_cache import warm
imported = time.perf_counter()
bundle = Registry(sys.argv[1]).load(sys.argv[2], private=True)
loaded = time.perf_counter()
before = kernel_count()
with event.install_recorder("numba:compile") as compiles:
    with event.install_recorder("numba:run_pass") as passes:
        warm(bundle)
warmed = time.perf_counter()
after = kernel_count()
signatures, opened = [], {}
for at, ev in compiles.buffer:
    key = (ev.data["dispatcher"].py_func.__qualname__, str(ev.data["args"]))
    if ev.is_start:
        opened[key] = at
    else:
        signatures.append({"function": key[0], "args": key[1][:80], "s": at - opened.pop(key)})
by_pass, opened = collections.Counter(), {}
for at, ev in passes.buffer:
    key = ev.data["name"]
    if ev.is_start:
        opened.setdefault(key, []).append(at)
    else:
        by_pass[key] += at - opened[key].pop()
print(json.dumps({
    "import_s": imported - started, "load_s": loaded - imported, "warm_s": warmed - loaded,
    "compiled": after.compiled - before.compiled,
    "from_cache": after.from_cache - before.from_cache,
    "signatures": signatures, "passes": by_pass.most_common(8), "code": models.__file__,
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a registry holding the model")
    parser.add_argument("--tenant", default="scale")
    parser.add_argument("--clicks", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=40_000)
    parser.add_argument("--zipf", type=float, default=0.9)  # model_scale.py's: ~all items seen
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--passes", action="store_true", help="list compile times")
    parser.add_argument(
        "--trees", help="name=path,...: only the empty cache, each checkout's code in turn"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="streamrec-first-start-") as tmp:
        registry = args.model_dir or _train(Path(tmp) / "models", args)
        if args.trees:
            _empty_side_by_side(registry, args, Path(tmp))
            return
        rows: dict[str, list[dict]] = {}
        warm_s: dict[str, list[float]] = {}
        for r in range(args.repeats):
            for cpu in ("host", "generic"):
                env = {**os.environ, "STREAMREC_HOME": tmp}
                if cpu == "generic":
                    env["NUMBA_CPU_NAME"] = "generic"
                else:
                    env.pop("NUMBA_CPU_NAME", None)
                cache = Path(tmp) / f"numba-{cpu}-{r}"
                env["NUMBA_CACHE_DIR"] = str(cache)
                if cpu == "host":
                    rows.setdefault("empty", []).append(_probe(registry, args.tenant, env))
                    rows.setdefault("filled by that start", []).append(
                        _probe(registry, args.tenant, env)
                    )
                    env["NUMBA_CACHE_DIR"] = str(cache) + "-warm"
                name = f"filled by `streamrec warm`{', generic CPU' if cpu == 'generic' else ''}"
                started = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "stream", "warm"],
                    env=env,
                    cwd=ROOT,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                warm_s.setdefault(name, []).append(time.perf_counter() - started)
                rows.setdefault(name, []).append(_probe(registry, args.tenant, env))
                print(f"repeat {r + 1}/{args.repeats}, {cpu} CPU: done", file=sys.stderr)

        print(
            f"\n{args.repeats} repeat(s), medians; load average {_load()} on "
            f"{os.cpu_count()} CPUs (machine shared with other work)\n"
        )
        print("| numba cache | warm-up s | compiled / from cache | load ms | imports s | "
              "`streamrec warm` s |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for name, probes in rows.items():
            med = {k: statistics.median(p[k] for p in probes) for k in probes[0] if k[-2:] == "_s"}
            counts = {f"{p['compiled']} / {p['from_cache']}" for p in probes}
            fill = f"{statistics.median(warm_s[name]):.1f}" if name in warm_s else "-"
            print(
                f"| {name} | {med['warm_s']:.2f} | {', '.join(sorted(counts))} | "
                f"{med['load_s'] * 1000:.0f} | {med['import_s']:.1f} | {fill} |"
            )
        if args.passes:
            cold = rows["empty"][0]
            print("\nCompiled on the empty cache's first start (inclusive seconds):")
            for s in sorted(cold["signatures"], key=lambda s: -s["s"]):
                print(f"  {s['s']:7.2f}  {s['function']}{s['args']}")
            print("numba passes, summed over those signatures (seconds):")
            for name, seconds in cold["passes"]:
                print(f"  {seconds:7.2f}  {name}")


def _empty_side_by_side(registry: Path, args: argparse.Namespace, tmp: Path) -> None:
    trees = dict(pair.split("=", 1) for pair in args.trees.split(","))
    warm_s: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(args.repeats):
        for name, path in trees.items():
            env = {**os.environ, "STREAMREC_HOME": str(tmp), "PYTHONDONTWRITEBYTECODE": "1"}
            env["NUMBA_CACHE_DIR"] = str(tmp / f"numba-{name}-{r}")
            env.pop("NUMBA_CPU_NAME", None)
            probe = _probe(registry, args.tenant, env, Path(path).resolve())
            warm_s[name].append(probe["warm_s"])
            print(
                f"repeat {r + 1}, {name} ({probe['code']}): warm-up {probe['warm_s']:.2f} s",
                file=sys.stderr,
            )
    print(f"\nempty numba cache, warm-up s; load average {_load()} on {os.cpu_count()} CPUs\n")
    print("| checkout | warm-up s, each repeat | median |\n|---|---|---|")
    for name, runs in warm_s.items():
        each = " / ".join(f"{x:.2f}" for x in runs)
        print(f"| {name} ({trees[name]}) | {each} | {statistics.median(runs):.2f} |")


def _train(root: Path, args: argparse.Namespace) -> Path:
    from models.datasets import synthetic_sessions
    from models.registry import Registry
    from models.train import train_model

    started = time.perf_counter()
    sessions = synthetic_sessions(args.clicks, args.items, zipf=args.zipf, seed=args.seed)
    bundle = train_model(sessions)
    registry = Registry(root)
    registry.promote(args.tenant, registry.register(args.tenant, bundle))
    print(
        f"model: {bundle.n_items} items from {args.clicks} synthetic clicks, trained in "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return root


def _probe(registry: Path, tenant: str, env: dict[str, str], code: Path = ROOT) -> dict:
    """One first start in a fresh interpreter, importing the checkout ``code``'s modules."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(registry), tenant],
        env=env,
        cwd=code,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout)


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
