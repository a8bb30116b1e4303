"""Sustained throughput of one worker process, side by side with a bare consumer.

    .venv/bin/python benchmarks/worker_throughput.py --events 200000

On a private embedded stack (free ports), the same N click events are pre-loaded into
one topic per contender; each contender then drains its copy:

- ``bare aiokafka consumer``: reads the messages and does nothing (the ceiling);
- ``streamrec batch loop``: ``streamrec worker`` as shipped.

Worker throughput counts only answered events: recommendations on the output topic,
from the first to the last ``emitted_ts`` (start-up and group join excluded). The
worker's peak RSS is read from /proc at the end. CPU per event, of the worker, of Redis
and of the broker, is sampled from /proc over the same window: on a shared machine it
moves much less from run to run than events/s does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer
from git_tree import export

from models.registry import Registry
from stream.config import Settings
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, consume, produce
from stream.kafka.topics import ensure_topics


def make_records(
    n: int, items: list[str], sessions: int, seed: int = 1, prefix: str = ""
) -> list[tuple[bytes, bytes]]:
    """The same clicks for every ``prefix``, which starts their session and event ids:
    each contender's sessions are new to Redis (the ids of another's would be
    re-deliveries there, which cost Redis less)."""
    rng = random.Random(seed)
    now = time.time()
    out = []
    for i in range(n):
        sid = f"{prefix}s{rng.randrange(sessions)}"
        event = {
            "tenant": "default",
            "session_id": sid,
            "item_id": rng.choice(items),
            "ts": now,
            "event_id": f"{prefix}e{i}",
        }
        out.append((sid.encode(), orjson.dumps(event)))
    return out


async def bare_consumer_rate(broker: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        group_id=f"bare-{time.time_ns()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        max_poll_records=5000,
    )
    await consumer.start()
    try:
        seen, started = 0, None
        while seen < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            got = sum(len(v) for v in batch.values())
            if got and started is None:  # from the first batch: group join excluded
                started = time.perf_counter()
            seen += got
        return n / (time.perf_counter() - (started or time.perf_counter()))
    finally:
        await consumer.stop()


class CpuSampler(threading.Thread):
    """CPU seconds used by some processes, sampled with the wall clock every 50 ms."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()

    def cpu(self, pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / self.TICK  # utime + stime

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.samples.append((time.time(), {k: self.cpu(p) for k, p in self.pids.items()}))

    def used(self, name: str, start: float, end: float) -> float:
        """CPU seconds ``name`` used between two wall-clock times (nearest samples)."""
        times = [t for t, _ in self.samples]

        def at(t: float) -> float:
            i = min(range(len(times)), key=lambda j: abs(times[j] - t))
            return self.samples[i][1][name]

        return at(end) - at(start)


def with_rules(stack: EmbeddedStack, model_dir: Path, home: Path) -> Path:
    """A copy of the registry whose tenant has serving rules (exclude seen, 10 % of the
    items blocklisted, one category of ten excluded) and a catalogue in Redis with 10 %
    of the items unavailable: what a shop's rules cost the batch path."""
    import redis

    from state import keys

    copy = home / "models"
    shutil.copytree(model_dir, copy)
    registry = Registry(copy)
    items = registry.load("default").item_list
    rng = random.Random(3)
    registry.set_rules(
        "default",
        {
            "exclude": "seen",
            "blocklist": rng.sample(items, len(items) // 10),
            "exclude_categories": ["c0"],
        },
    )
    entries = {
        item: orjson.dumps(
            {"available": rng.random() > 0.1, "category": f"c{rng.randrange(10)}", "tags": []}
        )
        for item in items
    }
    client = redis.Redis.from_url(stack.redis_url)
    client.hset(keys.catalogue("default"), mapping=entries)
    client.incr(keys.catalogue_version("default"))
    client.delete(keys.TENANT_RULES)  # refilled from this registry by the worker
    return copy


def clear_catalogue(stack: EmbeddedStack) -> None:
    import redis

    from state import keys

    client = redis.Redis.from_url(stack.redis_url)
    client.delete(keys.catalogue("default"), keys.catalogue_version("default"))
    client.delete(keys.TENANT_RULES)  # the cache, refilled from the next registry


def worker_rate(
    stack: EmbeddedStack,
    home: Path,
    model_dir: Path,
    engine: str,
    make: Callable[[str], list[tuple[bytes, bytes]]],
    batch_size: int,
    trees: dict[str, Path] | None = None,
) -> tuple[float, float, float, float]:
    """Events/s, peak RSS (MB), and worker and Redis CPU microseconds per event, on the
    clicks ``make`` gives for a prefix of ids."""
    engine, _, tree = engine.partition("@")
    tag = f"{engine}-{tree}-{time.time_ns()}"
    records = make(f"{tag}-")
    threads = "1" if engine.endswith("-1thread") else "2"
    engine = engine.removesuffix("-1thread")
    delivery = "exactly_once" if engine.endswith("-eos") else "at_least_once"
    engine = engine.removesuffix("-eos")
    compression = "lz4" if engine.endswith("-lz4") else "none"
    engine = engine.removesuffix("-lz4")
    feedback = "0" if engine.endswith("-nofeedback") else "1"
    engine = engine.removesuffix("-nofeedback")
    rules = engine.endswith("-rules")
    engine = engine.removesuffix("-rules")
    if rules:
        model_dir = with_rules(stack, model_dir, home / tag)
    cfg = WorkerConfig(
        stack,
        home / tag,
        model_dir,
        f"clicks-{tag}",
        f"recs-{tag}",
        f"dlq-{tag}",
        f"app-{tag}",
        extra_env={
            # Another tree's packages first: its worker, with this one's virtualenv.
            **({"PYTHONPATH": str((trees or {})[tree])} if tree else {}),
            "STREAMREC_ENGINE": engine,
            "STREAMREC_DELIVERY": delivery,
            "STREAMREC_FEEDBACK": feedback,
            "STREAMREC_KAFKA_OUTPUT_COMPRESSION": compression,
            "STREAMREC_BATCH_SIZE": str(batch_size),
            "STREAMREC_RANK_THREADS": threads,
            **(
                {"STREAMREC_BATCH_WITHIN_S": os.environ["BENCH_WITHIN"]}
                if "BENCH_WITHIN" in os.environ
                else {}
            ),
        },
    )
    ensure_topics(stack.broker, [cfg.clicks, cfg.recs, cfg.dlq], 4)
    produce(stack.broker, cfg.clicks, records)
    worker = WorkerProcess(cfg).start()
    redis = next(s for s in stack.services if s.name == "redis")
    broker = next(s for s in stack.services if s.name == "broker")
    pids = {"worker": worker.proc.pid, "redis": redis.pid(), "broker": broker.pid()}  # type: ignore[union-attr]
    sampler = CpuSampler({k: p or 0 for k, p in pids.items()})
    sampler.start()
    try:
        recs = consume(stack.broker, cfg.recs, len(records), timeout=900)
        rss = worker.peak_rss_mb()
    finally:
        sampler.stop.set()
        worker.stop()
    if rules:
        clear_catalogue(stack)
    if len(recs) < len(records):
        raise SystemExit(
            f"{engine}: only {len(recs)} of {len(records)} answered; see {worker.log_path}"
        )
    emitted = sorted(orjson.loads(m.value())["emitted_ts"] for m in recs)
    start, end = emitted[0], emitted[-1]
    per_event = [
        sampler.used(n, start, end) / len(records) * 1e6 for n in ("worker", "redis", "broker")
    ]
    return len(records) / (end - start), rss, *per_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="registry with a promoted 'default' model "
        "(default: train one on the shipped e-shop data)",
    )
    parser.add_argument(
        "--engines",
        default="bare,batch",
        help="bare, batch, batch-eos (batch loop with STREAMREC_DELIVERY=exactly_once), "
        "batch-nofeedback (STREAMREC_FEEDBACK=0: no hits, lists or counters), "
        "batch-lz4 (STREAMREC_KAFKA_OUTPUT_COMPRESSION=lz4), "
        "batch-rules (serving rules and a catalogue: a blocklist, unavailable items, an "
        "excluded category), batch-1thread (STREAMREC_RANK_THREADS=1: ranking on one core)",
    )
    parser.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=REF",
        help="a git commit to run workers of, side by side with this checkout: an engine "
        "ending in @NAME (e.g. batch@main) runs that commit's worker (--tree main=main)",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    trees = {}
    for spec in args.tree:
        name, _, ref = spec.partition("=")
        trees[name] = export(ref or name, home / "trees" / name)
    stack = EmbeddedStack(
        home / "run",
        f"127.0.0.1:{free_port()}",
        f"redis://127.0.0.1:{free_port()}/0",
        broker_kind=args.broker,
    )
    print(f"broker: {stack.broker_why}")
    stack.up()
    try:
        model_dir = args.model_dir or home / "models"
        if args.model_dir is None:
            from models.datasets import eshop_path, read_clicks, sessionize
            from models.train import TrainParams, train_model

            registry = Registry(model_dir)
            bundle = train_model(sessionize(read_clicks(eshop_path(), fmt="eshop")), TrainParams())
            registry.promote("default", registry.register("default", bundle, {}))
        bundle = Registry(model_dir).load("default")
        items = bundle.item_list

        def make(prefix: str) -> list[tuple[bytes, bytes]]:
            return make_records(args.events, items, args.sessions, prefix=prefix)

        records = make("")
        rows = []
        engines = args.engines.split(",")
        bare = None
        if "bare" in engines:
            topic = f"bare-{time.time_ns()}"
            ensure_topics(stack.broker, [topic], 4)
            produce(stack.broker, topic, records)
            bare = asyncio.run(bare_consumer_rate(stack.broker, topic, len(records)))
            rows.append(("bare aiokafka consumer (reads only)", bare, *[float("nan")] * 4))
        names = {
            "batch": "streamrec batch loop (shipped)",
            "batch-eos": "streamrec batch loop, exactly once (transactions)",
            "batch-nofeedback": "streamrec batch loop, feedback counting off",
            "batch-lz4": "streamrec batch loop, output lz4-compressed",
            "batch-rules": "streamrec batch loop, serving rules + catalogue",
            "batch-1thread": "streamrec batch loop, ranking on one thread",
        }
        for engine in (e for e in engines if e.partition("@")[0] in names):
            measured = worker_rate(stack, home, model_dir, engine, make, args.batch_size, trees)
            base, _, tree = engine.partition("@")
            rows.append((names[base] + (f" @{tree}" if tree else ""), *measured))
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)

    print(
        f"\n{args.events:,} events, {args.sessions:,} sessions, model of {len(items):,} items, "
        f"batch size {args.batch_size}, {os.cpu_count()} cores, broker {stack.broker_why}\n"
    )
    print(
        "| contender | events/s | vs bare consumer | worker peak RSS "
        "| worker CPU / event | Redis CPU / event | broker CPU / event |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rate, rss, *cpu_us in rows:
        ratio = f"{rate / bare:.1%}" if bare else "-"
        rss_s = "-" if rss != rss else f"{rss:.0f} MB"
        cpu = " ".join("| -" if us != us else f"| {us:.1f} µs" for us in cpu_us)
        print(f"| {name} | {rate:,.0f} | {ratio} | {rss_s} {cpu} |")


if __name__ == "__main__":
    main()
