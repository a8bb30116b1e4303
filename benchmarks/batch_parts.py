"""Where the worker's CPU per event goes around Kafka: its batch processor, as the worker
builds it, on a private Redis, fed the clicks worker_throughput.py sends.

    .venv/bin/python benchmarks/batch_parts.py --model-dir DIR --events 100000

No broker: the batches are made in memory (as the consumer hands them over) and the
records they produce are not published, so what is measured is the worker's own Python
and the ranking kernel, without librdkafka's share. Each batch's CPU (of the whole
process, from ``time.process_time``) is split by the parts it calls once per batch
(Redis round trip, ranking by tenant, metrics); what is left is the per-record Python of
the batch processor (validating the clicks, judging hits, building the records).
``--profile N`` prints cProfile's top N functions by own time too (its overhead inflates
small calls: read it for the order, the split above for the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from worker_throughput import make_records

from models.registry import Registry
from stream.config import Settings
from stream.dev.stack import Service, free_port
from stream.kafka.consumer import Consumed
from stream.worker import Worker

PARTITIONS = 4


def batches(n: int, size: int, items: list[str], sessions: int, tag: str) -> list[list[Consumed]]:
    """The clicks as the consumer hands them over: spread over partitions, in batches."""
    records = make_records(n, items, sessions, prefix=tag)
    stamp = int(time.time() * 1000)
    offsets = [0] * PARTITIONS
    out: list[Consumed] = []
    for key, value in records:
        p = hash(key) % PARTITIONS
        out.append(Consumed("clicks", p, offsets[p], key, value, stamp))
        offsets[p] += 1
    return [out[i : i + size] for i in range(0, len(out), size)]


class Parts:
    """CPU seconds spent inside wrapped coroutine functions and functions, by name."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)

    def wrap_async(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.cpu[name] += time.process_time() - started

        return timed

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[name] += time.process_time() - started

        return timed


async def run(args: argparse.Namespace, redis_url: str, home: Path) -> None:
    settings = Settings(
        home=str(home),
        model_dir=str(args.model_dir),
        redis_url=redis_url,
        redis_cluster=False,
        batch_size=args.batch_size,
    )
    worker = Worker(settings)
    processor = worker.processor
    await worker.models.preload()
    items = Registry(args.model_dir).load("default").item_list
    parts = Parts()
    store = processor._store
    store.append_clicks = parts.wrap_async("Redis round trip", store.append_clicks)  # type: ignore[method-assign]
    processor._answer = parts.wrap_async("ranking (per tenant)", processor._answer)  # type: ignore[method-assign]
    worker.metrics.batch = parts.wrap("metrics", worker.metrics.batch)  # type: ignore[method-assign]
    # Warm: compiled kernels, sessions already in Redis for part of the clicks.
    for batch in batches(args.batch_size * 4, args.batch_size, items, args.sessions, "warm-"):
        worker.count(len(batch), await worker.process(batch))
    # As the batch loop does once it joins its group (stream.pipeline.loop).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    rounds = []
    profiler = cProfile.Profile() if args.profile else None
    for r in range(args.rounds):
        work = batches(args.events, args.batch_size, items, args.sessions, f"r{r}-")
        parts.cpu.clear()
        n = 0
        if profiler is not None and r == args.rounds - 1:
            profiler.enable()
        started = time.process_time()
        for batch in work:
            result = await worker.process(batch)
            worker.count(len(batch), result)
            n += len(batch)
        total = time.process_time() - started
        if profiler is not None:
            profiler.disable()
        split = {name: cpu / n * 1e6 for name, cpu in parts.cpu.items()}
        split["batch processor, the rest"] = total / n * 1e6 - sum(split.values())
        rounds.append((total / n * 1e6, split))
        print(f"round {r}: {total / n * 1e6:.1f} µs an event")
    import stream

    print(
        f"\ncode: {Path(stream.__file__).parents[1]}; "
        f"{args.events:,} events a round, {args.sessions:,} sessions, {len(items)} items, "
        f"batch size {args.batch_size}; medians of {args.rounds} rounds, µs of CPU an event\n"
    )
    print("| part | µs / event |\n| --- | ---: |")
    for name in rounds[0][1]:
        print(f"| {name} | {statistics.median(s[name] for _, s in rounds):.1f} |")
    print(f"| **all** | **{statistics.median(t for t, _ in rounds):.1f}** |")
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="registry with 'default'")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="streamrec-parts-"))
    redis = Service("redis", "127.0.0.1", free_port(), work / "run")
    redis.start()
    try:
        asyncio.run(run(args, f"redis://127.0.0.1:{redis.port}/0", work))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
