"""The worker's consumer side alone: aiokafka against confluent-kafka, driven from asyncio.

    .venv/bin/python benchmarks/consumer_clients.py --events 200000 --rounds 5

N click events are loaded once into a 4-partition topic of a private embedded Apache
Kafka; each contender then reads all of them with a fresh consumer group, in batches of
``--batch-size`` as the worker's loop does, and turns each batch into the list of records
it would hand to processing (``stream.kafka.consumer.consumed`` for confluent-kafka).
Contenders run in turn, ``--rounds`` times alternating, and the table shows medians (and
the median of the per-round ratios to aiokafka):

- ``aiokafka getmany``: ``await consumer.getmany(max_records=..., timeout_ms=...)``;
- ``confluent consume in a thread``: the worker's consumer (stream/kafka/consumer.py):
  ``consume(n, 0)`` in a thread, or when nothing is buffered ``poll(t)`` then
  ``consume(n - 1, 0)``;
- ``confluent consume, timeout 0``: ``consumer.consume(n, 0)`` on the event loop, a short
  ``asyncio.sleep`` when nothing is buffered yet.

Events/s runs from the first batch to the last (the group join excluded); CPU per event
is the whole process's CPU time (librdkafka's threads included) over the same window.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer
from worker_throughput import make_records

from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import produce
from stream.kafka.config import kafka_config
from stream.kafka.consumer import FETCH_SETTINGS, ClickConsumer, consumed
from stream.kafka.topics import ensure_topics

Reader = Callable[[str, str, int, int, float], Awaitable[tuple[float, float]]]


class _Window:
    """Wall and CPU time from the first non-empty batch to the end."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def first(self) -> None:
        if not self.wall:
            self.wall, self.cpu = time.perf_counter(), time.process_time()

    def result(self, n: int) -> tuple[float, float]:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return n / wall, cpu / n * 1e6


async def aiokafka_reader(
    broker: str, topic: str, n: int, batch: int, within_s: float
) -> tuple[float, float]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker,
        group_id=f"aiokafka-{time.time_ns()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=batch,
        fetch_max_wait_ms=max(1, int(within_s * 1000)),
    )
    await consumer.start()
    window, seen, sink = _Window(), 0, 0
    try:
        while seen < n:
            fetched = await consumer.getmany(timeout_ms=int(within_s * 1000), max_records=batch)
            records = [r for records in fetched.values() for r in records]
            if records:
                window.first()
                seen += len(records)
                sink += sum(len(r.value) for r in records)  # read each record once
        return window.result(n)
    finally:
        await consumer.stop()


# librdkafka's fetch sizes as the worker sets them; --rdkafka overrides (to try others).
RDKAFKA: dict[str, Any] = dict(FETCH_SETTINGS)


def confluent_settings(broker: str, within_s: float) -> dict[str, Any]:
    extra = {"fetch.wait.max.ms": max(1, int(within_s * 1000)), **RDKAFKA}
    return kafka_config(broker).consumer(f"confluent-{time.time_ns()}", extra)


def confluent_consumer(broker: str, topic: str, within_s: float) -> Any:
    consumer = Consumer(confluent_settings(broker, within_s))
    consumer.subscribe([topic])
    return consumer


async def confluent_thread_reader(
    broker: str, topic: str, n: int, batch: int, within_s: float
) -> tuple[float, float]:
    """The worker's own consumer (stream.kafka.consumer)."""

    async def revoked() -> None:
        return None

    consumer = ClickConsumer(
        confluent_settings(broker, within_s),
        asyncio.get_running_loop(),
        revoked=revoked,
        assigned=lambda _: None,
    )
    consumer.subscribe([topic])
    window, seen, sink = _Window(), 0, 0
    try:
        while seen < n:
            records, _ = consumed(await consumer.fetch(batch, within_s))
            if records:
                window.first()
                seen += len(records)
                sink += sum(len(r.value or b"") for r in records)
        return window.result(n)
    finally:
        await consumer.close(10.0)


async def confluent_poll_reader(
    broker: str, topic: str, n: int, batch: int, within_s: float
) -> tuple[float, float]:
    consumer = confluent_consumer(broker, topic, within_s)
    window, seen, sink = _Window(), 0, 0
    try:
        while seen < n:
            messages = consumer.consume(batch, 0)
            if not messages:
                await asyncio.sleep(0.002)
                continue
            records, _ = consumed(messages)
            if records:
                window.first()
                seen += len(records)
                sink += sum(len(r.value or b"") for r in records)
        return window.result(n)
    finally:
        await asyncio.to_thread(consumer.close)


READERS: dict[str, tuple[str, Reader]] = {
    "aiokafka": ("aiokafka getmany", aiokafka_reader),
    "thread": ("confluent consume in a thread", confluent_thread_reader),
    "poll0": ("confluent consume, timeout 0", confluent_poll_reader),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--within-s", type=float, default=0.02, help="fetch wait per batch")
    parser.add_argument("--readers", default=",".join(READERS), help=", ".join(READERS))
    parser.add_argument(
        "--rdkafka",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka consumer setting for the confluent readers (repeatable)",
    )
    args = parser.parse_args()
    RDKAFKA.update(kv.split("=", 1) for kv in args.rdkafka)
    readers = args.readers.split(",")

    stack = EmbeddedStack(
        Path(tempfile.mkdtemp(prefix="consumer-clients-")),
        f"127.0.0.1:{free_port()}",
        f"redis://127.0.0.1:{free_port()}/0",
        broker_kind="kafka",
    )
    broker = next(s for s in stack.services if s.name == "broker")
    broker.start()
    try:
        topic = "clicks"
        ensure_topics(stack.broker, [topic], 4)
        items = [f"i{i}" for i in range(5000)]
        produce(stack.broker, topic, make_records(args.events, items, 20_000))
        runs: dict[str, list[tuple[float, float]]] = {r: [] for r in readers}
        for round_ in range(args.rounds):
            for name in readers if round_ % 2 == 0 else readers[::-1]:
                rate, cpu = asyncio.run(
                    READERS[name][1](
                        stack.broker, topic, args.events, args.batch_size, args.within_s
                    )
                )
                runs[name].append((rate, cpu))
                print(f"round {round_ + 1} {name}: {rate:,.0f} events/s, {cpu:.2f} µs CPU/event")
    finally:
        broker.stop()

    base = runs.get("aiokafka")
    print(
        f"\n{args.events:,} events, batches of {args.batch_size}, {args.rounds} rounds, medians\n"
    )
    print("| reader | events/s | vs aiokafka | CPU / event | CPU vs aiokafka |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in readers:
        rates = [r for r, _ in runs[name]]
        cpus = [c for _, c in runs[name]]
        if base:
            rate_ratio = statistics.median(
                r / b for (r, _), (b, _) in zip(runs[name], base, strict=True)
            )
            cpu_ratio = statistics.median(
                c / b for (_, c), (_, b) in zip(runs[name], base, strict=True)
            )
            ratios = f"{rate_ratio:.2f}x | {statistics.median(cpus):.2f} µs | {cpu_ratio:.2f}x"
        else:
            ratios = f"- | {statistics.median(cpus):.2f} µs | -"
        print(f"| {READERS[name][0]} | {statistics.median(rates):,.0f} | {ratios} |")


if __name__ == "__main__":
    main()
