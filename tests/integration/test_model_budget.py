"""More tenants than the worker's model memory holds: models load on a tenant's click,
the least recently used are evicted (counted in /metrics), and every click is answered
by its tenant's model."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from confluent_kafka import Message

from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerProcess, produce
from tests.integration.helpers import ITEMS, TopicWatcher, http_call, make_config, wait_for_ok

TENANTS = 6


class Answers(TopicWatcher):
    """Each answered event id's (tenant, model version)."""

    def __init__(self, broker: str, topic: str) -> None:
        super().__init__(broker, [topic])
        self.by_event: dict[str, tuple[str, str | None]] = {}

    def record(self, msg: Message) -> None:
        rec = orjson.loads(msg.value())
        self.by_event[rec["event_id"]] = (rec["tenant"], rec["model_version"])

    def count(self) -> int:
        return len(self.by_event)


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_more_tenants_than_the_budget_are_all_served_and_evictions_counted(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    models = tmp_path / "models"
    tenants = [unique_name("lru") for _ in range(TENANTS)]
    for tenant in tenants:
        shutil.copytree(trained_model_dir / "default", models / tenant)
    one = sum(f.stat().st_size for f in (models / tenants[0] / "v1").glob("*.npy"))
    budget = int(one * 2.5)  # room for two of the six
    cfg = make_config(stack, unique_name, tmp_path, models)
    port = free_port()
    cfg.extra_env.update(
        {"STREAMREC_WEB_PORT": str(port), "STREAMREC_MODELS_MAX_BYTES": str(budget)}
    )
    base = f"http://127.0.0.1:{port}"
    # Tenant by tenant in turn, in small rounds: each round needs models evicted since.
    events = []
    for i in range(600):
        tenant = tenants[(i // 5) % TENANTS]
        event = {"tenant": tenant, "session_id": f"s{i % 7}", "item_id": ITEMS[i % len(ITEMS)],
                 "ts": time.time(), "event_id": f"{tenant}-e{i}"}  # fmt: skip
        events.append((f"s{i % 7}".encode(), orjson.dumps(event)))
    answers = Answers(stack.broker, cfg.recs)
    answers.start()
    try:
        with WorkerProcess(cfg) as worker:
            status, _ = wait_for_ok(f"{base}/health/ready", timeout=120)
            assert status == 200, worker.log()[-3000:]
            for start in range(0, len(events), 60):
                produce(stack.broker, cfg.clicks, events[start : start + 60])
                time.sleep(0.2)
            assert answers.wait_for(len(events), timeout=120), worker.log()[-3000:]
            status, body = http_call(f"{base}/metrics")
            assert status == 200
            text = body.decode()
    finally:
        answers.stop_flag.set()
        answers.join(5)

    # Every click answered by its own tenant's model, none by the popular-items fallback.
    assert {v for _, v in answers.by_event.values()} == {"v1"}
    assert {t for t, _ in answers.by_event.values()} == set(tenants)
    assert _metric(text, "streamrec_model_evictions_total") >= TENANTS
    assert _metric(text, "streamrec_model_loads_total") > TENANTS
    assert 0 < _metric(text, "streamrec_models_bytes") <= budget
    assert _metric(text, "streamrec_models_budget_bytes") == budget
