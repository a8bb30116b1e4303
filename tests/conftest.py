"""Shared fixtures. Integration fixtures start the real embedded broker and Redis once
per test session, on free ports, and stop them at the end."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.config import Settings
from stream.dev.stack import EmbeddedStack, free_cluster_ports, free_port, stack_for


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis",
        choices=("single", "cluster"),
        default="single",
        help="the stack fixture's Redis: one server, or a three-master Redis Cluster "
        "(CI runs the tests marked `cluster` again with --redis cluster)",
    )


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[EmbeddedStack]:
    """STREAMREC_EMBEDDED_BROKER=auto|kafka|tansu picks the broker, as for `dev up`;
    ``--redis cluster`` puts a Redis Cluster beside it."""
    run_dir = tmp_path_factory.mktemp("stack")
    mode = pytestconfig.getoption("--redis")
    ports = free_cluster_ports(3) if mode == "cluster" else [free_port()]
    embedded = stack_for(
        Settings.from_env(),
        run_dir,
        f"127.0.0.1:{free_port()}",
        f"redis://127.0.0.1:{ports[0]}/0",
        redis_mode=mode,
        cluster_ports=ports if mode == "cluster" else None,
    )
    print(f"\nembedded broker: {embedded.broker_why}; Redis: {embedded.redis_label}")
    embedded.up()
    try:
        yield embedded
    finally:
        embedded.down()


@pytest.fixture(scope="session", autouse=True)
def _one_numba_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The workers a test session starts share one numba cache, so the ranking kernels are
    compiled once per session, not at every worker's start (a test of a cold start sets a
    cache of its own). A NUMBA_CACHE_DIR given from outside is kept."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        yield
        return
    os.environ["NUMBA_CACHE_DIR"] = str(tmp_path_factory.mktemp("numba"))
    try:
        yield
    finally:
        os.environ.pop("NUMBA_CACHE_DIR", None)


_names = itertools.count()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Unique topic / group / tenant names, so tests sharing the stack never collide."""
    run = uuid.uuid4().hex[:6]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{run}-{next(_names)}"

    return make


@pytest.fixture(scope="session")
def eshop_csv() -> Path:
    from models.datasets import eshop_path

    return eshop_path()


@pytest.fixture(autouse=True)
def _no_user_streamrec_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests configure streamrec explicitly; a developer's STREAMREC_* must not leak in.
    for key in list(os.environ):
        if key.startswith("STREAMREC_"):
            monkeypatch.delenv(key)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/integration needs the embedded stack: `-m integration` runs it.
    # CI runs those not marked broker_agnostic a second time on Tansu (.ci/run).
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
