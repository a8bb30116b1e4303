"""Packing one worker batch's Redis commands (RESP2): ``state.resp`` (hiredis's
``pack_command``) against the hand-written packer it replaced, side by side in one process.

The batch is built by the real ``SessionStore`` (its round trip captured, no Redis):
``--batch`` clicks over 4 origin partitions and ``--sessions`` sessions, the previous
batch's recommendation lists sent first (``before``); with ``--cold``, the popularity
counts of a tenant without a model too (one ZINCRBY per item).
Reports the median of ``--runs`` timings per packer, each timing ``--repeat`` packs.

    python benchmarks/resp_pack.py --batch 2000 --runs 15
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from state import keys, resp
from state.sessions import Click, SessionStore


def batch_commands(n: int, sessions: int, cold: bool, seed: int = 1) -> list[list[str]]:
    """The commands one worker batch of ``n`` clicks sends in its round trip."""
    rng = random.Random(seed)
    store = SessionStore(Redis(), cap=50, ttl_s=86_400)  # never connects
    items = [f"item-{i}" for i in range(5_000)]
    clicks = [
        Click("default", f"s-{rng.randrange(sessions)}", rng.choice(items), f"ev-{i}", 1.7e9 + i)
        for i in range(n)
    ]
    origins = [(f"clicks:{i % 4}", 10_000 + i) for i in range(n)]
    lists = {(c.tenant, c.session_id): keys.ITEM_SEP.join(rng.sample(items, 10)) for c in clicks}
    captured: list[list[str]] = []

    async def capture(commands: list[list[Any]]) -> list[Any]:
        captured.extend(commands)
        return [[1, "x", 0] * n] * len(commands)

    store._run = capture  # type: ignore[method-assign]
    before = store.store_lists_commands(lists)
    asyncio.run(
        store.append_clicks(
            clicks, count_for={"default"} if cold else (), origins=origins, before=before
        )
    )
    return captured


# The hand-written packer state/resp.py had before (one str.encode per argument plus a
# few joins), kept here as the baseline.
_HEADS = [b"$%d\r\n" % n for n in range(4096)]


def _head(n: int) -> bytes:
    return _HEADS[n] if n < 4096 else b"$%d\r\n" % n


def _pack_one(args: Sequence[str]) -> bytes:
    encoded = list(map(str.encode, args))
    parts: list[bytes] = [b""] * (3 * len(encoded))
    parts[0::3] = map(_head, map(len, encoded))
    parts[1::3] = encoded
    parts[2::3] = [b"\r\n"] * len(encoded)
    return b"*%d\r\n%s" % (len(encoded), b"".join(parts))


def hand_written(commands: Sequence[Sequence[str]]) -> bytes:
    return b"".join(map(_pack_one, commands))


def timings(
    pack: Callable[[list[list[str]]], bytes], commands: list[list[str]], args: argparse.Namespace
) -> list[float]:
    out = []
    for _ in range(args.runs):
        started = time.perf_counter()
        for _ in range(args.repeat):
            pack(commands)
        out.append((time.perf_counter() - started) / args.repeat)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2000, help="clicks per batch")
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument(
        "--cold", action="store_true", help="a tenant without a model: popularity counted too"
    )
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=50, help="packs per timing")
    args = parser.parse_args()
    commands = batch_commands(args.batch, args.sessions, args.cold)
    packers = {"hand-written (before)": hand_written, "hiredis (state.resp)": resp.pack_commands}
    assert len({pack(commands) for pack in packers.values()}) == 1, "packers disagree"
    n_args = sum(map(len, commands))
    print(
        f"{len(commands)} commands, {n_args} arguments, {len(resp.pack_commands(commands)):,} bytes"
    )
    medians = {}
    # Interleaved rounds, so drift on a shared machine hits both alike.
    results: dict[str, list[float]] = {name: [] for name in packers}
    for _ in range(3):
        for name, pack in packers.items():
            results[name] += timings(pack, commands, args)
    for name, values in results.items():
        medians[name] = statistics.median(values)
        print(f"{name:22s} median {medians[name] * 1e6:8.1f} us per batch")
    ratio = medians["hiredis (state.resp)"] / medians["hand-written (before)"]
    print(f"hiredis / hand-written: {ratio:.2f}")


if __name__ == "__main__":
    main()
