"""The embedded broker alone: produce -> fetch latency over time, no worker.

    .venv/bin/python benchmarks/broker_batches.py --linger-ms 1
    .venv/bin/python benchmarks/broker_batches.py --linger-ms 20
    .venv/bin/python benchmarks/broker_batches.py --linger-ms 1 --prefill 100000

One producer sends at a fixed rate to a fresh topic (4 partitions unless told) on a private embedded
broker; one reader stamps each message on arrival. Latency is printed per tenth of the
run, so growth over time shows. ``--prefill`` first loads messages in a few large
batches and measures only what comes after them.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer

from stream.dev.stack import EmbeddedStack, free_port
from stream.kafka.topics import ensure_topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--linger-ms", type=int, default=1)
    parser.add_argument("--fetch-wait-ms", type=int, default=25)
    parser.add_argument("--prefill", type=int, default=0)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    stack = EmbeddedStack(
        Path(tempfile.mkdtemp(prefix="broker-batches-")),
        f"127.0.0.1:{free_port()}",
        f"redis://127.0.0.1:{free_port()}/0",
    )
    stack.services[0].start()
    try:
        ensure_topics(stack.broker, ["t"], args.partitions)
        producer = Producer(
            {
                "bootstrap.servers": stack.broker,
                "linger.ms": args.linger_ms,
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        pad = "x" * 150
        for i in range(args.prefill):
            producer.produce("t", orjson.dumps({"ts": 0, "pad": pad}), f"k{i % 5000}")
        producer.flush(60)
        reader = Consumer(
            {
                "bootstrap.servers": stack.broker,
                "group.id": "reader",
                "auto.offset.reset": "latest" if args.prefill else "earliest",
                "fetch.wait.max.ms": args.fetch_wait_ms,
                "session.timeout.ms": 6000,
            }
        )
        reader.subscribe(["t"])
        deadline = time.monotonic() + 8  # join the group before the clock starts
        while time.monotonic() < deadline and not reader.assignment():
            reader.poll(0.1)

        def send() -> None:
            start = time.perf_counter()
            for i in range(args.messages):
                wait = start + i / args.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                producer.produce("t", orjson.dumps({"ts": time.time(), "pad": pad}), f"k{i % 5000}")
                producer.poll(0)
            producer.flush(30)

        latencies: list[float] = []
        sender = threading.Thread(target=send)
        sender.start()
        give_up = time.monotonic() + args.messages / args.rate + 60
        while len(latencies) < args.messages and time.monotonic() < give_up:
            for msg in reader.consume(1000, timeout=0.005):
                if msg.error() is None:
                    sent = orjson.loads(msg.value())["ts"]
                    if sent > 0:
                        latencies.append(time.time() - sent)
        sender.join()
        reader.close()
    finally:
        stack.down()

    lat = np.asarray(latencies) * 1000
    step = max(1, len(lat) // 10)
    print(
        f"linger.ms={args.linger_ms} fetch.wait.max.ms={args.fetch_wait_ms} "
        f"prefill={args.prefill} partitions={args.partitions} rate={args.rate:g}/s, "
        f"{len(lat):,} of {args.messages:,} received"
    )
    print("| seconds | p50 ms | p99 ms |\n| --- | ---: | ---: |")
    for lo in range(0, len(lat), step):
        p50, p99 = np.percentile(lat[lo : lo + step], [50, 99])
        print(f"| {lo / args.rate:.0f}-{(lo + step) / args.rate:.0f} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
