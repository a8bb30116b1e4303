"""Scale benchmark for the model: ~1M clicks over 40k items.

1. Generate seeded Zipf + Markov sessions (``models.datasets.synthetic_sessions``) and
   write them as a YOOCHOOSE-format file.
2. Time ``streamrec train FILE`` end to end (read, Word2Vec, KMeans, neighbours, register).
3. In a fresh process, time loading the promoted model and measure its memory.
4. A worker's start, in fresh processes: load the model as the worker does (verified,
   a private copy mapped) and warm it (``stream.pipeline.model_cache.warm``: arrays paged in, one
   ranking, which compiles the kernels), first with an empty numba cache, then with the
   one that filled.
5. Measure ``recommend_batch`` throughput on session prefixes, one process.

Usage: .venv/bin/python benchmarks/model_scale.py [--clicks 1000000] [--items 40000]
Targets: train <= 120 s, load < 1 s and < 150 MB, >= 20,000 recs/s. Ranking
uses the serving default ``exclude="current"``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from models.bundle import ModelBundle
from models.datasets import synthetic_sessions
from models.ranking import recommend_batch
from models.registry import Registry

# Runs in a fresh interpreter so the RSS delta is the model alone (numpy already imported).
_LOAD_PROBE = """
import json, resource, sys, time
import numpy as np
from models.registry import Registry

def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20

before = rss_mb()
started = time.perf_counter()
bundle = Registry(sys.argv[1]).load("scale")
bundle.index(bundle.item_list[0])  # build the item index, as the first request would
loaded = time.perf_counter() - started
after_load = rss_mb()
# Touch every array, as serving eventually does, to count the memory-mapped pages too.
touched = sum(float(np.asarray(a).view(np.uint8).sum() % 7)
              for n, a in bundle.named_arrays().items() if n != "items")
print(json.dumps({"load_s": loaded, "rss_load_mb": after_load - before,
                  "rss_touched_mb": rss_mb() - before, "items": bundle.n_items}))
"""

# Runs in a fresh interpreter with the given NUMBA_CACHE_DIR, as a worker starts.
_START_PROBE = """
import json, sys, time
started = time.perf_counter()
from models.registry import Registry
from stream.pipeline.model_cache import warm
imported = time.perf_counter()
bundle = Registry(sys.argv[1]).load("scale", private=True)
loaded = time.perf_counter()
warm(bundle)
warmed = time.perf_counter()
print(json.dumps({"import_s": imported - started, "load_s": loaded - imported,
                  "warm_s": warmed - loaded}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=40_000)
    # Zipf 0.9 makes ~99% of the 40k catalogue appear in 1M clicks (1.1 leaves ~35k).
    parser.add_argument("--zipf", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="streamrec-scale-") as tmp:
        sessions = synthetic_sessions(args.clicks, args.items, zipf=args.zipf, seed=args.seed)
        data = Path(tmp) / "clicks.tsv"
        _write_yoochoose(sessions, data)
        clicks = sum(map(len, sessions))
        print(
            f"data: {clicks} clicks, {len(sessions)} sessions, "
            f"{len({i for s in sessions for i in s})} distinct items "
            f"({data.stat().st_size >> 20} MB)"
        )

        env = {
            **os.environ,
            "STREAMREC_HOME": tmp,
            "STREAMREC_MODEL_DIR": str(Path(tmp) / "models"),
        }
        started = time.perf_counter()
        subprocess.run(
            # ``-m stream``: the code on sys.path (a worktree's), not the installed script's.
            [sys.executable, "-m", "stream", "train", str(data), "--tenant", "scale"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        train_s = time.perf_counter() - started
        registry = Registry(Path(tmp) / "models")
        bundle = registry.load("scale")
        timings = bundle.manifest["timings"]
        size_mb = (
            sum(f.stat().st_size for f in (registry.root / "scale" / bundle.version).iterdir())
            / 2**20
        )
        stages = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in timings.items() if k != "total_s")
        ranker = bundle.manifest.get("ranker", {})
        stages += f"; ranker fit {ranker.get('fit_s', 0.0):.1f} s on {ranker.get('fit', {})}"
        print(
            f"train: {train_s:.1f} s wall for `streamrec train` ({stages}; "
            f"Word2Vec epochs {bundle.manifest['word2vec_epochs']}); model on disk {size_mb:.1f} MB"
        )

        probe = subprocess.run(
            [sys.executable, "-c", _LOAD_PROBE, str(registry.root)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        load = json.loads(probe.stdout)
        print(
            f"load: {load['load_s'] * 1000:.0f} ms, +{load['rss_load_mb']:.0f} MB RSS after load, "
            f"+{load['rss_touched_mb']:.0f} MB with every array paged in ({load['items']} items)"
        )

        cache = Path(tmp) / "numba"
        for state in ("cold", "warm"):
            probe = subprocess.run(
                [sys.executable, "-c", _START_PROBE, str(registry.root)],
                env={**env, "NUMBA_CACHE_DIR": str(cache)},
                check=True,
                capture_output=True,
                text=True,
            )
            start = json.loads(probe.stdout)
            print(
                f"worker start, {state} numba cache: load {start['load_s'] * 1000:.0f} ms, "
                f"warm-up (page-in, one ranking{', compiling' if state == 'cold' else ''}) "
                f"{start['warm_s'] * 1000:.0f} ms; imports {start['import_s']:.1f} s"
            )

        rng = np.random.default_rng(args.seed)
        # Held-out-like requests: random prefixes of the generated sessions, as a stream sees them.
        picks = rng.integers(0, len(sessions), size=args.requests)
        requests = [sessions[i][: rng.integers(1, len(sessions[i]) + 1)] for i in picks]
        n = len(requests)
        for k in (10, 20):
            for batch in (1000, 100, 10):
                runs = [_time_batches(bundle, requests, k, batch) for _ in range(3)]
                wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
                print(
                    f"recommend_batch: k={k}, batches of {batch}: {n / wall:,.0f} recs/s "
                    f"(CPU time: {n / cpu:,.0f} recs/s)"
                )
        single = requests[:5000]
        started = time.perf_counter()
        for r in single:
            recommend_batch(bundle, [r], 10, exclude="current")
        rate = len(single) / (time.perf_counter() - started)
        print(f"recommend (one at a time): k=10: {rate:,.0f} recs/s")
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


def _time_batches(
    bundle: ModelBundle, requests: list[list[str]], k: int, batch: int
) -> tuple[float, float]:
    """(wall, CPU) seconds; CPU time shows the cost when other processes share the 2 cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, len(requests), batch):
        recommend_batch(bundle, requests[lo : lo + batch], k, exclude="current")
    return time.perf_counter() - wall, time.process_time() - cpu


def _write_yoochoose(sessions: list[list[str]], path: Path) -> None:
    t0 = 1_396_000_000
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("SessionId\tItemId\tTime\n")
        for n, session in enumerate(sessions):
            start = t0 + n * 10  # sessions spread over the log, clicks 30 s apart
            fh.writelines(f"{n}\t{item}\t{start + 30 * j}\n" for j, item in enumerate(session))


if __name__ == "__main__":
    main()
