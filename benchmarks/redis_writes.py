"""Redis's CPU per click: the session script against plain writes of the same fields.

    .venv/bin/python benchmarks/redis_writes.py [--clicks 100000] [--batch 5000] [--rounds 3]

On a private Redis, the same kind of clicks (``--sessions`` sessions, ``--items`` items)
are applied in batches three ways, alternated round by round:

- ``script``: ``SessionStore.append_clicks`` as the worker sends it (lua/append.lua reads
  each session, checks the click was not applied before, and writes it);
- ``changed``: one HSET per click of the fields a click changes (items, latest event,
  recent ids' digests, the partition's offset), as a worker that kept its sessions in
  memory would send them, reading nothing;
- ``whole``: one HSET per click of every field of the session, and an EXPIRE every
  twentieth click: the same without relying on the stored hash being complete.

Printed: Redis's own CPU (``INFO cpu``, user + system) per click, per round and the
median of the rounds after the first. The worker's side is not measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

from state import keys
from state.sessions import Click, SessionStore, digest
from stream.dev.stack import Service, free_port

CAP = 50
SEP = keys.ITEM_SEP


def redis_cpu(info: dict) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(port: int, args: argparse.Namespace) -> dict[str, list[float]]:
    client = Redis(host="127.0.0.1", port=port, decode_responses=True)
    store = SessionStore(client, cap=CAP, ttl_s=3600)
    rng = random.Random(0)
    items = [f"item{i}" for i in range(args.items)]
    kept: dict[str, str] = {}  # the sessions' items, as a worker holding them would
    offset = 0

    def clicks(tenant: str, tag: str) -> list[Click]:
        def one(i: int) -> Click:
            session = f"s{rng.randrange(args.sessions)}"
            return Click(tenant, session, rng.choice(items), f"{tag}-{i}", time.time())

        return [one(i) for i in range(args.batch)]

    def appended(key: str, item: str) -> str:
        joined = kept.get(key)
        joined = f"{joined}{SEP}{item}" if joined else item
        joined = SEP.join(joined.split(SEP)[-CAP:])
        kept[key] = joined
        return joined

    async def script(batch: list[Click], first: int) -> None:
        origins = [("clicks:0", first + i) for i in range(len(batch))]
        await store.append_clicks(batch, origins=origins)

    async def changed(batch: list[Click], first: int) -> None:
        commands = []
        for i, c in enumerate(batch):
            key = keys.session(c.tenant, c.session_id)
            joined = appended(key, c.item_id)
            event = f"{c.ts!r}{SEP}{c.event_id}"
            ring = digest(c.event_id) * 16
            at = str(first + i)
            commands.append(["HSET", key, "i", joined, "e", event, "d", ring, "o:clicks:0", at])
        await store.run(commands)

    async def whole(batch: list[Click], first: int) -> None:
        commands: list[list[str | bytes]] = []
        now = repr(time.time())
        for i, c in enumerate(batch):
            key = keys.session(c.tenant, c.session_id)
            joined = appended(key, c.item_id)
            commands.append(
                ["HSET", key, "i", joined, "n", str(joined.count(SEP) + 1),
                 "e", f"{c.ts!r}{SEP}{c.event_id}", "d", digest(c.event_id) * 16,
                 "o:clicks:0", str(first + i), "x", now, "a", "", "p", ""]
            )  # fmt: skip
            if i % 20 == 0:
                commands.append(["EXPIRE", key, "3600"])
        await store.run(commands)  # type: ignore[arg-type]

    ways: dict[str, Callable[[list[Click], int], Awaitable[None]]] = {
        "script": script,
        "changed": changed,
        "whole": whole,
    }
    per_click: dict[str, list[float]] = {name: [] for name in ways}
    batches = max(1, args.clicks // args.batch)
    for round_ in range(args.rounds + 1):
        for name, apply in ways.items():
            before = redis_cpu(await client.info("cpu"))
            for b in range(batches):
                # Each way its own tenant: the script reads fields the plain writes skip.
                await apply(clicks(name, f"{round_}-{b}"), offset)
                offset += args.batch
            used = redis_cpu(await client.info("cpu")) - before
            per_click[name].append(used / (batches * args.batch) * 1e6)
    await client.aclose()
    return per_click


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=100_000, help="clicks a round, each way")
    parser.add_argument("--batch", type=int, default=5000, help="clicks a round trip")
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=217)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after a first")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="redis-writes-"))
    redis = Service("redis", "127.0.0.1", free_port(), work / "run")
    redis.start()
    try:
        per_click = asyncio.run(measure(redis.port, args))
    finally:
        redis.stop()
    print(f"Redis CPU per click (µs), {args.clicks:,} clicks a round in batches of {args.batch}:")
    for name, values in per_click.items():
        rounds = " / ".join(f"{v:.2f}" for v in values[1:])
        print(f"  {name:8s} median {statistics.median(values[1:]):6.2f}   rounds {rounds}")


if __name__ == "__main__":
    main()
