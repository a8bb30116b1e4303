"""Redis's CPU per click: the session script against plain writes of the same fields.

    .venv/bin/python benchmarks/redis_writes.py [--clicks 100000] [--batch 5000] [--rounds 3]

On a private Redis, the same kind of clicks (``--sessions`` sessions, ``--items`` items)
are applied in batches three ways, alternated round by round:

- ``script``: ``SessionStore.append_clicks`` as the worker sends it (lua/append.lua reads
  each session, checks the click was not applied before, and writes it);
- ``changed``: a worker that kept its sessions in memory applies the script's rules
  itself (``apply_kept``: re-deliveries by offset and recent ids, the implicit hit, the
  arm, the item cap, the TTL refreshed once a hundredth of it passed) and sends one HSET
  per click of the fields the click changed, reading nothing;
- ``whole``: the same, each HSET with every field of the session (no reliance on the
  stored hash being complete).

Printed per way: Redis's own CPU (``INFO cpu``, user + system) and this process's CPU
(what the worker would spend: the rules, the commands, the round trip) per click, per
round and the median of the rounds after the first. Each way has its own tenant.
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
from state.sessions import DIGEST, RECENT_IDS, Click, SessionStore, SessionUpdate, digest
from stream.dev.stack import Service, free_port

CAP = 50
TTL_S = 3600
SEP = keys.ITEM_SEP
RING = RECENT_IDS * DIGEST


def redis_cpu(info: dict) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Kept:
    """A session as a worker holding it would keep it: the fields the script reads."""

    __slots__ = ("items", "n", "ring", "offsets", "shown", "arm", "stamp")

    def __init__(self) -> None:
        self.items, self.n, self.ring = "", 0, b""
        self.offsets: dict[str, int] = {}
        self.shown: str | None = None  # the latest list (variant SEP rec_id SEP items)
        self.arm: str | None = None
        self.stamp = 0.0  # when the TTL was last set


def apply_kept(
    s: Kept, c: Click, origin: str, offset: int, now: float, whole: bool
) -> tuple[SessionUpdate, list[list[str | bytes]]]:
    """The script's rules for one click of a session held in memory: its update and the
    commands that store it (an HSET of every field with ``whole``, else of the fields it
    changed; an EXPIRE once a hundredth of the TTL passed)."""
    dg = digest(c.event_id)
    shown_by = s.shown.partition(SEP)[0] if s.shown else s.arm
    seen = offset >= 0 and s.offsets.get(origin, -1) >= offset
    if not seen:
        at = s.ring.find(dg)
        while at >= 0 and at % DIGEST:
            at = s.ring.find(dg, at + 1)
        seen = at >= 0
    if seen:
        return SessionUpdate(False, s.items, None, shown_by), []
    hit = s.shown if s.shown and c.item_id in s.shown.split(SEP) else None
    consumed = s.shown is not None
    if consumed:
        s.arm, s.shown = shown_by, None
    s.ring = (s.ring + dg)[-RING:]
    appended = not s.items or not (s.items.endswith(SEP + c.item_id) or s.items == c.item_id)
    if not s.items:
        s.items, s.n = c.item_id, 1
    elif appended:
        s.items += SEP + c.item_id
        s.n += 1
        if s.n > CAP:
            s.items, s.n = s.items.partition(SEP)[2], CAP
    s.offsets[origin] = offset
    key = keys.session(c.tenant, c.session_id)
    fields: list[str | bytes] = ["e", f"{c.ts!r}{SEP}{c.event_id}", "d", s.ring]
    fields += [f"o:{origin}", str(offset)]
    if whole or appended:
        fields += ["i", s.items, "n", str(s.n)]
    if whole or consumed:
        fields += ["a", s.arm or "", "p", ""]
    commands: list[list[str | bytes]] = []
    due = now - s.stamp >= TTL_S / 100
    if due:
        s.stamp = now
        commands.append(["EXPIRE", key, str(TTL_S)])
    if whole or due:
        fields += ["x", repr(s.stamp)]
    return SessionUpdate(True, s.items, hit, shown_by), [["HSET", key, *fields], *commands]


async def measure(port: int, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """Per way, per round: (Redis CPU, this process's CPU) per click, in µs."""
    client = Redis(host="127.0.0.1", port=port, decode_responses=True)
    store = SessionStore(client, cap=CAP, ttl_s=TTL_S)
    rng = random.Random(0)
    items = [f"item{i}" for i in range(args.items)]
    held: dict[str, dict[str, Kept]] = {"changed": {}, "whole": {}}
    offset = 0

    def clicks(tenant: str, tag: str) -> list[Click]:
        def one(i: int) -> Click:
            session = f"s{rng.randrange(args.sessions)}"
            return Click(tenant, session, rng.choice(items), f"{tag}-{i}", time.time())

        return [one(i) for i in range(args.batch)]

    async def script(batch: list[Click], first: int) -> list[SessionUpdate]:
        origins = [("clicks:0", first + i) for i in range(len(batch))]
        return await store.append_clicks(batch, origins=origins)

    def kept_way(name: str) -> Callable[[list[Click], int], Awaitable[list[SessionUpdate]]]:
        sessions, whole = held[name], name == "whole"

        async def apply(batch: list[Click], first: int) -> list[SessionUpdate]:
            now, updates, commands = time.time(), [], []
            for i, c in enumerate(batch):
                s = sessions.get(c.session_id)
                if s is None:
                    s = sessions[c.session_id] = Kept()
                update, stored = apply_kept(s, c, "clicks:0", first + i, now, whole)
                updates.append(update)
                commands += stored
            await store.run(commands)  # type: ignore[arg-type]
            return updates

        return apply

    ways = {"script": script, "changed": kept_way("changed"), "whole": kept_way("whole")}
    per_click: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    batches = max(1, args.clicks // args.batch)
    for round_ in range(args.rounds + 1):
        for name, apply in ways.items():
            # Each way its own tenant: the script reads fields the plain writes skip.
            work = [clicks(name, f"{round_}-{b}") for b in range(batches)]
            before, mine = redis_cpu(await client.info("cpu")), time.process_time()
            for batch in work:
                await apply(batch, offset)
                offset += args.batch
            mine = time.process_time() - mine
            used = redis_cpu(await client.info("cpu")) - before
            n = batches * args.batch
            per_click[name].append((used / n * 1e6, mine / n * 1e6))
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
    print(f"CPU per click (µs), {args.clicks:,} clicks a round in batches of {args.batch}:")
    for name, values in per_click.items():
        for part, label in ((0, "Redis"), (1, "worker")):
            figures = [v[part] for v in values[1:]]
            rounds = " / ".join(f"{v:.2f}" for v in figures)
            median = statistics.median(figures)
            print(f"  {name:8s} {label:6s} median {median:6.2f}   rounds {rounds}")


if __name__ == "__main__":
    main()
