"""Redis CPU and memory per session with two limits of a compact hash, side by side.

    .venv/bin/python benchmarks/session_encoding.py --value 1024 --sessions 20000

Two private Redis servers started as the embedded stack starts them, one with Redis's
default ``hash-max-ziplist-value`` (64 bytes) and one with ``--value``, take the
worker's session traffic in turn (``session_append.py``'s child: 2,000-click batches,
each batch's 20-item lists written ahead of the next). Per round: Redis CPU per click;
at the end, memory per key and the sessions' encoding.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from redis import Redis
from session_append import BATCH, redis_cpu_s

from stream.dev.stack import Service, free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--value", type=int, default=1024, help="the limit against 64 bytes")
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="streamrec-encoding-"))
    servers = {}
    for value in (DEFAULT, args.value):
        server = Service("redis", "127.0.0.1", free_port(), work / str(value))
        command = server.command()
        command[command.index("--hash-max-ziplist-value") + 1] = str(value)
        server.command = lambda command=command: command  # type: ignore[method-assign]
        server.start()
        servers[value] = server
    cpu: dict[int, list[float]] = {value: [] for value in servers}
    try:
        for n in range(args.rounds):
            for value, server in servers.items():
                pid = server.pid() or 0
                before = redis_cpu_s(pid)
                subprocess.run(
                    [sys.executable, str(ROOT / "benchmarks" / "session_append.py")]
                    + ["--child", str(server.port), f"{n}r"]
                    + ["--sessions", str(args.sessions), "--batches", str(args.batches)],
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    capture_output=True,
                    check=True,
                )
                cpu[value].append((redis_cpu_s(pid) - before) / (args.batches * BATCH) * 1e6)
        print(
            f"{args.sessions:,} sessions, {args.rounds} rounds of {args.batches} x {BATCH} clicks"
        )
        print(
            "| hash-max-ziplist-value | Redis CPU per click (µs, per round; median) "
            "| memory per key | a session's encoding |"
        )
        print("| ---: | --- | ---: | --- |")
        for value, server in servers.items():
            client = Redis(port=server.port)
            memory = client.info("memory")["used_memory"] / max(1, client.dbsize())
            key = next(client.scan_iter(match="sr:*:s", count=1000))
            encoding = client.object("encoding", key).decode()
            client.close()
            rounds = " / ".join(f"{c:.1f}" for c in cpu[value])
            median = statistics.median(cpu[value])
            print(f"| {value} | {rounds}; **{median:.1f}** | {memory:,.0f} B | {encoding} |")
        ratios = [b / a for a, b in zip(*cpu.values(), strict=True)]
        print(f"pair ratios ({args.value} / {DEFAULT}):", " ".join(f"{r:.2f}" for r in ratios))
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
