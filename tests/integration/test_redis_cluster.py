"""A real Redis Cluster (the embedded stack's, three masters): every Lua script runs there
with its keys in one hash slot, and a master killed mid-stream loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from redis.crc import key_slot

from state import keys, scripts
from state.connection import RedisSettings, async_client, sync_client
from state.control import catalogue_versions, put_items
from state.feedback import encode_list
from state.sessions import Click, SessionStore
from stream.dev.stack import EmbeddedStack, free_cluster_ports, free_port, port_is_free
from stream.dev.testing import WorkerProcess, produce, topic_reader
from tests.integration.helpers import (
    RecsCollector,
    expected_sessions,
    make_config,
    make_events,
    records,
    redis_sessions,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.broker_agnostic]


def cluster_stack(broker: str, run_dir: Path, replicas: bool = False) -> EmbeddedStack:
    ports = free_cluster_ports(6 if replicas else 3)
    return EmbeddedStack(
        run_dir,
        broker,
        f"redis://127.0.0.1:{ports[0]}/0",
        broker_kind="tansu",  # the shared stack's broker is used; this one never starts
        redis_mode="cluster",
        replicas=replicas,
        cluster_ports=ports,
    )


@pytest.fixture(scope="module")
def cluster(
    stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedStack]:
    if stack.redis_cluster:
        yield stack
        return
    own = cluster_stack(stack.broker, tmp_path_factory.mktemp("cluster"))
    own.up_redis()
    try:
        yield own
    finally:
        own.down()


def test_every_lua_script_runs_on_the_cluster_with_its_keys_in_one_slot(
    cluster: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    """The store's batches touch sessions all over the key space; each script call must
    keep to one hash slot, or the cluster refuses it (CROSSSLOT)."""
    tenant = unique_name("t")
    sessions = [f"s{i}" for i in range(300)] + sharing_a_slot(tenant, groups=20, size=3)
    by_sha = {s.sha: name for name, s in scripts.SCRIPTS.items()}

    async def run() -> tuple[set[str], list[list[str]], list[list[str]], list[str | None]]:
        client = async_client(RedisSettings(cluster.redis_url, cluster=True), decode_responses=True)
        store = SessionStore(client, cap=50, ttl_s=60)
        calls: list[list[str]] = []
        real = store._run

        async def spy(commands: list[list[str]]) -> list[object]:
            calls.extend(c for c in commands if c[0] == "EVALSHA")
            return await real(commands)

        store._run = spy  # type: ignore[method-assign]
        try:
            clicks = [Click(tenant, s, f"item-{i % 7}", f"e{i}") for i, s in enumerate(sessions)]
            clicks += [Click(tenant, s, "next", f"f{i}") for i, s in enumerate(sessions)]
            updates = await store.append_clicks(clicks)
            lists = {(tenant, s): encode_list("v1", f"r{s}", ["x", "y"]) for s in sessions}
            await store.run(store.store_lists_commands(lists))
            shown = [await client.hget(keys.session(tenant, s), "p") for s in sessions]
            return {by_sha[c[1]] for c in calls}, calls, [u.items for u in updates], shown
        finally:
            await client.aclose()

    ran, calls, items, shown = asyncio.run(run())
    assert ran == set(scripts.SCRIPTS), (
        f"scripts not run on the cluster: {set(scripts.SCRIPTS) - ran}"
    )
    assert any(int(c[2]) > 1 for c in calls), "no script call carried several keys"
    for call in calls:
        n = int(call[2])
        slots = {key_slot(k.encode()) for k in call[3 : 3 + n]}
        assert len(slots) == 1, f"{by_sha[call[1]]} called with keys of {len(slots)} slots"
    assert items[len(sessions) :] == [[f"item-{i % 7}", "next"] for i in range(len(sessions))]
    assert shown == [encode_list("v1", f"r{s}", ["x", "y"]) for s in sessions]


def sharing_a_slot(tenant: str, groups: int, size: int) -> list[str]:
    """Session ids in ``groups`` hash slots, ``size`` of them each: the script calls that
    carry several keys."""
    by_slot: dict[int, list[str]] = {}
    i = 0
    while sum(len(v) >= size for v in by_slot.values()) < groups:
        sid = f"c{i}"
        by_slot.setdefault(key_slot(keys.session_tag(tenant, sid).encode()), []).append(sid)
        i += 1
    return [sid for v in by_slot.values() if len(v) >= size for sid in v[:size]][: groups * size]


class Feeder(threading.Thread):
    """Sends the clicks in chunks at a steady pace, so a failure lands mid-stream."""

    def __init__(self, broker: str, topic: str, recs: list[tuple[bytes, bytes]]) -> None:
        super().__init__(daemon=True)
        self.broker, self.topic, self.recs = broker, topic, recs
        self.sent = 0

    def run(self) -> None:
        for at in range(0, len(self.recs), 250):
            self.sent += produce(self.broker, self.topic, self.recs[at : at + 250])
            time.sleep(0.25)


def test_a_master_killed_mid_stream_loses_no_click_and_no_session_item(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    trained_model_dir: Path,
    pytestconfig: pytest.Config,
) -> None:
    """Three masters with a replica each; one master is killed (SIGKILL) while clicks
    stream in. Its replica is promoted, the worker holds its batch until the slot is
    served again, and every click is answered or dead-lettered with a reason; the
    sessions hold every item."""
    if pytestconfig.getoption("--redis") != "cluster":
        pytest.skip("runs in the cluster pass (--redis cluster)")
    own = cluster_stack(stack.broker, tmp_path / "cluster", replicas=True)
    own.up_redis()
    cfg = make_config(stack, unique_name, tmp_path, trained_model_dir)
    cfg.stack = own
    events = make_events(8_000, sessions=800, seed=11)
    collector = RecsCollector(stack.broker, cfg.recs)
    collector.start()
    dead: dict[str, str] = {}
    try:
        with WorkerProcess(cfg) as worker:
            assert wait_until(lambda: "assigned partitions" in worker.log(), 180), worker.log()
            feeder = Feeder(stack.broker, cfg.clicks, records(events))
            feeder.start()
            assert wait_until(lambda: len(collector.answered) >= 2_000, 60), worker.log()[-3000:]
            # Not the node the URL names: a client starting now still finds the cluster.
            pid = own.redis_service(*own.masters[1]).pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            feeder.join(60)
            collector.wait_for(len(events), timeout=120)
            log = worker.log()
        _dead_letters(stack.broker, cfg.dlq, dead)
        ids = {e.event_id for e in events}
        lost = ids - collector.answered - set(dead)
        assert not lost, f"{len(lost)} clicks neither answered nor dead-lettered\n{log[-4000:]}"
        assert all(dead.values()), dead  # each dead letter says why
        want = expected_sessions(events)
        assert asyncio.run(redis_sessions(own, "default", sorted(want))) == want
    finally:
        collector.stop_flag.set()
        collector.join(5)
        own.down()


def _dead_letters(broker: str, topic: str, into: dict[str, str]) -> None:
    """Each dead letter's event id -> its reason."""
    consumer = topic_reader(broker, [topic])
    try:
        for msg in consumer.consume(10_000, timeout=2.0):
            if msg.error() is None:
                headers = dict(msg.headers() or [])
                event_id = orjson.loads(msg.value()).get("event_id", "")
                into[event_id] = (headers.get("streamrec-reason") or b"").decode()
    finally:
        consumer.close()


