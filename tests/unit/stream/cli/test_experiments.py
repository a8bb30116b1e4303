"""`streamrec experiment` / `bandit` on a registry alone (Redis unreachable): a running
policy is never silently replaced, and a staged rollout stopped by hand is recorded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from models.bundle import ModelBundle
from models.datasets import synthetic_sessions
from models.policy_file import read_policy, rollout_history, write_policy
from models.registry import Registry
from models.train import TrainParams, train_model
from stream.cli import main

NOW = time.time()
ROLLOUT = {
    "policy": "ab",
    "arms": {"v1": 0.9, "v2": 0.1},
    "control": "v1",
    "candidate": "v2",
    "started": NOW - 60,
    "rollout": {"stages": [0.1, 0.5, 1.0], "stage": 0, "stage_started": NOW - 60},
}


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return train_model(synthetic_sessions(2000, 60, seed=1), TrainParams(epochs=1, n_clusters=3))


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle: ModelBundle) -> Registry:
    monkeypatch.setenv("STREAMREC_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STREAMREC_REDIS_URL", "redis://127.0.0.1:1/0")  # nobody listens
    registry = Registry(tmp_path / "models")
    for _ in range(3):  # v1 (in service), v2 (the rollout's candidate), v3
        registry.register("shop", bundle, {})
    registry.promote("shop", "v1")
    write_policy(registry, "shop", ROLLOUT)
    return registry


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    return int(exit_.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["experiment", "start", "shop", "--variant", "v3"],
        ["bandit", "start", "shop", "v1", "v3"],
    ],
)
def test_a_running_policy_is_not_replaced(
    registry: Registry, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(args, capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert "runs a staged rollout over v1, v2: stop it first" in err
    assert read_policy(registry, "shop") == ROLLOUT


def test_a_rollout_stopped_by_hand_is_in_the_history(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    # Redis is away: the stop is durable in the registry, and the message says the
    # workers learn of it when Redis is back.
    code, err = _run(["experiment", "stop", "shop", "--keep"], capsys)
    assert code == 1 and "policy saved in the registry" in err and err.count("\n") == 1, err
    assert read_policy(registry, "shop") is None
    (entry,) = rollout_history(registry, "shop")
    assert (entry["action"], entry["candidate"], entry["decision"]) == (
        "rollout-stop",
        "v2",
        "keep",
    )


def test_the_trainers_look_at_rollouts_survives_redis_away(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    from stream.config import Settings
    from stream.retrain.rollout import look_at_rollouts

    settings = Settings(redis_url="redis://127.0.0.1:1/0", model_dir=str(registry.root))
    with caplog.at_level("WARNING", logger="streamrec"):
        assert look_at_rollouts(settings) == []
    assert "rollouts not looked at: Redis at" in caplog.text
    assert read_policy(registry, "shop") == ROLLOUT  # waits where it was


def test_a_running_ab_test_is_named_in_plain_words(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    write_policy(registry, "shop", {k: v for k, v in ROLLOUT.items() if k != "rollout"})
    code, err = _run(["bandit", "start", "shop", "v1", "v3"], capsys)
    assert code == 1 and "runs an A/B test over v1, v2: stop it first" in err, err


@pytest.mark.parametrize(
    "args", [["models", "rollback"], ["experiment", "start"], ["tenant", "mode"]]
)
def test_a_missing_tenant_is_one_line_saying_where_names_are(
    registry: Registry, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(args, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "Missing argument" in err and "streamrec tenant list" in err, err


def test_status_without_a_tenant_covers_the_tenants_that_run_one(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(["bandit", "status"], capsys)  # shop runs one; Redis is away
    assert code == 1 and "cannot reach Redis" in err and err.count("\n") == 1, err
    write_policy(registry, "shop", None)
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "status"])
    assert exit_.value.code == 0 and "no experiment or bandit runs" in capsys.readouterr().out
