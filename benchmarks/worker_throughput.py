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
moves much less from run to run than events/s does. A JVM broker spends its first
minutes compiling its code and collecting garbage (most of its CPU per event in the first
runs, less in each later one), so one worker run goes through it unmeasured first
(``--warm-broker``).

``--rate R`` sends the clicks at R a second while the worker runs (after it joined its
group) instead of loading them first: CPU per event at a steady rate below capacity,
where requests carry a few events each. ``--probe`` adds what the broker spent its CPU
on (per thread group) and its requests per event by type (benchmarks/broker_probe.py),
and its CPU while idle just before the worker starts (the JVM's own background).
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer
from broker_probe import BrokerProbe, per_event, requests_by_client
from confluent_kafka import Producer
from git_tree import export

from models.registry import Registry
from producers.client import producer_config
from stream.config import Settings
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess, consume, produce
from stream.kafka.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
IDLE_S = 3.0  # with --probe: the broker's CPU over this long, idle, before each worker


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


@dataclass
class Measured:
    """One contender's run: events/s, peak RSS (MB), CPU µs per event of the worker,
    Redis and the broker, and (with ``--probe``) the broker's detail."""

    rate: float
    rss: float
    worker: float
    redis: float
    broker: float
    broker_idle: float = float("nan")  # µs per event the idle broker would have used
    broker_groups: dict[str, float] = field(default_factory=dict)  # µs per event
    requests: dict[str, float] = field(default_factory=dict)  # per event
    by_client: dict[tuple[str, str], int] = field(default_factory=dict)  # --request-log
    batches: int = 0  # distinct publish times: about the worker's batches
    # With --rate: from each click's send to its recommendation's publish, p50 and p99 (ms).
    to_publish_ms: tuple[float, float] = (float("nan"), float("nan"))


def wait_assigned(worker: WorkerProcess, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while "assigned partitions" not in worker.log():
        if not worker.alive() or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not join its group; see {worker.log_path}")
        time.sleep(0.2)


def send_paced(broker: str, topic: str, records: list[tuple[bytes, bytes]], rate: float) -> None:
    """The records at ``rate`` a second, with the load test's producer settings, each
    stamped with its send time (``ts``)."""
    producer = Producer(producer_config(broker, linger_ms=1.0))
    start = time.perf_counter()
    for i, (key, value) in enumerate(records):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        event = orjson.loads(value)
        event["ts"] = time.time()
        producer.produce(topic, orjson.dumps(event), key)
        producer.poll(0)
    producer.flush(30)


def worker_rate(
    stack: EmbeddedStack,
    home: Path,
    model_dir: Path,
    engine: str,
    make: Callable[[str], list[tuple[bytes, bytes]]],
    batch_size: int,
    trees: dict[str, Path] | None = None,
    rate: float | None = None,
    probe: bool = False,
    request_log: bool = False,
) -> Measured:
    """One contender on the clicks ``make`` gives for a prefix of ids: loaded before the
    worker starts, or sent at ``rate`` once it has joined its group."""
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
            # The tree's packages first: its worker, with this one's virtualenv (the
            # worker runs in a directory of its own: `python -m` puts the working
            # directory before PYTHONPATH, and this checkout's would win).
            "PYTHONPATH": str((trees or {})[tree] if tree else ROOT),
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
    if rate is None:
        produce(stack.broker, cfg.clicks, records)
    redis = next(s for s in stack.services if s.name == "redis")
    broker = next(s for s in stack.services if s.name == "broker")
    broker_pid = broker.pid() or 0  # type: ignore[union-attr]
    prober = BrokerProbe(broker_pid) if probe else None
    idle = None
    if prober is not None:
        prober.start()
        idle_from = time.time()
        time.sleep(IDLE_S)
        idle = (time.time(), idle_from)
        before = prober.counts()
        if request_log:
            log_from = broker.log_file.stat().st_size  # type: ignore[union-attr]
            prober.log_level("kafka.request.logger", "DEBUG")
    worker = WorkerProcess(cfg).start()
    pids = {"worker": worker.proc.pid, "redis": redis.pid(), "broker": broker_pid}  # type: ignore[union-attr]
    sampler = CpuSampler({k: p or 0 for k, p in pids.items()})
    sampler.start()
    sender = None
    try:
        if rate is not None:
            # The clock starts once a first click was answered, as the load test's does:
            # a worker's first fetch after joining its group waits for the group's
            # offsets and the topics' metadata, which would be a backlog to catch up.
            wait_assigned(worker)
            key, value = records[0]
            first = orjson.dumps({**orjson.loads(value), "event_id": f"{tag}-first"})
            produce(stack.broker, cfg.clicks, [(key, first)])
            consume(stack.broker, cfg.recs, 1, timeout=300)
            sender = threading.Thread(
                target=send_paced, args=(stack.broker, cfg.clicks, records, rate), daemon=True
            )
            sender.start()
        recs = consume(stack.broker, cfg.recs, len(records) + (rate is not None), timeout=900)
        rss = worker.peak_rss_mb()
    finally:
        sampler.stop.set()
        worker.stop()
        if sender is not None:
            sender.join(60)
    if rules:
        clear_catalogue(stack)
    if len(recs) < len(records):
        raise SystemExit(
            f"{engine}: only {len(recs)} of {len(records)} answered; see {worker.log_path}"
        )
    answers = [orjson.loads(m.value()) for m in recs]
    answers = [a for a in answers if a["event_id"] != f"{tag}-first"]
    emitted = sorted(a["emitted_ts"] for a in answers)
    start, end = emitted[0], emitted[-1]
    n = len(records)
    cpu = [sampler.used(k, start, end) / n * 1e6 for k in ("worker", "redis", "broker")]
    measured = Measured(n / (end - start), rss, *cpu, batches=len(set(emitted)))
    if rate is not None:
        waits = [(a["emitted_ts"] - a["event_ts"]) * 1000 for a in answers]
        measured.to_publish_ms = tuple(np.percentile(waits, [50, 99]))  # type: ignore[assignment]
    if prober is not None and idle is not None:
        after = prober.counts()
        if request_log:
            prober.log_level("kafka.request.logger", "WARN")
            with open(broker.log_file, errors="replace") as f:  # type: ignore[union-attr]
                f.seek(log_from)
                measured.by_client = requests_by_client(f.read())
        prober.stop()
        idle_cpu = sum(prober.cpu_by_group(idle[1], idle[0]).values())
        measured.broker_idle = idle_cpu / (idle[0] - idle[1]) * (end - start) / n * 1e6
        measured.broker_groups = {
            g: cpu_s / n * 1e6 for g, cpu_s in prober.cpu_by_group(start, end).items()
        }
        measured.requests = per_event(before, after, n)
    return measured


def print_probe(name: str, m: Measured) -> None:
    """The broker's detail for one contender: where its CPU went, its requests."""
    print(f"\n{name}: broker {m.broker:.1f} µs an event; idle, it would have used "
          f"{m.broker_idle:.1f} µs an event over the same time")  # fmt: skip
    print("| broker threads | µs / event |\n| --- | ---: |")
    for group, us in m.broker_groups.items():
        if us >= 0.05:
            print(f"| {group} | {us:.1f} |")
    print("| broker counter | per event |\n| --- | ---: |")
    for key, value in sorted(m.requests.items()):
        print(f"| {key} | {value:.4g} |")
    if m.by_client:
        print("| client | request | requests |\n| --- | --- | ---: |")
        for (client, api), count in sorted(m.by_client.items(), key=lambda kv: -kv[1]):
            print(f"| {client} | {api} | {count:,} |")


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
        help="a git commit, or another checkout's directory, to run workers of, side by "
        "side with this checkout: an engine ending in @NAME (e.g. batch@main) runs that "
        "tree's worker (--tree main=main, --tree main=/work/main)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="send the clicks at this many a second while the worker runs (default: load "
        "them all before it starts and let it drain them)",
    )
    parser.add_argument(
        "--warm-broker",
        type=int,
        default=1,
        metavar="RUNS",
        help="worker runs (this tree's, as measured ones, not reported) before the measured "
        "ones: a JVM broker spends its first minutes compiling and collecting garbage, "
        "which would be charged to the first contenders (default 1; 0: none)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="also print the broker's CPU per thread group and its requests per event "
        "by type (JMX, switched on with jcmd; needs a JDK)",
    )
    parser.add_argument(
        "--request-log",
        action="store_true",
        help="with --probe: count the broker's requests per client id from its request log "
        "(DEBUG while the worker runs, which costs the broker CPU: not for CPU figures)",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    if args.model_dir is not None:
        args.model_dir = args.model_dir.resolve()
    trees = {}
    for spec in args.tree:
        name, _, ref = spec.partition("=")
        ref = ref or name
        # A directory is used as it is (its working files); anything else is a commit.
        trees[name] = (
            Path(ref).resolve() if Path(ref).is_dir() else export(ref, home / "trees" / name)
        )
    stack = EmbeddedStack(
        home / "run",
        f"127.0.0.1:{free_port()}",
        f"redis://127.0.0.1:{free_port()}/0",
        broker_kind=args.broker,
    )
    print(f"broker: {stack.broker_why}")
    stack.up()
    os.chdir(home)  # the workers' working directory (see worker_rate)
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
        rows: list[tuple[str, Measured]] = []
        engines = args.engines.split(",")
        bare = None
        if "bare" in engines:
            topic = f"bare-{time.time_ns()}"
            ensure_topics(stack.broker, [topic], 4)
            produce(stack.broker, topic, records)
            bare = asyncio.run(bare_consumer_rate(stack.broker, topic, len(records)))
            nan = float("nan")
            rows.append(("bare aiokafka consumer (reads only)", Measured(bare, nan, nan, nan, nan)))
        names = {
            "batch": "streamrec batch loop (shipped)",
            "batch-eos": "streamrec batch loop, exactly once (transactions)",
            "batch-nofeedback": "streamrec batch loop, feedback counting off",
            "batch-lz4": "streamrec batch loop, output lz4-compressed",
            "batch-rules": "streamrec batch loop, serving rules + catalogue",
            "batch-1thread": "streamrec batch loop, ranking on one thread",
        }
        measured_engines = [e for e in engines if e.partition("@")[0] in names]
        for _ in range(args.warm_broker if measured_engines else 0):
            print("warming the broker up: one worker run, not measured", flush=True)
            worker_rate(stack, home, model_dir, "batch", make, args.batch_size, None, args.rate)
        for engine in measured_engines:
            measured = worker_rate(
                stack,
                home,
                model_dir,
                engine,
                make,
                args.batch_size,
                trees,
                args.rate,
                args.probe,
                args.request_log,
            )
            base, _, tree = engine.partition("@")
            rows.append((names[base] + (f" @{tree}" if tree else ""), measured))
            print(
                f"{rows[-1][0]}: {measured.rate:,.0f} events/s, CPU µs an event: worker "
                f"{measured.worker:.1f}, Redis {measured.redis:.1f}, broker {measured.broker:.1f}",
                flush=True,
            )
    finally:
        stack.down()
        os.chdir(ROOT)
        shutil.rmtree(home, ignore_errors=True)

    paced = f"sent at {args.rate:g}/s" if args.rate else "loaded first"
    print(
        f"\n{args.events:,} events ({paced}), {args.sessions:,} sessions, model of "
        f"{len(items):,} items, batch size {args.batch_size}, {os.cpu_count()} cores, "
        f"broker {stack.broker_why}, load average {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| contender | events/s | vs bare consumer | worker peak RSS "
        "| worker CPU / event | Redis CPU / event | broker CPU / event | events / batch "
        "| send to publish p50 / p99 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, m in rows:
        ratio = f"{m.rate / bare:.1%}" if bare else "-"
        rss_s = "-" if m.rss != m.rss else f"{m.rss:.0f} MB"
        cpu_us = (m.worker, m.redis, m.broker)
        cpu = " ".join("| -" if us != us else f"| {us:.1f} µs" for us in cpu_us)
        per_batch = f"{args.events / m.batches:,.1f}" if m.batches else "-"
        p50, p99 = m.to_publish_ms
        lat = "-" if p50 != p50 else f"{p50:.1f} / {p99:.1f} ms"
        print(f"| {name} | {m.rate:,.0f} | {ratio} | {rss_s} {cpu} | {per_batch} | {lat} |")
    for name, m in rows:
        if m.broker_groups:
            print_probe(name, m)


if __name__ == "__main__":
    main()
