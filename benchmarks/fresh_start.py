"""Latency from a fresh worker start, per 10-s window, side by side for several checkouts.

    .venv/bin/python benchmarks/fresh_start.py --trees main=/work/main,branch=. \\
        --runs 1000x60:cold,1000x60,10000x30

Each run starts a private embedded stack, then ``streamrec worker`` from the checkout's
own ``.venv`` (its code, its dependencies) and, once it is ready, ``streamrec loadtest``
(this checkout's) at the given rate for the given seconds. ``:cold`` empties the checkout's
numba cache (NUMBA_CACHE_DIR, one per checkout, kept between runs) first: the worker
compiles its kernels; otherwise it loads them from the cache, as on a restart. Runs go
checkout after checkout for each entry of ``--runs`` so that a busy machine weighs on
both alike. Prints a table: seconds until /health/ready, p50/p99 over the run, and p99
per 10-s window of send time (the first window is the start-up), in all and up to the
worker's publish (the rest is the output's trip to the load test's reader), and the CPU
each process spent per event while the load test ran (worker, broker, Redis, load test).
``--redis single,cluster`` runs each entry on a single Redis and on a three-master Redis
Cluster, one after the other.

A worker restarts against a broker that has been up for a while: a JVM broker started a
moment ago runs its first tens of seconds interpreted and would be measured as the
worker's start-up. So each run first offers ``--warm-broker`` seconds of load through a
throw-away worker (its own numba cache), stops it, and only then starts the measured one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from itertools import product
from pathlib import Path

from models.datasets import eshop_path, read_clicks, sessionize
from models.registry import Registry
from models.train import TrainParams, train_model
from stream.dev.stack import EmbeddedStack, free_cluster_ports, free_port
from stream.kafka.topics import ensure_topics


def ready_after(port: int, worker: subprocess.Popen[bytes], timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout and worker.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2):
                return time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    return float("nan")


def cpu_s(pid: int | None) -> float:
    """A process's CPU seconds so far, all its threads (nan when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def offer_load(
    tree: Path,
    env: dict[str, str],
    rate: float,
    duration: float,
    out: Path,
    services: dict[str, int | None] | None = None,
) -> dict:
    """Start a worker of ``tree``, then (once ready) a load test; its report, with
    ``ready_s`` and ``cpu_us`` (CPU per event sent during the load test: the worker's,
    the load test's own, and each of ``services``' processes by name)."""
    port = free_port()
    env = {**env, "STREAMREC_WEB_PORT": str(port)}
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115  (closed below)
    worker = subprocess.Popen(
        [str(tree / ".venv/bin/python"), "-m", "stream", "worker"],
        cwd=tree,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # The load test's warm-up click waits for the worker's first answer before the
        # clock starts, so starting it once the worker is ready measures the same thing,
        # without a slow compile on a busy machine outlasting that wait.
        ready_s = ready_after(port, worker)
        report = out.with_suffix(".json")
        pids = {"worker": worker.pid, **(services or {})}
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        loadtest = subprocess.Popen(
            [sys.executable, "-m", "stream", "loadtest", "--rate", str(rate), "--duration",
             str(duration), "--no-progress", "--json", str(report)],
            env=env,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _, status, usage = os.wait4(loadtest.pid, 0)
        loadtest.returncode = os.waitstatus_to_exitcode(status)
        if loadtest.returncode:
            raise subprocess.CalledProcessError(loadtest.returncode, loadtest.args)
        used = {name: cpu_s(pid) - before[name] for name, pid in pids.items()}
        used["load test"] = usage.ru_utime + usage.ru_stime
        result = json.loads(report.read_text())
        result["ready_s"] = ready_s
        result["cpu_us"] = {k: v / max(1, result["sent"]) * 1e6 for k, v in used.items()}
        return result
    finally:
        worker.terminate()
        worker.wait(15)
        log.close()


def one_run(
    tree: Path,
    models: Path,
    cache: Path,
    rate: float,
    duration: float,
    out: Path,
    warm_broker_s: float,
    redis_mode: str = "single",
    watch: Callable[[str], AbstractContextManager[object]] | None = None,
) -> dict:
    """One run on a private stack; ``watch(broker)``, if given, is entered for the
    measured load only (after the broker's warm-up)."""
    home = Path(tempfile.mkdtemp(prefix="fresh-start-"))
    shutil.copytree(models, home / "models")
    ports = free_cluster_ports(3) if redis_mode == "cluster" else [free_port()]
    stack = EmbeddedStack(
        home / "run",
        f"127.0.0.1:{free_port()}",
        f"redis://127.0.0.1:{ports[0]}/0",
        redis_mode=redis_mode,
        cluster_ports=ports if redis_mode == "cluster" else None,
    )
    stack.up()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(
        STREAMREC_HOME=str(home),
        STREAMREC_BROKER=stack.broker,
        STREAMREC_REDIS_URL=stack.redis_url,
        STREAMREC_REDIS_CLUSTER="1" if redis_mode == "cluster" else "0",
        STREAMREC_PUBLIC_DASHBOARD="1",
        NUMBA_CACHE_DIR=str(cache),
        PYTHONDONTWRITEBYTECODE="1",  # a checkout run read-only stays as it was
    )
    try:
        ensure_topics(stack.broker, ["clicks", "recommendations", "clicks.dlq"], 4)
        if warm_broker_s > 0:
            warmer = {**env, "NUMBA_CACHE_DIR": str(out.parent / "numba-broker-warmer")}
            offer_load(Path.cwd(), warmer, 1000, warm_broker_s, out.with_name(out.name + "-warmer"))
        broker, *redis = stack.services
        services = {"broker": broker.pid()}
        services |= {"Redis" if len(redis) == 1 else s.name: s.pid() for s in redis}
        with watch(stack.broker) if watch else nullcontext():
            return offer_load(tree, env, rate, duration, out, services)
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


def trained_models(out: Path) -> Path:
    """A registry under ``out`` with the shipped file's model (trained once, then kept)."""
    models = out / "models"
    if not (models / "default").is_dir():
        registry = Registry(models)
        bundle = train_model(sessionize(read_clicks(eshop_path(), fmt="eshop")), TrainParams())
        registry.promote("default", registry.register("default", bundle, {}))
    return models


def cpu_line(cpu_us: dict[str, float]) -> str:
    """``worker 540, broker 420, ...``: CPU µs an event by process."""
    return ", ".join(f"{name} {us:.0f}" for name, us in cpu_us.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", default=f"this={Path.cwd()}", help="name=path,...")
    parser.add_argument("--runs", default="1000x60:cold,1000x60,10000x30")
    parser.add_argument(
        "--warm-broker",
        type=float,
        default=30.0,
        help="Seconds of load through a throw-away worker before the measured one (0: none).",
    )
    parser.add_argument(
        "--redis",
        default="single",
        help="single, cluster (three masters), or both comma-separated: each run once per mode",
    )
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fresh-start")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees.split(","))
    args.out.mkdir(parents=True, exist_ok=True)

    models = trained_models(args.out)

    print("| checkout | rate/s x s | numba cache | ready after s | p50 ms | p99 ms | "
          "p99 per 10-s window, ms | of which to the worker's publish | missing | "
          "CPU µs an event | load 1 min |")  # fmt: skip
    print("| --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: | --- | ---: |")
    for n, spec in enumerate(args.runs.split(",")):
        load, _, cold = spec.partition(":")
        rate, duration = (float(x) for x in load.split("x"))
        for (name, path), mode in product(trees.items(), args.redis.split(",")):
            cache = args.out / f"numba-{name}"
            if cold:
                shutil.rmtree(cache, ignore_errors=True)
            out = args.out / f"{n}-{name}-{mode}"
            tree = Path(path).resolve()
            r = one_run(tree, models, cache, rate, duration, out, args.warm_broker, mode)
            name = f"{name} ({mode} Redis)" if "," in args.redis else name
            lat = r["latency_ms"]
            per_window = " / ".join(f"{w['p99']:.0f}" for w in r.get("latency_by_window") or [])
            to_publish = " / ".join(f"{w['p99']:.0f}" for w in r.get("to_publish_by_window") or [])
            print(
                f"| {name} | {rate:g} x {duration:g} | {'cold' if cold else 'warm'} | "
                f"{r['ready_s']:.1f} | {lat['p50']:.1f} | {lat['p99']:.1f} | {per_window} | "
                f"{to_publish or 'n/a'} | {r['missing']} | {cpu_line(r['cpu_us'])} | "
                f"{os.getloadavg()[0]:.1f} |",
                flush=True,
            )
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
