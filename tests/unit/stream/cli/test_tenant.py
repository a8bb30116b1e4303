"""`streamrec tenant` with Redis away: a change is durable in the registry, and the one
line says so (the workers pick it up from the registry), rather than that nothing could
be done."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import Registry
from stream.cli import main


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("STREAMREC_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("STREAMREC_REDIS_URL", "redis://127.0.0.1:1/0")  # nobody listens
    registry = Registry(tmp_path / "models")
    registry.create_tenant("shop")
    return registry


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


@pytest.mark.parametrize(
    ("args", "what", "saved"),
    [
        (["tenant", "mode", "shop", "freeze"], "mode", lambda r: r.mode("shop") == "freeze"),
        (["tenant", "set", "shop", "--block", "i1"], "serving rules",
         lambda r: r.rules("shop")["blocklist"] == ["i1"]),
    ],
)  # fmt: skip
def test_a_change_with_redis_away_is_saved_and_says_so(
    registry: Registry, capsys: pytest.CaptureFixture[str], args: list[str], what: str, saved
) -> None:
    code, _, err = _run(args, capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert f"error: {what} saved in the registry, but Redis at" in err, err
    assert "workers pick it up when Redis is back" in err
    assert saved(registry)


def test_a_key_created_with_redis_away_is_shown_once_all_the_same(
    registry: Registry, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="streamrec"):
        code, out, err = _run(["tenant", "key", "create", "shop"], capsys)
    (key_id,) = registry.keys("shop")
    assert code == 0 and out.startswith(f"srk_{key_id}_"), (out, err)
    assert f"key {key_id} created; it is shown this once" in err
    assert "key saved in the registry, but Redis at" in caplog.text


def test_reading_the_tenants_with_redis_away_is_one_line(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["tenant", "list"], capsys)
    assert code == 1 and err.startswith("streamrec: error: cannot reach Redis at"), err
    assert err.count("\n") == 1
