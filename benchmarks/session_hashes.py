"""What recording a model's training sessions (models.seen) costs at train time: the
time to hash every session's item sequence and the bytes it adds to the bundle.

    .venv/bin/python benchmarks/session_hashes.py                      # the shipped e-shop file
    .venv/bin/python benchmarks/session_hashes.py synth.tsv.gz --format yoochoose

Sessions are built as `streamrec train` builds them; the hashing runs ``--repeat`` times
and the median is printed, beside the size of the ``session_hashes.npy`` it would write.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np

from models.datasets import build_sessions, eshop_path, read_clicks
from models.seen import seen_in, session_hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", help="click log (default: the shipped e-shop file)")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    path = args.file or eshop_path()
    sessions = [s.items for s in build_sessions(read_clicks(path, fmt=args.format))]
    clicks = sum(len(s) for s in sessions)
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        hashes = session_hashes(sessions)
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    seen_in(hashes, sessions)
    lookup_s = time.perf_counter() - started
    out = io.BytesIO()
    np.save(out, hashes, allow_pickle=False)
    print(
        f"{path}: {len(sessions):,} sessions, {clicks:,} clicks -> {len(hashes):,} distinct; "
        f"hashing median {statistics.median(times) * 1000:.0f} ms of {args.repeat} "
        f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); "
        f"looking all of them up {lookup_s * 1000:.0f} ms; "
        f"session_hashes.npy {out.tell():,} bytes"
    )


if __name__ == "__main__":
    main()
