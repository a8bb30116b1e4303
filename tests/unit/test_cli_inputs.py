"""Bad input on the command line: one line naming the problem, exit 1, nothing started."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from stream.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    return int(exit_.value.code or 0), err


@pytest.fixture
def truncated_gz(tmp_path: Path) -> Path:
    path = tmp_path / "clicks.tsv.gz"
    rows = "".join(f"s{i}\tI{i % 7}\t{1_000_000 + i}\n" for i in range(50_000))
    data = gzip.compress(("SessionId\tItemId\tTime\n" + rows).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_gzip_is_a_one_line_error_naming_the_file(
    truncated_gz: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    code, err = _run(["train", str(truncated_gz)], capsys)
    assert code == 1
    assert f"{truncated_gz}: is truncated" in err and "Traceback" not in err


def test_undecodable_bytes_are_a_one_line_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    path = tmp_path / "clicks.tsv"
    path.write_bytes(b"SessionId\tItemId\tTime\n" + b"s1\t\xff\xfe\t1\n" * 3)
    code, err = _run(["train", str(path)], capsys)
    assert code == 1 and f"{path}: cannot be decoded" in err


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--tenant", "shop\n"],
        ["models", "list", "a:b"],
        ["tenant", "mode", "x y", "off"],
        ["trainer", "--once", "--tenant", "bad name"],
    ],
)
def test_names_are_refused_before_any_work(
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    code, err = _run(args, capsys)
    assert code == 2 and "is not a tenant name" in err
    assert not (tmp_path / "home").exists()  # nothing trained or written


@pytest.mark.parametrize(
    ("env", "args"),
    [
        ({}, ["worker", "--web-port", "70000"]),
        ({"STREAMREC_BROKER": "127.0.0.1:99999"}, ["dev", "status"]),
        ({"STREAMREC_REDIS_URL": "redis://127.0.0.1:0/0"}, ["dev", "status"]),
    ],
)
def test_invalid_ports_are_refused(
    env: dict[str, str],
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, err = _run(args, capsys)
    assert code == 1 and "port" in err and err.count("\n") == 1
