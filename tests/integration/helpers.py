"""Plain helpers shared by the integration tests: topics for a worker, generated clicks,
a background reader of recommendations, Redis session lists, HTTP calls."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Message

from state.connection import AsyncRedis, RedisSettings, SyncRedis, async_client, sync_client
from state.sessions import SessionStore
from stream.dev.stack import EmbeddedStack
from stream.dev.testing import WorkerConfig, topic_reader
from stream.events import ClickEvent
from stream.kafka.topics import ensure_topics

ITEMS = ["A13", "A16", "B4", "C17", "P1", "A2", "B10", "C5"]
CAP = 50  # the worker's default session cap
ADMIN = "admin-token-for-tests"


def make_config(
    stack: EmbeddedStack, unique_name: Callable[[str], str], home: Path, model_dir: Path
) -> WorkerConfig:
    """A worker's settings on topics of its own (4 partitions), created here."""
    cfg = WorkerConfig(
        stack,
        home,
        model_dir,
        unique_name("clicks"),
        unique_name("recs"),
        unique_name("dlq"),
        unique_name("app"),
    )
    ensure_topics(stack.broker, [cfg.clicks, cfg.recs, cfg.dlq], partitions=4)
    return cfg


def clicks(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    """`n` valid clicks over 13 sessions, event ids e{start}..; as (key, value) records."""
    out = []
    for i in range(start, start + n):
        event = ClickEvent(
            tenant="default",
            session_id=f"s{i % 13}",
            item_id=ITEMS[i % len(ITEMS)],
            ts=time.time(),
            event_id=f"e{i}",
        )
        out.append((event.session_id.encode(), event.to_json()))
    return out


def make_events(n: int, sessions: int, seed: int = 1) -> list[ClickEvent]:
    """Clicks over `sessions` sessions whose ids are unique to this call (Redis is shared)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    items = ITEMS + ["A1", "B1", "C1", "P2"]
    last: dict[str, str] = {}
    out = []
    for i in range(n):
        sid = f"{run}-s{rng.randrange(sessions)}"
        # Some consecutive repeats, which the session list must collapse.
        item = last[sid] if sid in last and rng.random() < 0.2 else rng.choice(items)
        last[sid] = item
        out.append(ClickEvent("default", sid, item, time.time(), event_id=f"e{i}"))
    return out


def records(events: list[ClickEvent]) -> list[tuple[bytes, bytes]]:
    return [(e.session_id.encode(), e.to_json()) for e in events]


def expected_sessions(events: list[ClickEvent], cap: int = CAP) -> dict[str, list[str]]:
    """The session lists computed offline by the worker's rules."""
    lists: dict[str, list[str]] = {}
    for e in events:
        items = lists.setdefault(e.session_id, [])
        if not items or items[-1] != e.item_id:
            items.append(e.item_id)
            del items[:-cap]
    return lists


def async_redis(stack: EmbeddedStack, *, decode_responses: bool = False) -> AsyncRedis:
    """An asyncio client of the stack's Redis, a cluster client on a cluster."""
    settings = RedisSettings(stack.redis_url, cluster=stack.redis_cluster)
    return async_client(settings, decode_responses=decode_responses)  # type: ignore[return-value]


def sync_redis(stack: EmbeddedStack) -> SyncRedis:
    """A blocking client of the stack's Redis (replies as text), a cluster client on a
    cluster."""
    settings = RedisSettings(stack.redis_url, cluster=stack.redis_cluster)
    return sync_client(settings, decode_responses=True)


async def redis_sessions(
    stack: EmbeddedStack, tenant: str, sessions: list[str]
) -> dict[str, list[str]]:
    client = async_redis(stack, decode_responses=True)
    try:
        store = SessionStore(client, cap=1, ttl_s=1)
        return {s: await store.session_items(tenant, s) for s in sessions}
    finally:
        await client.aclose()


class TopicWatcher(threading.Thread):
    """Reads topics from the beginning in the background, handing each record to
    :meth:`record`; :meth:`wait_for` waits until :meth:`count` reaches a number."""

    def __init__(
        self, broker: str, topics: list[str], extra: dict[str, str | int] | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.stop_flag = threading.Event()
        self.topics = topics
        self._consumer = topic_reader(broker, topics, {"fetch.wait.max.ms": 10, **(extra or {})})

    def record(self, msg: Message) -> None:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def run(self) -> None:
        try:
            while not self.stop_flag.is_set():
                for msg in self._consumer.consume(2000, timeout=0.1):
                    if msg.error() is None:
                        self.record(msg)
        finally:
            self._consumer.close()

    def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.count() >= n


class RecsCollector(TopicWatcher):
    """Remembers the event ids answered on a recommendations topic."""

    def __init__(self, broker: str, topic: str) -> None:
        super().__init__(broker, [topic])
        self.answered: set[str] = set()
        self.versions: list[tuple[float, str | None]] = []  # (emitted_ts, model_version)

    def record(self, msg: Message) -> None:
        rec = orjson.loads(msg.value())
        self.answered.add(rec["event_id"])
        self.versions.append((rec["emitted_ts"], rec["model_version"]))

    def count(self) -> int:
        return len(self.answered)


def http_call(
    url: str, body: object | None = None, *, key: str | None = None, method: str | None = None
) -> tuple[int, bytes]:
    """(status, raw body); an HTTP error status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        url, data=data, method=method or ("POST" if data else "GET"), headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def call(
    url: str, body: object | None = None, *, key: str | None = None, method: str | None = None
) -> tuple[int, Any]:
    """(status, decoded JSON body, or the raw one); (0, None) while nothing listens."""
    try:
        status, raw = http_call(url, body, key=key, method=method)
    except (urllib.error.URLError, ConnectionError):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def wait_until(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def wait_for_ok(url: str, timeout: float = 60) -> tuple[int, bytes]:
    """GET `url` until it answers 200 or the timeout passes; the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = http_call(url)
        except (urllib.error.URLError, ConnectionError):
            status, body = 0, b""
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(0.2)


def run_cli(cfg: WorkerConfig, *args: str) -> str:
    """``streamrec ARGS`` against the worker configuration's stack; its output, once it
    exited 0."""
    done = subprocess.run(
        [sys.executable, "-m", "stream", *args],
        env=cfg.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
