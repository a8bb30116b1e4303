"""Where the worker and `streamrec warm` keep numba's compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import models
from stream.cli import worker as worker_cli
from stream.cli.worker import use_kernel_cache
from stream.config import Settings

BESIDE_SOURCES = Path(models.__file__).parent / "__pycache__"


def test_one_cache_per_installation_whatever_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The demo's worker runs in a home of its own, made afresh each time: the cache
    # `streamrec warm` filled (scripts/setup.sh) must be the one it reads.
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    demo = use_kernel_cache(Settings(home=str(tmp_path / "demo")))
    other = use_kernel_cache(Settings(home=str(tmp_path / "home")))
    assert demo == other == str(BESIDE_SOURCES)
    assert "NUMBA_CACHE_DIR" not in os.environ  # numba's own default place


def test_a_user_who_cannot_write_beside_the_sources_gets_one_in_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(worker_cli, "_writable", lambda d: d != BESIDE_SOURCES)
    where = use_kernel_cache(Settings(home=str(tmp_path)))
    assert where == os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "cache" / "numba")


def test_a_cache_given_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "given"))
    assert use_kernel_cache(Settings(home=str(tmp_path))) == str(tmp_path / "given")
