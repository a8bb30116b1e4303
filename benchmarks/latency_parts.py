"""Where a click's latency goes, stage by stage, from a fresh worker start.

    .venv/bin/python benchmarks/latency_parts.py --tree . --rate 1000 --duration 60

Runs as ``fresh_start.py`` does (a private embedded stack, load through a throw-away
worker first so the broker is warm, then the measured worker and ``streamrec loadtest``)
and watches both topics with two passive consumers of their own. Per click, on one
clock:

- **sent**: the click's Kafka timestamp (set by the load test's producer when it hands
  the click over);
- **readable**: when a consumer first received the click (the producer's linger, the
  broker's append and a fetch's return: what the worker waits for at best);
- **published**: the record's ``emitted_ts`` (the worker has ranked it and hands it over);
- **received**: when a consumer first received the record (the output's trip).

Prints each stage's p50 / p99 per 10-s window of send time, and over the run.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from fresh_start import cpu_line, one_run, trained_models

TOPICS = ("clicks", "recommendations")


class Watcher(threading.Thread):
    """Reads a topic from its end as it grows: (event_id, Kafka timestamp in s, received
    at, emitted_ts or nan) for every record."""

    def __init__(self, broker: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.rows: list[tuple[str, float, float, float]] = []
        self.stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": broker,
                "group.id": f"latency-parts-{topic}-{os.getpid()}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
                "socket.nagle.disable": True,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])

    def run(self) -> None:
        rows, now, loads = self.rows, time.time, orjson.loads
        while not self.stop.is_set():
            # consume(n, timeout) waits for n records or the whole timeout: poll for the
            # first, then take what else is there without waiting.
            first = self._consumer.poll(0.05)
            if first is None:
                continue
            got = now()
            for m in [first, *self._consumer.consume(1000, 0)]:
                if m.error() or m.value() is None:
                    continue
                try:
                    v = loads(m.value())
                    rows.append(
                        (v["event_id"], m.timestamp()[1] / 1000, got, v.get("emitted_ts", np.nan))
                    )
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
        self._consumer.close()


def stages(clicks: Watcher, recs: Watcher) -> dict[str, np.ndarray]:
    """Per answered click: its send time and each stage's duration (ms)."""
    sent = {e: (ts, got) for e, ts, got, _ in clicks.rows}
    t0, readable, published, received = [], [], [], []
    for e, _ts, got, emitted in recs.rows:
        if e in sent:
            s, r = sent.pop(e)
            t0.append(s)
            readable.append(r)
            published.append(emitted)
            received.append(got)
    t0a, ra, pa, rx = (np.asarray(x) for x in (t0, readable, published, received))
    return {
        "t0": t0a,
        "to readable": (ra - t0a) * 1000,
        "readable to published": (pa - ra) * 1000,
        "published to received": (rx - pa) * 1000,
        "all": (rx - t0a) * 1000,
    }


def _p50_p99(x: np.ndarray) -> str:
    return f"{np.percentile(x, 50):.1f} / {np.percentile(x, 99):.1f}" if x.size else ""


def report(parts: dict[str, np.ndarray], window_s: float = 10.0) -> None:
    t0 = parts["t0"]
    if not t0.size:
        print("no click was answered")
        return
    windows = np.floor((t0 - t0.min()) / window_s).astype(int)
    names = [k for k in parts if k != "t0"]
    print(f"{t0.size:,} clicks answered; ms, p50 / p99")
    heads = (f"{w * window_s:g}-{(w + 1) * window_s:g} s" for w in range(windows.max() + 1))
    print("| stage | whole run | " + " | ".join(heads) + " |")
    print("| --- " * (windows.max() + 3) + "|")
    for name in names:
        x = parts[name]
        cells = [_p50_p99(x)] + [_p50_p99(x[windows == w]) for w in range(windows.max() + 1)]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=".", help="the checkout whose worker is measured")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--warm-broker", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of send time a column")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "latency-parts")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    watchers: list[Watcher] = []

    @contextmanager
    def watch(broker: str) -> Iterator[None]:
        gc.disable()  # the watchers' rows would set off collections that stall them
        watchers.extend(Watcher(broker, t, 4) for t in TOPICS)
        for w in watchers:
            w.start()
        try:
            yield
        finally:
            time.sleep(2)
            for w in watchers:
                w.stop.set()
                w.join(10)

    result = one_run(
        Path(args.tree).resolve(),
        trained_models(args.out),
        args.out / "numba",
        args.rate,
        args.duration,
        args.out / "measured",
        args.warm_broker,
        watch=watch,
    )
    lat = result["latency_ms"]
    print(f"load test: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
          f"missing {result['missing']}, ready after {result['ready_s']:.1f} s")  # fmt: skip
    windows = " / ".join(f"{w['p99']:.0f}" for w in result.get("latency_by_window") or [])
    print(f"load test's p99 per 10-s window: {windows} ms")
    print(f"CPU µs an event while the load test ran: {cpu_line(result['cpu_us'])}")
    report(stages(*watchers), args.window)
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
