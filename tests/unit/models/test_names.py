"""New tenant names: lookalikes of an existing tenant, reserved device names and
ill-formed dots are refused, with a reason; the CLI says so in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from models.names import canonical_tenant, is_reserved, tenant_refusal
from stream.cli import cli

EXISTING = ["default", "shop-1"]


@pytest.mark.parametrize(
    "name", ["default.", "Default", "de.fault", "default-", "DEFAULT_", "Shop-1"]
)
def test_a_lookalike_of_an_existing_tenant_is_a_conflict(name: str) -> None:
    refused = tenant_refusal(name, EXISTING)
    assert refused is not None and refused.reason, name
    if name.endswith("."):
        return  # refused for its trailing dot already
    assert refused.conflict and "too like the existing tenant" in refused.reason, refused


@pytest.mark.parametrize(
    "name",
    ["CON", "con", "Prn", "aux", "NUL", "nul.txt", "COM1", "com9.tar.gz", "LPT3", "lpt1.x", "a..b"],
)
def test_reserved_and_ill_formed_names_are_refused(name: str) -> None:
    refused = tenant_refusal(name, [])
    assert refused is not None and not refused.conflict, name
    assert "\n" not in refused.reason


@pytest.mark.parametrize(
    "name", ["default", "shop-2", "shop1", "de-fault", "console", "com10", "a.b"]
)
def test_ordinary_names_and_existing_ones_pass(name: str) -> None:
    assert tenant_refusal(name, EXISTING) is None, name


def test_the_canonical_form() -> None:
    assert {canonical_tenant(n) for n in ("default", "Default", "de.fault", "default-_")} == {
        "default"
    }
    assert canonical_tenant("shop-1") != canonical_tenant("shop1")
    assert is_reserved("CoM7.json") and not is_reserved("comet")


def test_the_cli_refuses_a_lookalike_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "models" / "default").mkdir(parents=True)
    env = {"STREAMREC_HOME": str(tmp_path), "STREAMREC_REDIS_URL": "redis://127.0.0.1:1/0"}
    for name in ("Default", "CON", "a..b"):
        result = CliRunner().invoke(cli, ["tenant", "create", name], env=env)
        assert result.exit_code == 1, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith("Error:") and repr(name) in line, line
    made = sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith("."))
    assert made == ["default"]  # no tenant created (the lock directory is not one)


def test_train_refuses_a_lookalike_before_training(tmp_path: Path) -> None:
    (tmp_path / "models" / "default").mkdir(parents=True)
    env = {"STREAMREC_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli, ["train", "--tenant", "DEFAULT"], env=env)
    assert result.exit_code == 1 and "too like the existing tenant 'default'" in result.output
    assert "reading" not in result.output  # nothing trained
