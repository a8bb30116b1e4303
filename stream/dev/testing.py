"""A real worker in a subprocess and raw topic I/O, for testing and benchmarking a setup.

Our integration tests and benchmarks use these, and so can an app that wants to check its
own events against a real worker: start a stack (`streamrec dev up` or
:class:`stream.dev.stack.EmbeddedStack`), point a :class:`WorkerConfig` at it, and run
:class:`WorkerProcess` as a context manager.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Message, Producer

from stream.dev.stack import EmbeddedStack
from stream.kafka.config import kafka_config
from stream.kafka.topics import topic_reader  # re-exported: tests and apps read topics with it


def produce(broker: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Send (key, value) records as they are (no validation) and wait until delivered."""
    producer = Producer(
        kafka_config(broker).producer({"linger.ms": 5, "queue.buffering.max.messages": 2_000_000})
    )
    n = 0
    for key, value in records:
        producer.produce(topic, key=key, value=value)
        n += 1
    remaining = producer.flush(15)
    if remaining:
        raise RuntimeError(f"{remaining} of {n} messages not delivered to {topic}")
    return n


def consume(broker: str, topic: str, expected: int, timeout: float = 60.0) -> list[Message]:
    """Read the topic from the beginning until `expected` messages arrived or timeout."""
    deadline = time.monotonic() + timeout
    consumer = topic_reader(broker, [topic], timeout=timeout)
    out: list[Message] = []
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error() is None:
                    out.append(msg)
    finally:
        consumer.close()
    return out


@dataclass
class WorkerConfig:
    """Where a worker subprocess finds its broker, Redis, models and topics."""

    stack: EmbeddedStack
    home: Path
    model_dir: Path
    clicks: str
    recs: str
    dlq: str
    app_id: str
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        # The caller's own STREAMREC_* must not leak into the worker under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update(
            {
                "STREAMREC_BROKER": self.stack.broker,
                "STREAMREC_REDIS_URL": self.stack.redis_url,
                # Tests point the worker at a Redis of their own with a stand-in stack
                # (broker and URL only): a single Redis.
                "STREAMREC_REDIS_CLUSTER": "1"
                if getattr(self.stack, "redis_cluster", False)
                else "0",
                "STREAMREC_HOME": str(self.home),
                "STREAMREC_MODEL_DIR": str(self.model_dir),
                "STREAMREC_CLICKS_TOPIC": self.clicks,
                "STREAMREC_RECS_TOPIC": self.recs,
                "STREAMREC_DLQ_TOPIC": self.dlq,
                # Its own feedback topic too: workers of other tests would otherwise read
                # (and dead-letter) each other's feedback on the shared default topic.
                "STREAMREC_FEEDBACK_TOPIC": f"{self.clicks}.feedback",
                "STREAMREC_APP_ID": self.app_id,
                "STREAMREC_WEB_PORT": "0",
                "STREAMREC_MODEL_CHECK_INTERVAL_S": "0.5",
                # A test bench, like the dev stack: a click creates its tenant, and the
                # health details and /metrics need no token. extra_env can close both
                # ("" leaves a setting at its default, closed).
                "STREAMREC_AUTO_CREATE_TENANTS": "1",
                "STREAMREC_PUBLIC_DASHBOARD": "1",
            }
        )
        env.update(self.extra_env)
        return env


class WorkerProcess:
    """`streamrec worker` as a real subprocess, logging to a file under its home."""

    def __init__(self, config: WorkerConfig, name: str = "worker") -> None:
        self.config = config
        self.log_path = config.home / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.config.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream", "worker"],
                env=self.config.env(),
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def peak_rss_mb(self) -> float:
        """The worker's peak resident memory (Linux's VmHWM), NaN where unknown."""
        if self.proc is not None:
            try:
                for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
            except OSError:
                pass
        return float("nan")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
