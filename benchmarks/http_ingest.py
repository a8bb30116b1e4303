"""Event ingestion over HTTP: POST /v1/{tenant}/events against one worker.

    .venv/bin/python benchmarks/http_ingest.py --requests 3000 --batch 1,100
    .venv/bin/python benchmarks/http_ingest.py --tree /tmp/old-checkout   # another version

On a private embedded stack, a worker (from this tree, or from ``--tree``, an older
checkout, to compare) serves HTTP; a client with ``--concurrency`` connections posts
``--requests`` requests of ``--batch`` events each (validated, produced to ``clicks``,
answered 202 once the broker acknowledged them). Reports events/s and the request
latency's median and p99 (the client shares the 2 cores with broker, Redis and worker).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerConfig, WorkerProcess
from stream.kafka.topics import ensure_topics


async def wait_ready(base: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{base}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise SystemExit("the worker's HTTP API did not come up")


async def post_all(
    base: str, requests: int, batch: int, concurrency: int
) -> tuple[float, list[float]]:
    bodies = [
        orjson.dumps(
            [
                {"session_id": f"h{(r * batch + i) % 5000}", "item_id": f"A{i % 200}"}
                for i in range(batch)
            ]
        )
        for r in range(requests)
    ]
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    url = f"{base}/v1/default/events"
    headers = {"Content-Type": "application/json"}

    async def client(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 202:
                    raise SystemExit(f"HTTP {resp.status}: {await resp.text()}")
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return requests * batch / wall, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--batch", default="1,100", help="events per request (comma list)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="run the worker from this checkout")
    parser.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="streamrec-http-"))
    stack = EmbeddedStack(
        home / "run",
        f"127.0.0.1:{free_port()}",
        f"redis://127.0.0.1:{free_port()}/0",
        broker_kind=args.broker,
    )
    stack.up()
    rows = []
    try:
        tag = str(time.time_ns())
        cfg = WorkerConfig(
            stack, home / "w", home / "models", f"c-{tag}", f"r-{tag}", f"d-{tag}", f"a-{tag}"
        )
        port = free_port()
        cfg.extra_env["STREAMREC_WEB_PORT"] = str(port)
        if args.tree is not None:
            cfg.extra_env["PYTHONPATH"] = str(args.tree.resolve())
        ensure_topics(stack.broker, [cfg.clicks, cfg.recs, cfg.dlq], 4)
        base = f"http://127.0.0.1:{port}"
        with WorkerProcess(cfg):
            asyncio.run(wait_ready(base))
            asyncio.run(post_all(base, 200, 10, args.concurrency))  # warm up
            for batch in (int(b) for b in args.batch.split(",")):
                requests = args.requests if batch == 1 else max(100, args.requests // 10)
                for _ in range(args.rounds):
                    rate, lat = asyncio.run(post_all(base, requests, batch, args.concurrency))
                    lat.sort()
                    rows.append(
                        (batch, rate, statistics.median(lat) * 1e3, lat[int(len(lat) * 0.99)] * 1e3)
                    )
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
    print(f"\nworker from {args.tree or 'this tree'}, {args.concurrency} connections\n")
    print("| events / request | events/s (median of rounds) | request p50 | request p99 |")
    print("| ---: | ---: | ---: | ---: |")
    for batch in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == batch]
        print(
            f"| {batch} | {statistics.median(r[1] for r in mine):,.0f} "
            f"| {statistics.median(r[2] for r in mine):.1f} ms "
            f"| {statistics.median(r[3] for r in mine):.1f} ms |"
        )


if __name__ == "__main__":
    main()
