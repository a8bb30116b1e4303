"""Other commits' ranking kernels beside this checkout's, in one process, batch by batch.

    .venv/bin/python benchmarks/kernel_pairs.py --model-dir M [--set eshop|tmall-cgg]
        [--data DIR] [--uniform] [--rounds N] REF [REF ...]

Each REF's ``models/kernel.py`` (``git show``; with its ``models/sources.py``, the rest
of ``models`` this checkout's) is imported as a module of its own, and
every kernel ranks the same sessions of the same bundle (tenant ``default`` of
``--model-dir``, e.g. from ``served_speed.py --save-model``) through this checkout's
``models.ranking.rank_codes``. First every kernel's rankings (items, scores, strategies)
are compared bit for bit with this checkout's; then each round ranks the sessions of
``served_speed.py`` (20,000 prefixes, the same seed; ``--uniform`` or a set's test
prefixes) in batches of 1,000, the kernels taking turns at every batch (the order
reversed every other batch), so that a busy machine's swings fall on all of them alike.
Prints per kernel the median over rounds of CPU µs a session (process time), and the
median of the rounds' ratios this / REF.
"""

from __future__ import annotations

import argparse
import importlib
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

import models.kernel
import models.ranking
from models.datasets import eshop_path, read_clicks, sessionize
from models.ranking import RankParams, encode_flat, rank_codes
from models.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
BATCH = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refs", nargs="+", help="git commits whose kernels to time")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--set", default="eshop", choices=("eshop", "tmall-cgg"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--uniform", action="store_true", help="random sessions of 1-10 clicks")
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    kernels = {"this": models.kernel, **kernel_modules(args.refs, Path(tempfile.mkdtemp()))}
    bundle = Registry(args.model_dir).load("default")
    prefixes = session_prefixes(args, list(bundle.items))
    codes, ptr = encode_flat(bundle, [i for p in prefixes for i in p], list(map(len, prefixes)))
    params = RankParams.of(bundle)
    batches = [(s, min(s + BATCH, len(prefixes))) for s in range(0, len(prefixes), BATCH)]

    def rank(kernel: ModuleType, s: int, e: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        models.ranking.served_kernel = kernel.served_kernel
        rows = ptr[s : e + 1] - ptr[s]
        items, scores, _, strategies, _ = rank_codes(
            bundle, codes[ptr[s] : ptr[e]], rows, 20, params, exclude="current"
        )
        return items, scores, strategies

    # Compiled (or loaded from numba's cache) and compared before any round is timed.
    ranked = {name: [rank(k, s, e) for s, e in batches] for name, k in kernels.items()}
    for name in kernels:
        same = all(
            a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes() and a[2] == b[2]
            for a, b in zip(ranked["this"], ranked[name], strict=True)
        )
        print(f"{name}: rankings {'identical to' if same else 'DIFFERENT from'} this checkout's")
    cpu: dict[str, list[float]] = {name: [] for name in kernels}
    for round_ in range(args.rounds):
        spent = dict.fromkeys(kernels, 0.0)
        for b, (s, e) in enumerate(batches):
            order = list(kernels) if (b + round_) % 2 == 0 else list(kernels)[::-1]
            for name in order:
                c0 = time.process_time()
                rank(kernels[name], s, e)
                spent[name] += time.process_time() - c0
        for name in kernels:
            cpu[name].append(1e6 * spent[name] / len(prefixes))
    for name in kernels:
        print(
            f"{name}: median {statistics.median(cpu[name]):.2f} us CPU per session "
            f"(rounds {' / '.join(f'{c:.1f}' for c in cpu[name])})"
        )
    for ref in args.refs:
        ratios = [a / b for a, b in zip(cpu["this"], cpu[ref], strict=True)]
        print(f"median of the rounds' ratios, this / {ref}: {statistics.median(ratios):.3f}")


def kernel_modules(refs: list[str], into: Path) -> dict[str, ModuleType]:
    """Each commit's kernel file, with the compiled helpers of its ``models/sources.py``,
    imported from ``into`` under module names of their own (numba caches the compiled
    code beside them); the rest of ``models`` is this checkout's."""
    sys.path.insert(0, str(into))
    out = {}
    for ref in refs:
        name = re.sub(r"\W", "_", ref)
        sources = _show(ref, "models/sources.py")
        (into / f"sources_{name}.py").write_text(sources)
        kernel = _show(ref, "models/kernel.py")
        kernel = kernel.replace("from models.sources import", f"from sources_{name} import")
        (into / f"kernel_{name}.py").write_text(kernel)
        out[ref] = importlib.import_module(f"kernel_{name}")
    return out


def _show(ref: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{ref}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def session_prefixes(args: argparse.Namespace, items: list[str]) -> list[list[str]]:
    """``served_speed.py``'s sessions: uniform ones, or prefixes of the set's sessions."""
    rng = random.Random(1)
    prefixes = []
    if args.uniform:
        for _ in range(args.sessions):
            prefixes.append([rng.choice(items) for _ in range(rng.randrange(1, 11))])
        return prefixes
    if args.set == "tmall-cgg":
        cols = {"session_col": "session_id", "item_col": "item_id", "order_col": "position"}
        data = sessionize(read_clicks(args.data / "tmall-cgg/test.csv.gz", "csv", **cols))
    else:
        data = sessionize(read_clicks(eshop_path(), fmt="eshop"))
    for _ in range(args.sessions):
        session = rng.choice(data)
        prefixes.append(session[: rng.randrange(1, len(session) + 1)])
    return prefixes


if __name__ == "__main__":
    main()
