"""``streamrec demo``: the whole path on a private embedded stack, then everything stopped.

Each step runs the same command a user would (``streamrec train``, ``streamrec worker``,
``streamrec replay``) as a subprocess, so the demo shows the real tools, not a shortcut.
The demo's stack uses free ports and its own directory, so it never collides with a
stack started by ``streamrec dev up`` and can run twice in a row.
"""

from __future__ import annotations

import gzip
import itertools
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer

from models.datasets import eshop_path
from models.errors import StreamrecError
from stream.config import Settings
from stream.dev.stack import EmbeddedStack, free_port, stack_for
from stream.kafka.config import KafkaClientConfig

Echo = Callable[[str], None]
MALFORMED_SAMPLES = [
    b"{this is not json",
    b'{"tenant": "default", "session_id": "demo-bad", "ts": 1.0}',
    b'{"tenant": "default", "session_id": "demo-bad", "item_id": 42, "ts": 1.0}',
]
PROBE_SESSION = "demo-probe"
PROBES = 16


@dataclass
class Watch:
    """What the demo saw on the recommendations and dead-letter topics."""

    received: int = 0
    dead: int = 0
    probes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_event_ts: float = float("inf")  # send time of the first replayed click
    last_receive: float = 0.0
    probe_seen: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    strategies: dict[str, int] = field(default_factory=dict)
    versions: set[str] = field(default_factory=set)


