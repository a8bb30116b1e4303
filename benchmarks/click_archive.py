"""The click archive's own costs: writing a segment, reading it back, its size per click.

    nice .venv/bin/python benchmarks/click_archive.py --tenants 20 --sessions 2000

Synthetic clicks (``producers.synth``, ids as the trainer benchmark makes them) for
``--tenants`` tenants in one segment, written ``--repeat`` times; prints the median
microseconds per click to write it, to read every tenant back, and to read one tenant,
and the file's bytes per click. Decoding the clicks from Kafka is not in these figures
(``benchmarks/tenants_scale.py`` measures a pass end to end).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from models.click_archive import read_archive, write_segment
from producers.synth import SynthParams, generate_clicks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--items", type=int, default=2000, help="catalogue size per tenant")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    columns: tuple[list[str], list[str], list[str], list[float], list[int]] = ([], [], [], [], [])
    now = time.time()
    for t in range(args.tenants):
        c = generate_clicks(
            SynthParams(
                items=args.items, sessions=args.sessions, seed=t, days=6, start_ts=now - 7 * 86400
            )
        )
        tenant = f"shop-{t:04d}"
        ids = zip(c.session_ids.tolist(), c.item_ids.tolist(), c.ts.tolist(), strict=True)
        for sid, item, ts in ids:
            columns[0].append(tenant)
            columns[1].append(f"{tenant}-{sid}")
            columns[2].append(item)
            columns[3].append(ts)
            columns[4].append(len(columns[4]))
    n = len(columns[4])
    write, read_all, read_one = [], [], []
    size = 0
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            started = time.perf_counter()
            path = write_segment(root, 0, 0, n, *columns)
            write.append(time.perf_counter() - started)
            size = path.stat().st_size
            started = time.perf_counter()
            got = read_archive(root, 0)
            read_all.append(time.perf_counter() - started)
            assert sum(len(v) for v in got.values()) == n
            started = time.perf_counter()
            one = read_archive(root, 0, ["shop-0000"])
            read_one.append(time.perf_counter() - started)
    share = len(one["shop-0000"])
    print(f"{n:,} clicks of {args.tenants} tenants in one segment, median of {args.repeat}:")
    print(f"  write:           {statistics.median(write) / n * 1e6:.2f} us/click")
    print(f"  read all:        {statistics.median(read_all) / n * 1e6:.2f} us/click")
    print(
        f"  read one tenant: {statistics.median(read_one) * 1000:.0f} ms for its {share:,} "
        f"clicks ({statistics.median(read_one) / share * 1e6:.2f} us/click of its own)"
    )
    print(f"  size:            {size / n:.1f} bytes/click")


if __name__ == "__main__":
    main()
