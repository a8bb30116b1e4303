"""Where a small tenant's retraining time goes: CPU seconds per stage.

    .venv/bin/python benchmarks/tenant_train_profile.py [--tenants 6] [--sessions 2000]

Each tenant is what ``benchmarks/tenants_scale.py`` generates (``producers.synth``, 2,000
items); its sessions go through ``models.gate.retrain`` as the trainer runs it (train on
the older 80 %, gate on the newest 20 %), single-threaded like a trainer process. A first
tenant warms the compiled kernels and is not counted. Stages are timed by wrapping the
functions ``models.train`` calls, in process CPU time (the machine is shared; wall time
would mostly measure the neighbours' load).
"""

from __future__ import annotations

import argparse
import collections
import functools
import time
from collections.abc import Callable
from typing import Any

from threadpoolctl import threadpool_limits

from models import gate
from models import train as training
from models.datasets import build_sessions
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args()
    threadpool_limits(1)
    spent: collections.Counter[str] = collections.Counter()
    for name in STAGES:
        _timed(gate if name == "score_bundle" else training, name, spent)
    logs = [
        build_sessions(
            generate_clicks(
                SynthParams(
                    items=args.items,
                    sessions=args.sessions,
                    seed=seed,
                    days=6,
                    start_ts=1.7e9 - 7 * 86400,
                )
            )
        )
        for seed in range(args.tenants + 1)
    ]
    params, policy = training.TrainParams(), gate.GatePolicy()
    gate.retrain(logs[0], None, params, policy)
    spent.clear()
    hr = []
    started = time.process_time()
    for sessions in logs[1:]:
        _, decision = gate.retrain(sessions, None, params, policy)
        assert decision.candidate is not None
        hr.append((decision.candidate.hr, decision.candidate.mrr))
    total = (time.process_time() - started) / args.tenants
    print(f"retrain: {total:.3f} s CPU per tenant ({args.tenants} tenants)")
    for stage, seconds in spent.most_common():
        print(f"  {stage:36s} {seconds / args.tenants:.3f} s")
    mean_hr = sum(h for h, _ in hr) / len(hr)
    mean_mrr = sum(m for _, m in hr) / len(hr)
    print(f"gate holdout HR@20 {mean_hr:.4f} MRR@20 {mean_mrr:.4f} (mean over the tenants)")


if __name__ == "__main__":
    main()
