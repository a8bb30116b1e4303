"""p99 latency with and without model hot-swaps under load, side by side.

    .venv/bin/python benchmarks/swap_under_load.py --rate 1000 --duration 60 --every 10

Two runs, each on a freshly started private stack (the embedded broker slows down as a
topic grows, so runs must not share one): ``streamrec worker`` plus ``streamrec
loadtest``; in the second run a new model version is promoted (and the workers
notified) every ``--every`` seconds while the load runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from models.datasets import eshop_path, read_clicks, sessionize
from models.registry import Registry
from models.train import TrainParams, train_model
from state.notify import notify_model_change
from stream.dev.stack import EmbeddedStack, free_port
from stream.kafka.topics import ensure_topics


def one_run(models: Path, args: argparse.Namespace, swap: bool) -> tuple[dict, int]:
    home = Path(tempfile.mkdtemp(prefix="swap-"))
    shutil.copytree(models, home / "models")
    stack = EmbeddedStack(
        home / "run", f"127.0.0.1:{free_port()}", f"redis://127.0.0.1:{free_port()}/0"
    )
    stack.up()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(
        STREAMREC_HOME=str(home),
        STREAMREC_BROKER=stack.broker,
        STREAMREC_REDIS_URL=stack.redis_url,
        STREAMREC_WEB_PORT="0",
    )
    ensure_topics(stack.broker, ["clicks", "recommendations", "clicks.dlq"], 4)
    registry = Registry(home / "models")
    swaps = 0
    stop = threading.Event()

    def promote_periodically() -> None:
        nonlocal swaps
        while not stop.wait(args.every):
            version = registry.register("default", registry.load("default"), {})
            registry.promote("default", version)
            notify_model_change(stack.redis_url, "default", version)
            swaps += 1

    worker = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    swapper = threading.Thread(target=promote_periodically, daemon=True)
    try:
        report = home / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "stream",
            "loadtest",
            "--rate",
            str(args.rate),
            "--duration",
            str(args.duration),
            "--linger-ms",
            str(args.linger_ms),
            "--no-progress",
            "--json",
            str(report),
        ]
        loadtest = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        if swap:
            time.sleep(8)  # past the load test's warm-up
            swapper.start()
        loadtest.wait()
        stop.set()
        return json.loads(report.read_text()), swaps
    finally:
        stop.set()
        worker.terminate()
        worker.wait(15)
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--every", type=float, default=10, help="seconds between promotions")
    parser.add_argument("--linger-ms", type=float, default=20)
    args = parser.parse_args()
    models = Path(tempfile.mkdtemp(prefix="swap-models-"))
    registry = Registry(models)
    bundle = train_model(sessionize(read_clicks(eshop_path(), fmt="eshop")), TrainParams())
    registry.promote("default", registry.register("default", bundle, {}))

    rows = []
    for swap in (False, True):
        report, swaps = one_run(models, args, swap)
        rows.append((swap, swaps, report))
    print("| run | swaps | sent | answered | missing | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for swap, swaps, r in rows:
        lat = r["latency_ms"]
        print(
            f"| {f'promote every {args.every:g}s' if swap else 'no swaps'} | {swaps} | "
            f"{r['sent']:,} | {r['answered']:,} | {r['missing']} | {lat['p50']:.1f} | "
            f"{lat['p99']:.1f} | {lat['max']:.1f} |"
        )
    ratio = rows[1][2]["latency_ms"]["p99"] / rows[0][2]["latency_ms"]["p99"]
    print(f"\np99 with swaps / p99 without: {ratio:.2f}")


if __name__ == "__main__":
    main()
