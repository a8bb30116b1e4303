"""What a broker reports as a partition's end offset after acknowledged writes.

Starts the embedded stack (``--broker kafka|tansu``), produces ``--records`` keyed records
to a fresh topic of ``--partitions`` partitions with the producer settings of
``stream.dev.testing.produce`` (batched, linger 5 ms), and compares per partition:

- ``acked``: the records the producer got acknowledged, and their highest offset + 1;
- ``high``: the high watermark through ``stream.kafka.work_queue.end_offsets`` (the call
  a trainer group's pass records), read again ``--polls`` times over ``--wait`` seconds
  (a lag would rise, a fixed under-report would not);
- ``read``: what a consumer actually reads from the start to end-of-partition (count,
  lowest and highest offset + 1, gaps between consecutive offsets);

Then, with ``--batches``, record batches of known sizes to one partition (a flush after
each, so each is one produce request of one batch): the end offset after each batch
against the records written so far and the batch's first offset.

With ``--archive K``, what the pass of a trainer group sees, K times: a fresh topic of
4 partitions gets ``--archive-records`` clicks, a ``ClickArchiver`` archives it with the
end offsets a pass records as its target (``--ends query``: the broker's offsets query
alone; ``--ends checked``: ``end_offsets``, checked by a fetch), and once the archive
covers them, the clicks archived so far are counted against the clicks produced (what a
trainer starting its batch at that moment would read).

Run: ``.venv/bin/python benchmarks/broker_end_offsets.py --broker tansu``;
``... --broker tansu --records --batches --archive 10 --ends query`` (then ``checked``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from stream.config import Settings
from stream.dev.stack import free_port, stack_for
from stream.kafka.config import kafka_config
from stream.kafka.topics import ensure_topics
from stream.kafka.work_queue import end_offsets


def produce(broker: str, topic: str, n: int, linger_ms: int) -> dict[int, list[int]]:
    """Keyed records as the test helper sends them; the acknowledged offsets per partition."""
    acked: dict[int, list[int]] = defaultdict(list)

    def delivered(err, msg) -> None:  # noqa: ANN001 - librdkafka's callback
        if err is None:
            acked[msg.partition()].append(msg.offset())

    producer = Producer(
        kafka_config(broker).producer(
            {"linger.ms": linger_ms, "queue.buffering.max.messages": 2_000_000}
        )
    )
    for i in range(n):
        producer.produce(
            topic, key=f"s-{i % 997}".encode(), value=b"x" * 120, on_delivery=delivered
        )
        producer.poll(0)
    assert producer.flush(60) == 0
    return acked


def batches(broker: str, topic: str, sizes: list[int]) -> None:
    """Batches of ``sizes`` records to partition 0, one at a time; the end offset after each."""
    producer = Producer(kafka_config(broker).producer({"linger.ms": 50}))
    written = 0
    print(f"\nbatches to {topic} partition 0, a flush after each")
    print("  batch  size  first_offset  written  high")
    for k, size in enumerate(sizes):
        for _ in range(size):
            producer.produce(topic, value=b"x" * 120, partition=0)
        assert producer.flush(30) == 0
        first, written = written, written + size
        high = end_offsets(kafka_config(broker), topic)[0]
        print(f"  {k:5d}  {size:4d}  {first:12d}  {written:7d}  {high:4d}")
    read = read_all(broker, topic, 1)
    print(f"  read back: {len(read[0])} record(s), offsets {min(read[0])}..{max(read[0])}")


def queried_ends(broker: str, topic: str) -> dict[int, int]:
    """The broker's offsets query alone, without ``end_offsets``'s check by a fetch."""
    consumer = Consumer(kafka_config(broker).consumer("streamrec-offsets"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


def time_ends(broker: str, rounds: int) -> None:
    """Milliseconds per call, the query alone and ``end_offsets``, alternated, on a topic
    of 12 partitions holding records."""
    topic = f"probe-{uuid.uuid4().hex[:6]}"
    ensure_topics(broker, [topic], 12)
    produce(broker, topic, 12_000, 5)
    took: dict[str, list[float]] = {"query": [], "checked": []}
    for _ in range(rounds):
        for kind, call in (
            ("query", lambda: queried_ends(broker, topic)),
            ("checked", lambda: end_offsets(kafka_config(broker), topic)),
        ):
            t0 = time.perf_counter()
            call()
            took[kind].append(1000 * (time.perf_counter() - t0))
    q, c = statistics.median(took["query"]), statistics.median(took["checked"])
    print(
        f"\nend offsets of 12 partitions, {rounds} calls each, alternated: median {q:.1f} ms "
        f"(query alone) vs {c:.1f} ms (checked by a fetch), ratio {c / q:.2f}"
    )


def archive_once(broker: str, records: int, ends_kind: str, root: Path) -> tuple[int, int, int]:
    """(clicks produced, clicks in the archive once it covers the target, target's sum)."""
    from models.click_archive import covers, read_archive, segments
    from stream.dev.testing import produce as produce_records
    from stream.events import ClickEvent
    from stream.kafka.click_archive import ClickArchiver

    topic = f"probe-{uuid.uuid4().hex[:6]}"
    ensure_topics(broker, [topic], 4)
    now = time.time()
    rows = [
        (f"s{i // 8}".encode(), ClickEvent("shop", f"s{i // 8}", f"i{i % 500}", now - 60).to_json())
        for i in range(records)
    ]
    produce_records(broker, topic, rows)
    if ends_kind == "query":
        ends = queried_ends(broker, topic)
    else:
        ends = end_offsets(kafka_config(broker), topic)
    with ClickArchiver(
        kafka_config(broker), topic, f"probe-{uuid.uuid4().hex[:6]}", root,
        window_s=86400, session_timeout_s=6.0, wanted=lambda: ends,
    ):  # fmt: skip
        deadline = time.monotonic() + 120
        while not covers(root, ends):
            assert time.monotonic() < deadline, "the archive never covered the target"
            time.sleep(0.05)
        got = sum(len(c) for c in read_archive(root, 0).values())
        if got < records:
            segs = [(s.partition, s.first, s.end) for p in range(4) for s in segments(root, p)]
            print(f"    target {ends}; segments (partition, first, end) {segs}")
    return records, got, sum(ends.values())


def read_all(
    broker: str, topic: str, partitions: int, timeout: float = 30.0
) -> dict[int, list[int]]:
    """Every record's offset, per partition, from the start until end of partition."""
    consumer = Consumer(
        kafka_config(broker).consumer(
            f"probe-{uuid.uuid4().hex[:6]}",
            {"enable.partition.eof": True, "fetch.wait.max.ms": 100},
        )
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: dict[int, list[int]] = defaultdict(list)
    todo = set(range(partitions))
    deadline = time.monotonic() + timeout
    try:
        while todo and time.monotonic() < deadline:
            for m in consumer.consume(10_000, timeout=0.2):
                if m.error() is None:
                    got[m.partition()].append(m.offset())
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    todo.discard(m.partition())
        # Anything buffered past an early end-of-partition.
        for m in consumer.consume(100_000, timeout=1.0):
            if m.error() is None:
                got[m.partition()].append(m.offset())
    finally:
        consumer.close()
    return got


def runs(offsets: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive offsets: (first, length)."""
    out: list[tuple[int, int]] = []
    for o in sorted(offsets):
        if out and o == out[-1][0] + out[-1][1]:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((o, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", choices=("kafka", "tansu"), required=True)
    ap.add_argument(
        "--records", type=int, nargs="*", default=[7, 1000, 15000], help="records a topic"
    )
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--linger-ms", type=int, default=5, help="the producer's linger")
    ap.add_argument("--polls", type=int, default=4, help="end offset reads a topic")
    ap.add_argument("--wait", type=float, default=6.0, help="seconds the reads spread over")
    ap.add_argument("--batches", type=int, nargs="*", default=[10, 5, 1, 3, 20], help="batch sizes")
    ap.add_argument("--archive", type=int, default=0, help="rounds of the archive check")
    ap.add_argument("--archive-records", type=int, default=15000)
    ap.add_argument(
        "--ends", choices=("query", "checked"), default="checked", help="the archive's target"
    )
    ap.add_argument("--time", type=int, default=0, help="calls of each, timed")
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="endoffsets-"))
    stack = stack_for(
        Settings.from_env().with_(embedded_broker=args.broker),
        run_dir,
        f"127.0.0.1:{free_port()}",
        f"redis://127.0.0.1:{free_port()}/0",
        redis_mode="single",
    )
    stack.up()
    try:
        print(f"broker: {stack.broker_why}")
        for n in args.records:
            topic = f"probe-{uuid.uuid4().hex[:6]}"
            ensure_topics(stack.broker, [topic], args.partitions)
            acked = produce(stack.broker, topic, n, args.linger_ms)
            highs = []
            for k in range(args.polls):
                if k:
                    time.sleep(args.wait / max(1, args.polls - 1))
                highs.append(end_offsets(kafka_config(stack.broker), topic))
            read = read_all(stack.broker, topic, args.partitions)
            print(f"\n{n} records acknowledged ({sum(map(len, acked.values()))}), topic {topic}")
            print("  p  acked  acked_max+1  high(polls)            read  read_min  read_max+1  "
                  "gaps  last_run(first,len)  runs")  # fmt: skip
            for p in range(args.partitions):
                a, r = acked.get(p, []), read.get(p, [])
                hs = [h.get(p) for h in highs]
                rr = runs(r)
                print(
                    f"  {p}  {len(a):5d}  {max(a, default=-1) + 1:11d}  {str(hs):21s}  "
                    f"{len(r):5d}  {min(r, default=-1):8d}  {max(r, default=-1) + 1:10d}  "
                    f"{len(rr) - 1 if rr else 0:4d}  {rr[-1] if rr else None!s:19s}  {len(rr)}"
                )
            short = {
                p: max(acked[p]) + 1 - highs[-1].get(p, 0)
                for p in acked
                if max(acked[p]) + 1 != highs[-1].get(p, 0)
            }
            print(f"  end offset below the acknowledged last offset + 1 in: {short or 'none'}")
        if args.batches:
            topic = f"probe-{uuid.uuid4().hex[:6]}"
            ensure_topics(stack.broker, [topic], 1)
            batches(stack.broker, topic, args.batches)
        if args.time:
            time_ends(stack.broker, args.time)
        if args.archive:
            print(f"\narchive check, target = end offsets by {args.ends}")
            short = 0
            for k in range(args.archive):
                made, got, target = archive_once(
                    stack.broker, args.archive_records, args.ends, run_dir / f"archive-{k}"
                )
                short += got < made
                print(f"  round {k}: produced {made}, target sums to {target}, "
                      f"archived when covered {got}")  # fmt: skip
            print(f"  rounds with clicks missing when the target was covered: "
                  f"{short} of {args.archive}")  # fmt: skip
    finally:
        stack.down()


if __name__ == "__main__":
    main()
