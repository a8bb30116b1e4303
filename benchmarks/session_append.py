"""Redis cost per click of the worker's session round trip, this checkout's state/ against
another commit's.

    .venv/bin/python benchmarks/session_append.py --ref main --sessions 20000

Each contender's whole ``state`` package (its Lua scripts included; the other commit's
read with ``git archive``) runs in a child process, alternately, against one private
Redis started as the embedded stack starts it (AOF on, fsync every second). A child sends
what the worker sends per batch: the previous batch's recommendation lists (20 items
each) ahead of the session appends of 2,000 clicks, with their origin offsets. Per round
the parent reads Redis's CPU (from /proc), its commands (INFO commandstats, those run
inside scripts included) and the bytes added to its append-only file, per click.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from git_tree import export
from redis import Redis

from stream.dev.stack import Service, free_port

ROOT = Path(__file__).resolve().parents[1]
BATCH = 2000
LIST_ITEMS = 20


def redis_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def commands(client: Redis) -> int:
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


async def child(port: int, tag: str, sessions: int, batches: int) -> None:
    """The worker's traffic: runs with the contender's ``state`` first on sys.path."""
    from redis.asyncio import Redis as AsyncRedis

    from state.sessions import Click, SessionStore

    client = AsyncRedis(port=port, decode_responses=True)
    store = SessionStore(client, cap=50, ttl_s=3600)
    rng = random.Random(1)
    times = []
    lists: dict[tuple[str, str], str] = {}
    for b in range(batches):
        clicks = [
            Click(
                "default",
                f"{tag}-s{rng.randrange(sessions)}",
                f"I{rng.randrange(217)}",
                f"{tag}-e{b}-{i}",
                1.7e9 + b,
            )
            for i in range(BATCH)
        ]
        origins = [("clicks:0", b * BATCH + i) for i in range(BATCH)]
        started = time.perf_counter()
        await store.append_clicks(clicks, origins=origins, before=store.store_lists_commands(lists))
        times.append(time.perf_counter() - started)
        # Each session's latest list, as the worker keeps it: variant, rec_id, items.
        lists = {
            (c.tenant, c.session_id): "\x1f".join(
                ["v1", f"v1-ab{b:x}{i:x}", *(f"I{rng.randrange(217)}" for _ in range(LIST_ITEMS))]
            )
            for i, c in enumerate(clicks)
        }
    await client.aclose()
    print(statistics.median(times) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", default="main", help="the other commit (default: main)")
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("PORT", "TAG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(int(args.child[0]), args.child[1], args.sessions, args.batches))
        return

    work = Path(tempfile.mkdtemp(prefix="streamrec-append-"))
    trees = {args.ref: export(args.ref, work / "ref", ("state",)), "this checkout": ROOT}
    redis = Service("redis", "127.0.0.1", free_port(), work / "run")
    redis.start()
    client = Redis(port=redis.port)
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in trees}
    try:
        pid = redis.pid() or 0
        for n in range(args.rounds):
            for name, tree in trees.items():
                env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}"}
                cpu, calls = redis_cpu_s(pid), commands(client)
                aof = client.info("persistence")["aof_current_size"]
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(redis.port), f"{n}{name[:2]}"]
                    + ["--sessions", str(args.sessions), "--batches", str(args.batches)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                clicks = args.batches * BATCH
                rows[name].append(
                    (
                        float(out.split()[-1]),
                        (redis_cpu_s(pid) - cpu) / clicks * 1e6,
                        (commands(client) - calls) / clicks,
                        (client.info("persistence")["aof_current_size"] - aof) / clicks,
                    )
                )
    finally:
        client.close()
        redis.stop()
    print(f"{args.sessions:,} sessions, {args.rounds} rounds of {args.batches} x {BATCH} clicks")
    print(
        "| code | batch ms (per round) | Redis CPU per click (µs, per round; median) "
        "| commands per click | AOF bytes per click |"
    )
    print("| --- | --- | --- | ---: | ---: |")
    for name, got in rows.items():
        batch_ms = " / ".join(f"{r[0]:.1f}" for r in got)
        cpu = " / ".join(f"{r[1]:.1f}" for r in got)
        med, calls, aof = (statistics.median(r[k] for r in got) for k in (1, 2, 3))
        print(f"| {name} | {batch_ms} | {cpu}; **{med:.1f}** | {calls:.2f} | {aof:,.0f} |")


if __name__ == "__main__":
    main()
