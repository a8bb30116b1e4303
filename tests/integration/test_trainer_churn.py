"""No churn: the trainer skips a tenant without new clicks, and the registry keeps a
bounded number of versions that were never promoted."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from models.datasets import read_clicks, sessionize
from models.gate import GatePolicy
from models.registry import Registry
from models.train import TrainParams
from stream.config import Settings
from stream.devstack import EmbeddedStack
from stream.events import ClickEvent
from stream.testing import produce
from stream.topics import ensure_topics
from stream.trainer import run_once


def test_unchanged_data_is_not_retrained_and_unpromoted_versions_are_bounded(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    sessions = sessionize(read_clicks(eshop_csv, fmt="eshop"))[:400]
    tenant, topic = unique_name("churn"), unique_name("clicks")
    ensure_topics(stack.broker, [topic], 4)
    start = time.time() - 3600

    def send(batch: list[list[str]], tag: str) -> None:
        produce(
            stack.broker,
            topic,
            [
                (f"{tag}{n}".encode(), ClickEvent(tenant, f"{tag}{n}", item, start + n).to_json())
                for n, s in enumerate(batch)
                for item in s
            ],
        )

    send(sessions, "a")
    settings = Settings(
        broker=stack.broker,
        redis_url=stack.redis_url,
        model_dir=str(tmp_path / "models"),
        clicks_topic=topic,
    )
    registry = Registry(settings.registry_dir)

    def one_pass(**kw: object):  # type: ignore[no-untyped-def]
        (outcome,) = run_once(
            settings,
            window_s=86400,
            params=TrainParams(epochs=2, seed=3),
            policy=GatePolicy(min_sessions=20),
            tenants=[tenant],
            **kw,  # type: ignore[arg-type]
        ).outcomes
        return outcome

    first = one_pass()
    assert first.decision.action == "promoted" and registry.current_version(tenant) == "v1"
    again = one_pass()
    assert again.decision.action == "skipped" and "no new clicks" in again.decision.reason
    assert [v.version for v in registry.versions(tenant)] == ["v1"]

    # New clicks: retrained; the same data plus a little cannot beat v1 by the margin
    # every time, so several candidates pile up unpromoted: at most `keep` stay.
    for round_ in range(3):
        send(sessions[:30], f"b{round_}-")
        one_pass(keep_unpromoted=1)
    infos = registry.versions(tenant)
    unpromoted = [v.version for v in infos if not v.promoted]
    assert len(unpromoted) <= 1, [v.version for v in infos]
    assert registry.current_version(tenant) in [v.version for v in infos]
    assert all(v.version in {i.version for i in infos} for v in infos if v.promoted)

    listing = subprocess.run(
        [sys.executable, "-m", "stream", "models", "list", tenant],
        env={"STREAMREC_MODEL_DIR": settings.model_dir, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert "gate: promoted, HR@20" in listing.stdout and "held out" in listing.stdout
