"""`streamrec train | similar | models | evaluate` through click, on a temporary registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from models.registry import Registry
from stream.cli import cli, main

FAST = ["--epochs", "2"]
Invoke = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path) -> Invoke:
    runner = CliRunner()
    env = {"STREAMREC_HOME": str(tmp_path / "home"), "STREAMREC_MODEL_DIR": ""}

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


def test_train_on_the_shipped_data_then_similar(run: Invoke) -> None:
    result = run("train", *FAST, "--eval-days", "30")
    assert result.exit_code == 0, result.output
    assert "registered and promoted default/v1: 217 items" in result.output
    listing = run("models", "list").output
    hr = float(listing.split("hr@20=")[1].split()[0])
    assert 0.3 < hr < 1.0, listing  # popularity alone gets 0.23 on this split
    result = run("similar", "A13")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    scores = [float(r[2]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert "A13" not in [r[1] for r in rows]


def test_versions_promote_and_rollback(run: Invoke, tmp_path: Path) -> None:
    assert run("train", *FAST).exit_code == 0
    result = run("train", *FAST, "--no-promote", "--rerank-top", "0")
    assert "registered default/v2" in result.output
    # The shipped log is large enough for boosted trees; --rerank-top 0 fits none.
    registry = Registry(tmp_path / "home" / "models")
    with_trees, without = (registry.manifest("default", v) for v in ("v1", "v2"))
    assert with_trees["ranking"]["rerank_top"] > 0 and "trees" in with_trees
    assert without["ranking"]["rerank_top"] == 0 and "trees" not in without
    listing = run("models", "list").output
    assert "* v1" in listing and "  v2" in listing
    assert "v2 is now in service" in run("models", "promote", "default", "v2").output
    assert "* v2" in run("models", "list", "default").output
    assert "rolled back v2 -> v1" in run("models", "rollback", "default").output
    assert "* v1" in run("models", "list").output


def test_train_generic_csv_with_plots(run: Invoke, tmp_path: Path) -> None:
    data = tmp_path / "clicks.csv"
    rows = ["sess,product,when"] + [
        f"s{s},p{(s + j) % 30},{1000 + s * 100 + j}" for s in range(200) for j in range(4)
    ]
    data.write_text("\n".join(rows) + "\n")
    plots = tmp_path / "plots"
    result = run(
        "train",
        str(data),
        "--format",
        "csv",
        "--session-col",
        "sess",
        "--item-col",
        "product",
        "--time-col",
        "when",
        "--tenant",
        "acme",
        "--clusters",
        "3",
        *FAST,
        "--plots",
        str(plots),
    )
    assert result.exit_code == 0, result.output
    assert "acme/v1: 30 items, 200 sessions, 800 clicks, 3 clusters" in result.output
    for name in ("cluster_sizes.png", "embedding_map.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path, *args: str
) -> tuple[int, str]:
    monkeypatch.setenv("STREAMREC_HOME", str(home))
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    code, err = _main(capsys, monkeypatch, home, "similar", "A13")
    assert code == 1 and "no promoted model" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    code, err = _main(capsys, monkeypatch, home, "train", str(bad))
    assert code == 1 and "cannot tell the format" in err
    code, err = _main(capsys, monkeypatch, home, "models", "promote", "default", "v7")
    assert code == 1 and "unknown tenant 'default'" in err  # nothing trained yet
    (home / "models" / "default").mkdir(parents=True)
    code, err = _main(capsys, monkeypatch, home, "models", "promote", "default", "v7")
    assert code == 1 and "no version v7" in err


def _yoochoose_file(path: Path, first_session: int, days: int) -> Path:
    from models.datasets import synthetic_sessions

    lines = ["SessionId\tItemId\tTime"]
    for n, session in enumerate(synthetic_sessions(3000, 60, seed=first_session)):
        start = 1_400_000_000 + (n * days * 86400) // 700
        lines += [
            f"{first_session + n}\t{item}\t{start + 30 * j}" for j, item in enumerate(session)
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_with_split_days_writes_the_json_the_issue_asks_for(
    run: Invoke, tmp_path: Path
) -> None:
    data = _yoochoose_file(tmp_path / "clicks.tsv", 1, days=60)
    out = tmp_path / "eval.json"
    result = run(
        "evaluate",
        "--train",
        str(data),
        "--split-days",
        "10",
        "--k",
        "10",
        "--models",
        "streamrec,pop,transitions,item_knn,vsknn",
        *FAST,
        "--json",
        str(out),
        "--plot",
        str(tmp_path / "eval.png"),
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    assert report["k"] == 10 and report["cases"] > 100 and report["protocol"] == "next-item"
    assert set(report["models"]) == {"streamrec", "pop", "transitions", "item_knn", "vsknn"}
    for metrics in report["models"].values():
        assert {"hr", "mrr", "coverage", "train_s", "recs_per_s"} <= set(metrics)
        assert 0 <= metrics["mrr"] <= metrics["hr"] <= 1
    assert report["models"]["streamrec"]["hr"] > report["models"]["pop"]["hr"]
    assert "HR@10" in result.output and "sknn" in result.output


def test_evaluate_with_a_test_file_and_bad_options(run: Invoke, tmp_path: Path) -> None:
    train = _yoochoose_file(tmp_path / "train.tsv", 1, days=30)
    test = _yoochoose_file(tmp_path / "test.tsv", 100_000, days=5)
    result = run("evaluate", "--train", str(train), "--test", str(test), "--models", "pop,item_knn")
    assert result.exit_code == 0, result.output
    assert "item_knn" in result.output and "streamrec" not in result.output
    both = run("evaluate", "--train", str(train), "--test", str(test), "--split-days", "3")
    assert both.exit_code == 2 and "exactly one of --test" in both.output
    unknown = run("evaluate", "--train", str(train), "--split-days", "3", "--models", "pop,gru4rec")
    assert unknown.exit_code == 2 and "gru4rec" in unknown.output
    nowhere = tmp_path / "missing" / "eval.png"
    no_dir = run("evaluate", "--train", str(train), "--test", str(test), "--plot", str(nowhere))
    assert (
        no_dir.exit_code == 2
        and "no directory" in no_dir.output
        and "Traceback" not in no_dir.output
    )
    serving = run(
        "evaluate",
        "--train",
        str(train),
        "--test",
        str(test),
        "--valid",
        str(test),
        "--models",
        "pop",
        "--protocol",
        "serving",
        "--exclude",
        "seen",
    )
    assert serving.exit_code == 0 and "exclude seen" in serving.output
    bad = run("evaluate", "--train", str(train), "--test", str(test), "--exclude", "all")
    assert bad.exit_code == 2 and "--exclude" in bad.output


def test_evaluate_reads_gzipped_csv_with_categories(run: Invoke, tmp_path: Path) -> None:
    import gzip

    rows = ["session_id,item_id,category,position"]
    for n in range(60):
        items = ["a", "b", "b", "c"] if n % 2 else ["c", "d", "a"]
        rows += [f"s{n},{item},k{item},{p}" for p, item in enumerate(items)]
    path = tmp_path / "clicks.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    result = run(
        "evaluate",
        "--train",
        str(path),
        "--test",
        str(path),
        "--format",
        "csv",
        "--session-col",
        "session_id",
        "--item-col",
        "item_id",
        "--order-col",
        "position",
        "--category-col",
        "category",
        "--models",
        "transitions",
        "--json",
        str(tmp_path / "out.json"),
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out.json").read_text())
    # 30 sessions of 4 clicks and 30 of 3, repeats kept: 30 * 3 + 30 * 2 cases.
    assert report["cases"] == 150
