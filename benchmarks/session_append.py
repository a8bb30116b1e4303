"""Redis CPU of the session append script, this checkout's against an older commit's.

    .venv/bin/python benchmarks/session_append.py --ref 3619de3 --sessions 20000

Both versions of ``state/sessions.py`` (the old one read with ``git show REF:...``) run
alternately on one private Redis (AOF on, as the embedded stack runs it): rounds of
2,000-click batches over SESSIONS sessions; the median batch time and Redis's CPU per
click (from /proc) of each round are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from types import ModuleType

from redis.asyncio import Redis

from stream.dev.stack import Service, free_port

ROOT = Path(__file__).resolve().parents[1]

BATCH = 2000


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def redis_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


async def one_round(
    module: ModuleType, client: Redis, pid: int, tag: str, sessions: int, batches: int
) -> tuple[float, float]:
    store = module.SessionStore(client, cap=50, ttl_s=3600)
    takes_origins = "origins" in module.SessionStore.append_clicks.__code__.co_varnames
    rng = random.Random(1)
    times = []
    cpu = redis_cpu_s(pid)
    for b in range(batches):
        clicks = [
            module.Click(
                "default",
                f"{tag}-s{rng.randrange(sessions)}",
                f"I{rng.randrange(217)}",
                f"{tag}-e{b}-{i}",
                1.7e9,
            )
            for i in range(BATCH)
        ]
        started = time.perf_counter()
        if takes_origins:
            origins = [("clicks:0", b * BATCH + i) for i in range(BATCH)]
            await store.append_clicks(clicks, origins=origins)
        else:
            await store.append_clicks(clicks)
        times.append(time.perf_counter() - started)
    per_click = (redis_cpu_s(pid) - cpu) / (batches * BATCH) * 1e6
    return statistics.median(times) * 1000, per_click


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", required=True, help="the older commit to compare with")
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="streamrec-append-"))
    old_src = subprocess.run(
        ["git", "show", f"{args.ref}:state/sessions.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (work / "old_sessions.py").write_text(old_src)
    contenders = {
        args.ref: load(work / "old_sessions.py", "old_sessions"),
        "this checkout": load(ROOT / "state" / "sessions.py", "new_sessions"),
    }
    redis = Service("redis", "127.0.0.1", free_port(), work / "run")
    redis.start()
    client = Redis(port=redis.port, decode_responses=True)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    try:
        pid = redis.pid() or 0
        for n in range(args.rounds):
            for name, module in contenders.items():
                tag = f"{name.replace(' ', '-')}-{n}"
                results[name].append(
                    await one_round(module, client, pid, tag, args.sessions, args.batches)
                )
    finally:
        await client.aclose()
        redis.stop()
    print(f"{args.sessions:,} sessions, {args.rounds} rounds of {args.batches} x {BATCH} clicks")
    print("| code | batch ms (median per round) | Redis CPU per click (µs, per round) |")
    print("| --- | --- | --- |")
    for name, rows in results.items():
        batch_ms = " / ".join(f"{ms:.1f}" for ms, _ in rows)
        cpu = " / ".join(f"{c:.1f}" for _, c in rows)
        print(f"| {name} | {batch_ms} | {cpu} |")


if __name__ == "__main__":
    asyncio.run(main())
