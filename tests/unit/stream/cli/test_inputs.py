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


# Every command that reads a click log: the file is read before any broker is contacted
# (STREAMREC_BROKER points at a closed port), so its error is the one reported.
READERS = [
    ["train", "{path}"],
    ["evaluate", "--train", "{path}", "--split-days", "1"],
    ["evaluate", "--test", "{path}"],
    ["replay", "{path}"],
]


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
def test_a_truncated_gzip_is_a_one_line_error_naming_the_file(
    command: list[str],
    truncated_gz: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STREAMREC_BROKER", "127.0.0.1:1")
    code, err = _run([a.format(path=truncated_gz) for a in command], capsys)
    assert code == 1, err
    assert f"{truncated_gz}: is truncated" in err and "Traceback" not in err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
def test_undecodable_bytes_are_a_one_line_error_naming_the_file(
    command: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STREAMREC_BROKER", "127.0.0.1:1")
    path = tmp_path / "clicks.tsv"
    path.write_bytes(b"SessionId\tItemId\tTime\n" + b"s1\t\xff\xfe\t1\n" * 3)
    code, err = _run([a.format(path=path) for a in command], capsys)
    assert code == 1, err
    assert f"{path}: cannot be decoded" in err and err.count("\n") == 1, err


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
        ({}, ["worker", "--web-port", "-1"]),
        ({"STREAMREC_WEB_PORT": "-1"}, ["worker"]),
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


def test_settings_that_cannot_work_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_PARTITIONS", "four")
    code, err = _run(["models", "list"], capsys)
    assert code == 1 and "STREAMREC_PARTITIONS='four'" in err and err.count("\n") == 1
    monkeypatch.delenv("STREAMREC_PARTITIONS")
    monkeypatch.setenv("STREAMREC_ENGINE", "turbo")
    code, err = _run(["worker"], capsys)  # refused before Faust starts
    assert code == 1 and "STREAMREC_ENGINE='turbo'" in err and err.count("\n") == 1


def test_the_retired_agent_engine_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_ENGINE", "agent")
    code, err = _run(["worker"], capsys)  # refused before Faust starts
    assert code == 1 and err.count("\n") == 1
    assert "STREAMREC_ENGINE='agent' is retired" in err and "batch" in err


def test_an_option_read_from_its_variable_is_checked_like_the_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_BATCH_SIZE", "0")
    code, err = _run(["worker"], capsys)
    assert code == 2 and "STREAMREC_BATCH_SIZE" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["evaluate", "--models", "pop,nope"], "unknown model(s) nope"),
        (["evaluate", "--k", "0"], "'--k': 0 is not in the range"),
        (["trainer", "--every", "5x"], "'5x' is not a duration"),
        (["trainer", "--keep-unpromoted", "0"], "'--keep-unpromoted': 0 is not in the range"),
        (["bandit", "start", "t", "v1", "v2", "--discount", "0"], "'--discount': 0.0 is not in"),
        (["experiment", "start", "t", "--variant", "v2", "--share", "1"], "'--share': 1.0 is not"),
        (["stats", "t", "--since", "soon"], "give a duration like 30m, 1h or 7d"),
        (["train", "--format", "parquet"], "'parquet' is not one of"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_usage_errors_are_one_line_pointing_at_the_help(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert "--help'" in err and "Traceback" not in err


def test_a_path_that_cannot_be_written_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "synth.tsv"
    args = ["synth", "--out", str(out), "--items", "9", "--sessions", "9", "--no-progress"]
    code, err = _run(args, capsys)
    assert code == 1 and err.startswith(f"streamrec: error: {blocker}:") and err.count("\n") == 1


def test_a_bug_is_not_dressed_up_as_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only streamrec's own errors and click's usage errors become one line: a ValueError
    from a bug keeps its traceback, so it gets reported and fixed."""
    import stream.cli.models

    def broken(*args: object) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(stream.cli.models, "Registry", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["models", "list"])


def test_a_group_without_a_subcommand_shows_its_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = _run(["tenant"], capsys)
    assert code == 2 and err.startswith("Usage: streamrec tenant") and "error" not in err


SECRET = "pa55-never-printed"


@pytest.mark.parametrize(
    ("url", "args"),
    [
        (f"redis://:{SECRET}@127.0.0.1:99999/0", ["dev", "status"]),  # refused as a setting
        (f"redis://:{SECRET}@127.0.0.1:1/0", ["stats", "default"]),  # unreachable
        (f"redis://:{SECRET}@127.0.0.1:1/0", ["tenant", "create", "shop"]),
    ],
)
def test_a_redis_password_is_never_printed(
    url: str,
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STREAMREC_REDIS_URL", url)
    monkeypatch.setenv("STREAMREC_REDIS_RETRIES", "0")
    monkeypatch.setenv("STREAMREC_REDIS_CONNECT_TIMEOUT_S", "0.5")
    if args[0] == "stats":
        (tmp_path / "home" / "models" / "default").mkdir(parents=True)
    code, err = _run(args, capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert SECRET not in err and "***" in err, err


@pytest.mark.parametrize(
    "args",
    [
        ["tenant", "mode", "ghost", "off"],
        ["tenant", "set", "ghost", "--block", "A1"],
        ["tenant", "key", "create", "ghost"],
        ["tenant", "key", "revoke", "ghost", "k1"],
        ["models", "list", "ghost"],
        ["models", "promote", "ghost", "v1"],
        ["models", "rollback", "ghost"],
        ["stats", "ghost"],
        ["experiment", "start", "ghost", "--variant", "v2"],
        ["experiment", "status", "ghost"],
        ["experiment", "stop", "ghost", "--keep"],
        ["bandit", "start", "ghost", "v1", "v2"],
    ],
)
def test_commands_on_an_unknown_tenant_are_an_error_and_create_nothing(
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMREC_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models" / "shop").mkdir(parents=True)  # another tenant exists
    code, err = _run(args, capsys)
    assert code == 1 and "unknown tenant 'ghost'" in err and err.count("\n") == 1, err
    assert not (tmp_path / "home" / "models" / "ghost").exists()
