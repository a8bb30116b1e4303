"""No churn: the trainer skips a tenant without new clicks, and the registry keeps a
bounded number of versions that were never promoted."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from models.datasets import read_clicks, sessionize
from models.errors import InvalidSettingError
from models.gate import GatePolicy
from models.registry import Registry
from models.train import TrainParams
from stream.config import Settings
from stream.dev.stack import EmbeddedStack
from stream.dev.testing import produce
from stream.events import ClickEvent
from stream.kafka.topics import ensure_topics
from stream.retrain.job import run_once


def test_unchanged_data_is_not_retrained_and_unpromoted_versions_are_bounded(
    stack: EmbeddedStack, unique_name: Callable[[str], str], tmp_path: Path, eshop_csv: Path
) -> None:
    sessions = sessionize(read_clicks(eshop_csv, fmt="eshop"))[:400]
    tenant, topic = unique_name("churn"), unique_name("clicks")
    ensure_topics(stack.broker, [topic], 4)
    start = time.time() - 3600

    def send(batch: list[list[str]], tag: str, t0: float = start) -> None:
        produce(
            stack.broker,
            topic,
            [
                (f"{tag}{n}".encode(), ClickEvent(tenant, f"{tag}{n}", item, t0 + n).to_json())
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

    def one_pass(margin: float = GatePolicy.margin, **kw: object):  # type: ignore[no-untyped-def]
        (outcome,) = run_once(
            settings,
            window_s=86400,
            params=TrainParams(epochs=2, seed=3),
            policy=GatePolicy(min_sessions=20, margin=margin),
            tenants=[tenant],
            **kw,  # type: ignore[arg-type]
        ).outcomes
        return outcome

    first = one_pass()
    assert first.decision.action == "promoted" and registry.current_version(tenant) == "v1"
    again = one_pass()
    assert again.decision.action == "skipped" and "no new clicks" in again.decision.reason
    assert [v.version for v in registry.versions(tenant)] == ["v1"]

    # New clicks: retrained, but a margin no candidate can beat keeps each one out of
    # service, so candidates would pile up: only the newest `keep` (1) stay, never the
    # version in service.
    for round_ in range(3):
        send(sessions[:30], f"b{round_}-", start + 500 + 50 * round_)  # after v1's data
        kept = one_pass(margin=1.0, keep_unpromoted=1)
        assert kept.decision.action == "kept" and kept.version == f"v{round_ + 2}"
    infos = registry.versions(tenant)
    assert [(v.version, v.promoted) for v in infos] == [("v1", True), ("v4", False)]
    assert registry.current_version(tenant) == "v1"
    # The kept candidate holds the log positions it was trained on: no new clicks since.
    again = one_pass()
    assert again.decision.action == "skipped" and "no new clicks since v4" in again.decision.reason
    with pytest.raises(InvalidSettingError, match="keep_unpromoted"):
        one_pass(keep_unpromoted=0)  # the newest candidate's positions must survive

    listing = subprocess.run(
        [sys.executable, "-m", "stream", "models", "list", tenant],
        env={"STREAMREC_MODEL_DIR": settings.model_dir, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    # Each version's gate decision, both scores and the hold-out they came from.
    lines = listing.stdout.splitlines()
    assert re.search(r"gate: promoted, HR@20 \d\.\d{4} vs - \(none in service\)", lines[2]), lines
    assert re.search(
        r"gate: kept, HR@20 \d\.\d{4} vs \d\.\d{4} \(v1 in service\), on the newest \d+ "
        r"sessions of the window .* UTC held out",
        lines[4],
    ), lines
