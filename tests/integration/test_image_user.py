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


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_entry_point_trains_as_nobody() -> None:
    env = image_env()
    assert env["STREAMREC_HOME"] == "/data"
    # The image's /data (owned by nobody) and /tmp, under a directory only root may
    # write to (pytest's own tmp_path is private to root, so nobody could not enter it).
    root = Path(tempfile.mkdtemp(prefix="streamrec-image-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    os.chown(data, 65534, 65534)
    replace = {"/data": str(data), "/tmp": str(data / "tmp")}
    for key, value in env.items():
        for old, new in replace.items():
            if value.startswith(old):
                env[key] = new + value[len(old) :]
    env.update(PATH="/usr/bin:/bin", HOME="/nonexistent")
    streamrec = Path(sys.executable).with_name("streamrec")
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    done = subprocess.run(
        [*as_nobody, str(streamrec), "train"],
        env=env,
        cwd=data,
        capture_output=True,
        text=True,
        timeout=240,
    )
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        assert (data / "models" / "default" / "CURRENT").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
