"""The click archive's own costs: writing segments, reading them back, their size per click.

    nice .venv/bin/python benchmarks/click_archive.py --tenants 4000 --sessions 50 \\
        --read 1,100,2000 --baseline /path/to/main/models/click_archive.py

Synthetic clicks (``producers.synth``, ids as the trainer benchmark makes them) of
``--tenants`` tenants, in log order (by time, tenants interleaved), cut into segments of
``--segment-clicks`` (the archiver's flush size), written ``--repeat`` times into a fresh
archive. Prints the medians: microseconds per click to write the segments and to read
every tenant back, milliseconds for one trainer to read ``--read`` k of the tenants, the
bytes read for them, and the archive's bytes per click. With ``--baseline``, the same is
measured for another version of ``models/click_archive.py`` (e.g. main's), alternating
with this one in each repeat, and the ratios printed. Decoding the clicks from Kafka is
not in these figures (``benchmarks/archive_fill.py`` measures filling from the broker).
"""

from __future__ import annotations

import argparse
import builtins
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from tqdm import tqdm

from models import click_archive
from producers.synth import SynthParams, generate_clicks

Log = tuple[list[str], list[str], list[str], list[float], list[int]]


def synthetic_log(tenants: int, sessions: int, items: int) -> Log:
    """tenant, session id, item id, ts, offset per click, in log order."""
    now = time.time()
    parts = []
    for t in tqdm(range(tenants), desc="generating", unit="tenant", leave=False):
        c = generate_clicks(
            SynthParams(items=items, sessions=sessions, seed=t, days=6, start_ts=now - 7 * 86400)
        )
        tenant = f"shop-{t:04d}"
        sids = [f"{tenant}-{s}" for s in c.session_ids.tolist()]
        parts.append(([tenant] * len(sids), sids, c.item_ids.tolist(), c.ts.tolist()))
    ts = np.concatenate([np.asarray(p[3]) for p in parts])
    by_time = np.argsort(ts, kind="stable").tolist()
    columns = [[x for p in parts for x in p[k]] for k in range(3)]
    log: Log = ([], [], [], [], [])
    for offset, i in enumerate(by_time):
        log[0].append(columns[0][i])
        log[1].append(columns[1][i])
        log[2].append(columns[2][i])
        log[3].append(float(ts[i]))
        log[4].append(offset)
    return log


def write(module: ModuleType, root: Path, a: int, b: int, log: Log) -> None:
    """The clicks ``[a, b)`` of a log as one segment (both formats take the same columns)."""
    module.write_segment(root, 0, a, b, *(col[a:b] for col in log))


class _CountedReads:
    """Bytes read from files while it is active (``open`` and ``os.pread`` both)."""

    def __init__(self, module: ModuleType) -> None:
        self.module, self.bytes = module, 0

    def __enter__(self) -> _CountedReads:
        self._open, self._read_at = builtins.open, getattr(self.module, "_read_at", None)
        counter = self

        class Counted:
            def __init__(self, f: object) -> None:
                self._f = f

            def __getattr__(self, name: str) -> object:
                return getattr(self._f, name)

            def __enter__(self) -> Counted:
                return self

            def __exit__(self, *exc: object) -> None:
                self._f.close()  # type: ignore[attr-defined]

            def read(self, *args: int) -> bytes:
                data = self._f.read(*args)  # type: ignore[attr-defined]
                counter.bytes += len(data)
                return data

            def readinto(self, buf: bytearray) -> int:
                n = self._f.readinto(buf)  # type: ignore[attr-defined]
                counter.bytes += n or 0
                return n

        def counted_open(*args: object, **kwargs: object) -> object:
            return Counted(self._open(*args, **kwargs))  # type: ignore[call-overload]

        builtins.open = counted_open  # type: ignore[assignment]
        if self._read_at is not None:
            read_at = self._read_at

            def counted_read_at(f: object, offset: int, length: int) -> bytes:
                data = read_at(f._f if isinstance(f, Counted) else f, offset, length)
                self.bytes += len(data)
                return data

            self.module._read_at = counted_read_at
        return self

    def __exit__(self, *exc: object) -> None:
        builtins.open = self._open
        if self._read_at is not None:
            self.module._read_at = self._read_at


def measure(module: ModuleType, log: Log, segment: int, reads: list[int], tenants: int) -> dict:
    n = len(log[4])
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        for a in range(0, n, segment):
            write(module, root, a, min(n, a + segment), log)
        out["write"] = time.perf_counter() - started
        out["size"] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        started = time.perf_counter()
        got = module.read_archive(root, 0)
        out["read all"] = time.perf_counter() - started
        assert sum(len(v) for v in got.values()) == n
        del got
        for k in reads:
            wanted = [f"shop-{t:04d}" for t in range(0, tenants, max(1, tenants // k))][:k]
            with _CountedReads(module) as counted:
                started = time.perf_counter()
                some = module.read_archive(root, 0, wanted)
                out[f"read {k}"] = time.perf_counter() - started
            out[f"bytes {k}"] = counted.bytes
            out[f"clicks {k}"] = sum(len(v) for v in some.values())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per tenant")
    parser.add_argument("--items", type=int, default=2000, help="catalogue size per tenant")
    parser.add_argument(
        "--segment-clicks", type=int, default=100_000, help="clicks per segment (flush size)"
    )
    parser.add_argument(
        "--read", default="1", help="comma-separated k: tenants one trainer reads back"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another version's models/click_archive.py, measured alternately with this one",
    )
    args = parser.parse_args()
    reads = [int(k) for k in args.read.split(",")]
    versions = {"this": click_archive}
    if args.baseline is not None:
        spec = importlib.util.spec_from_file_location("baseline_click_archive", args.baseline)
        assert spec is not None and spec.loader is not None
        baseline = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = baseline  # its dataclasses look their module up
        spec.loader.exec_module(baseline)
        versions["baseline"] = baseline
    log = synthetic_log(args.tenants, args.sessions, args.items)
    n = len(log[4])
    runs: dict[str, list[dict]] = {name: [] for name in versions}
    for _ in tqdm(range(args.repeat), desc="repeats", leave=False):
        for name, module in versions.items():
            runs[name].append(measure(module, log, args.segment_clicks, reads, args.tenants))
    segments = -(-n // args.segment_clicks)
    print(
        f"{n:,} clicks of {args.tenants} tenants in {segments} segment(s) of "
        f"{args.segment_clicks:,}, medians of {args.repeat}:"
    )
    med = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    header = "| | " + " | ".join(versions) + (" | ratio |" if len(versions) > 1 else " |")
    print(header + "\n|" + " --- |" * (header.count("|") - 1))

    def row(label: str, values: list[float], unit: str) -> None:
        cells = " | ".join(f"{v:,.2f} {unit}" for v in values)
        ratio = f" | {values[0] / values[1]:.2f}x" if len(values) > 1 and values[1] else ""
        print(f"| {label} | {cells}{ratio} |")

    row("write", [m["write"] / n * 1e6 for m in med.values()], "us/click")
    row("read every tenant", [m["read all"] / n * 1e6 for m in med.values()], "us/click")
    for k in reads:
        clicks = int(next(iter(med.values()))[f"clicks {k}"])
        row(f"read {k} tenant(s) ({clicks:,} clicks)", [m[f"read {k}"] * 1e3 for m in
            med.values()], "ms")  # fmt: skip
        row(f"bytes read for {k}", [m[f"bytes {k}"] / 1e6 for m in med.values()], "MB")
    row("size", [m["size"] / n for m in med.values()], "bytes/click")


if __name__ == "__main__":
    main()
