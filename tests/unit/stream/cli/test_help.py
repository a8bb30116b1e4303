"""`streamrec --help` is fast and complete: the command table matches the commands, no
heavy library is imported for it, and every option shows its default and variable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from stream.cli import COMMANDS, CONTEXT, cli, main
from stream.cli.lazy import load

ROOT = Path(__file__).resolve().parents[4]
HEAVY = ("numpy", "gensim", "sklearn", "faust", "mode", "confluent_kafka", "redis", "aiokafka")


def test_top_level_help_lists_every_command_without_importing_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from stream.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout.splitlines()[-1]
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert set(COMMANDS) <= listed


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_says_what_the_command_says(name: str) -> None:
    command = load(COMMANDS[name].target)
    assert command.name == name
    assert command.get_short_help_str(limit=1000) == COMMANDS[name].help


def _commands() -> Iterator[tuple[str, click.Command]]:
    for name, entry in COMMANDS.items():
        stack = [(name, load(entry.target))]
        while stack:
            path, command = stack.pop()
            yield path, command
            if isinstance(command, click.Group):
                stack += [(f"{path} {n}", c) for n, c in command.commands.items()]


ALL = list(_commands())


@pytest.mark.parametrize(("path", "command"), ALL, ids=[p for p, _ in ALL])
def test_every_option_shows_its_default_and_variable(path: str, command: click.Command) -> None:
    root = click.Context(cli, info_name="streamrec", **CONTEXT)
    ctx = click.Context(command, parent=root, info_name=path)
    for param in command.params:
        if not isinstance(param, click.Option) or param.is_flag or param.hidden:
            continue
        record = param.get_help_record(ctx)
        assert record is not None
        default = param.get_default(ctx, call=False)
        unset = default is None or type(default).__name__ == "Sentinel"  # click 8.3: UNSET
        has_default = not unset or isinstance(param.show_default, str)
        assert not has_default or "default:" in record[1], (path, param.name, record)
        if param.envvar:
            assert f"env var: {param.envvar}" in record[1], (path, param.name, record)
            assert str(param.envvar).startswith("STREAMREC_")


@pytest.mark.parametrize("path", [p for p, _ in ALL])
def test_every_help_page_answers(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path.split(), "--help"])
    assert exit_.value.code == 0
    assert f"Usage: streamrec {path}" in capsys.readouterr().out


def test_settings_flags_name_their_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "env var: STREAMREC_BROKER; default: 127.0.0.1:19092",
        "env var: STREAMREC_REDIS_URL",
        "env var: STREAMREC_MODEL_DIR; default: $STREAMREC_HOME/models",
        "env var: STREAMREC_DELIVERY; default: at_least_once",
        "STREAMREC_HOME",  # the epilog: read without a flag
    ):
        assert text in out
