"""Another commit's packages unpacked beside this checkout, for side-by-side benchmarks
(a benchmark runs that code with its directory first on ``PYTHONPATH``)."""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(ref: str, into: Path, packages: tuple[str, ...] = ("stream", "state", "models")) -> Path:
    """``packages`` as of commit ``ref`` (``git archive``), unpacked under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(
        ["git", "archive", ref, *packages], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into
