"""Where a small tenant's retraining time goes: CPU seconds per stage.

    .venv/bin/python benchmarks/tenant_train_profile.py [--tenants 6] [--sessions 2000] [--top 25]

Each tenant is what ``benchmarks/tenants_scale.py`` generates (``producers.synth``, 2,000
items); its clicks go through what a trainer process does with them but for Kafka and
Redis: sessions built, ``models.gate.retrain`` (train on the older 80 %, gate on the
newest 20 %) and the candidate registered and promoted (in a temporary registry),
single-threaded like a trainer process (registering is also timed in wall time: its
flushes to disk wait rather than work). A first tenant warms the compiled kernels and is
not counted. Stages are timed by wrapping the functions ``models.train`` calls, in
process CPU time (the machine is shared; wall time would mostly measure the neighbours'
load). ``--top N`` also prints cProfile's N functions of most own time over the tenants.
Garbage collection is its own line (it runs inside the other stages too); ``--freeze``
leaves the objects made before the tenants out of it, as a trainer's training process
does with the heap it inherits (``gc.freeze``).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import gc
import pstats
import tempfile
import time
from collections.abc import Callable
from typing import Any

from threadpoolctl import threadpool_limits

from models import gate
from models import train as training
from models.datasets import build_sessions
from models.registry import Registry
from producers.synth import SynthParams, generate_clicks

STAGES = {
    "_word2vec": "Word2Vec",
    "_ppmi_embedding": "PPMI embedding (small logs)",
    "_kmeans": "KMeans",
    "_neighbour_lists": "neighbour lists",
    "build_sources": "candidate sources",
    "rank_codes": "fit cases ranked",
    "fit_ranker": "ranker fit (with the cases ranked)",
    "score_bundle": "gate: holdout scored",
}


def _timed(module: Any, name: str, spent: collections.Counter[str]) -> None:
    inner: Callable[..., Any] = getattr(module, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[STAGES[name]] += time.process_time() - started

    setattr(module, name, wrapper)


def _time_collections(spent: collections.Counter[str]) -> Callable[[str, dict], None]:
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            spent["garbage collection (in the stages)"] += time.process_time() - started[0]

    gc.callbacks.append(callback)
    return callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--top", type=int, default=0, help="print cProfile's top N functions")
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() before the tenants")
    args = parser.parse_args()
    threadpool_limits(1)
    spent: collections.Counter[str] = collections.Counter()
    for name in STAGES:
        _timed(gate if name == "score_bundle" else training, name, spent)
    logs = [
        generate_clicks(
            SynthParams(
                items=args.items,
                sessions=args.sessions,
                seed=seed,
                days=6,
                start_ts=1.7e9 - 7 * 86400,
            )
        )
        for seed in range(args.tenants + 1)
    ]
    params, policy = training.TrainParams(), gate.GatePolicy()
    gate.retrain(build_sessions(logs[0]), None, params, policy)
    spent.clear()
    collecting = _time_collections(spent)
    if args.freeze:
        gc.freeze()
    hr = []
    profile = cProfile.Profile() if args.top else None
    with tempfile.TemporaryDirectory() as directory:
        registry = Registry(directory)
        register_wall = 0.0
        started = time.process_time()
        if profile:
            profile.enable()
        for n, clicks in enumerate(logs[1:]):
            t = time.process_time()
            sessions = build_sessions(clicks)
            spent["sessions built"] += time.process_time() - t
            bundle, decision = gate.retrain(sessions, None, params, policy)
            assert bundle is not None and decision.candidate is not None
            t, wall = time.process_time(), time.perf_counter()
            version = registry.register(f"t{n}", bundle, {"gate": decision.to_manifest(policy)})
            registry.promote(f"t{n}", version)
            spent["registered and promoted"] += time.process_time() - t
            register_wall += time.perf_counter() - wall
            hr.append((decision.candidate.hr, decision.candidate.mrr))
        if profile:
            profile.disable()
        gc.callbacks.remove(collecting)
        total = (time.process_time() - started) / args.tenants
    print(f"a tenant's job: {total:.3f} s CPU per tenant ({args.tenants} tenants)")
    print(
        f"registering and promoting a tenant's version (written, flushed to disk): "
        f"{register_wall / args.tenants:.3f} s wall"
    )
    for stage, seconds in spent.most_common():
        print(f"  {stage:36s} {seconds / args.tenants:.3f} s")
    mean_hr = sum(h for h, _ in hr) / len(hr)
    mean_mrr = sum(m for _, m in hr) / len(hr)
    print(f"gate holdout HR@20 {mean_hr:.4f} MRR@20 {mean_mrr:.4f} (mean over the tenants)")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
