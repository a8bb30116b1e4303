"""What the commands print: one line per training stage off a terminal (none with
--quiet), replay's progress in tenths off a terminal, a load-test report without
matplotlib, `recs tail`'s line, a bandit's status, and help's defaults."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

from models.datasets import synthetic_sessions
from models.train import TrainParams, train_model
from producers.loadtest import RunData
from producers.loadtest.report import summarize
from producers.replay import send_events
from state.feedback import VariantCounts
from stream.cli import CONTEXT, cli, main
from stream.cli.experiments import status_table
from stream.cli.producers import _write_loadtest_files
from stream.control.policies import bandit_posteriors, bandit_shares, experiment_status
from stream.kafka.recs_tail import list_line
from tests.unit.stream.cli.test_help import ALL

STAGES = ("word2vec", "kmeans", "neighbours", "sources", "ranker")


def test_help_shows_defaults_as_given(capsys: pytest.CaptureFixture[str]) -> None:
    for path, command in ALL:
        root = click_context(command, path)
        for param in command.params:
            record = param.get_help_record(root)
            if record is not None:
                assert "[default: (" not in record[1] and "; (" not in record[1], (path, record)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "[default: 10;" in capsys.readouterr().out


def click_context(command: click.Command, path: str) -> click.Context:
    root = click.Context(cli, info_name="streamrec", **CONTEXT)
    return click.Context(command, parent=root, info_name=path)


def test_train_off_a_terminal_prints_one_line_per_stage(tmp_path: Path) -> None:
    env = {"STREAMREC_HOME": str(tmp_path / "home"), "STREAMREC_MODEL_DIR": ""}
    result = CliRunner().invoke(cli, ["train", "--epochs", "1"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    lines = result.output.splitlines()
    for stage in STAGES:
        (line,) = [s for s in lines if s.startswith(f"{stage} ")]
        assert line.rstrip().endswith(" s") and "done in" in line, line
    quiet = CliRunner().invoke(cli, ["train", "--epochs", "1", "--quiet"], env=env)
    assert quiet.exit_code == 0, quiet.output
    assert not any(s.startswith(STAGES) for s in quiet.output.splitlines()), quiet.output
    assert "registered and promoted default/v2" in quiet.output
    assert "reading" not in quiet.output and len(quiet.output.splitlines()) == 1, quiet.output


def test_the_ranker_stage_reports_progress_between_its_ends() -> None:
    seen: list[tuple[str, float]] = []
    train_model(
        synthetic_sessions(3000, 80, seed=3),
        TrainParams(epochs=1, n_clusters=4),
        progress=lambda stage, f: seen.append((stage, f)),
    )
    inside = {f for stage, f in seen if stage == "ranker" and 0.0 < f < 1.0}
    assert len(inside) >= 3, seen


class _Producer:
    """Stands in for ClickProducer: counts what would go to the broker."""

    def __init__(self) -> None:
        self.sent = 0

    def wait_ready(self) -> None:
        pass

    @property
    def stats(self) -> Any:
        from producers.client import DeliveryStats

        return DeliveryStats(0, 0, 0)

    def send(self, event: dict[str, Any]) -> None:
        self.sent += 1

    def close(self, timeout: float) -> Any:
        return self.stats


def test_replay_off_a_terminal_reports_every_tenth(capsys: pytest.CaptureFixture[str]) -> None:
    events = (("default", f"s{i % 7}", "A1", float(i)) for i in range(25_000))
    send_events(_Producer(), events, limit=25_000, progress=True)  # type: ignore[arg-type]
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    assert [line.split()[1] for line in lines] == [f"{p}%" for p in range(10, 101, 10)], lines
    assert "25,000 of 25,000 events" in lines[-1] and "left" in lines[0], lines


def test_loadtest_json_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    sent = 1000.0 + np.arange(200) / 100.0
    data = RunData(summarize(sent, sent + 0.01, offered_rate=100.0, lag_end=0), sent, sent + 0.01)
    _write_loadtest_files(tmp_path / "lt.json", [data], "streamrec loadtest")
    out = capsys.readouterr().out
    assert (tmp_path / "lt.json").exists() and (tmp_path / "lt.md").exists()
    assert not (tmp_path / "lt.png").exists()
    assert "pip install 'streamrec[plots]'" in out and "Traceback" not in out, out


def test_a_tail_line_names_session_items_sources_version_and_latency() -> None:
    rec = {
        "tenant": "shop",
        "session_id": "s-42",
        "trigger_item": "A13",
        "items": [{"item_id": f"A{i}", "score": 1.0 / i} for i in range(1, 9)],
        "model_version": "v3",
        "variant": "v3",
        "strategy": "embedding",
        "event_ts": 100.0,
        "emitted_ts": 100.0125,
    }
    line = list_line(rec)
    assert line.startswith("shop/s-42 clicked A13 -> A1 (embedding), A2, A3, A4, A5 +3")
    assert "v3" in line and "12.5 ms after the click" in line, line
    rec["items"][1]["source"] = "transitions"  # a record that names each item's source
    assert "A2 (transitions)" in list_line(rec)
    assert "no model" in list_line({**rec, "model_version": None, "items": []})


def test_a_bandit_status_shows_shares_served_and_posterior_means() -> None:
    policy = {"policy": "bandit", "arms": {"v1": 0.5, "v2": 0.5}}
    buckets = [(0, {"v1": VariantCounts(100, 10), "v2": VariantCounts(300, 90)})]
    shares = bandit_shares(policy, buckets, 0, 60)
    posterior = bandit_posteriors(policy, buckets, 0, 60)
    report = experiment_status("t", policy, buckets, shares, posterior=posterior)
    assert report["p_value"] is None and report["decision"] == "running"
    assert report["arms"]["v2"]["posterior_mean"] == pytest.approx(91 / 302, abs=1e-6)
    table = status_table(report)
    assert "p =" not in table and "posterior" in table and "bandit" in table, table
    assert "300" in table and "30.13%" in table, table


def test_bandit_status_and_stop_are_there(capsys: pytest.CaptureFixture[str]) -> None:
    for sub in ("status", "stop"):
        with pytest.raises(SystemExit) as exit_:
            main(["bandit", sub, "--help"])
        assert exit_.value.code == 0
        assert "TENANT" in capsys.readouterr().out
