"""Rankings of two synthetic tenants' models, dumped to compare two trees exactly.

    PYTHONPATH=A .venv/bin/python benchmarks/rankings_dump.py --bundles B a.pkl
    PYTHONPATH=B .venv/bin/python benchmarks/rankings_dump.py --bundles B b.pkl
    .venv/bin/python benchmarks/rankings_dump.py --compare a.pkl b.pkl

Trains the bundles into ``--bundles`` when they are not there yet (run it first with the
base tree, so both trees rank the same files; ``producers.synth`` catalogues of 2,000
items, 2,000 sessions, seeds 0 and 1), loads them as the worker does (private copies),
and ranks 5,000 prefixes of unseen sessions (another seed's clickstream; one in twenty
with an unknown and a non-ASCII id appended) per tenant under exclude none / current /
seen, k = 20, 100 and 300 (300 is past the candidates: the padding path), in batches of
500. ``--compare`` counts the (ids, scores, strategy) lists that are identical.
"""

from __future__ import annotations

import argparse
import collections
import pickle
import random
from pathlib import Path

from models.bundle import load_bundle, save_bundle
from models.datasets import build_sessions
from models.ranking import recommend_batch
from models.train import TrainParams, train_model
from producers.synth import SynthParams, generate_clicks

TENANTS = (0, 1)


def _sessions(seed: int, sessions: int) -> list[list[str]]:
    clicks = generate_clicks(SynthParams(items=2000, sessions=sessions, seed=seed, days=6))
    return [s.items for s in build_sessions(clicks)]


def dump(bundles: Path, out: Path) -> None:
    ranked = {}
    for t in TENANTS:
        directory = bundles / f"shop-{t:04d}"
        if not (directory / "manifest.json").exists():
            save_bundle(train_model(_sessions(t, 2000), TrainParams()), directory)
        bundle = load_bundle(directory, private=True)
        unseen = _sessions(1000 + t, 3000)
        rng = random.Random(t)
        prefixes = []
        while len(prefixes) < 5000:
            s = rng.choice(unseen)
            prefix = s[: rng.randrange(1, len(s) + 1)]
            if rng.random() < 0.05:
                prefix = [*prefix, f"not-an-item-{rng.randrange(10)}", "é✓"]
            prefixes.append(prefix)
        for exclude in ("none", "current", "seen"):
            for k in (20, 100, 300):
                rows = []
                for s in range(0, len(prefixes), 500):
                    batch = recommend_batch(bundle, prefixes[s : s + 500], k, exclude=exclude)
                    rows += [(r.ids, r.scores, r.strategy) for r in batch]
                ranked[(t, exclude, k)] = rows
    out.write_bytes(pickle.dumps(ranked))
    print(f"{sum(map(len, ranked.values())):,} ranked lists -> {out}")


def compare(a: Path, b: Path) -> None:
    left, right = pickle.loads(a.read_bytes()), pickle.loads(b.read_bytes())
    assert left.keys() == right.keys(), "not the same cases"
    n = same = 0
    strategies: collections.Counter[str] = collections.Counter()
    for key, rows in left.items():
        for x, y in zip(rows, right[key], strict=True):
            n += 1
            same += x == y
            strategies[x[2]] += 1
    print(f"{same:,} of {n:,} identical (ids, scores, strategy); strategies {dict(strategies)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=Path, default=Path("/tmp/streamrec-rankings-bundles"))
    parser.add_argument("--compare", action="store_true", help="compare two dumps")
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    if args.compare:
        compare(*args.files)
    else:
        dump(args.bundles, args.files[0])


if __name__ == "__main__":
    main()
