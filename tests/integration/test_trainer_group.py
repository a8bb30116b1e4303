"""Trainers that share the tenants through Kafka (`trainer --group`), as processes on the
real broker and Redis: each tenant trained once a pass, a killed trainer's tenants taken
over, one pass published per period whatever the number of trainers, and the click log
read through the group's click archive: each click decoded by one trainer, none lost to a
killed one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2

from models.click_archive import archive_dir, covers, read_archive, segments
from models.datasets import read_clicks, sessionize
from models.registry import Registry
from stream.dev.stack import EmbeddedStack
from stream.dev.testing import produce
from stream.events import ClickEvent
from stream.kafka.click_archive import ClickArchiver
from stream.kafka.click_log import read_click_log
from stream.kafka.config import kafka_config
from stream.kafka.topics import RETRAIN_PARTITIONS, ensure_topics, topic_reader
from stream.kafka.work_queue import end_offsets
from stream.retrain.passes import PassRecord


class Trainer:
    """One `streamrec trainer` process; its output collected as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "trainer", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)


def _setup(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    eshop_csv: Path,
    tenants: int,
    sessions: int,
    one_per_partition: bool = False,
) -> tuple[dict[str, str], list[str], Registry]:
    """Tenants created in the registry with small click logs, and the environment of a
    trainer of a group of their own. With ``one_per_partition``, the tenants' names are
    chosen so that each lands on its own partition of the ``retrain`` topic: every trainer
    of the group then has work in each of its partitions."""
    clicks, retrain = unique_name("clicks"), unique_name("retrain")
    ensure_topics(stack.broker, [clicks], 4)
    registry = Registry(tmp_path / "models")
    if one_per_partition:
        names = _one_per_partition(unique_name, tenants)
    else:
        names = [unique_name("shop") for _ in range(tenants)]
    all_sessions = sessionize(read_clicks(eshop_csv, fmt="eshop"))
    start = time.time() - 3600
    records = []
    for k, tenant in enumerate(names):
        registry.create_tenant(tenant)
        for n, items in enumerate(all_sessions[k * 37 :][:sessions]):
            sid = f"{tenant}-{n}"
            records += [
                (sid.encode(), ClickEvent(tenant, sid, item, start + n + j / 100).to_json())
                for j, item in enumerate(items)
            ]
    produce(stack.broker, clicks, records)
    env = {
        **os.environ,
        "STREAMREC_BROKER": stack.broker,
        "STREAMREC_REDIS_URL": stack.redis_url,
        "STREAMREC_MODEL_DIR": str(tmp_path / "models"),
        "STREAMREC_HOME": str(tmp_path / "home"),
        "STREAMREC_CLICKS_TOPIC": clicks,
        "STREAMREC_RETRAIN_TOPIC": retrain,
    }
    return env, names, registry


def _one_per_partition(unique_name: Callable[[str], str], count: int) -> list[str]:
    """``count`` (at most ``RETRAIN_PARTITIONS``) tenant names on distinct partitions of
    the ``retrain`` topic, by the producers' partitioner (the Java client's murmur2)."""
    assert count <= RETRAIN_PARTITIONS
    by_partition: dict[int, str] = {}
    while len(by_partition) < count:
        name = unique_name("shop")
        by_partition.setdefault((murmur2(name.encode()) & 0x7FFFFFFF) % RETRAIN_PARTITIONS, name)
    return list(by_partition.values())


def _versions_by_pass(registry: Registry, tenant: str) -> dict[str | None, list[str]]:
    out: dict[str | None, list[str]] = defaultdict(list)
    for info in registry.versions(tenant):
        window = registry.manifest(tenant, info.version).get("data_window") or {}
        out[window.get("pass")].append(info.version)
    return out


TRAIN = ("--window", "1d", "--jobs", "1", "--epochs", "2", "--min-sessions", "5")


