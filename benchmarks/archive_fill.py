"""Filling the click archive from Kafka: one trainer reading all of Kafka against the click
archive filled by one or two archivers, per source tree, side by side on one embedded stack.

    STREAMREC_EMBEDDED_BROKER=kafka nice .venv/bin/python benchmarks/archive_fill.py \\
        --tenants 40 --sessions 2000 --repeat 3 --trees main=/path/to/main,branch=.

Synthetic clicks of ``--tenants`` tenants (``benchmarks/tenants_scale.py``'s) go to a
4-partition ``clicks`` topic. Then, alternating, ``--repeat`` times: ``read_click_log``
of the whole window (what every trainer of a group did once per pass before the
archive), and for each of ``--trees`` (name=path of a checkout: its code archives),
``--archivers`` processes each running a ``ClickArchiver`` into a fresh archive until it
covers the log's end (a trainer group's first pass; later passes archive only the clicks
new since), then one of them reading half the tenants back (one trainer's share).
Prints the medians: wall time (joining the consumer group and its settling,
``SETTLE_S``, included), the archivers' CPU per click archived (from the archiver's
start to the archive covering the log, imports and start-up left out), and the read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WINDOW_S = 8 * 86400


def _child(broker: str, root: str, group: str, ends: dict[int, int], read: list[str]) -> None:
    """One archiver (this process's code, from its tree): prints its CPU seconds and
    clicks, and the seconds to read ``read``'s clicks back if asked to."""
    from models.click_archive import covers, read_archive
    from stream.kafka.click_archive import ClickArchiver
    from stream.kafka.config import kafka_config

    cpu = time.process_time()
    archiver = ClickArchiver(
        kafka_config(broker), "clicks", group, Path(root), window_s=WINDOW_S,
        session_timeout_s=6.0, wanted=lambda: ends,
    )  # fmt: skip
    while not covers(Path(root), ends):
        time.sleep(0.1)
    archiver.close()
    cpu = time.process_time() - cpu
    read_s = None
    if read:
        started = time.perf_counter()
        read_archive(Path(root), time.time() - WINDOW_S, read, ends)
        read_s = time.perf_counter() - started
    print(json.dumps({"cpu": cpu, "clicks": archiver.clicks, "read": read_s}), flush=True)


def _fill(
    tree: Path, broker: str, root: Path, group: str, ends: dict[int, int], count: int,
    read: list[str],
) -> tuple[float, float, int, float]:  # fmt: skip
    """``count`` archivers of ``tree``'s code into ``root``: wall, CPU, clicks, read."""
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    args = [json.dumps(x) for x in (broker, str(root), group, ends)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", *args, json.dumps(read if i == 0 else [])],
            env=env,
            cwd=tree,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(count)
    ]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - started
    if any(p.returncode for p in procs):
        raise SystemExit(f"an archiver of {tree} failed")
    return wall, sum(o["cpu"] for o in outs), sum(o["clicks"] for o in outs), outs[0]["read"]


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        broker, root, group, ends, read = (json.loads(a) for a in sys.argv[2:7])
        _child(broker, root, group, {int(p): o for p, o in ends.items()}, read)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per tenant")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--archivers", default="1,2", help="comma-separated counts of archiver processes"
    )
    parser.add_argument(
        "--trees",
        default=f"this={Path.cwd()}",
        help="name=path,... of checkouts whose code archives, alternately (e.g. main's)",
    )
    args = parser.parse_args()
    trees = {k: Path(v) for k, v in (t.split("=", 1) for t in args.trees.split(","))}
    counts = [int(c) for c in args.archivers.split(",")]

    from stream.dev.stack import EmbeddedStack, free_port
    from stream.kafka.click_log import read_click_log
    from stream.kafka.config import kafka_config
    from stream.kafka.topics import ensure_topics
    from stream.kafka.work_queue import end_offsets

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tenants_scale import produce_tenants

    home = Path(tempfile.mkdtemp(prefix="streamrec-archive-fill-"))
    stack = EmbeddedStack(
        home / "run", f"127.0.0.1:{free_port()}", f"redis://127.0.0.1:{free_port()}/0"
    )
    stack.up()
    try:
        ensure_topics(stack.broker, ["clicks"], 4)
        clicks, _ = produce_tenants(stack.broker, "clicks", args.tenants, args.sessions, 2000)
        ends = end_offsets(kafka_config(stack.broker), "clicks")
        share = [f"shop-{t:04d}" for t in range(0, args.tenants, 2)]
        kafka_s: list[float] = []
        runs: dict[tuple[str, int], list[tuple[float, float, int, float]]] = {
            (name, c): [] for name in trees for c in counts
        }
        for r in range(args.repeat):
            started = time.perf_counter()
            read_click_log(stack.broker, "clicks", time.time() - WINDOW_S)
            kafka_s.append(time.perf_counter() - started)
            line = [f"round {r + 1}: Kafka {kafka_s[-1]:.1f}s"]
            for count in counts:
                for name, tree in trees.items():
                    root = home / f"archive-{r}-{name}-{count}"
                    got = _fill(tree, stack.broker, root, f"fill-{r}-{name}-{count}", ends,
                                count, share)  # fmt: skip
                    runs[(name, count)].append(got)
                    line.append(
                        f"{name} by {count}: {got[0]:.1f}s, {got[1] / max(got[2], 1) * 1e6:.2f} "
                        f"us CPU/click, half the tenants read in {got[3]:.2f}s"
                    )
            print("; ".join(line), flush=True)
        med = statistics.median
        print(f"\n{clicks:,} clicks, {args.tenants} tenants, medians of {args.repeat}:")
        print("| reading | wall | archivers' CPU per click | half the tenants read back |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| read_click_log, whole log | {med(kafka_s):.1f} s | | |")
        for (name, count), got in runs.items():
            print(
                f"| {name}: archive filled by {count} archiver(s) | {med(g[0] for g in got):.1f}"
                f" s | {med(g[1] / max(g[2], 1) for g in got) * 1e6:.2f} us | "
                f"{med(g[3] for g in got):.2f} s |"
            )
    finally:
        stack.down()


if __name__ == "__main__":
    main()
