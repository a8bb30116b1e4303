"""Promoting a model under load: workers swap within seconds, no event fails."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from models.registry import Registry
from state.notify import notify_model_change
from stream.dev.stack import EmbeddedStack, free_port
from stream.dev.testing import WorkerProcess, produce
from stream.events import ClickEvent
from tests.integration.helpers import RecsCollector, call, make_config, make_events, wait_until

pytestmark = pytest.mark.broker_agnostic


def test_promote_under_load_swaps_within_5s_and_refuses_a_corrupt_version(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(trained_model_dir, model_dir)
    registry = Registry(model_dir)
    cfg = make_config(stack, unique_name, tmp_path, model_dir)
    # A long periodic check: only the pub/sub notice can make the swap this fast.
    cfg.extra_env["STREAMREC_MODEL_CHECK_INTERVAL_S"] = "60"
    # Far more clicks than the test needs: the load runs until the test stops it, so
    # there is traffic before, during and after each promotion however late the
    # worker starts (on a fresh clone it also compiles the ranking kernel).
    events = make_events(60_000, sessions=400, seed=11)
    sent: list[ClickEvent] = []
    collector = RecsCollector(stack.broker, cfg.recs)
    collector.start()
    stop = threading.Event()

    def offer_load() -> None:  # ~1,000 events/s in small bursts
        for start in range(0, len(events), 100):
            if stop.is_set():
                return
            chunk = events[start : start + 100]
            produce(stack.broker, cfg.clicks, [(e.session_id.encode(), e.to_json()) for e in chunk])
            sent.extend(chunk)
            time.sleep(0.1)

    loader = threading.Thread(target=offer_load, daemon=True)
    try:
        with WorkerProcess(cfg) as worker:
            loader.start()
            assert collector.wait_for(1_000, timeout=90), worker.log()[-3000:]
            v1 = registry.current_version("default")

            v2 = registry.register("default", registry.load("default"), {"note": "hot-swap test"})
            registry.promote("default", v2)
            promoted_at = time.time()
            notify_model_change(stack.redis_url, "default", v2)
            deadline = time.monotonic() + 10
            while not any(v == v2 for _, v in collector.versions) and time.monotonic() < deadline:
                time.sleep(0.05)
            v2_times = [ts for ts, v in collector.versions if v == v2]
            assert v2_times, f"no recommendation from {v2} within 10 s\n" + worker.log()[-3000:]
            first_v2 = min(v2_times)
            assert first_v2 - promoted_at < 5.0

            # A corrupted version behind the pointer is refused; v2 keeps serving.
            v3 = registry.register("default", registry.load("default"), {})
            registry.promote("default", v3)
            (model_dir / "default" / v3 / "vectors.npy").write_bytes(b"\x93NUMPY garbage")
            notify_model_change(stack.redis_url, "default", v3)
            marker = len(collector.versions)
            time.sleep(3)
            stop.set()
            loader.join(10)
            assert len(sent) < len(events), "the load ran out before the test ended"
            assert collector.wait_for(len(sent), timeout=60), worker.log()[-3000:]
            log = worker.log()
    finally:
        stop.set()
        collector.stop_flag.set()
        collector.join(5)

    assert "refused" in log and v3 in log
    assert {v for _, v in collector.versions[marker:]} == {v2}
    assert {v for _, v in collector.versions} <= {v1, v2}
    assert collector.answered >= {e.event_id for e in sent}


def test_a_repaired_version_promoted_again_serves_again_without_a_restart(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, trained_model_dir: Path
) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(trained_model_dir, model_dir)
    registry = Registry(model_dir)
    cfg = make_config(stack, unique_name, tmp_path, model_dir)
    port = free_port()
    cfg.extra_env["STREAMREC_WEB_PORT"] = str(port)
    health = f"http://127.0.0.1:{port}/health"
    victim = model_dir / "default" / "v1" / "vectors.npy"

    def serving() -> str | None:
        report = call(health)[1]
        return report["models"].get("default") if isinstance(report, dict) else "?"

    with WorkerProcess(cfg) as worker:
        assert wait_until(lambda: serving() == "v1", 60), worker.log()[-3000:]
        data = victim.read_bytes()
        victim.chmod(0o644)
        victim.write_bytes(data[: len(data) // 2])  # truncated in place
        assert wait_until(lambda: serving() is None, 20), worker.log()[-3000:]
        victim.write_bytes(data)  # restored, and the same version promoted again
        registry.promote("default", "v1")
        notify_model_change(stack.redis_url, "default", "v1")

        def recovered() -> bool:
            status, report = call(health)
            return (
                status == 200
                and report["models"].get("default") == "v1"
                and not report.get("tenants")
                and not report["reasons"]
            )

        assert wait_until(recovered, 20), (call(health), worker.log()[-3000:])
        assert worker.alive()