@pytest.mark.timeout(600)
def test_two_trainers_of_a_group_train_every_tenant_once_and_both_exit(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    env, tenants, registry = _setup(stack, unique_name, tmp_path, eshop_csv, 8, 150)
    trainers, outputs = _two_once(env, unique_name("group"))
    passes = set()
    for tenant in tenants:
        by_pass = _versions_by_pass(registry, tenant)
        assert len(by_pass) == 1 and all(len(v) == 1 for v in by_pass.values()), (tenant, outputs)
        passes |= set(by_pass)
    assert len(passes) == 1 and None not in passes, passes  # one pass, both in it
    assert all(" done in " in t.text() for t in trainers), outputs


@pytest.mark.timeout(600)
def test_a_killed_trainers_tenants_are_taken_over_and_trained_once(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    # A tenant on each partition: whichever partitions the killed trainer held, it leaves
    # tenants to take over.
    env, tenants, registry = _setup(
        stack, unique_name, tmp_path, eshop_csv, RETRAIN_PARTITIONS, 300, one_per_partition=True
    )
    # Killed mid-pass: after its first tenant, with more of them to go.
    other, outputs = _one_killed(env, unique_name("group"), ": PROMOTED ", within_s=240)
    passes = set()
    for tenant in tenants:
        by_pass = _versions_by_pass(registry, tenant)
        # One candidate per tenant in this pass: registered once, by whichever trainer.
        assert len(by_pass) == 1 and all(len(v) == 1 for v in by_pass.values()), (tenant, outputs)
        passes |= set(by_pass)
    assert len(passes) == 1 and None not in passes, passes
    # The survivor took over tenants of the killed one's partitions.
    assert other.text().count("tenant(s) for this trainer") >= 2, outputs


@pytest.mark.timeout(600)
def test_two_periodic_trainers_publish_one_pass_per_period(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    env, tenants, _ = _setup(stack, unique_name, tmp_path, eshop_csv, 3, 60)
    group, every = unique_name("group"), 6.0
    # Only this test's tenants: the suite's other tests leave theirs in the shared Redis.
    only = [f"--tenant={t}" for t in tenants]
    trainers = [
        Trainer(env, "--every", f"{every:.0f}s", "--group", group, *TRAIN, *only) for _ in range(2)
    ]
    try:
        time.sleep(40)
        assert all(t.proc.poll() is None for t in trainers), [t.text() for t in trainers]
    finally:
        for t in trainers:
            t.stop()
    outputs = "\n----\n".join(t.text() for t in trainers)

    reader = topic_reader(stack.broker, [env["STREAMREC_RETRAIN_TOPIC"]])
    published: dict[str, list[float]] = defaultdict(list)  # pass -> its records' times
    try:
        idle = time.monotonic() + 5
        while time.monotonic() < idle:
            for m in reader.consume(1000, timeout=0.5):
                if m.error() is None:
                    record = PassRecord.from_json(m.value())
                    assert record is not None
                    published[record.pass_id].append(m.timestamp()[1] / 1000)
                    idle = time.monotonic() + 2
    finally:
        reader.close()
    assert len(published) >= 2, outputs  # the schedule went on
    for pass_id, times in published.items():
        assert len(times) == len(tenants), (pass_id, outputs)  # one record per tenant
    starts = sorted(min(t) for t in published.values())
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= every - 0.5, (gaps, outputs)  # not one pass per trainer


def _archived(trainer: Trainer) -> tuple[int, set[int]]:
    """What a trainer says its click archiver archived: (clicks, partitions)."""
    for line in trainer.lines:
        m = re.search(r"this trainer archived (\d+) click\(s\) of \S+ partition\(s\) (\S+)", line)
        if m:
            parts = set() if m[2] == "none" else {int(p) for p in m[2].split(",")}
            return int(m[1]), parts
    raise AssertionError(f"no archive report in:\n{trainer.text()}")


def _clicks_trained(registry: Registry, tenant: str) -> int:
    (version,) = [v.version for v in registry.versions(tenant)]
    return int(registry.manifest(tenant, version)["data_window"]["clicks"])


@pytest.mark.timeout(600)
def test_two_trainers_archive_disjoint_partitions_and_train_on_every_click(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    env, tenants, registry = _setup(stack, unique_name, tmp_path, eshop_csv, 6, 150)
    trainers, outputs = _two_once(env, unique_name("group"))
    log = read_click_log(stack.broker, env["STREAMREC_CLICKS_TOPIC"], time.time() - 86400)
    (n1, p1), (n2, p2) = (_archived(t) for t in trainers)
    # Each click decoded by one trainer: the partitions split between them.
    assert p1 and p2 and not p1 & p2 and p1 | p2 == {0, 1, 2, 3}, outputs
    assert n1 + n2 == sum(len(c) for c in log.values()), outputs
    for tenant in tenants:
        assert _clicks_trained(registry, tenant) == len(log[tenant]), (tenant, outputs)
    # Every read from the archive (a trainer may get none of the few tenants' records).
    reads = [line for t in trainers for line in t.lines if " clicks of " in line]
    assert reads and all("from the click archive" in line for line in reads), outputs


@pytest.mark.timeout(600)
def test_a_trainer_killed_while_archiving_has_its_partitions_archived_by_another(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    env, tenants, registry = _setup(stack, unique_name, tmp_path, eshop_csv, 6, 300)
    other, outputs = _one_killed(env, unique_name("group"), "(archive): assigned", within_s=120)
    assert "(archive): assigned partition(s) 0,1,2,3," in other.text(), outputs
    log = read_click_log(stack.broker, env["STREAMREC_CLICKS_TOPIC"], time.time() - 86400)
    archived = read_archive(archive_dir(registry.root), 0)
    # Not one click lost or archived twice, and every tenant trained on all of its own.
    assert {t: len(c) for t, c in archived.items()} == {t: len(c) for t, c in log.items()}
    for tenant in tenants:
        assert _clicks_trained(registry, tenant) == len(log[tenant]), (tenant, outputs)


@pytest.mark.timeout(600)
def test_a_damaged_block_in_the_archive_fails_only_its_tenant(
    stack: EmbeddedStack,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    eshop_csv: Path,
    request: pytest.FixtureRequest,
) -> None:
    if stack.broker_kind != "kafka":
        # An open defect on the Tansu fallback, seen on a busy machine only: the two
        # trainers of a pass logged nothing after joining it for 300 s, no partition of
        # either of their consumer groups assigned (in either pass of this test).
        # Strict on Apache Kafka.
        request.applymarker(pytest.mark.xfail(reason="Tansu: a group's pass that never starts"))
    env, tenants, registry = _setup(stack, unique_name, tmp_path, eshop_csv, 4, 150)
    group, topic = unique_name("group"), env["STREAMREC_CLICKS_TOPIC"]
    root = archive_dir(registry.root)
    # The log archived before the pass (as a periodic group's archivers do between
    # passes), then one byte of one tenant's block in one segment damaged.
    ends = end_offsets(kafka_config(stack.broker), topic)
    with ClickArchiver(
        kafka_config(stack.broker), topic, group, root, window_s=86400,
        session_timeout_s=6.0, wanted=lambda: ends, settle_s=0.0,
    ):  # fmt: skip
        deadline = time.monotonic() + 120
        while not covers(root, ends):
            assert time.monotonic() < deadline, "the archive never covered the log"
            time.sleep(0.1)
    victim = tenants[1]
    path = next(s.path for p in range(4) for s in segments(root, p) if victim.encode() in
                s.path.read_bytes())  # fmt: skip
    data = bytearray(path.read_bytes())
    data[data.index(f"{victim}-".encode()) + 1] ^= 0x20  # a session id of the victim's
    path.write_bytes(bytes(data))

    trainers, codes, outputs = _run_two_once(env, group)
    # The victim failed, named with the segment in its trainer's log; nothing registered.
    failed = f"tenant {victim}: FAILED"
    (line,) = [line for line in outputs.splitlines() if failed in line]
    assert path.name in line and "damaged" in line, outputs
    reported = f"Tenant(s) failing this pass for it: {victim}"
    assert any(str(path) in ln and reported in ln for ln in outputs.splitlines()), outputs
    assert registry.versions(victim) == [], outputs
    # The others trained and promoted.
    for tenant in tenants:
        if tenant != victim:
            assert f"tenant {tenant}: PROMOTED" in outputs, (tenant, outputs)
            assert len(registry.promoted_versions(tenant)) == 1, (tenant, outputs)
    # Both exit once the pass is done; the one that had the victim with an error naming it.
    assert sorted(codes) == [0, 1], outputs
    loser = trainers[codes.index(1)]
    assert all(" done in " in t.text() for t in trainers), outputs
    assert f"1 tenant(s) failed in this trainer's share of the pass: {victim}" in loser.text()

    # The segment deleted, as the log says: the next pass archives it again and trains
    # the victim on every one of its clicks.
    path.unlink()
    _, outputs = _two_once(env, group)
    assert f"tenant {victim}: PROMOTED" in outputs, outputs
    log = read_click_log(stack.broker, topic, time.time() - 86400)
    assert _clicks_trained(registry, victim) == len(log[victim]), outputs


def _one_killed(
    env: dict[str, str], group: str, marker: str, within_s: float
) -> tuple[Trainer, str]:
    """Two ``--once`` trainers of ``group``; the first is SIGKILLed once it logs
    ``marker`` (within ``within_s``), the other must finish the pass. The survivor and
    both outputs."""
    doomed = Trainer(env, "--once", "--group", group, *TRAIN)
    other = Trainer(env, "--once", "--group", group, *TRAIN)
    try:
        deadline = time.monotonic() + within_s
        while not any(marker in line for line in doomed.lines):
            assert time.monotonic() < deadline and doomed.proc.poll() is None, doomed.text()
            time.sleep(0.05)
        doomed.proc.send_signal(signal.SIGKILL)
        assert other.wait(300) == 0, other.text()
    finally:
        doomed.stop()
        other.stop()
    return other, doomed.text() + "\n----\n" + other.text()


def _run_two_once(env: dict[str, str], group: str) -> tuple[list[Trainer], list[int], str]:
    """Two ``--once`` trainers of ``group`` run to their exit: them, their exit codes and
    their outputs."""
    trainers = [Trainer(env, "--once", "--group", group, *TRAIN) for _ in range(2)]
    try:
        codes = [t.wait(300) for t in trainers]
    except subprocess.TimeoutExpired:
        for t in trainers:
            t.stop()
        outputs = "\n----\n".join(t.text() for t in trainers)
        raise AssertionError(f"a trainer did not exit within 300 s:\n{outputs}") from None
    finally:
        for t in trainers:
            t.stop()
    return trainers, codes, "\n----\n".join(t.text() for t in trainers)


def _two_once(env: dict[str, str], group: str) -> tuple[list[Trainer], str]:
    """Two ``--once`` trainers of ``group``, both exiting 0, and their outputs."""
    trainers, codes, outputs = _run_two_once(env, group)
    assert codes == [0, 0], outputs
    return trainers, outputs