def _consecutive_cluster_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free for cluster nodes."""
    while True:
        base = free_cluster_ports(1)[0]
        if base + count <= 55536 and all(
            port_is_free("127.0.0.1", p) and port_is_free("127.0.0.1", p + 10000)
            for p in range(base, base + count)
        ):
            return base


def test_dev_up_redis_cluster_is_what_every_later_command_uses(
    tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    base = _consecutive_cluster_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env |= {"STREAMREC_HOME": str(tmp_path), "STREAMREC_EMBEDDED_BROKER": "tansu"}
    up_env = env | {
        "STREAMREC_BROKER": f"127.0.0.1:{free_port()}",
        "STREAMREC_REDIS_URL": f"redis://127.0.0.1:{base}/0",
    }

    def cli(*args: str, environ: dict[str, str] = env) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "stream", *args],
            env=environ, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        up = cli("dev", "up", "--redis", "cluster", environ=up_env)
        assert "redis-3  up" in up and f"127.0.0.1:{base + 2}  (cluster master)" in up, up
        # No Redis setting from here on: the run directory's record says cluster.
        tenant = unique_name("shop")
        cli(
            "tenant",
            "create",
            tenant,
            environ=env | {"STREAMREC_BROKER": up_env["STREAMREC_BROKER"]},
        )
        client = sync_client(RedisSettings(f"redis://127.0.0.1:{base + 1}", cluster=True))
        assert client.hget(keys.TENANT_MODES, tenant) == b"on"
        client.close()
        status = cli("dev", "status", environ=up_env)
        assert "cluster, 3 masters" in status and status.count("(cluster master)") == 3, status
    finally:
        down = cli("dev", "down", environ=up_env)
    assert "redis-1" in down and "redis-3" in down, down


def test_reads_over_many_tenants_run_on_the_cluster(
    cluster: EmbeddedStack, unique_name: Callable[[str], str]
) -> None:
    """Tenants' keys lie in different hash slots: no command may name two of them."""
    tenants = [unique_name("shop") for _ in range(6)]

    async def run() -> dict[str, int]:
        client = async_client(RedisSettings(cluster.redis_url, cluster=True), decode_responses=True)
        try:
            for n, tenant in enumerate(tenants):
                for i in range(n + 1):
                    await put_items(client, tenant, {f"i{i}": {"available": True}})
            return await catalogue_versions(client, tenants)
        finally:
            await client.aclose()

    assert asyncio.run(run()) == {t: n + 1 for n, t in enumerate(tenants)}
