"""A worker serving thousands of tenants within its model memory budget.

    .venv/bin/python benchmarks/worker_models.py --tenants 4000 [--budget 1GiB]

On a private embedded stack: ``--distinct`` synthetic models (``producers.synth``,
``--items`` items each) are trained once (kept in ``--bundles``) and every one of
``--tenants`` tenants gets one of them in its registry (hard links: on disk once, but
the worker verifies and maps each tenant's copy of its own, as it would distinct
models). A real ``streamrec worker`` with ``STREAMREC_MODELS_MAX_BYTES=--budget`` then
answers ``--rounds`` clicks per tenant, the tenants in a shuffled order each round, so
most clicks find their model evicted and load it again. Printed: the worker's peak RSS
(VmHWM), its memory at the end, and /metrics' model loads, evictions and bytes.

``--small-loads 300`` first loads that many tenants' models in this process, the way
the worker does, twice side by side: small arrays read into memory (as served) and
every array memory-mapped (``MAP_MIN_BYTES`` 0); per model: median load time, resident
memory and open files.

``--load-items 40000`` also times loading one model of that many items the way the
worker does (verified private copy, warm-up ranking), in this process: what a lazy load
of a large model costs the batch that needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from confluent_kafka import Producer

import models.bundle as bundle_module
from models.bundle import MAP_MIN_BYTES
from models.datasets import build_sessions
from models.registry import Registry
from models.train import TrainParams, train_model
from producers.synth import SynthParams, generate_clicks
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, consume
from stream.kafka.topics import ensure_topics
from stream.pipeline.model_cache import ModelCache


def trained(bundles: Path, n: int, items: int) -> list[Path]:
    """``n`` registries of one tenant each (trained once, reused by later runs)."""
    out = []
    for seed in range(n):
        root = bundles / f"{items}-items-{seed}"
        if not (root / "t" / "CURRENT").exists():
            clicks = generate_clicks(SynthParams(items=items, sessions=2000, seed=seed, days=6))
            bundle = train_model([s.items for s in build_sessions(clicks)], TrainParams())
            registry = Registry(root)
            registry.promote("t", registry.register("t", bundle, {}))
            print(f"  trained model {seed + 1}/{n} ({items:,} items)", flush=True)
        out.append(root / "t")
    return out


def fill_registry(root: Path, models: list[Path], tenants: int) -> list[str]:
    names = [f"shop-{t:04d}" for t in range(tenants)]
    for t, name in enumerate(names):
        shutil.copytree(models[t % len(models)], root / name, copy_function=os.link)
    return names


def rss_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


def lazy_load_ms(log: str) -> list[float]:
    """The load times the worker logged once the start-up preload had filled the budget
    (the models loaded on a click)."""
    _, _, after = log.partition("model memory budget reached")
    return [float(ms) for ms in re.findall(r"loaded model \S+ \((\d+) ms\)", after)]


def time_large_load(bundles: Path, items: int) -> None:
    (model,) = trained(bundles, 1, items)
    times = []
    for _ in range(3):
        cache = ModelCache(Registry(model.parent))
        started = time.perf_counter()
        asyncio.run(cache.get("t"))  # what a tenant's first click waits for
        times.append(time.perf_counter() - started)
    size = cache.resident_bytes()
    print(
        f"loading one {items:,}-item model ({size / 1e6:,.0f} MB of arrays) as the worker "
        f"does: median {statistics.median(times) * 1000:,.0f} ms of 3"
    )


def small_loads(models: list[Path], n: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="streamrec-small-loads-"))
    try:
        for how, threshold in (("in memory", MAP_MIN_BYTES), ("mapped", 0)):
            root = home / how.replace(" ", "-")
            tenants = fill_registry(root, models, n + 1)
            bundle_module.MAP_MIN_BYTES = threshold
            cache = ModelCache(Registry(root), max_files=1 << 30)
            asyncio.run(cache.get(tenants.pop()))  # the kernel's compilation, not a load's
            before, rss = cache.resident_bytes(), rss_mb(os.getpid())["VmRSS"]
            fds = len(os.listdir("/proc/self/fd"))
            times = []
            for tenant in tenants:
                started = time.perf_counter()
                asyncio.run(cache.get(tenant))
                times.append(time.perf_counter() - started)
            grown = rss_mb(os.getpid())["VmRSS"] - rss
            opened = len(os.listdir("/proc/self/fd")) - fds
            arrays = (cache.resident_bytes() - before) / n
            print(
                f"{n} small models, arrays {how}: load median "
                f"{statistics.median(times) * 1000:.1f} ms, per model {grown * 1024 / n:,.0f} KB "
                f"resident ({arrays / 1024:,.0f} KB of arrays), {opened / n:.1f} open files",
                flush=True,
            )
            del cache
    finally:
        bundle_module.MAP_MIN_BYTES = MAP_MIN_BYTES
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=4000)
    parser.add_argument("--budget", default="1GiB", help="STREAMREC_MODELS_MAX_BYTES")
    parser.add_argument("--distinct", type=int, default=20, help="distinct models trained")
    parser.add_argument("--items", type=int, default=2000, help="items per model")
    parser.add_argument("--rounds", type=int, default=2, help="clicks per tenant")
    parser.add_argument("--load-items", type=int, default=0, help="also time one such load")
    parser.add_argument(
        "--small-loads", type=int, default=0, help="first compare loading this many small models"
    )
    parser.add_argument("--bundles", type=Path, default=Path("/tmp/streamrec-worker-models"))
    args = parser.parse_args()

    if args.load_items:
        time_large_load(args.bundles, args.load_items)
    models = trained(args.bundles, args.distinct, args.items)
    if args.small_loads:
        small_loads(models, args.small_loads)
    item_ids = Registry(models[0].parent).load("t").item_list[:50]
    home = Path(tempfile.mkdtemp(prefix="streamrec-worker-models-"))
    stack = EmbeddedStack(
        home / "run", f"127.0.0.1:{free_port()}", f"redis://127.0.0.1:{free_port()}/0"
    )
    stack.up()
    try:
        tenants = fill_registry(home / "models", models, args.tenants)
        cfg = WorkerConfig(stack, home / "w", home / "models", "clicks", "recs", "dlq", "app")
        ensure_topics(stack.broker, ["clicks", "recs", "dlq"], 4)
        rng = random.Random(0)
        producer = Producer({"bootstrap.servers": stack.broker, "linger.ms": 20})
        for r in range(args.rounds):
            rng.shuffle(tenants)
            for tenant in tenants:
                event = {"tenant": tenant, "session_id": f"s{r}", "ts": time.time(),
                         "item_id": rng.choice(item_ids)}  # fmt: skip
                producer.produce("clicks", orjson.dumps(event), tenant.encode())
            producer.flush(60)
        del producer  # done: it would keep calling the broker after the stack is down
        port = free_port()
        cfg.extra_env.update(
            {"STREAMREC_MODELS_MAX_BYTES": args.budget, "STREAMREC_WEB_PORT": str(port)}
        )
        expected = args.tenants * args.rounds
        started = time.perf_counter()
        with WorkerProcess(cfg) as worker:
            got = consume(stack.broker, "recs", expected, timeout=3600)
            took = time.perf_counter() - started
            assert worker.proc is not None
            memory = rss_mb(worker.proc.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            lazy = lazy_load_ms(worker.log())
        versions = {orjson.loads(m.value())["model_version"] for m in got}
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)

    print(
        f"{args.tenants:,} tenants ({args.items:,}-item models), budget {args.budget}, "
        f"{args.rounds} click(s) a tenant: {len(got):,} of {expected:,} answered "
        f"(model versions {sorted(v or 'none' for v in versions)}) in {took:,.0f} s"
    )
    print(
        "worker memory: "
        + ", ".join(f"{k} {v:,.0f} MB" for k, v in memory.items())
        + f"; model loads {metric(text, 'streamrec_model_loads_total'):,.0f}, evictions "
        f"{metric(text, 'streamrec_model_evictions_total'):,.0f}, "
        f"{metric(text, 'streamrec_models_loaded'):,.0f} models resident "
        f"({metric(text, 'streamrec_models_bytes') / 1e6:,.0f} MB of arrays)"
    )
    if lazy:
        print(
            f"lazy loads (after the start-up preload filled the budget), as the worker logged "
            f"them: {len(lazy):,}, median {statistics.median(lazy):,.0f} ms"
        )


if __name__ == "__main__":
    main()