def run_demo(settings: Settings, *, events: int, rate: float, show: int, echo: Echo) -> int:
    home = Path(settings.home) / "demo"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    stack = stack_for(
        settings, home / "run", f"127.0.0.1:{free_port()}", f"redis://127.0.0.1:{free_port()}/0"
    )
    env = _demo_env(settings, stack, home)
    worker: subprocess.Popen[bytes] | None = None
    tail: subprocess.Popen[str] | None = None
    watch = Watch()
    watcher: threading.Thread | None = None
    try:
        echo(
            f"==> 1/5 starting the embedded broker, {stack.broker_why}, on {stack.broker} "
            f"and Redis ({stack.redis_url})"
        )
        stack.up(
            [settings.clicks_topic, settings.recs_topic, settings.dlq_topic], settings.partitions
        )

        echo("==> 2/5 training Word2Vec + KMeans on the Kaggle e-shop clickstream")
        _run(["train"], env)

        echo(f"==> 3/5 starting the stream worker (log: {home / 'worker.log'})")
        with open(home / "worker.log", "wb") as logf:
            worker = subprocess.Popen(
                [sys.executable, "-m", "stream", "worker"],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        watcher = threading.Thread(target=_watch, args=(stack.broker, settings, watch), daemon=True)
        watcher.start()
        _wait_for_probe(stack.broker, settings, watch, worker, home)

        sample = _write_sample(home / "clicks-sample.csv.gz", events)
        echo(
            f"==> 4/5 replaying {events:,} clicks at {rate:,.0f}/s into '{settings.clicks_topic}',"
            f" plus {len(MALFORMED_SAMPLES)} malformed events"
        )
        _send_malformed(KafkaClientConfig(stack.broker), settings.clicks_topic)
        tail = _start(["recs", "tail", "--limit", str(show)], env) if show else None
        _run(["replay", str(sample), "--rate", str(rate)], env)
        if tail is not None:
            echo(f"==> the first {show} lists, as `streamrec recs tail --limit {show}` shows them")
            for line in _finish(tail).splitlines():
                echo(f"  {line}")
        sent = events  # replay exits non-zero unless every event was delivered

        deadline = time.monotonic() + 60
        while (watch.received < sent or watch.dead < len(MALFORMED_SAMPLES)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        dead = watch.dead
        watch.stop.set()
        watcher.join(5)

        echo("==> 5/5 summary")
        _summary(watch, sent, dead, echo)
        if watch.received < sent or dead != len(MALFORMED_SAMPLES):
            echo(f"demo FAILED: see {home / 'worker.log'}")
            return 1
        return 0
    finally:
        watch.stop.set()
        if tail is not None and tail.poll() is None:
            tail.kill()
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        stack.down()
        echo("stopped the worker, the broker and Redis")


def _demo_env(settings: Settings, stack: EmbeddedStack, home: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(
        {
            "STREAMREC_HOME": str(home),
            "STREAMREC_BROKER": stack.broker,
            "STREAMREC_REDIS_URL": stack.redis_url,
            "STREAMREC_WEB_PORT": "0",
            "STREAMREC_APP_ID": "streamrec-demo",
        }
    )
    return env


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stream", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """What ``proc`` printed, once it ends (stopped after ``timeout``)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def _run(args: list[str], env: dict[str, str]) -> None:
    rc = subprocess.call([sys.executable, "-m", "stream", *args], env=env)
    if rc != 0:
        raise StreamrecError(f"'streamrec {' '.join(args)}' failed with exit code {rc}")


def _write_sample(path: Path, events: int) -> Path:
    """The first `events` clicks of the shipped file, same format."""
    with gzip.open(eshop_path(), "rt", newline="") as src, gzip.open(path, "wt", newline="") as dst:
        dst.write(src.readline())
        for line in itertools.islice(src, events):
            dst.write(line)
    return path


def _send_malformed(kafka: KafkaClientConfig, topic: str) -> None:
    producer = Producer(kafka.producer())
    for raw in MALFORMED_SAMPLES:
        producer.produce(topic, key=b"demo-bad", value=raw)
    producer.flush(10)


def _wait_for_probe(
    broker: str, settings: Settings, watch: Watch, worker: subprocess.Popen[bytes], home: Path
) -> None:
    """A few clicks, answered, before the replay: the worker has joined its group, loaded
    its model and fetched from every partition once."""
    producer = Producer(KafkaClientConfig(broker).producer())
    for i in range(PROBES):
        probe = {
            "tenant": "default",
            "session_id": f"{PROBE_SESSION}-{i}",
            "item_id": "A13",
            "ts": time.time(),
            "event_id": f"probe-{uuid.uuid4().hex}",
        }
        producer.produce(
            settings.clicks_topic, key=probe["session_id"].encode(), value=orjson.dumps(probe)
        )
    producer.flush(10)
    deadline = time.monotonic() + 90
    while not watch.probe_seen.wait(0.5):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise StreamrecError(
                f"the worker did not answer a first click; see {home / 'worker.log'}"
            )


def _watch(broker: str, settings: Settings, watch: Watch) -> None:
    consumer = Consumer(
        KafkaClientConfig(broker).consumer(
            f"demo-watch-{uuid.uuid4().hex[:8]}",
            {
                "session.timeout.ms": 6000,
                # Tansu answers a fetch only when its wait is over, so keep it short.
                "fetch.wait.max.ms": 5,
            },
        )
    )
    consumer.subscribe([settings.recs_topic, settings.dlq_topic])
    try:
        while not watch.stop.is_set():
            for msg in consumer.consume(1000, timeout=0.005):
                if msg.error() is not None:
                    continue
                now = time.time()
                if msg.topic() == settings.dlq_topic:
                    watch.dead += 1
                    continue
                rec = orjson.loads(msg.value())
                if rec["session_id"].startswith(PROBE_SESSION):
                    watch.probes += 1
                    if watch.probes == PROBES:
                        watch.probe_seen.set()
                    continue
                watch.received += 1
                watch.last_receive = now
                watch.first_event_ts = min(watch.first_event_ts, rec["event_ts"])
                latency = (now - rec["event_ts"]) * 1000
                watch.latencies_ms.append(latency)
                watch.strategies[rec["strategy"]] = watch.strategies.get(rec["strategy"], 0) + 1
                if rec["model_version"]:
                    watch.versions.add(rec["model_version"])
    finally:
        consumer.close()


def _summary(watch: Watch, sent: int, dead: int, echo: Echo) -> None:
    lat = np.asarray(watch.latencies_ms or [float("nan")])
    elapsed = max(watch.last_receive - watch.first_event_ts, 1e-9)
    echo(f"  events in        {sent:>10,}")
    echo(
        f"  recommendations  {watch.received:>10,}   "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(watch.strategies.items()))})"
    )
    echo(f"  dead-lettered    {dead:>10,}")
    echo(f"  model version    {', '.join(sorted(watch.versions)) or '-':>10}")
    echo(
        f"  throughput       {watch.received / elapsed:>10,.0f} recommendations/s   (first click "
        "sent -> last recommendation received; the replay is paced)"
    )
    echo(
        f"  latency p50      {np.percentile(lat, 50):>10.1f} ms   (click sent -> recommendation "
        "received)"
    )
    echo(f"  latency p99      {np.percentile(lat, 99):>10.1f} ms")
    echo(f"  latency max      {lat.max():>10.1f} ms")
