"""The embedded stack's Redis Cluster: its nodes' layout, and the record that makes every
later command of the run directory use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.config import CLUSTER_RECORD, Settings
from stream.dev.stack import EmbeddedStack, StackError


def _stack(run_dir: Path, **kw: object) -> EmbeddedStack:
    return EmbeddedStack(
        run_dir, "127.0.0.1:19092", "redis://127.0.0.1:16379/0", broker_kind="tansu", **kw
    )


def test_a_cluster_runs_three_masters_from_the_urls_port_and_optional_replicas(
    tmp_path: Path,
) -> None:
    single = _stack(tmp_path)
    assert not single.redis_cluster and [s.name for s in single.services] == ["broker", "redis"]
    cluster = _stack(tmp_path, redis_mode="cluster", replicas=True)
    assert cluster.masters == [("127.0.0.1", p) for p in (16379, 16380, 16381)]
    assert cluster.replicas == [("127.0.0.1", p) for p in (16382, 16383, 16384)]
    assert all(s.cluster for s in cluster.services[1:])
    assert "--cluster-enabled" in cluster.services[1].command()
    assert cluster.redis_url == "redis://127.0.0.1:16379/0"
    with pytest.raises(StackError, match="single, cluster"):
        _stack(tmp_path, redis_mode="sharded")


def test_a_recorded_cluster_is_what_later_commands_use(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / CLUSTER_RECORD).write_text(
        json.dumps({"masters": ["127.0.0.1:23000", "127.0.0.1:23001", "127.0.0.1:23002"]})
    )
    settings = Settings.from_env({"STREAMREC_HOME": str(tmp_path)})
    assert settings.redis.cluster and settings.redis.url == "redis://127.0.0.1:23000/0"
    assert _stack(run).masters[2] == ("127.0.0.1", 23002)  # dev status / down see it
    given = Settings.from_env(
        {"STREAMREC_HOME": str(tmp_path), "STREAMREC_REDIS_URL": "redis://10.0.0.1:6379/0"}
    )
    assert not given.redis.cluster  # an explicit Redis wins over the record
