"""Reading the click log for a pass: one trainer reading all of Kafka against the click
archive filled by one or two archivers, side by side on one embedded stack.

    STREAMREC_EMBEDDED_BROKER=kafka nice .venv/bin/python benchmarks/archive_fill.py \\
        --tenants 40 --sessions 2000 --repeat 3

Synthetic clicks of ``--tenants`` tenants (``benchmarks/tenants_scale.py``'s) go to a
4-partition ``clicks`` topic. Then, alternating, ``--repeat`` times: ``read_click_log``
of the whole window (what every trainer of a group did once per pass before the
archive), and ``--archivers`` 1 and 2 processes each running a ``ClickArchiver`` into a
fresh archive until it covers the log's end (a trainer group's first pass; later passes
archive only the clicks new since), then ``read_archive`` of half the tenants (one
trainer's share). Prints the medians; wall times include joining the consumer group and
its settling (``SETTLE_S``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

from models.click_archive import covers, read_archive
from stream.dev.stack import EmbeddedStack, free_port
from stream.kafka.click_archive import ClickArchiver
from stream.kafka.click_log import read_click_log
from stream.kafka.config import kafka_config
from stream.kafka.topics import ensure_topics
from stream.kafka.work_queue import end_offsets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tenants_scale import produce_tenants  # noqa: E402

WINDOW_S = 8 * 86400


def _archive(broker: str, root: str, group: str, ends: dict[int, int]) -> None:
    archiver = ClickArchiver(
        kafka_config(broker), "clicks", group, Path(root), window_s=WINDOW_S,
        session_timeout_s=6.0, wanted=lambda: ends,
    )  # fmt: skip
    while not covers(Path(root), ends):
        time.sleep(0.1)
    archiver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="streamrec-archive-fill-"))
    stack = EmbeddedStack(
        home / "run", f"127.0.0.1:{free_port()}", f"redis://127.0.0.1:{free_port()}/0"
    )
    stack.up()
    ctx = multiprocessing.get_context("spawn")
    try:
        ensure_topics(stack.broker, ["clicks"], 4)
        clicks, _ = produce_tenants(stack.broker, "clicks", args.tenants, args.sessions, 2000)
        ends = end_offsets(kafka_config(stack.broker), "clicks")
        tenants = [f"shop-{t:04d}" for t in range(0, args.tenants, 2)]
        kafka_s: list[float] = []
        fill_s: dict[int, list[float]] = {1: [], 2: []}
        share_s: list[float] = []
        for r in range(args.repeat):
            started = time.perf_counter()
            read_click_log(stack.broker, "clicks", time.time() - WINDOW_S)
            kafka_s.append(time.perf_counter() - started)
            for count in (1, 2):
                root = home / f"archive-{r}-{count}"
                started = time.perf_counter()
                procs = [
                    ctx.Process(
                        target=_archive, args=(stack.broker, str(root), f"fill-{r}-{count}", ends)
                    )
                    for _ in range(count)
                ]
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
                fill_s[count].append(time.perf_counter() - started)
            started = time.perf_counter()
            read_archive(root, time.time() - WINDOW_S, tenants, ends)
            share_s.append(time.perf_counter() - started)
            print(
                f"round {r + 1}: Kafka {kafka_s[-1]:.1f}s, archive by 1 {fill_s[1][-1]:.1f}s, "
                f"by 2 {fill_s[2][-1]:.1f}s, half the tenants from it {share_s[-1]:.1f}s",
                flush=True,
            )
        med = statistics.median
        print(f"\n{clicks:,} clicks, {args.tenants} tenants, medians of {args.repeat}:")
        print("| reading | wall |\n| --- | ---: |")
        print(f"| read_click_log, whole log | {med(kafka_s):.1f} s |")
        for count in (1, 2):
            print(
                f"| archive filled by {count} archiver(s) | {med(fill_s[count]):.1f} s "
                f"({med(fill_s[count]) / med(kafka_s):.2f}x) |"
            )
        print(f"| half the tenants read from the archive | {med(share_s):.1f} s |")
    finally:
        stack.down()


if __name__ == "__main__":
    main()
