"""The Docker image runs as ``nobody`` with the environment its Dockerfile sets. There is
no Docker engine here, so run the entry point the same way: as an unprivileged user,
with only the image's ENV, from an install that user cannot write to."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# No broker: CI runs it once, in the Apache Kafka pass.
pytestmark = [pytest.mark.integration, pytest.mark.broker_agnostic]

ROOT = Path(__file__).resolve().parents[2]


def image_env() -> dict[str, str]:
    """The ENV lines of the Dockerfile (``KEY=value`` pairs)."""
    env: dict[str, str] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
SOURCES = ("stream", "models", "state", "producers")


def nobody_runs(python: str, env: dict[str, str], cwd: Path) -> str | None:
    """None if ``nobody`` can import streamrec with ``python``, else why not."""
    done = subprocess.run(
        [*AS_NOBODY, python, "-c", "import stream.cli"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def entry_point_for_nobody(root: Path, env: dict[str, str]) -> list[str]:
    """The `streamrec` entry point as a command ``nobody`` can run: this install, or a
    copy of it under ``root`` when nobody cannot reach it (a checkout inside a directory
    only its owner may enter, such as one made by ``mktemp -d``). Sets PYTHONPATH in
    ``env`` for the copy."""
    script = Path(sys.executable).with_name("streamrec")
    if nobody_runs(sys.executable, env, root) is None:
        return [str(script)]

    # Hard links where they can be made: a copy of the whole environment in seconds, and
    # as read-only to nobody as the original.
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    prefix = root / "venv"
    shutil.copytree(sys.prefix, prefix, symlinks=True, copy_function=link)
    ignore = shutil.ignore_patterns("__pycache__")
    for package in SOURCES:  # the editable install points into the checkout
        shutil.copytree(ROOT / package, root / "src" / package, ignore=ignore)
    env["PYTHONPATH"] = str(root / "src")
    python = prefix / "bin" / Path(sys.executable).name
    why = nobody_runs(str(python), env, root)
    if why is not None:
        pytest.skip(f"nobody cannot run this install, nor a copy of it in {root}: {why}")
    return [str(python), str(prefix / "bin" / script.name)]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_entry_point_trains_as_nobody() -> None:
    env = image_env()
    assert env["STREAMREC_HOME"] == "/data"
    # The image's /data (owned by nobody) and /tmp, under a directory only root may
    # write to (pytest's own tmp_path is private to root, so nobody could not enter it).
    root = Path(tempfile.mkdtemp(prefix="streamrec-image-"))
    try:
        root.chmod(0o755)
        data = root / "data"
        data.mkdir()
        os.chown(data, 65534, 65534)
        # The image's kernel cache (/opt/streamrec, nobody's) too.
        replace = {"/data": str(data), "/tmp": str(data / "tmp"), "/opt": str(data / "opt")}
        for key, value in env.items():
            for old, new in replace.items():
                if value.startswith(old):
                    env[key] = new + value[len(old) :]
        env.update(PATH="/usr/bin:/bin", HOME="/nonexistent")
        streamrec = entry_point_for_nobody(root, env)
        done = subprocess.run(
            [*AS_NOBODY, *streamrec, "train"],
            env=env,
            cwd=data,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert (data / "models" / "default" / "CURRENT").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
